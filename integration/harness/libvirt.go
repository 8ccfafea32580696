package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// LibvirtEmulator is the QEMU that test domains name in <emulator>; the
// warm-up probes it.
const LibvirtEmulator = "/usr/bin/qemu-system-x86_64"

// Budgets of a private libvirtd's start, apart from the test's own.
const (
	// libvirtdStartBudget bounds each daemon's start up to READY=1.
	libvirtdStartBudget = 30 * time.Second
	// libvirtdWarmupBudget bounds the one-time probe of QEMU's capabilities
	// (measured on a 2-CPU VM with other tests running: 1.4 to 2 s with
	// /dev/kvm hidden, about 4 s with it).
	libvirtdWarmupBudget = 3 * time.Minute
)

// Libvirtd is a libvirtd (and the virtlogd it logs through) that one test
// started for itself, in a mount namespace of its own: there /run/libvirt,
// /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and /etc/libvirt are
// directories under Dir. It shares no socket, pid file, state, domain,
// capability cache, log or configuration with the system's libvirtd, running
// or not, nor with another test's: tests that run in parallel (go test runs
// packages in parallel) cannot see each other's domains.
//
// The test process stays in the host's namespace and reaches the daemon at
// Socket, the same socket libvirtd sees as /run/libvirt/libvirt-sock.
//
// Within its namespace /dev/kvm is hidden (an empty file mounted over it),
// so its QEMUs run TCG, as the tests' domains ask (type='qemu'). Without
// udev, /dev/kvm is root's alone: QEMU probing as libvirt-qemu (with
// CAP_DAC_OVERRIDE) finds KVM while libvirt's own check, as libvirt-qemu
// without it, does not, so libvirt 9.0 drops its capability cache at every
// lookup and probes QEMU again, about 11 times per domain start: 44 s or
// more per start instead of under a second. qemu.conf's namespaces = []
// follows: libvirt cannot move a file mounted on /dev/kvm into a domain's
// private /dev.
//
// Domain names must still be unique on the host: libvirt (without systemd)
// puts a domain's QEMU in the cgroup machine/qemu-ID-NAME.libvirt-qemu, and
// IDs start at 1 in every libvirtd.
type Libvirtd struct {
	Dir    string // its directories and logs, kept when the test fails
	Socket string // qemu:///system's socket, as the test sees it
	URI    string // qemu:///system on Socket, for virsh and qcdp's libvirt_uri

	daemons []*daemon
}

// libvirtMounts maps each directory under Libvirtd.Dir to what libvirt
// knows it as.
var libvirtMounts = []struct{ dir, target string }{
	{"run", "/run/libvirt"},
	{"lib", "/var/lib/libvirt"},
	{"cache", "/var/cache/libvirt"},
	{"log", "/var/log/libvirt"},
	{"etc", "/etc/libvirt"},
}

// libvirtConfig is the private /etc/libvirt: libvirt's defaults, no
// networks, storage pools, domains or hooks of the host's.
var libvirtConfig = map[string]string{
	"libvirtd.conf": "# A test's own libvirtd (qcdp integration/harness): defaults.\n",
	"virtlogd.conf": "# A test's own virtlogd (qcdp integration/harness): defaults.\n",
	"qemu.conf": "# A test's own libvirtd (qcdp integration/harness).\n" +
		"# /dev/kvm is a file mounted over the device here, which libvirt cannot\n" +
		"# move into a domain's private /dev.\n" +
		"namespaces = []\n",
}

// nsMountScript runs in a new mount namespace (whose mounts Go has made
// private): it bind-mounts each "source target" pair of arguments up to
// "--", creating a missing target directory, then execs the rest.
const nsMountScript = `set -e
while [ "$1" != -- ]; do
	[ -e "$2" ] || mkdir -p "$2"
	mount --bind "$1" "$2"
	shift 2
done
shift
exec "$@"`

// NeedLibvirtd starts a libvirtd of the test's own (see Libvirtd), installing
// libvirt and QEMU when missing, and waits until it has probed QEMU's
// capabilities, in a warm-up step with its own budget so that the test's
// budget is for the test. The daemons are stopped by PID in t.Cleanup, after
// destroying any domain the test left in them. When the test fails it logs
// where to look and keeps Dir.
//
// ctx bounds the whole start; the steps have their own budgets within it.
func NeedLibvirtd(ctx context.Context, t testing.TB) *Libvirtd {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to run a libvirtd of its own and define domains")
	}
	Need(t, "libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "qemu-img")
	warnStale(t)
	dir, err := os.MkdirTemp("", "qcdp-libvirtd-")
	if err != nil {
		t.Fatal(err)
	}
	l := &Libvirtd{Dir: dir, Socket: filepath.Join(dir, "run", "libvirt-sock")}
	l.URI = "qemu:///system?socket=" + l.Socket
	// Cleanups run last first: this one runs after the daemons are stopped.
	t.Cleanup(func() {
		l.stopStrays(t)
		if t.Failed() {
			t.Logf("libvirtd of this test (kept):\n%s", l.Logs())
			return
		}
		os.RemoveAll(dir)
	})

	// libvirt-qemu must traverse the directories libvirtd's state is in.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"/bin/sh", "-c", nsMountScript, "sh"}
	for _, m := range libvirtMounts {
		if err := os.Mkdir(filepath.Join(dir, m.dir), 0o755); err != nil {
			t.Fatal(err)
		}
		args = append(args, filepath.Join(dir, m.dir), m.target)
	}
	for name, text := range libvirtConfig {
		if err := os.WriteFile(filepath.Join(dir, "etc", name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat("/dev/kvm"); err == nil {
		nokvm := filepath.Join(dir, "nokvm")
		if err := os.WriteFile(nokvm, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, nokvm, "/dev/kvm")
	}
	args = append(args, "--", "virtlogd", "--pid-file", filepath.Join(dir, "virtlogd.pid"))

	// virtlogd makes the namespace; libvirtd joins it.
	sctx, cancel := context.WithTimeout(ctx, libvirtdStartBudget)
	defer cancel()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGTERM}
	d, err := startDaemon(sctx, t, dir, "virtlogd", cmd)
	if errors.Is(err, errNoStart) {
		t.Skipf("skipping: cannot start virtlogd in a mount namespace of its own: %v", err)
	}
	if err != nil {
		t.Fatal(err) // with its log; the cleanup says where the rest is
	}
	l.daemons = append(l.daemons, d)

	sctx, cancel = context.WithTimeout(ctx, libvirtdStartBudget)
	defer cancel()
	cmd = exec.Command("nsenter", "--mount=/proc/"+strconv.Itoa(d.cmd.Process.Pid)+"/ns/mnt", "--",
		"libvirtd", "--pid-file", filepath.Join(dir, "libvirtd.pid"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	d, err = startDaemon(sctx, t, dir, "libvirtd", cmd)
	if err != nil {
		t.Fatal(err) // with its log; the cleanup says where the rest is
	}
	l.daemons = append(l.daemons, d)
	t.Cleanup(func() { l.destroyDomains(t) })

	wctx, cancel := context.WithTimeout(ctx, libvirtdWarmupBudget)
	defer cancel()
	t.Logf("warm-up: libvirtd %s (pid %d) probes QEMU's capabilities once (%v allowed)", dir, d.cmd.Process.Pid, libvirtdWarmupBudget)
	start := time.Now()
	if _, err := l.Virsh(wctx, "domcapabilities", "--virttype", "qemu", "--emulatorbin", LibvirtEmulator, "--arch", "x86_64"); err != nil {
		t.Fatalf("warm-up: libvirtd did not probe %s within %v: %v", LibvirtEmulator, libvirtdWarmupBudget, err)
	}
	t.Logf("warm-up: done in %v", time.Since(start).Round(time.Millisecond))
	return l
}

// Virsh runs virsh against the test's libvirtd.
func (l *Libvirtd) Virsh(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "virsh", append([]string{"-c", l.URI}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("virsh %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Logs says where to look: the daemons' logs (with their last lines), the
// domains' QEMU logs, and how to reach the daemon while it runs.
func (l *Libvirtd) Logs() string {
	var b strings.Builder
	fmt.Fprintf(&b, "libvirtd dir %s (its /run/libvirt is run/, /var/lib/libvirt lib/, /var/log/libvirt log/)\n", l.Dir)
	fmt.Fprintf(&b, "connect while it runs: virsh -c '%s'\n", l.URI)
	for _, d := range l.daemons {
		b.WriteString(d.logTail() + "\n")
	}
	logs, _ := filepath.Glob(filepath.Join(l.Dir, "log", "qemu", "*.log"))
	for _, q := range logs {
		text, _ := os.ReadFile(q)
		fmt.Fprintf(&b, "QEMU log %s (last lines):\n%s\n", q, tail(string(text), 20))
	}
	return b.String()
}

// destroyDomains destroys (and undefines) the domains a test left in its
// libvirtd: all of them are the test's, and libvirtd leaves QEMU running
// when it stops.
func (l *Libvirtd) destroyDomains(t testing.TB) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, step := range []struct{ list, verb string }{{"--state-running", "destroy"}, {"--persistent", "undefine"}} {
		out, err := l.Virsh(ctx, "list", "--all", "--name", step.list)
		if err != nil {
			t.Errorf("list the domains left in the test's libvirtd: %v", err)
			return
		}
		for _, name := range strings.Fields(out) {
			t.Logf("%s domain %s, left in the test's libvirtd", step.verb, name)
			if _, err := l.Virsh(ctx, step.verb, name); err != nil {
				t.Error(err)
			}
		}
	}
}

// stopStrays kills the QEMUs the test's libvirtd started that are still
// running once it has stopped (their pid files are in its run/qemu), and
// fails the test: nothing it started may outlive it.
func (l *Libvirtd) stopStrays(t testing.TB) {
	files, _ := filepath.Glob(filepath.Join(l.Dir, "run", "qemu", "*.pid"))
	for _, f := range files {
		if pid := pidIn(f); running(pid, "qemu-system") {
			t.Errorf("QEMU pid %d (%s) outlived the test's libvirtd: killing it", pid, f)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// warnStale says which QEMUs an earlier test's libvirtd left running: a test
// binary killed (by go test's -timeout, say) runs no cleanup; its daemons
// end with it (Pdeathsig) but libvirt's QEMUs do not. They are not this
// test's to stop.
func warnStale(t testing.TB) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "qcdp-libvirtd-*"))
	for _, dir := range dirs {
		if running(pidIn(filepath.Join(dir, "libvirtd.pid")), "libvirtd") {
			continue // another test's, in use
		}
		files, _ := filepath.Glob(filepath.Join(dir, "run", "qemu", "*.pid"))
		for _, f := range files {
			if pid := pidIn(f); running(pid, "qemu-system") {
				t.Logf("warning: QEMU pid %d (%s) outlived the test that started it; stop it with kill %d", pid, f, pid)
			}
		}
	}
}

// pidIn reads a pid file; 0 when there is none.
func pidIn(file string) int {
	b, err := os.ReadFile(file)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0
	}
	return pid
}

// running reports whether pid runs a command whose name starts with comm.
func running(pid int, comm string) bool {
	if pid == 0 {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return err == nil && strings.HasPrefix(string(b), comm)
}

// daemon is a libvirt daemon the test started in the foreground; it is
// stopped by its PID in cleanup.
type daemon struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// errNoStart is returned by startDaemon when the process could not be
// started at all.
var errNoStart = errors.New("harness: cannot start")

// startDaemon starts cmd in the foreground with its output in dir/name.log
// and NOTIFY_SOCKET set, stops it by PID in t.Cleanup, and waits for its
// systemd-style READY=1, which libvirt's daemons send once they listen.
func startDaemon(ctx context.Context, t testing.TB, dir, name string, cmd *exec.Cmd) (*daemon, error) {
	t.Helper()
	notify := filepath.Join(dir, name+".notify")
	pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	defer pc.Close()
	d := &daemon{name: name, cmd: cmd, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	logf, err := os.Create(d.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify, "LIBVIRT_LOG_OUTPUTS=3:stderr")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%w %s: %v", errNoStart, name, err)
	}
	go func() {
		cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(d.stop)
	stop := context.AfterFunc(ctx, func() { pc.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	go func() { // a daemon that exits never sends READY=1
		select {
		case <-d.done:
			pc.SetReadDeadline(time.Unix(1, 0))
		case <-ctx.Done():
		}
	}()
	buf := make([]byte, 4096)
	for {
		n, _, err := pc.ReadFrom(buf)
		if err != nil {
			select {
			case <-d.done:
				err = fmt.Errorf("it exited: %v", cmd.ProcessState)
			default:
				if ctx.Err() != nil {
					err = ctx.Err()
				}
			}
			return nil, fmt.Errorf("%s (pid %d) did not report READY=1: %v\n%s", name, cmd.Process.Pid, err, d.logTail())
		}
		if strings.Contains(string(buf[:n]), "READY=1") {
			return d, nil
		}
	}
}

func (d *daemon) stop() {
	select {
	case <-d.done:
		return
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		d.cmd.Process.Kill()
		<-d.done
	}
}

func (d *daemon) logTail() string {
	b, _ := os.ReadFile(d.log)
	return fmt.Sprintf("%s (pid %d) log %s (last lines):\n%s", d.name, d.cmd.Process.Pid, d.log, tail(string(b), 30))
}
