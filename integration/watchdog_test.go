package integration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qcdp/qcdp/filter"
	"github.com/qcdp/qcdp/integration/harness"
)

// fakeSystemd plays systemd for a qcdp daemon as a Type=notify service
// with WatchdogSec (0: none): each start gets a NOTIFY_SOCKET of its own,
// WATCHDOG_USEC, and WATCHDOG_PID set to the daemon's own pid (systemd
// sets it between fork and exec; here a shell does, then execs); the
// start is over at READY=1, and from then on a daemon that sends no
// WATCHDOG=1 for WatchdogSec is killed with SIGKILL (systemd sends
// SIGABRT, SIGCONT, then SIGKILL after TimeoutAbortSec). STOPPING=1 ends
// the watchdog, as it does under systemd. Restart=on-failure is the
// test's to play: it starts the daemon again.
type fakeSystemd struct {
	dir      string
	watchdog time.Duration
	starts   int
	env      string // NAME=value added to every start's environment (shell-safe), or ""
}

// sdRun is one start of the daemon under fakeSystemd.
type sdRun struct {
	*harness.Proc
	watchdog time.Duration
	ready    chan struct{} // closed at READY=1
	killed   chan struct{} // closed once the watchdog killed the daemon
	done     chan struct{} // closed when the watch is over

	mu       sync.Mutex
	killedAt time.Time
	pets     int
	states   []string // every notification, in order
}

func newFakeSystemd(dir string, watchdog time.Duration) *fakeSystemd {
	return &fakeSystemd{dir: dir, watchdog: watchdog}
}

var shellSafe = regexp.MustCompile(`^[A-Za-z0-9_./+-]+$`)

// startHost starts `qcdp host` for h and waits for its READY=1.
func (sd *fakeSystemd) startHost(ctx context.Context, t *testing.T, h *hostSetup, name string) *sdRun {
	t.Helper()
	return sd.start(ctx, t, h.dir, name, h.Control, h.bin, "host", "--config", h.Config)
}

// start starts a qcdp daemon as process name and waits for its READY=1 and
// its control socket.
func (sd *fakeSystemd) start(ctx context.Context, t *testing.T, dir, name, control string, argv ...string) *sdRun {
	t.Helper()
	sd.starts++
	sock := filepath.Join(sd.dir, fmt.Sprintf("notify-%d.sock", sd.starts))
	if !shellSafe.MatchString(sock) {
		t.Fatalf("notify socket path %q needs shell quoting", sock)
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	if sd.env != "" && !shellSafe.MatchString(strings.ReplaceAll(sd.env, "=", "")) {
		t.Fatalf("environment %q needs shell quoting", sd.env)
	}
	script := fmt.Sprintf(`export NOTIFY_SOCKET=%s %s; exec "$0" "$@"`, sock, sd.env)
	if sd.watchdog > 0 {
		script = fmt.Sprintf(`export NOTIFY_SOCKET=%s WATCHDOG_USEC=%d WATCHDOG_PID=$$ %s; exec "$0" "$@"`,
			sock, sd.watchdog.Microseconds(), sd.env)
	}
	p := harness.StartProcT(t, dir, name, append([]string{"sh", "-c", script}, argv...)...)
	r := &sdRun{Proc: p, watchdog: sd.watchdog, ready: make(chan struct{}), killed: make(chan struct{}), done: make(chan struct{})}
	go r.watch(conn)
	go func() {
		// Once the daemon is gone, a last datagram behind all of its own
		// ends the watch; then the socket closes.
		<-p.Exited()
		if c, err := net.Dial("unixgram", sock); err == nil {
			c.Write([]byte(sdExited))
			c.Close()
		}
		<-r.done
		conn.Close()
	}()
	t.Cleanup(func() {
		p.Stop(10 * time.Second)
		<-r.done
	})
	select {
	case <-r.ready:
	case <-p.Exited():
		t.Fatalf("%s exited before READY=1: %v\n%s", name, p.ExitErr(), p.Report())
	case <-time.After(30 * time.Second): // systemd's TimeoutStartSec
		t.Fatalf("%s: no READY=1 within 30 s\n%s", name, p.Report())
	}
	if err := harness.WaitSocket(ctx, control, p); err != nil {
		t.Fatal(err)
	}
	return r
}

// sdExited is what the test itself sends to end a watch.
const sdExited = "TEST-DAEMON-EXITED"

// watch reads the daemon's notifications and keeps its watchdog: from
// READY=1 on, a WATCHDOG=1 is due at most WatchdogSec after the last.
func (r *sdRun) watch(conn *net.UnixConn) {
	defer close(r.done)
	buf := make([]byte, 4096)
	var lastPet time.Time // zero: no watchdog running
	ready := false
	for {
		var deadline time.Time
		if !lastPet.IsZero() {
			deadline = lastPet.Add(r.watchdog)
		}
		conn.SetReadDeadline(deadline)
		n, err := conn.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			r.mu.Lock()
			r.killedAt = time.Now()
			r.mu.Unlock()
			r.Kill()
			close(r.killed)
			return
		}
		if err != nil || string(buf[:n]) == sdExited {
			return
		}
		lines := strings.Split(string(buf[:n]), "\n")
		r.mu.Lock()
		r.states = append(r.states, string(buf[:n]))
		r.mu.Unlock()
		switch {
		case slices.Contains(lines, "STOPPING=1"):
			lastPet = time.Time{}
		case slices.Contains(lines, "READY=1") && !ready:
			ready = true
			if r.watchdog > 0 {
				lastPet = time.Now()
			}
			close(r.ready)
		case slices.Contains(lines, "WATCHDOG=1") && !lastPet.IsZero():
			lastPet = time.Now()
			r.mu.Lock()
			r.pets++
			r.mu.Unlock()
		}
	}
}

// KilledAt is when the watchdog killed the daemon (zero: it did not).
func (r *sdRun) KilledAt() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.killedAt
}

func (r *sdRun) Pets() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pets
}

func (r *sdRun) States() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.states)
}

// TestHostWatchdog hangs a real `qcdp host` (SIGSTOP) in the middle of
// guest writes into a plain QEMU's write-blocking mirror, under a fake
// systemd with WatchdogSec=3s. The daemon pets the watchdog while it is
// healthy (it is not killed during more than two intervals of writes);
// once stopped it pets no more, the supervisor kills it, its socket
// closes, QEMU's NBD client fails the request and the guest write held
// meanwhile completes: held less than WatchdogSec + 1 s (invariant 1's
// bound). The restarted daemon adopts the job, and its spool still
// rebuilds the disk.
func TestHostWatchdog(t *testing.T) {
	harness.Need(t, "qemu-system-x86_64", "qemu-img")
	const watchdog = 3 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := harness.TempDir(t)
	bin := buildQCDP(ctx, t, dir)

	vda := filepath.Join(dir, "vda.qcow2")
	if err := harness.CreateImage(ctx, vda, "qcow2", 16<<20); err != nil {
		t.Fatal(err)
	}
	if err := harness.FillPattern(ctx, vda, "qcow2", 16<<20, 1<<20, 0x20); err != nil {
		t.Fatal(err)
	}
	h := newHost(t, bin, dir, "", "")
	q := harness.Start(ctx, t, harness.Options{
		Dir: dir, Machine: "pc", Paused: true,
		Disks: []harness.Disk{{Name: "disk0", Path: vda, Format: "qcow2"}},
		Extra: []string{
			"-m", "64",
			"-qmp", "unix:" + h.QMPSocket() + ",server=on,wait=off",
			"-device", "virtio-blk-pci,drive=disk0,id=vda,share-rw=on",
		},
	})
	fa := filter.FilterNode("vm1.vda")
	var worst time.Duration
	write := func(cmd string) time.Duration {
		t.Helper()
		start := time.Now()
		if err := q.QemuIO(ctx, fa, cmd); err != nil {
			t.Fatalf("guest write %q: %v", cmd, err)
		}
		d := time.Since(start)
		worst = max(worst, d)
		return d
	}

	sd := newFakeSystemd(dir, watchdog)
	host := sd.startHost(ctx, t, h, "host-1")
	waitDisks(ctx, t, bin, h.Control, 1, filter.Syncing, host.Proc)

	// Healthy: writes for more than two watchdog intervals, none held,
	// and the daemon keeps petting.
	for i, end := 0, time.Now().Add(watchdog*5/2); time.Now().Before(end); i++ {
		if d := write(fmt.Sprintf("write -P 0x%02x %d 4096", 0x40+i%64, (i%512)*8192)); d > time.Second {
			t.Errorf("a write to a healthy daemon held %v", d)
		}
	}
	select {
	case <-host.killed:
		t.Fatalf("the watchdog killed a healthy daemon (%d WATCHDOG=1 seen): %q\n%s", host.Pets(), host.States(), host.Report())
	default:
	}
	if host.Pets() < 3 {
		t.Fatalf("%d WATCHDOG=1 in %v with WatchdogSec=%v", host.Pets(), watchdog*5/2, watchdog)
	}

	// Hang the daemon; the next guest write goes into its socket.
	if err := host.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// Writes go on until the watchdog kills the daemon: the mirror copies
	// to its target only while its job is healthy, so the first write may
	// pass (a job stopped a moment before copies nothing); one of them must
	// be held by the stopped daemon until the kill.
	// The fake systemd closes killed a moment after it kills: a write
	// may begin (and pass: the job stopped) in between, so every write's
	// span is kept and the kill must fall inside one of them.
	type span struct{ start, end time.Time }
	var spans []span
	deadline := time.After(10 * time.Second)
	spanned := false
	for i := 0; !spanned; i++ {
		start := time.Now()
		held := write(fmt.Sprintf("write -P 0xc1 %d 65536", 1048576+(i%64)*65536))
		spans = append(spans, span{start, start.Add(held)})
		select {
		case <-host.killed:
			killedAt := host.KilledAt()
			for _, sp := range spans {
				spanned = spanned || killedAt.After(sp.start) && !killedAt.After(sp.end)
			}
			if !spanned {
				last := spans[len(spans)-1]
				t.Fatalf("the daemon was killed %v after the last write began, but that write took %v and no write of %d was held by the hung daemon",
					killedAt.Sub(last.start), last.end.Sub(last.start), len(spans))
			}
		case <-deadline:
			t.Fatalf("the stopped daemon was not killed (%d WATCHDOG=1 seen)", host.Pets())
		default:
		}
	}
	killedAt := host.KilledAt()
	var held time.Duration
	for _, sp := range spans {
		if killedAt.After(sp.start) && !killedAt.After(sp.end) {
			held = sp.end.Sub(sp.start)
			t.Logf("write issued to the stopped daemon held %v; the watchdog killed it %v after the write began",
				held.Round(time.Millisecond), killedAt.Sub(sp.start).Round(time.Millisecond))
		}
	}
	if held >= watchdog+time.Second {
		t.Errorf("a guest write was held %v by a hung daemon: invariant 1's bound is WatchdogSec + 1 s = %v", held, watchdog+time.Second)
	}

	// The guest goes on without the daemon.
	for i, cmd := range []string{"write -P 0xc2 2097152 4096", "write -P 0xc3 100 100", "write -z 3145728 8192"} {
		if d := write(cmd); d > time.Second {
			t.Errorf("write %d after the kill held %v", i, d)
		}
	}

	// systemd restarts it (Restart=on-failure): it adopts the job and
	// re-copies what the hung daemon never took.
	host = sd.startHost(ctx, t, h, "host-2")
	waitDisks(ctx, t, bin, h.Control, 1, filter.Syncing, host.Proc)
	if d := write("write -P 0xc4 5000 3000"); d > time.Second {
		t.Errorf("a write after the restart held %v", d)
	}
	if err := host.Stop(10 * time.Second); err != nil {
		t.Fatalf("qcdp host did not stop cleanly on SIGTERM: %v\n%s", err, host.Report())
	}
	if st := host.States(); len(st) == 0 || st[len(st)-1] != "STOPPING=1" {
		t.Errorf("the last notification of a clean stop is %q, want STOPPING=1", st[len(st)-1:])
	}
	q.Close()

	applied := filepath.Join(dir, "applied-vda.raw")
	if out, err := exec.CommandContext(ctx, bin, "spool", "apply", "--spool", h.SpoolDir, "--disk", "vm1.vda="+applied).CombinedOutput(); err != nil {
		t.Fatalf("qcdp spool apply: %v\n%s", err, out)
	}
	if err := harness.Compare(ctx, vda, "qcow2", applied, "raw"); err != nil {
		t.Errorf("the spool does not rebuild the source across a watchdog kill: %v", err)
	}
	t.Logf("worst guest write: %v (WatchdogSec %v)", worst.Round(time.Millisecond), watchdog)
}

// TestReplicaNotifies runs `qcdp replica` as a Type=notify service: it
// sends READY=1 once it listens and STOPPING=1 when SIGTERM stops it.
func TestReplicaNotifies(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := harness.TempDir(t)
	bin := buildQCDP(ctx, t, dir)
	rs := newReplica(ctx, t, bin, dir, "")
	rctl, rcfg := rs.Control, rs.Config

	r := newFakeSystemd(dir, 0).start(ctx, t, dir, "replica", rctl, bin, "replica", "--config", rcfg)
	if err := r.Stop(10 * time.Second); err != nil {
		t.Fatalf("qcdp replica did not stop cleanly on SIGTERM: %v\n%s", err, r.Report())
	}
	<-r.done
	st := r.States()
	if len(st) < 2 || !strings.HasPrefix(st[0], "READY=1\n") || st[len(st)-1] != "STOPPING=1" {
		t.Errorf("notifications %q, want READY=1 (with a status) first and STOPPING=1 last", st)
	}
}
