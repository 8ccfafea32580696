package hypervisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/qcdp/qcdp/proc"
	"github.com/qcdp/qcdp/qmp"
	"github.com/qcdp/qcdp/qmp/qmptest"
	"golang.org/x/sys/unix"
)

// TestQEMUProcess: QEMU's vCPU thread ids name its process, which wins
// over the QMP socket's peer (a relay in front of QEMU's socket would be
// that peer); vCPUs of two processes, or a thread that does
// not exist, are refused; with no vCPU named, the socket's peer is the
// answer. The fake QEMU runs in this test process, so the peer is this
// process.
func TestQEMUProcess(t *testing.T) {
	self, err := proc.Lookup(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	other := exec.Command("sleep", "60")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer other.Wait()
	defer other.Process.Kill()
	otherProc, err := proc.Lookup(other.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	tids := make(chan int)
	release := make(chan struct{})
	defer close(release)
	go func() { // a second thread of this process
		runtime.LockOSThread()
		tids <- unix.Gettid()
		<-release
	}()
	thread := <-tids

	cpus := func(ids ...int) []string {
		var out []map[string]any
		for i, id := range ids {
			out = append(out, map[string]any{"cpu-index": i, "thread-id": id, "qom-path": fmt.Sprintf("/machine/unattached/device[%d]", i), "target": "x86_64"})
		}
		if out == nil {
			out = []map[string]any{}
		}
		return []string{qmptest.Return(out)}
	}
	for _, tc := range []struct {
		name  string
		reply []string
		want  proc.Process
		err   error
	}{
		{"vCPU threads of this process", cpus(os.Getpid(), thread), self, nil},
		{"vCPU thread of another process than the socket's", cpus(other.Process.Pid), otherProc, nil},
		{"vCPUs of two processes", cpus(os.Getpid(), other.Process.Pid), proc.Process{}, ErrNoProcess},
		{"a thread that does not exist", cpus(1 << 30), proc.Process{}, ErrNoProcess},
		{"no vCPU: the socket's peer", cpus(), self, nil},
		{"no query-cpus-fast: the socket's peer", []string{qmptest.Error("CommandNotFound", "The command query-cpus-fast has not been found")}, self, nil},
		{"another error", []string{qmptest.Error("GenericError", "no")}, proc.Process{}, ErrNoProcess},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := qmptest.NewServer(t, func(c qmptest.Command) []string {
				if c.Name == "query-cpus-fast" {
					return tc.reply
				}
				return []string{qmptest.Return(map[string]any{})}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			q, err := qmp.Dial(ctx, srv.Path())
			if err != nil {
				t.Fatal(err)
			}
			defer q.Close()
			got, err := QEMUProcess(ctx, q)
			if got != tc.want || !errors.Is(err, tc.err) {
				t.Fatalf("QEMUProcess = %v, %v; want %v, %v", got, err, tc.want, tc.err)
			}
		})
	}
}

// TestQEMUProcessRealQEMU: a real QEMU with two vCPUs, whose QMP socket the
// test created and handed over, is found as itself through the QMP socket
// source.
func TestQEMUProcessRealQEMU(t *testing.T) {
	needTools(t, map[string]string{"qemu-system-x86_64": "qemu-system-x86"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	socket := filepath.Join(dir, "vm.qmp")
	qv := startQEMU(t, dir, socket, "-smp", "2")
	src := NewSockets(socket)
	vms, err := src.ListVMs(ctx)
	if err != nil || len(vms) != 1 {
		t.Fatalf("ListVMs = %+v, %v\n%s", vms, err, qv.logText())
	}
	q, err := src.QMP(ctx, vms[0])
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	want, err := proc.Lookup(qv.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	got, err := QEMUProcess(ctx, q)
	if err != nil || got != want {
		t.Fatalf("QEMUProcess = %v, %v; want QEMU, %v", got, err, want)
	}
}

// cmdlineHas reports whether process p's command line has the argument arg.
func cmdlineHas(p proc.Process, arg string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.PID))
	return err == nil && bytes.Contains(append([]byte{0}, b...), []byte("\x00"+arg+"\x00"))
}
