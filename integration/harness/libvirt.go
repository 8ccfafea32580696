package harness

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// LibvirtSocket is where qemu:///system listens.
const LibvirtSocket = "/var/run/libvirt/libvirt-sock"

// daemon is a libvirt daemon the test started in the foreground; it is
// stopped by its PID in cleanup.
type daemon struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// reachable reports whether something accepts connections on a unix socket.
func reachable(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// startDaemon starts argv in the foreground with NOTIFY_SOCKET set and
// waits for its systemd-style READY=1, which libvirt's daemons send once
// they listen.
func startDaemon(ctx context.Context, t testing.TB, dir, name string, argv ...string) (*daemon, error) {
	t.Helper()
	notify := filepath.Join(dir, name+".notify")
	pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	defer pc.Close()
	d := &daemon{name: name, log: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	logf, err := os.Create(d.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	d.cmd = exec.Command(argv[0], argv[1:]...)
	d.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify, "LIBVIRT_LOG_OUTPUTS=3:stderr")
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		d.cmd.Wait()
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
			return nil, fmt.Errorf("%s (pid %d) did not report READY=1: %v\n%s", name, d.cmd.Process.Pid, err, d.logTail())
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
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return fmt.Sprintf("%s log %s (last lines):\n%s", d.name, d.log, strings.Join(lines, "\n"))
}

// NeedLibvirtd makes sure virtlogd and libvirtd run, installing and
// starting the ones that do not (stopped by PID when the test ends); it
// returns where their logs are, for a failing test to print.
func NeedLibvirtd(ctx context.Context, t testing.TB) (logs func() string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root to run libvirtd and define domains")
	}
	Need(t, "libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "qemu-img")
	dir, err := os.MkdirTemp("", "qcdp-libvirtd")
	if err != nil {
		t.Fatal(err)
	}
	var started []*daemon
	t.Cleanup(func() {
		if !t.Failed() {
			os.RemoveAll(dir)
		}
	})
	logs = func() string {
		if len(started) == 0 {
			return "libvirtd was already running: see its log (journalctl -u libvirtd, or LIBVIRT_LOG_OUTPUTS)"
		}
		var b strings.Builder
		for _, d := range started {
			b.WriteString(d.logTail() + "\n")
		}
		return b.String()
	}
	if !reachable("/run/libvirt/virtlogd-sock") {
		d, err := startDaemon(ctx, t, dir, "virtlogd", "virtlogd")
		if err != nil {
			t.Skipf("skipping: cannot start virtlogd: %v", err)
		}
		started = append(started, d)
	}
	if !reachable(LibvirtSocket) {
		d, err := startDaemon(ctx, t, dir, "libvirtd", "libvirtd")
		if err != nil && !reachable(LibvirtSocket) { // not another test's libvirtd either
			t.Skipf("skipping: cannot start libvirtd: %v", err)
		}
		if err == nil {
			started = append(started, d)
		}
	}
	return logs
}
