package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Proc is a process the harness started, with its stdout and stderr in a
// log file. Only Stop ends it, by PID.
type Proc struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error       // valid once exited is closed
	killed  atomic.Bool // ended by Kill: expected
}

// StartProc starts argv with its output in dir/name.log.
func StartProc(dir, name string, argv ...string) (*Proc, error) {
	return startProc(dir, name, nil, argv)
}

// startProc starts argv with its output in dir/name.log. If onLine is not
// nil, stdout goes through a pipe and each line is also passed to onLine;
// exec's copying goroutine ends before Wait returns.
func startProc(dir, name string, onLine func(string), argv []string) (*Proc, error) {
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("harness: start %s: %w", name, err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if onLine != nil {
		cmd.Stdout = &lineWriter{w: logf, onLine: onLine}
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("harness: start %s (%s): %w", name, argv[0], err)
	}
	p := &Proc{Name: name, LogPath: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()
	return p, nil
}

// lineWriter copies to w and hands each complete line to onLine.
type lineWriter struct {
	w       io.Writer
	onLine  func(string)
	partial []byte
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.onLine(strings.TrimRight(string(l.partial[:i]), "\r"))
		l.partial = l.partial[i+1:]
	}
	return l.w.Write(p)
}

// PID is the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Exited is closed when the process has ended.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// ExitErr is how the process ended; call it after Exited is closed.
func (p *Proc) ExitErr() error { return p.waitErr }

// Signal sends sig to the process if it still runs.
func (p *Proc) Signal(sig os.Signal) error {
	select {
	case <-p.exited:
		return nil
	default:
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("harness: signal %s (pid %d): %w", p.Name, p.PID(), err)
	}
	return nil
}

// Wait waits for the process to end or ctx to end.
func (p *Proc) Wait(ctx context.Context) error {
	select {
	case <-p.exited:
		return p.waitErr
	case <-ctx.Done():
		return fmt.Errorf("harness: wait for %s (pid %d): %w", p.Name, p.PID(), ctx.Err())
	}
}

// Stop sends SIGTERM, waits up to grace for the process to end, then sends
// SIGKILL. It returns how the process ended when it ended on its own or by
// SIGTERM with a failure status.
func (p *Proc) Stop(grace time.Duration) error {
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	select {
	case <-p.exited:
		return p.exitStatus()
	case <-time.After(grace):
	}
	p.cmd.Process.Kill()
	<-p.exited
	return fmt.Errorf("harness: %s (pid %d) ignored SIGTERM for %v and was killed", p.Name, p.PID(), grace)
}

// Kill sends SIGKILL, as a test's fault injection, and waits for the
// process to end; its end then counts as expected.
func (p *Proc) Kill() {
	p.killed.Store(true)
	p.cmd.Process.Kill()
	<-p.exited
}

// exitStatus is nil for a clean exit, an exit by SIGTERM, or by Kill.
func (p *Proc) exitStatus() error {
	var ee *exec.ExitError
	if errors.As(p.waitErr, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() &&
			(ws.Signal() == syscall.SIGTERM || ws.Signal() == syscall.SIGKILL && p.killed.Load()) {
			return nil
		}
	}
	if p.waitErr != nil {
		return fmt.Errorf("harness: %s (pid %d): %w", p.Name, p.PID(), p.waitErr)
	}
	return nil
}

// Log returns the last n lines of the process's log.
func (p *Proc) Log(n int) string {
	b, err := os.ReadFile(p.LogPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", p.LogPath, err)
	}
	return tail(string(b), n)
}

// Report says where the process's log is and what it ends with.
func (p *Proc) Report() string {
	return fmt.Sprintf("--- %s (pid %d) log %s:\n%s", p.Name, p.PID(), p.LogPath, p.Log(40))
}

// WaitSocket waits until a unix socket file appears at path, polling with
// a short bounded backoff (a process announces its socket no other way).
// It does not connect: a probe connection would show up in the server's
// log as a client that went away. It fails early if p ends first; p may be
// nil.
func WaitSocket(ctx context.Context, path string, p *Proc) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	delay := time.Millisecond
	var exited <-chan struct{}
	if p != nil {
		exited = p.exited
	}
	for {
		if fi, err := os.Stat(path); err == nil && fi.Mode().Type() == fs.ModeSocket {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("harness: %s exited before its socket %s appeared: %v\n%s", p.Name, path, p.waitErr, p.Log(20))
		case <-ctx.Done():
			return fmt.Errorf("harness: socket %s: %w", path, ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// StartProcT starts a process for a test, stops it in t.Cleanup and prints
// its log when the test failed.
func StartProcT(t testing.TB, dir, name string, argv ...string) *Proc {
	t.Helper()
	p, err := StartProc(dir, name, argv...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(10 * time.Second); err != nil {
			t.Errorf("stop %s: %v", name, err)
		}
		if t.Failed() {
			t.Log(p.Report())
		}
	})
	return p
}

// TempDir makes a directory with a short path (unix socket paths are
// limited to 107 bytes), removed in t.Cleanup.
func TempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "qcdp-it-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() && os.Getenv("QCDP_KEEP") != "" {
			t.Logf("kept %s (QCDP_KEEP set)", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}
