package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/qcdp/qcdp/integration/harness"
)

// Storage is a small tmpfs that only processes of a mount namespace of
// the suite's own see: the replica's storage_root, so that filling it
// fills nothing else. A holder process keeps the namespace; it ends with
// the test process (tail --pid), and Close stops it by PID, which
// unmounts the tmpfs. The replica runs inside through Command; the suite
// reaches the files through Path (/proc/<holder>/root).
type Storage struct {
	Dir    string // the mount point: the same path inside and outside, empty outside
	holder *harness.Proc
}

// NewStorage mounts a tmpfs of size bytes at mnt (created if missing) in
// a new mount namespace; the holder's log goes to dir.
func NewStorage(ctx context.Context, dir, mnt string, size int64) (*Storage, error) {
	if err := os.MkdirAll(mnt, 0o750); err != nil {
		return nil, err
	}
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return nil, err
	}
	p, err := harness.StartProc(dir, "mountns", "unshare", "--mount", "--propagation", "private",
		"tail", "--pid="+strconv.Itoa(os.Getpid()), "-f", "/dev/null")
	if err != nil {
		return nil, err
	}
	s := &Storage{Dir: mnt, holder: p}
	// unshare execs tail once the namespace exists.
	for delay := time.Millisecond; ; delay = min(2*delay, 50*time.Millisecond) {
		ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", p.PID()))
		if err == nil && ns != self {
			break
		}
		select {
		case <-p.Exited():
			return nil, fmt.Errorf("chaos: the mount namespace holder exited: %v\n%s", p.ExitErr(), p.Log(10))
		case <-ctx.Done():
			p.Stop(time.Second)
			return nil, ctx.Err()
		case <-time.After(delay):
		}
	}
	argv := s.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0750", size), "qcdp-chaos", mnt)
	if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
		p.Stop(time.Second)
		return nil, fmt.Errorf("chaos: %s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return s, nil
}

// Command is argv run inside the namespace (nsenter execs it: the PID is
// argv's).
func (s *Storage) Command(argv ...string) []string {
	return append([]string{"nsenter", fmt.Sprintf("--mount=/proc/%d/ns/mnt", s.holder.PID()), "--"}, argv...)
}

// Path is where the suite reaches path (under Dir) as the namespace sees it.
func (s *Storage) Path(path string) string {
	return filepath.Join(fmt.Sprintf("/proc/%d/root", s.holder.PID()), path)
}

func (s *Storage) ballast() string { return s.Path(filepath.Join(s.Dir, "ballast")) }

// Fill writes a ballast file until the tmpfs has no room left and
// returns its size.
func (s *Storage) Fill() (int64, error) {
	f, err := os.OpenFile(s.ballast(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i) | 1
	}
	var n int64
	for {
		w, err := f.Write(buf)
		n += int64(w)
		if errors.Is(err, syscall.ENOSPC) {
			break
		}
		if err != nil {
			return n, err
		}
	}
	// What is left is less than a page per file the tmpfs may still
	// take: fill the last bytes too.
	for _, sz := range []int{4096, 512, 1} {
		for {
			if _, err := f.Write(buf[:sz]); err != nil {
				break
			}
			n += int64(sz)
		}
	}
	return n, nil
}

// Drain removes the ballast.
func (s *Storage) Drain() error {
	err := os.Remove(s.ballast())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// Free is the room left on the tmpfs.
func (s *Storage) Free() (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(s.Path(s.Dir), &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// Close ends the namespace: the holder is stopped by PID (processes
// started inside must be stopped first).
func (s *Storage) Close() error { return s.holder.Stop(5 * time.Second) }
