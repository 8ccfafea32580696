package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/qcdp/qcdp/integration/harness"
)

func TestAgentShutdown(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := agentShutdown(ctx, fakeAgent(t, "")); err != nil {
		t.Fatalf("guest-shutdown through a working agent: %v", err)
	}
	if err := agentShutdown(ctx, filepath.Join(t.TempDir(), "none.sock")); !errors.Is(err, ErrNoAgent) {
		t.Fatalf("no agent socket: %v, want ErrNoAgent", err)
	}
}

// A socket VM is asked to shut down with the ACPI power button
// (system_powerdown: QEMU says POWERDOWN), through the connection the
// source handed out while one is open; through its agent, a VM without
// one is ErrNoAgent.
func TestSocketsShutdownVM(t *testing.T) {
	needTools(t, map[string]string{"qemu-system-x86_64": "qemu-system-x86"})
	dir := t.TempDir()
	q := startQEMU(t, dir, filepath.Join(dir, "a.qmp"))
	defer q.stop(t)
	s := NewSockets(filepath.Join(dir, "*.qmp"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vms, err := s.ListVMs(ctx)
	if err != nil || len(vms) != 1 {
		t.Fatalf("ListVMs: %+v %v", vms, err)
	}
	vm := vms[0]
	if err := s.ShutdownVM(ctx, vm, false); err != nil {
		t.Fatalf("shut down over a connection of its own: %v\n%s", err, q.logText())
	}
	held, err := s.QMP(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	events, err := held.Subscribe(ctx, "POWERDOWN")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.ShutdownVM(ctx, vm, false); err != nil {
		t.Fatalf("shut down while the source's connection is held: %v", err)
	}
	select {
	case <-events:
	case <-ctx.Done():
		t.Fatalf("no POWERDOWN event after system_powerdown\n%s", q.logText())
	}
	actx, acancel := context.WithTimeout(ctx, 3*time.Second)
	defer acancel()
	if err := s.ShutdownVM(actx, vm, true); !errors.Is(err, ErrNoAgent) {
		t.Fatalf("shut down through the agent of a VM without one: %v, want ErrNoAgent", err)
	}
}

// A libvirt domain is asked to shut down with the ACPI power button; a
// domain with no guest agent channel, through its agent, is ErrNoAgent.
func TestLibvirtShutdownVM(t *testing.T) {
	lv := harness.NeedLibvirtd(context.Background(), t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := Connect(ctx, lv.URI)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	q2, raw := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.raw")
	createImage(t, q2, "qcow2", 16<<20, "compat=1.1")
	createImage(t, raw, "raw", 16<<20)
	name, uuid := fmt.Sprintf("qcdp-test-shutdown-%d", os.Getpid()), randomUUID(t)
	d, err := s.l.DomainCreateXML(testDomainXML(name, uuid, q2, raw), 0)
	if err != nil {
		t.Fatalf("create domain %s: %v", name, err)
	}
	t.Cleanup(func() { s.l.DomainDestroy(d) })
	vm := VM{ID: uuid, Name: name, UUID: uuid, Source: SourceLibvirt, Running: true}
	if err := s.ShutdownVM(ctx, vm, true); !errors.Is(err, ErrNoAgent) {
		t.Errorf("shut down through the agent of a domain without one: %v, want ErrNoAgent", err)
	}
	if err := s.ShutdownVM(ctx, vm, false); err != nil {
		t.Errorf("shut down with the power button: %v", err)
	}
	if err := s.ShutdownVM(ctx, VM{ID: "x", Name: "x", Source: SourceQMP}, false); !errors.Is(err, ErrWrongSource) {
		t.Errorf("shut down of a QMP-socket VM through libvirt: %v, want ErrWrongSource", err)
	}
}
