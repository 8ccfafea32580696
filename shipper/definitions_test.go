package shipper

import (
	"context"
	"errors"
	"reflect"
	"testing"

	"github.com/qcdp/qcdp/nbd"
	"github.com/qcdp/qcdp/record"
)

func testDefinition(id string, vcpus int) record.VMDefinition {
	return record.VMDefinition{ID: id, Name: "web", Source: "libvirt", VCPUs: vcpus, MemoryMiB: 1024,
		Disks: []record.VMDisk{{Disk: "vda", Target: "vda", Size: 1 << 20}},
		NICs:  []record.VMNIC{{MAC: "52:54:00:12:34:56", Network: "default"}}}
}

// kinds returns the kind of each record, with the VM a definition is of.
func kinds(t *testing.T, rs []record.Record) []string {
	t.Helper()
	var out []string
	for _, r := range rs {
		switch r.Kind {
		case record.Definition:
			d, err := r.Definition()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, "definition "+d.ID)
		case record.Marker:
			out = append(out, r.Marker.String()+" "+r.Disk+r.Name)
		default:
			out = append(out, r.Kind.String()+" "+r.Disk)
		}
	}
	return out
}

// TestDefine: a VM's definition is in the stream once per change; an
// unchanged one is not written again; a VM that leaves the membership
// forgets it, so coming back it is written again.
func TestDefine(t *testing.T) {
	sp := openSpool(t, 0)
	seq := NewSequencer(sp)
	if _, err := seq.Declare("vm-1", []record.Member{{Disk: "vda", Size: 1 << 20}}); err != nil {
		t.Fatal(err)
	}
	def := testDefinition("vm-1", 2)
	s1, err := seq.Define(def)
	if err != nil || s1 != 2 {
		t.Fatalf("Define: seq %d, %v; want 2", s1, err)
	}
	got := readKeep(t, sp, s1)
	if len(got) != 1 || got[0].Kind != record.Definition || got[0].Name != "vm-1" {
		t.Fatalf("after Define: %+v", got)
	}
	if d, err := got[0].Definition(); err != nil || !reflect.DeepEqual(d, def) {
		t.Fatalf("the record defines %+v, %v; want %+v", d, err, def)
	}
	if s, err := seq.Define(def); err != nil || s != 0 {
		t.Fatalf("an unchanged definition: seq %d, %v; want 0, nil", s, err)
	}
	def.VCPUs = 4
	s2, err := seq.Define(def)
	if err != nil || s2 != 3 {
		t.Fatalf("a changed definition: seq %d, %v; want 3", s2, err)
	}
	// One that no Definition record may carry.
	bad := def
	bad.VCPUs = 0
	if s, err := seq.Define(bad); !errors.Is(err, record.ErrInvalid) || s != 0 {
		t.Fatalf("an invalid definition: seq %d, %v", s, err)
	}
	if _, err := seq.Define(def); err != nil { // still the one it had
		t.Fatal(err)
	}
	if seq.next != 4 {
		t.Fatalf("next seq %d: something more was written", seq.next)
	}
	// The VM leaves, and comes back with the same definition.
	if _, err := seq.Declare("vm-1", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := seq.Declare("vm-1", []record.Member{{Disk: "vda", Size: 1 << 20}}); err != nil {
		t.Fatal(err)
	}
	if s, err := seq.Define(def); err != nil || s == 0 {
		t.Fatalf("the definition of a VM that came back: seq %d, %v; want it written", s, err)
	}
	want := []string{"members ", "definition vm-1", "definition vm-1", "members ", "members ", "definition vm-1"}
	if k := kinds(t, readKeep(t, sp, 1)); !reflect.DeepEqual(k, want) {
		t.Fatalf("stream %q, want %q", k, want)
	}
}

// TestDefinitionOwed: a definition the spool refuses holds all the same
// and is written before the next record the spool takes, after the
// resync-begin markers owed (a definition's record is a record boundary,
// so a point, too); given again meanwhile it is written once.
func TestDefinitionOwed(t *testing.T) {
	ctx := context.Background()
	sp := openSpool(t, 64<<10)
	seq := NewSequencer(sp)
	vda, _ := seq.Export("vda", 1<<20)
	if _, err := seq.Declare("vm-1", []record.Member{{Disk: "vda", Size: 1 << 20}}); err != nil {
		t.Fatal(err)
	}
	var err error
	for err == nil {
		err = vda.Zero(ctx, 0, 512, nbd.ZeroFlags{})
	}
	// vda's refused write owes its resync-begin.
	def := testDefinition("vm-1", 2)
	for range 2 {
		if s, err := seq.Define(def); err != nil || s != 0 {
			t.Fatalf("Define on a full spool: seq %d, %v; want 0 (owed), nil", s, err)
		}
	}
	if err := sp.Ack(sp.LastSeq()); err != nil {
		t.Fatal(err)
	}
	last := sp.LastSeq()
	if _, err := seq.Mark(record.UserBookmark, "x"); err != nil {
		t.Fatal(err)
	}
	want := []string{"resync-begin vda", "definition vm-1", "user-bookmark x"}
	if k := kinds(t, readKeep(t, sp, last+1)); !reflect.DeepEqual(k, want) {
		t.Fatalf("after the spool took records again: %q, want %q", k, want)
	}
	if s, err := seq.Define(def); err != nil || s != 0 {
		t.Fatalf("the definition written while owed, given again: seq %d, %v", s, err)
	}
}

// TestDefinedAgainAfterReopen: a spool opened again after it broke may have
// lost the definitions: each is written again before the next record, and
// an unchanged one given after that is not.
func TestDefinedAgainAfterReopen(t *testing.T) {
	ctx := context.Background()
	seq := NewSequencer(openSpool(t, 0))
	vda, _ := seq.Export("vda", 1<<20)
	vdb, _ := seq.Export("vdb", 1<<20)
	if _, err := seq.Declare("vm-1", []record.Member{{Disk: "vda", Size: 1 << 20}}); err != nil {
		t.Fatal(err)
	}
	if _, err := seq.Declare("vm-2", []record.Member{{Disk: "vdb", Size: 1 << 20}}); err != nil {
		t.Fatal(err)
	}
	d1, d2 := testDefinition("vm-1", 1), testDefinition("vm-2", 2)
	for _, d := range []record.VMDefinition{d2, d1} {
		if _, err := seq.Define(d); err != nil {
			t.Fatal(err)
		}
	}
	sp2 := openSpool(t, 0)
	seq.reopened(sp2)
	p := make([]byte, 512)
	p[0] = 1
	if err := vda.WriteAt(ctx, p, 0); err != nil {
		t.Fatal(err)
	}
	// The reopened spool lost answered records: both disks owe a bracketed
	// re-copy (TestReviewHealLosesAckedWrites), ahead of the definitions.
	want := []string{"members ", "resync-begin vda", "resync-begin vdb", "definition vm-1", "definition vm-2", "data vda"}
	got := kinds(t, readKeep(t, sp2, 1))
	if len(got) == len(want) && got[1] > got[2] {
		got[1], got[2] = got[2], got[1] // the markers owed are written in no particular order
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("the reopened spool holds %q, want %q", got, want)
	}
	if s, err := seq.Define(d1); err != nil || s != 0 {
		t.Fatalf("an unchanged definition after it was written again: seq %d, %v", s, err)
	}
	if err := vdb.WriteAt(ctx, p, 0); err != nil {
		t.Fatal(err)
	}
	if got := readKeep(t, sp2, 7); len(got) != 1 || got[0].Kind != record.Data {
		t.Fatalf("after the session's first record: %+v", got)
	}
}
