package integration

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"

	"github.com/qcdp/qcdp/filter"
	"github.com/qcdp/qcdp/integration/harness"
)

// The rig of BenchmarkFailoverRTO: the qcdp binary, a libvirtd of its
// own, `qcdp replica` with a [[recovery]] plan per group, `qcdp host`
// protecting one libvirt domain per group. The helpers of the tests take
// a *testing.T; these take the benchmark's testing.TB.
type foRig struct {
	tb             testing.TB
	dir, bin       string
	lv             *harness.Libvirtd
	lc             *libvirt.Libvirt // the sampler's own connection
	replicaCtl     string
	replicaSock    string // the site's NBD socket (`qcdp export` views)
	hostCtl        string
	replica, host  *harness.Proc
	srcNet         string
	standby        string // standby_dir of the plans
	kernel, initrd string
}

// qcdp runs the binary and fails the benchmark with its output on error.
func (r *foRig) qcdp(ctx context.Context, args ...string) []byte {
	r.tb.Helper()
	out, err := exec.CommandContext(ctx, r.bin, args...).CombinedOutput()
	if err != nil {
		r.tb.Fatalf("qcdp %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (r *foRig) virsh(ctx context.Context, args ...string) string {
	r.tb.Helper()
	out, err := r.lv.Virsh(ctx, args...)
	if err != nil {
		r.tb.Fatalf("virsh %v: %v\n%s", args, err, out)
	}
	return out
}

func (r *foRig) write(path, text string) {
	r.tb.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		r.tb.Fatal(err)
	}
}

func freePortTB(tb testing.TB) int {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// sourceImage makes a sparse qcow2 (v3, no preallocation) of size bytes
// whose only data is 256 MiB at 128 MiB: in every 4 KiB block, 2 KiB of
// random bytes then 2 KiB of one repeated byte (about 2:1 with zstd, as
// the ingest bench writes). The workload's area (the first 64 MiB and
// one block past it) stays clear of it.
func (r *foRig) sourceImage(ctx context.Context, path string, size int64) {
	r.tb.Helper()
	raw := path + ".raw"
	f, err := os.Create(raw)
	if err != nil {
		r.tb.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		r.tb.Fatal(err)
	}
	rng := rand.NewChaCha8([32]byte{'q', 'c', 'd', 'p'})
	buf := make([]byte, 1<<20)
	w := bufio.NewWriterSize(f, 1<<20)
	if _, err := f.Seek(fillOffset, 0); err != nil {
		r.tb.Fatal(err)
	}
	for off := int64(0); off < fillBytes; off += int64(len(buf)) {
		for b := 0; b < len(buf); b += 4096 {
			rng.Read(buf[b : b+2048])
			v := byte((off+int64(b))>>12) | 1
			for i := b + 2048; i < b+4096; i++ {
				buf[i] = v
			}
			binary.LittleEndian.PutUint64(buf[b+2048:], uint64(off+int64(b)))
		}
		if _, err := w.Write(buf); err != nil {
			r.tb.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		r.tb.Fatal(err)
	}
	f.Close()
	if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path).CombinedOutput(); err != nil {
		r.tb.Fatalf("qemu-img convert: %v\n%s", err, out)
	}
	os.Remove(raw)
}

// hostStatusAll is the part of `qcdp status --json` the rig reads, for
// every group.
type hostStatusAll struct {
	Groups []struct {
		Name    string `json:"name"`
		LastSeq uint64 `json:"last_seq"`
		Disks   []struct {
			State string `json:"state"`
		} `json:"disks"`
		Replica *struct {
			LastAcked uint64 `json:"last_acked"`
		} `json:"replica"`
	} `json:"groups"`
}

// waitHost waits until ok holds of the host daemon's status, asking
// with a bounded backoff.
func (r *foRig) waitHost(ctx context.Context, what string, ok func(hostStatusAll) bool) {
	r.tb.Helper()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	var last []byte
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		out, err := exec.CommandContext(ctx, r.bin, "status", "--json", "--socket", r.hostCtl).Output()
		var st hostStatusAll
		if err == nil && json.Unmarshal(out, &st) == nil && ok(st) {
			return
		}
		last = out
		select {
		case <-ctx.Done():
			r.tb.Fatalf("%s: never: last status %s\n%s\n%s", what, last, r.host.Report(), r.replica.Report())
		case <-r.host.Exited():
			r.tb.Fatalf("qcdp host exited: %v\n%s", r.host.ExitErr(), r.host.Report())
		case <-time.After(wait):
		}
	}
}

// waitSyncing waits until a group's disk is in syncing (in sync,
// streaming).
func (r *foRig) waitSyncing(ctx context.Context, group string) {
	r.waitHost(ctx, group+" syncing", func(st hostStatusAll) bool {
		for _, g := range st.Groups {
			if g.Name == group {
				return len(g.Disks) == 1 && g.Disks[0].State == string(filter.Syncing)
			}
		}
		return false
	})
}

// waitReplicated waits until every record of each group is
// acknowledged by the replica.
func (r *foRig) waitReplicated(ctx context.Context, groups ...string) {
	r.waitHost(ctx, fmt.Sprintf("groups %v replicated", groups), func(st hostStatusAll) bool {
		n := 0
		for _, g := range st.Groups {
			if !slices.Contains(groups, g.Name) {
				continue
			}
			if g.Replica == nil || g.LastSeq == 0 || g.Replica.LastAcked != g.LastSeq {
				return false
			}
			n++
		}
		return n == len(groups)
	})
}

// waitShutOff waits until a domain is no longer running.
func (r *foRig) waitShutOff(ctx context.Context, name string) {
	r.tb.Helper()
	for {
		if out, err := r.lv.Virsh(ctx, "domstate", name); err == nil && !strings.Contains(out, "running") {
			return
		}
		select {
		case <-ctx.Done():
			r.tb.Fatalf("domain %s never stopped", name)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// rtoDropCaches writes back and drops the page cache (root only), as on a
// recovery site that did not just read its journals; false when it could
// not.
func rtoDropCaches() bool {
	syscall.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0) == nil
}

// domainWatch samples one libvirt domain every 5 ms from before it
// exists: when libvirt first reports it running, and when its disk vda
// has first completed a read (virDomainBlockStats rd_req > 0). Each time
// is taken when the answer that showed it came back: an upper bound, at
// most one sample late.
type domainWatch struct {
	running, firstRead time.Time
	done               chan struct{}
	stop               context.CancelFunc
}

func watchDomain(ctx context.Context, l *libvirt.Libvirt, name string) *domainWatch {
	ctx, cancel := context.WithCancel(ctx)
	w := &domainWatch{done: make(chan struct{}), stop: cancel}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			if dom, err := l.DomainLookupByName(name); err == nil {
				if w.running.IsZero() {
					if st, _, err := l.DomainGetState(dom, 0); err == nil && st == int32(libvirt.DomainRunning) {
						w.running = time.Now()
					}
				}
				if !w.running.IsZero() {
					if rd, _, _, _, _, err := l.DomainBlockStats(dom, "vda"); err == nil && rd > 0 {
						w.firstRead = time.Now()
						return
					}
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

// end stops the sampling; the times are valid afterwards.
func (w *domainWatch) end() {
	w.stop()
	<-w.done
}

func dialLibvirt(tb testing.TB, socket string) *libvirt.Libvirt {
	tb.Helper()
	l := libvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(socket)))
	if err := l.Connect(); err != nil {
		tb.Fatalf("libvirt %s: %v", socket, err)
	}
	tb.Cleanup(func() { l.Disconnect() })
	return l
}

var (
	rtoReadyRe    = regexp.MustCompile(`QCDP-READY disks=\d+ t=(\d+)`)
	rtoVerifiedRe = regexp.MustCompile(`QCDP-VERIFIED lo=(\d+) hi=(\d+) t=(\d+)`)
)

// guestRun is what a guest in verify mode reported on its console.
type guestRun struct {
	readyAt    time.Time     // when the rig saw QCDP-READY: the kernel has read vda (partition scan)
	verifiedAt time.Time     // when the rig saw QCDP-VERIFIED (polled every 10 ms)
	verify     time.Duration // QCDP-READY to QCDP-VERIFIED, the guest's clock: the read of the area
	sinceBoot  time.Duration // QCDP-VERIFIED's t: the guest's clock from its kernel's start
	lo, hi     uint64
}

// waitVerified follows a console log until the guest verified its disk.
func (r *foRig) waitVerified(ctx context.Context, path string) guestRun {
	r.tb.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	c := &consoleLog{path: path}
	var ready time.Duration
	var readyAt time.Time
	for {
		c.poll()
		c.mu.Lock()
		lines := slices.Clone(c.seen)
		c.mu.Unlock()
		for _, l := range lines {
			if strings.Contains(l.text, "QCDP-ERROR") {
				r.tb.Fatalf("guest %s: %s", path, l.text)
			}
			if m := rtoReadyRe.FindStringSubmatch(l.text); m != nil {
				n, _ := strconv.ParseInt(m[1], 10, 64)
				ready, readyAt = time.Duration(n), l.at
			}
			if m := rtoVerifiedRe.FindStringSubmatch(l.text); m != nil {
				lo, _ := strconv.ParseUint(m[1], 10, 64)
				hi, _ := strconv.ParseUint(m[2], 10, 64)
				t, _ := strconv.ParseInt(m[3], 10, 64)
				return guestRun{readyAt: readyAt, verifiedAt: l.at, verify: time.Duration(t) - ready, sinceBoot: time.Duration(t), lo: lo, hi: hi}
			}
		}
		select {
		case <-ctx.Done():
			b, _ := os.ReadFile(path)
			r.tb.Fatalf("no QCDP-VERIFIED on %s:\n%s", path, tailLines(string(b), 30))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// slogTime is the time format of the daemons' log lines (log/slog's text
// handler).
const slogTime = "2006-01-02T15:04:05.000Z07:00"

// replicaLogAfter returns the time of the first line of the replica
// daemon's log at or after t (at its millisecond precision) that has
// every one of words.
func (r *foRig) replicaLogAfter(t time.Time, words ...string) (time.Time, bool) {
	b, err := os.ReadFile(r.replica.LogPath)
	if err != nil {
		return time.Time{}, false
	}
	floor := t.Truncate(time.Millisecond)
	for l := range strings.SplitSeq(string(b), "\n") {
		ts, ok := strings.CutPrefix(l, "time=")
		if !ok {
			continue
		}
		at, err := time.Parse(slogTime, strings.Fields(ts)[0])
		if err != nil || at.Before(floor) {
			continue
		}
		all := true
		for _, w := range words {
			all = all && strings.Contains(l, w)
		}
		if all {
			return at, true
		}
	}
	return time.Time{}, false
}

// qemuStarted is when libvirt started a domain's QEMU at or after t, from
// the domain's log in libvirtd's log directory ("TIME: starting up ...").
func (r *foRig) qemuStarted(domain string, t time.Time) (time.Time, bool) {
	b, err := os.ReadFile(filepath.Join(r.lv.Dir, "log", "qemu", domain+".log"))
	if err != nil {
		return time.Time{}, false
	}
	floor := t.Truncate(time.Millisecond)
	for l := range strings.SplitSeq(string(b), "\n") {
		ts, _, ok := strings.Cut(l, ": starting up")
		if !ok {
			continue
		}
		at, err := time.Parse("2006-01-02 15:04:05.000-0700", ts)
		if err == nil && !at.Before(floor) {
			return at, true
		}
	}
	return time.Time{}, false
}

// rtoSettle lets what the previous run stopped finish going away (libvirt
// tearing a domain and a network down, QEMU exiting) before the next
// measured start.
func rtoSettle() { time.Sleep(2 * time.Second) }

func rtoMedian(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// rtoSecs prints a duration as seconds, or "-" for none.
func rtoSecs(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

func rtoRatio(a, b time.Duration) string {
	if a <= 0 || b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", a.Seconds()/b.Seconds())
}

// rtoFileSize is the bytes a file holds on disk (its blocks).
func rtoFileSize(path string) int64 {
	var st syscall.Stat_t
	if syscall.Stat(path, &st) != nil {
		return 0
	}
	return st.Blocks * 512
}

// chownQEMU gives a directory to the user QEMU runs as under libvirt,
// which makes its console socket there.
func chownQEMU(tb testing.TB, dir string) {
	tb.Helper()
	out, err := exec.Command("id", "-u", "libvirt-qemu").Output()
	if err != nil {
		return
	}
	uid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	out, _ = exec.Command("id", "-g", "libvirt-qemu").Output()
	gid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	if err := os.Chown(dir, uid, gid); err != nil {
		tb.Fatal(err)
	}
}

// localDomainXML turns a standby's inactive domain XML into the same
// domain on a local disk: another name, no UUID or qcdp metadata, its
// directory (overlay, console) moved to dir, the disk's NBD backing
// store gone, its NIC on network.
func localDomainXML(standbyXML, name, standbyDir, dir, network string) string {
	x := regexp.MustCompile(`<name>[^<]*</name>`).ReplaceAllString(standbyXML, "<name>"+name+"</name>")
	x = regexp.MustCompile(`\s*<uuid>[^<]*</uuid>`).ReplaceAllString(x, "")
	x = regexp.MustCompile(`(?s)\s*<metadata>.*?</metadata>`).ReplaceAllString(x, "")
	x = regexp.MustCompile(`(?s)\s*<backingStore type='network'.*?</backingStore>`).ReplaceAllString(x, "")
	x = regexp.MustCompile(`\s*<mac address='[^']*'/>`).ReplaceAllString(x, "")
	x = regexp.MustCompile(`<source network='[^']*'`).ReplaceAllString(x, "<source network='"+network+"'")
	return strings.ReplaceAll(x, standbyDir, dir)
}

// rtoMiB is n bytes in MiB, for the table.
func rtoMiB(n int64) string {
	if n >= 1<<30 && n%(1<<30) == 0 {
		return fmt.Sprintf("%d GiB", n>>30)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}

func rtoMBps(n int64, d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f MB/s", float64(n)/d.Seconds()/1e6)
}

// rtoDir is a directory under a standby's, with its owner and mode.
type rtoDir struct {
	rel      string
	mode     os.FileMode
	uid, gid int
}

// rtoDirsOf lists the directories under dir (dir itself first, as "."),
// with their owners and modes.
func rtoDirsOf(dir string) []rtoDir {
	var out []rtoDir
	filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.IsDir() {
			return nil
		}
		var st syscall.Stat_t
		if syscall.Stat(p, &st) != nil {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		out = append(out, rtoDir{rel: rel, mode: os.FileMode(st.Mode) & os.ModePerm, uid: int(st.Uid), gid: int(st.Gid)})
		return nil
	})
	return out
}

// rtoMakeDirs makes the directories of dirs under dir, owned and with the
// modes they had.
func rtoMakeDirs(tb testing.TB, dir string, dirs []rtoDir) {
	tb.Helper()
	for _, d := range dirs {
		p := filepath.Join(dir, d.rel)
		if err := os.MkdirAll(p, 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.Chmod(p, d.mode); err != nil {
			tb.Fatal(err)
		}
		if err := os.Chown(p, d.uid, d.gid); err != nil {
			tb.Fatal(err)
		}
	}
}
