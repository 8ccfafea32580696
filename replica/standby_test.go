package replica

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/nbd"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica/journal"
)

// TestOnlyExport: a standby's socket finds its own export's disks and no
// other export of the site, not even one whose id starts the same.
func TestOnlyExport(t *testing.T) {
	var cat nbd.Exports
	for _, n := range []string{"fo-aa/vm1.vda", "fo-aa/vm2.vda", "fo-aab/vm1.vda", "x1/vm1.vda", "ft-aa/vm1.vda"} {
		cat.Add(n, nil)
	}
	o := onlyExport{cat: &cat, prefix: "fo-aa/"}
	if _, ok := o.Lookup("fo-aa/vm1.vda"); !ok {
		t.Fatal("its own disk is not found")
	}
	for _, n := range []string{"fo-aab/vm1.vda", "x1/vm1.vda", "ft-aa/vm1.vda", "fo-aa", ""} {
		if _, ok := o.Lookup(n); ok {
			t.Errorf("%q is served on another export's socket", n)
		}
	}
	names := o.Names()
	slices.Sort(names)
	if !slices.Equal(names, []string{"fo-aa/vm1.vda", "fo-aa/vm2.vda"}) {
		t.Fatalf("names %v", names)
	}
}

// TestPointAtNamesNearest: a target inside a resync bracket is refused
// naming the valid points on either side; a group never in sync says so;
// a valid point comes with the membership and the definitions in effect.
func TestPointAtNamesNearest(t *testing.T) {
	ctx := context.Background()
	d := newDaemon(t)
	if _, _, _, err := d.PointAt(ctx, "acme", "nope", journal.Target{Seq: 1}); err == nil {
		t.Fatal("a group without a journal has a point")
	}
	j, err := d.journal(ctx, "acme", "g1")
	if err != nil {
		t.Fatal(err)
	}
	def := record.VMDefinition{ID: "u1", Name: "vm1", VCPUs: 1, MemoryMiB: 64, Disks: []record.VMDisk{{Disk: "vda", Target: "vda", Size: 1 << 20}}}
	mr, err := record.MembersRecord(record.Declaration{Disks: []record.Member{{Disk: "vda", Size: 1 << 20, VM: "u1"}}})
	if err != nil {
		t.Fatal(err)
	}
	dr, err := record.DefinitionRecord(def)
	if err != nil {
		t.Fatal(err)
	}
	appendT(t, j, mr, dr, // 1, 2
		record.Record{Kind: record.Data, Disk: "vda", Length: 4096, Payload: bytes.Repeat([]byte{1}, 4096)}) // 3
	if _, _, _, err := d.PointAt(ctx, "acme", "g1", journal.Target{Seq: 3}); !errors.Is(err, journal.ErrNoPoint) || !strings.Contains(err.Error(), "never in sync") {
		t.Fatalf("before the first sync: %v", err)
	}
	appendT(t, j,
		record.Record{Kind: record.Marker, Marker: record.SyncComplete, Disk: "vda"},                        // 4
		record.Record{Kind: record.Data, Disk: "vda", Length: 4096, Payload: bytes.Repeat([]byte{2}, 4096)}, // 5
		record.Record{Kind: record.Marker, Marker: record.ResyncBegin, Disk: "vda"},                         // 6
		record.Record{Kind: record.Data, Disk: "vda", Length: 4096, Payload: bytes.Repeat([]byte{3}, 4096)}, // 7
		record.Record{Kind: record.Marker, Marker: record.ResyncEnd, Disk: "vda"},                           // 8
		record.Record{Kind: record.Data, Disk: "vda", Length: 4096, Payload: bytes.Repeat([]byte{4}, 4096)}) // 9
	_, _, _, err = d.PointAt(ctx, "acme", "g1", journal.Target{Seq: 7})
	t.Logf("inside the bracket: %v", err)
	if !errors.Is(err, journal.ErrNoPoint) || !strings.Contains(err.Error(), "nearest valid points: seq 5 before it, seq 8 after it") {
		t.Fatalf("inside the resync bracket: %v", err)
	}
	p, decl, defs, err := d.PointAt(ctx, "acme", "g1", journal.Target{Seq: 9})
	if err != nil || p.Seq != 9 || len(decl.Disks) != 1 || len(defs) != 1 || defs[0].Def.Name != "vm1" || defs[0].Seq != 2 {
		t.Fatalf("a valid point: %+v %+v %+v %v", p, decl, defs, err)
	}
}

// TestOwnedExport: `qcdp unexport` cannot pull a failover's view from
// under its standbys; the failover withdraws it; an id in use is refused.
func TestOwnedExport(t *testing.T) {
	ctx := context.Background()
	d := newDaemon(t)
	j := fill(t, d, "acme", "g1", "vda")
	at := journal.Target{Seq: j.LastSeq()}
	if _, err := d.ExportAs(ctx, "x9", "acme", "g1", at, false); err == nil {
		t.Fatal("an id like the site's own (x…) was taken")
	}
	info, err := d.ExportAs(ctx, "fo-1", "acme", "g1", at, false)
	if err != nil || info.Point.Seq != j.LastSeq() {
		t.Fatalf("%+v %v", info, err)
	}
	if _, err := d.ExportAs(ctx, "fo-1", "acme", "g1", at, false); err == nil {
		t.Fatal("an export id in use was taken again")
	}
	if err := d.Unexport("fo-1"); !errors.Is(err, ErrOwnedExport) {
		t.Fatalf("unexport of a failover's view: %v", err)
	}
	if err := d.Withdraw("fo-1"); err != nil {
		t.Fatal(err)
	}
	if err := d.Withdraw("fo-1"); !errors.Is(err, ErrUnknownExport) {
		t.Fatalf("withdrawn twice: %v", err)
	}
}

// TestServeStopsStandbySockets: the daemon stops promptly while a
// standby's socket is served and a client holds a connection on it (the
// standby's QEMU), and the socket is gone after.
func TestServeStopsStandbySockets(t *testing.T) {
	ctx := context.Background()
	d, _, stop := newDaemonStop(t, `
[[tenant]]
name = "acme"
hosts = ["*"]
groups = ["g1"]
`)
	defer stop()
	j := fill(t, d, "acme", "g1", "vda")
	if _, err := d.ExportAs(ctx, "fo-1", "acme", "g1", journal.Target{Seq: j.LastSeq()}, false); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "standby.sock")
	if _, err := d.ListenNBD(sock, os.Getuid(), os.Getgid(), "fo-1"); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan error, 1)
	go func() { done <- stop() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the daemon did not stop within 15 s with a standby's socket served")
	}
	if _, err := os.Stat(sock); err == nil {
		// The listener is closed; the file may stay, but nothing answers.
		if c2, err := net.Dial("unix", sock); err == nil {
			c2.Close()
			t.Fatal("the standby socket still answers after the daemon stopped")
		}
	}
}
