package protect

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/hypervisor"
	"github.com/qcdp/qcdp/qmp"
	"github.com/qcdp/qcdp/qmp/qmptest"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/shipper/spool"
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

// TestDeclarationInsideTheCopyBracket: the chaos suite's findings F2 and F3.
// A re-attached disk's bracket opens before its re-declaration (a point at
// the declaration would be stamped after writes the stream lacks), and a
// new disk's right after its first declaration, before its capture job
// copies anything.
func TestDeclarationInsideTheCopyBracket(t *testing.T) {
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
	// The copy ends: the bracket closes and the disk is in sync.
	q.srv.Send(qmptest.Event(qmp.EventBlockJobReady, map[string]any{"device": "qcdp-vm1.vda", "type": "mirror", "len": 1 << 20, "offset": 1 << 20, "speed": 0}))
	waitDisk(t, e, "g1", "vm1", "syncing")
	// The VM restarts (QEMU ends the job as it goes; the new QEMU has
	// none): the disk stays declared, and a scan attaches it again.
	q.mu.Lock()
	delete(q.jobs, "qcdp-vm1.vda")
	q.mu.Unlock()
	q.srv.Send(qmptest.Event(qmp.EventShutdown, map[string]any{"guest": true, "reason": "guest-reset"}),
		qmptest.Event(qmp.EventBlockJobCancelled, map[string]any{"device": "qcdp-vm1.vda", "type": "mirror", "len": 1 << 20, "offset": 1 << 20, "speed": 0}))
	waitDisk(t, e, "g1", "vm1", "detached")
	e.scan(ctx)
	waitDisk(t, e, "g1", "vm1", "initial-sync")
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	sp, err := spool.Open(ctx, spool.Options{Dir: pol.SpoolDir(pol.Groups()[0]), Group: "g1"})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	c := sp.Cursor(1)
	defer c.Close()
	var got []string
	for {
		r, err := c.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case r.Kind == record.Members:
			got = append(got, "members")
		case r.Kind == record.Marker && r.Disk == "vm1.vda":
			got = append(got, r.Marker.String())
		}
	}
	// First attach: declared, then the bracket; the detach ends the job
	// inside it; the re-attach opens a bracket before re-declaring (the
	// old one is closed by nothing: a new one is the same bracket).
	s := strings.Join(got, " ")
	first := strings.Index(s, "members")
	if first < 0 || !strings.HasPrefix(s[first:], "members resync-begin") {
		t.Fatalf("the first declaration is not followed at once by the disk's resync-begin: %s", s)
	}
	if strings.Count(s, "members") < 2 {
		t.Fatalf("the re-attach did not declare the disk again: %s", s)
	}
	if !strings.Contains(s, "members resync-begin resync-end sync-complete") {
		t.Fatalf("the first copy was not bracketed and marked in sync: %s", s)
	}
	last := strings.LastIndex(s, "members")
	before := strings.TrimSpace(s[:last])
	if !strings.HasSuffix(before, "resync-begin") {
		t.Fatalf("the re-declaration is not inside an open bracket of the disk (a point there would miss what the VM wrote while nothing captured it): %s", s)
	}
}
