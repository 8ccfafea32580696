package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qcdp/qcdp/qmp"
)

// needTools skips the test when a program it runs is missing.
func needTools(t *testing.T, tools map[string]string) {
	t.Helper()
	for tool, pkg := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: %s not found; `apt-get install %s`", tool, pkg)
		}
	}
}

func createImage(t *testing.T, path, format string, size int64, opts ...string) {
	t.Helper()
	args := []string{"create", "-q", "-f", format}
	for _, o := range opts {
		args = append(args, "-o", o)
	}
	args = append(args, path, fmt.Sprint(size))
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// qemuVM is a qemu-system-x86_64 child (TCG, no guest) whose QMP socket the
// test listens on before QEMU starts, so QEMU is reachable the moment it runs.
type qemuVM struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

func startQEMU(t *testing.T, dir, socket string, args ...string) *qemuVM {
	t.Helper()
	os.Remove(socket)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	f, err := ln.(*net.UnixListener).File()
	ln.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	q := &qemuVM{log: filepath.Join(dir, fmt.Sprintf("qemu-%d.log", time.Now().UnixNano())), done: make(chan struct{})}
	logf, err := os.Create(q.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	argv := append([]string{"-accel", "tcg", "-M", "pc", "-nodefaults", "-display", "none", "-m", "64", "-S",
		"-chardev", "socket,id=qmp,fd=3,server=on,wait=off", "-mon", "chardev=qmp,mode=control"}, args...)
	q.cmd = exec.Command("qemu-system-x86_64", argv...)
	q.cmd.Stdout, q.cmd.Stderr = logf, logf
	q.cmd.ExtraFiles = []*os.File{f}
	if err := q.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		q.err = q.cmd.Wait()
		close(q.done)
	}()
	t.Cleanup(func() { q.stop(t) })
	return q
}

// stop ends QEMU (SIGTERM, then SIGKILL) and waits for it.
func (q *qemuVM) stop(t *testing.T) {
	select {
	case <-q.done:
		return
	default:
	}
	q.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-q.done:
	case <-time.After(10 * time.Second):
		q.cmd.Process.Kill()
		<-q.done
	}
}

func (q *qemuVM) logText() string {
	b, _ := os.ReadFile(q.log)
	return fmt.Sprintf("QEMU log %s:\n%s", q.log, b)
}

// TestSocketsFindDisks runs a real QEMU with a qcow2 v3 and a raw disk
// behind virtio-blk devices and checks what the QMP socket source reports,
// with and without a capture filter on top, and across a restart.
func TestSocketsFindDisks(t *testing.T) {
	needTools(t, map[string]string{"qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	q2, raw := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.raw")
	createImage(t, q2, "qcow2", 64<<20, "compat=1.1")
	createImage(t, raw, "raw", 32<<20)
	socket := filepath.Join(dir, "101.qmp")
	const uuid = "5b0c7b5e-2a4c-4bd6-9d0e-1b7c1c0a0101"
	args := []string{"-name", "web1", "-uuid", uuid,
		"-blockdev", "driver=file,node-name=a-file,filename=" + q2,
		"-blockdev", "driver=qcow2,node-name=a-fmt,file=a-file",
		"-blockdev", "driver=file,node-name=b-file,filename=" + raw,
		"-blockdev", "driver=raw,node-name=b-fmt,file=b-file",
		"-device", "virtio-blk-pci,drive=a-fmt,id=disk0",
		"-device", "virtio-blk-pci,drive=b-fmt,id=disk1"}
	q := startQEMU(t, dir, socket, args...)

	src := NewSockets(filepath.Join(dir, "*.qmp"))
	vms, err := src.ListVMs(ctx)
	if err != nil || len(vms) != 1 {
		t.Fatalf("ListVMs = %+v, %v\n%s", vms, err, q.logText())
	}
	vm := vms[0]
	want := VM{ID: "101", Name: "web1", UUID: uuid, Source: SourceQMP, Running: true, Socket: socket}
	if fmt.Sprint(vm) != fmt.Sprint(want) {
		t.Fatalf("VM = %+v, want %+v", vm, want)
	}

	wantDisks := []Disk{
		{ID: "101/disk0", Target: "disk0", Node: "a-fmt", Format: "qcow2", Qcow2Version: 3, Size: 64 << 20, File: q2},
		{ID: "101/disk1", Target: "disk1", Node: "b-fmt", Format: "raw", Size: 32 << 20, File: raw},
	}
	checkDisks := func(when string) {
		t.Helper()
		disks, err := src.Disks(ctx, vm)
		if err != nil {
			t.Fatalf("%s: Disks: %v\n%s", when, err, q.logText())
		}
		if fmt.Sprint(disks) != fmt.Sprint(wantDisks) {
			t.Fatalf("%s: Disks =\n %+v\nwant\n %+v", when, disks, wantDisks)
		}
	}
	checkDisks("first start")

	// A capture mirror puts mirror_top on the disk; Node stays the format node.
	c, err := src.QMP(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.BlockdevAdd(ctx, map[string]any{"driver": "null-co", "node-name": "tgt", "size": 64 << 20}); err != nil {
		t.Fatal(err)
	}
	if err := c.BlockdevMirror(ctx, qmp.MirrorArgs{JobID: "cap", Device: "a-fmt", Target: "tgt", Sync: qmp.SyncNone,
		FilterNodeName: "cap-top", CopyMode: qmp.CopyModeWriteBlocking}); err != nil {
		t.Fatal(err)
	}
	c.Close() // one connection at a time, as under Proxmox
	checkDisks("under a mirror filter")

	q.stop(t)
	q = startQEMU(t, dir, socket, args...)
	vms, err = src.ListVMs(ctx)
	if err != nil || len(vms) != 1 || vms[0].ID != "101" {
		t.Fatalf("after restart: ListVMs = %+v, %v\n%s", vms, err, q.logText())
	}
	checkDisks("after restart")
	q.stop(t)

	// The socket file outlives QEMU: the VM is there, not running.
	vms, err = src.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vms {
		if v.Running {
			t.Errorf("after QEMU exit: %+v is running", v)
		}
	}
	if _, err := src.QMP(ctx, vm); !errors.Is(err, ErrNotRunning) {
		t.Errorf("QMP after QEMU exit: %v, want ErrNotRunning", err)
	}
}
