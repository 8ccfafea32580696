package shipper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/qcdp/qcdp/nbd"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/shipper/spool"
)

// readKeep returns the records from seq from on, payloads kept.
func readKeep(t *testing.T, sp *spool.Spool, from uint64) []record.Record {
	t.Helper()
	c := sp.Cursor(from)
	defer c.Close()
	var out []record.Record
	for {
		r, err := c.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		r.Payload = append([]byte(nil), r.Payload...)
		out = append(out, r)
	}
}

func declOf(t *testing.T, r record.Record) []record.Member {
	t.Helper()
	if r.Kind != record.Members {
		t.Fatalf("seq %d is a %v record, want members", r.Seq, r.Kind)
	}
	d, err := r.Declaration()
	if err != nil {
		t.Fatal(err)
	}
	return d.Disks
}

// TestDeclare: the stream carries the group's whole membership at every
// change, before any record of a disk it adds; records of undeclared disks
// are refused once the group has declared, and a refused write's bracket
// waits for its disk's declaration.
func TestDeclare(t *testing.T) {
	ctx := context.Background()
	sp := openSpool(t, 0)
	seq := NewSequencer(sp)
	vda, _ := seq.Export("vda", 1<<20)
	vdb, _ := seq.Export("vdb", 1<<20)
	p := make([]byte, 512)
	p[0] = 1
	// Before any declaration, every disk is sequenced as it always was.
	if err := vdb.WriteAt(ctx, p, 0); err != nil {
		t.Fatal(err)
	}
	if _, ok := seq.Members(); ok {
		t.Fatal("a membership before any declaration")
	}
	a := record.Member{Disk: "vda", Size: 1 << 20, VMName: "web", Target: "vda"}
	s1, err := seq.Declare("vm-1", []record.Member{a})
	if err != nil || s1 != 2 {
		t.Fatalf("Declare: seq %d, %v", s1, err)
	}
	a.VM = "vm-1"
	if err := vda.WriteAt(ctx, p, 0); err != nil {
		t.Fatal(err)
	}
	err = vdb.WriteAt(ctx, p, 0)
	if !errors.Is(err, nbd.EIO) || !errors.Is(err, ErrUndeclared) || !errors.Is(err, record.ErrMembership) {
		t.Fatalf("a write of an undeclared disk: %v, want EIO wrapping ErrUndeclared", err)
	}
	if _, err := seq.MarkDisk(record.SyncComplete, "vdb"); !errors.Is(err, ErrUndeclared) {
		t.Fatalf("a marker of an undeclared disk: %v", err)
	}
	if _, err := seq.Mark(record.UserBookmark, "b"); err != nil { // owes nothing of vdb yet
		t.Fatal(err)
	}
	b := record.Member{Disk: "vdb", Size: 2 << 20, Target: "vdb"}
	s2, err := seq.Declare("vm-2", []record.Member{b})
	if err != nil {
		t.Fatal(err)
	}
	b.VM = "vm-2"
	if err := vdb.WriteAt(ctx, p, 0); err != nil {
		t.Fatal(err)
	}
	got := readKeep(t, sp, 1)
	want := []struct {
		kind   record.Kind
		marker record.MarkerKind
		disk   string
	}{
		{record.Data, 0, "vdb"}, {record.Members, 0, ""}, {record.Data, 0, "vda"}, {record.Marker, record.UserBookmark, ""},
		{record.Members, 0, ""}, {record.Marker, record.ResyncBegin, "vdb"}, {record.Data, 0, "vdb"},
	}
	if len(got) != len(want) {
		t.Fatalf("%d records: %+v", len(got), got)
	}
	for i, w := range want {
		if got[i].Kind != w.kind || got[i].Marker != w.marker || got[i].Disk != w.disk {
			t.Fatalf("record %d: %v %v %q, want %v %v %q", i+1, got[i].Kind, got[i].Marker, got[i].Disk, w.kind, w.marker, w.disk)
		}
	}
	if s2 != got[4].Seq {
		t.Fatalf("Declare returned %d, the record is %d", s2, got[4].Seq)
	}
	if d := declOf(t, got[1]); !reflect.DeepEqual(d, []record.Member{a}) {
		t.Fatalf("first declaration %+v", d)
	}
	if d := declOf(t, got[4]); !reflect.DeepEqual(d, []record.Member{a, b}) {
		t.Fatalf("second declaration %+v", d)
	}
	// A VM that leaves takes its disks with it; Undeclare takes one.
	if _, err := seq.Declare("vm-2", nil); err != nil {
		t.Fatal(err)
	}
	if d, ok := seq.Members(); !ok || !reflect.DeepEqual(d.Disks, []record.Member{a}) {
		t.Fatalf("members after vm-2 left: %+v", d)
	}
	if _, err := seq.Undeclare("vda"); err != nil {
		t.Fatal(err)
	}
	if d, ok := seq.Members(); !ok || len(d.Disks) != 0 {
		t.Fatalf("members after vda left: %+v %v", d, ok)
	}
	if err := vda.WriteAt(ctx, p, 0); !errors.Is(err, ErrUndeclared) {
		t.Fatalf("a write of a disk that left: %v", err)
	}
}

func TestDeclareRefuses(t *testing.T) {
	seq := NewSequencer(openSpool(t, 0))
	if _, err := seq.Declare("vm-1", []record.Member{{Disk: "vda", Size: 512}}); err != nil {
		t.Fatal(err)
	}
	last := seq.next
	var many []record.Member
	for i := range record.MaxGroupDisks {
		many = append(many, record.Member{Disk: fmt.Sprintf("d%d", i), Size: 512})
	}
	for name, c := range map[string]struct {
		vm    string
		disks []record.Member
	}{
		"a disk of another VM": {"vm-2", []record.Member{{Disk: "vda", Size: 512}}},
		"a bad name":           {"vm-2", []record.Member{{Disk: "../x", Size: 512}}},
		"size 0":               {"vm-2", []record.Member{{Disk: "vdb"}}},
		"one disk too many":    {"vm-2", many},
	} {
		if _, err := seq.Declare(c.vm, c.disks); !errors.Is(err, record.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if d, _ := seq.Members(); len(d.Disks) != 1 || seq.next != last {
		t.Fatalf("a refused declaration changed the membership: %+v, next seq %d", d, seq.next)
	}
}

// TestDeclarationOwed: a declaration the spool refuses holds all the same
// and is written before the next record the spool takes.
func TestDeclarationOwed(t *testing.T) {
	ctx := context.Background()
	sp := openSpool(t, 64<<10)
	seq := NewSequencer(sp)
	vda, _ := seq.Export("vda", 1<<20)
	if _, err := seq.Declare("", []record.Member{{Disk: "vda", Size: 1 << 20}}); err != nil {
		t.Fatal(err)
	}
	var err error
	for err == nil {
		err = vda.Zero(ctx, 0, 512, nbd.ZeroFlags{})
	}
	s, err := seq.Declare("", []record.Member{{Disk: "vda", Size: 1 << 20}, {Disk: "vdb", Size: 512}})
	if err != nil || s != 0 {
		t.Fatalf("Declare on a full spool: seq %d, %v; want 0 (owed), nil", s, err)
	}
	if err := sp.Ack(sp.LastSeq()); err != nil {
		t.Fatal(err)
	}
	last := sp.LastSeq()
	if _, err := seq.Mark(record.UserBookmark, "x"); err != nil {
		t.Fatal(err)
	}
	got := readKeep(t, sp, last+1)
	if len(got) < 2 || got[0].Kind != record.Members || len(declOf(t, got[0])) != 2 || got[len(got)-1].Name != "x" {
		t.Fatalf("after the spool took records again: %+v", got)
	}
}

// TestKeepMembers: a restarted host goes on with the membership it kept,
// declared again at once; a damaged file is an error naming it.
func TestKeepMembers(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "members", "vm1")
	opts := spool.Options{Dir: filepath.Join(dir, "spool"), Group: "vm1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	sp, err := spool.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	seq := NewSequencer(sp)
	if err := seq.KeepMembers(nil, path); err != nil {
		t.Fatal(err)
	}
	if sp.LastSeq() != 0 {
		t.Fatal("nothing kept, yet something was declared")
	}
	a := record.Member{Disk: "vda", Size: 1 << 20, VM: "vm-1", VMName: "web", Target: "vda"}
	b := record.Member{Disk: "vdb", Size: 1 << 20, VM: "vm-2", VMName: "db", Target: "vdb"}
	seq.Declare("vm-1", []record.Member{a})
	seq.Declare("vm-2", []record.Member{b})
	sp.Close()

	sp, err = spool.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	seq = NewSequencer(sp)
	if err := seq.KeepMembers(nil, path); err != nil {
		t.Fatal(err)
	}
	// The stream has the declaration already (seq 2): a restart writes
	// none ahead of the adopted captures' brackets, but knows it.
	if got := readKeep(t, sp, 3); len(got) != 0 {
		t.Fatalf("a restart wrote the declaration again ahead of any bracket: %+v", got)
	}
	if d, on := seq.Members(); !on || !reflect.DeepEqual(d.Disks, []record.Member{a, b}) {
		t.Fatalf("after the restart the sequencer knows %+v (%v), want both disks", d.Disks, on)
	}
	// Nor ahead of the first record of the session (an adopted capture's
	// resync-begin): the replica would offer it as a point stamped after
	// writes nobody captured while the daemon was down.
	if _, err := seq.MarkDisk(record.ResyncBegin, "vda"); err != nil {
		t.Fatal(err)
	}
	if got := readKeep(t, sp, 3); len(got) != 1 || got[0].Kind != record.Marker {
		t.Fatalf("the session's first record was preceded by the declaration again: %+v", got)
	}
	// A new spool (its stream has nothing) gets the kept declaration.
	opts2 := opts
	opts2.Dir = filepath.Join(dir, "spool2")
	sp2, err := spool.Open(context.Background(), opts2)
	if err != nil {
		t.Fatal(err)
	}
	defer sp2.Close()
	if err := NewSequencer(sp2).KeepMembers(nil, path); err != nil {
		t.Fatal(err)
	}
	if got := readKeep(t, sp2, 1); len(got) != 1 || !reflect.DeepEqual(declOf(t, got[0]), []record.Member{a, b}) {
		t.Fatalf("a new spool did not get the kept declaration: %+v", got)
	}
	// Attaching vm-1 again does not drop vm-2, which is not attached yet.
	seq.Declare("vm-1", []record.Member{a})
	if d, _ := seq.Members(); !reflect.DeepEqual(d.Disks, []record.Member{a, b}) {
		t.Fatalf("members %+v", d.Disks)
	}

	if err := os.WriteFile(path, []byte("not a record"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := NewSequencer(sp).KeepMembers(nil, path); err == nil || !errors.Is(err, record.ErrShort) && !errors.Is(err, record.ErrCorrupt) {
		t.Fatalf("a damaged membership file: %v", err)
	}
}

// TestDeclaredAgainAfterReopen: a spool opened again after it broke may
// have lost the declaration: it is written again before the next record.
func TestDeclaredAgainAfterReopen(t *testing.T) {
	ctx := context.Background()
	seq := NewSequencer(openSpool(t, 0))
	vda, _ := seq.Export("vda", 1<<20)
	if _, err := seq.Declare("", []record.Member{{Disk: "vda", Size: 1 << 20}}); err != nil {
		t.Fatal(err)
	}
	sp2 := openSpool(t, 0)
	seq.reopened(sp2)
	p := make([]byte, 512)
	p[0] = 1
	if err := vda.WriteAt(ctx, p, 0); err != nil {
		t.Fatal(err)
	}
	got := readKeep(t, sp2, 1)
	// It lost the declaration (and so answered records): the disk is
	// also owed a bracketed re-copy (TestReviewHealLosesAckedWrites).
	if len(got) != 3 || got[0].Kind != record.Members || got[1].Marker != record.ResyncBegin || got[2].Kind != record.Data {
		t.Fatalf("the reopened spool holds %+v", got)
	}
}
