package protect

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"testing"
	"time"

	"github.com/qcdp/qcdp/hypervisor"
	"github.com/qcdp/qcdp/record"
)

// declarations returns the declared disks of every Members record in the
// spool of group, in order, and what came right after the first one.
func declarations(t *testing.T, e *Engine, group string) (decls [][]record.Member, after []record.Record) {
	t.Helper()
	c := e.groups[group].Spool().Cursor(1)
	defer c.Close()
	for {
		r, err := c.Next()
		if errors.Is(err, io.EOF) {
			return decls, after
		}
		if err != nil {
			t.Fatal(err)
		}
		if r.Kind == record.Members {
			d, err := r.Declaration()
			if err != nil {
				t.Fatal(err)
			}
			decls = append(decls, d.Disks)
			continue
		}
		if len(decls) > 0 {
			r.Payload = nil
			after = append(after, r)
		}
	}
}

// TestEngineDeclaresMembers: attaching a VM declares its disks (with size,
// VM and target) before anything of its capture reaches the stream; a
// detach removes them; a restarted engine declares the membership it kept
// at once; a VM no hypervisor lists any more leaves it after a scan.
func TestEngineDeclaresMembers(t *testing.T) {
	q := newFakeQEMU(t, "node-vm1")
	src := &fakeSource{
		vms:  []hypervisor.VM{{ID: "vm1", Name: "vm1", Running: true, Source: hypervisor.SourceQMP}},
		qemu: map[string]*fakeQEMU{"vm1": q},
	}
	e, pol := newEngine(t, src)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e.scan(ctx)
	waitDisk(t, e, "g1", "vm1", "initial-sync")
	vda := record.Member{Disk: "vm1.vda", Size: 1 << 20, VM: "vm1", VMName: "vm1", Target: "vda"}
	decls, after := declarations(t, e, "g1")
	if !reflect.DeepEqual(decls, [][]record.Member{{vda}}) {
		t.Fatalf("declarations after the attach: %+v", decls)
	}
	if len(after) == 0 || after[0].Marker != record.ResyncBegin || after[0].Disk != vda.Disk {
		t.Fatalf("after the declaration: %+v, want the capture's resync-begin", after)
	}
	if err := e.Detach(ctx, "vm1", ""); err != nil {
		t.Fatal(err)
	}
	if decls, _ = declarations(t, e, "g1"); len(decls) != 2 || len(decls[1]) != 0 {
		t.Fatalf("declarations after the detach: %+v", decls)
	}
	if err := e.Attach(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	waitDisk(t, e, "g1", "vm1", "initial-sync")
	if decls, _ = declarations(t, e, "g1"); len(decls) != 3 || !reflect.DeepEqual(decls[2], []record.Member{vda}) {
		t.Fatalf("declarations after the attach again: %+v", decls)
	}

	// A restart: the kept membership is declared again at once, before
	// any scan has attached the VM.
	e.stopAll()
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	e, err := New(ctx, pol, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, src)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if decls, _ = declarations(t, e, "g1"); len(decls) == 0 || !reflect.DeepEqual(decls[len(decls)-1], []record.Member{vda}) {
		t.Fatalf("declarations after the restart: %+v", decls)
	}
	// The VM is gone from every hypervisor: a complete scan removes it.
	src.mu.Lock()
	src.vms = nil
	src.mu.Unlock()
	e.scan(ctx)
	if decls, _ = declarations(t, e, "g1"); len(decls[len(decls)-1]) != 0 {
		t.Fatalf("declarations after the VM went away: %+v", decls)
	}
	if d, ok := e.groups["g1"].Sequencer().Members(); !ok || len(d.Disks) != 0 {
		t.Fatalf("members %+v %v", d, ok)
	}
}
