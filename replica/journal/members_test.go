package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
)

func membersRec(t testing.TB, seq uint64, disks ...record.Member) record.Record {
	t.Helper()
	r, err := record.MembersRecord(record.Declaration{Disks: disks})
	if err != nil {
		t.Fatal(err)
	}
	r.Seq, r.Time = seq, int64(seq)*1e6
	return r
}

func zeroRec(seq uint64, disk string, off, n uint64) record.Record {
	return record.Record{Seq: seq, Time: int64(seq) * 1e6, Kind: record.Zero, Disk: disk, Offset: off, Length: n}
}

func appendT(t testing.TB, j *Journal, recs ...record.Record) {
	t.Helper()
	if err := j.Append(context.Background(), recs); err != nil {
		t.Fatalf("Append %d..: %v", recs[0].Seq, err)
	}
}

const (
	sizeA = 4<<20 + 512 // vda: declared, never written to its end
	sizeB = 1 << 20
)

var vda, vdb = record.Member{Disk: "vda", Size: sizeA, VM: "vm-1", VMName: "web", Target: "vda"},
	record.Member{Disk: "vdb", Size: sizeB, VM: "vm-1", VMName: "web", Target: "vdb"}

// TestPointNeedsEveryDeclaredDisk is trust item 9: two disks declared, vdb
// completes its initial sync before the stream carries anything of vda.
// The journal used to open the any-point window at vdb's sync-complete,
// and a view there had no vda. A point exists only once every declared
// disk is in sync.
func TestPointNeedsEveryDeclaredDisk(t *testing.T) {
	ctx := context.Background()
	fs := newFS()
	j := openT(t, fs)
	appendT(t, j,
		membersRec(t, 1, vda, vdb),
		dataRec(2, "vdb", 0, []byte("b1")),
		markRec(3, record.SyncComplete, "vdb", ""),
		dataRec(4, "vdb", 2, []byte("b2")),
	)
	for _, s := range []uint64{3, 4} {
		_, err := j.View(ctx, Target{Seq: s})
		if !errors.Is(err, ErrNoPoint) || !strings.Contains(err.Error(), "disk vda has not completed its initial sync") {
			t.Fatalf("View(seq %d) before vda's sync: %v, want ErrNoPoint naming vda", s, err)
		}
	}
	if _, w, _ := j.Points(ctx); !reflect.DeepEqual(w, Window{}) {
		t.Fatalf("window %+v before vda's sync, want none", w)
	}
	appendT(t, j,
		dataRec(5, "vda", 0, []byte("a1")),
		markRec(6, record.SyncComplete, "vda", ""),
		dataRec(7, "vda", 2, []byte("a2")),
	)
	check := func(j *Journal) {
		t.Helper()
		_, w, err := j.Points(ctx)
		if err != nil || w.FirstSeq != 6 || w.LastSeq != 7 {
			t.Fatalf("window %+v %v, want seqs 6..7", w, err)
		}
		v, err := j.View(ctx, Target{Seq: 6})
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		if got := v.Disks(); !reflect.DeepEqual(got, []string{"vda", "vdb"}) {
			t.Fatalf("view of seq 6: disks %v", got)
		}
		d, ok := v.Declaration()
		if !ok || !reflect.DeepEqual(d.Disks, []record.Member{vda, vdb}) {
			t.Fatalf("view of seq 6: declaration %+v %v", d, ok)
		}
	}
	check(j)
	j.Close()
	fs.Crash()
	check(openT(t, fs)) // the declaration is kept
}

// TestViewHasDeclaredSize: a view's disk is as large as its host declared
// it, not its highest written byte rounded up.
func TestViewHasDeclaredSize(t *testing.T) {
	ctx := context.Background()
	j := openT(t, newFS())
	defer j.Close()
	appendT(t, j,
		membersRec(t, 1, vda, vdb),
		dataRec(2, "vda", 100, []byte("hello")),
		markRec(3, record.SyncComplete, "", ""),
	)
	v, err := j.View(ctx, Target{Seq: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	for disk, size := range map[string]int64{"vda": sizeA, "vdb": sizeB} {
		d, err := v.Disk(disk)
		if err != nil {
			t.Fatal(err)
		}
		if d.Size() != size {
			t.Fatalf("%s: view of %d bytes, declared %d", disk, d.Size(), size)
		}
		p := make([]byte, 512)
		if err := d.ReadAt(ctx, p, size-512); err != nil {
			t.Fatalf("%s: read the last sector: %v", disk, err)
		}
	}
	if _, err := v.Disk("vdc"); !errors.Is(err, ErrNoDisk) {
		t.Fatalf("an undeclared disk: %v", err)
	}
}

// TestManyDiskNamesRefused is trust item 5: 70,000 disk names in one
// append. Disk ids used to wrap at 65,536, and d0 then served the zeroes
// written to d65536. The append is refused whole: nothing is stored and
// d0 keeps its data.
func TestManyDiskNamesRefused(t *testing.T) {
	ctx := context.Background()
	j := openT(t, newFS())
	defer j.Close()
	appendT(t, j, dataRec(1, "d0", 0, []byte("keep")), markRec(2, record.SyncComplete, "", ""))
	var recs []record.Record
	for i := 1; i < 70000; i++ {
		recs = append(recs, zeroRec(uint64(2+i), fmt.Sprintf("d%d", i), 0, 4))
	}
	err := j.Append(ctx, recs)
	if !errors.Is(err, record.ErrMembership) || !strings.Contains(err.Error(), "more than 256 disks") {
		t.Fatalf("Append of 70,000 disks: %v, want ErrMembership", err)
	}
	if j.LastSeq() != 2 {
		t.Fatalf("LastSeq %d after a refused append", j.LastSeq())
	}
	v, err := j.View(ctx, Target{Seq: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	d, err := v.Disk("d0")
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4)
	if err := d.ReadAt(ctx, p, 0); err != nil || string(p) != "keep" {
		t.Fatalf("d0 reads %q %v", p, err)
	}
}

// TestOffsetBeyondDiskRefused is trust item 12: a zero record at offset
// 2^62 made a 4 EiB view. A range past the declared size, or past
// MaxDiskSize for a group that declared nothing, is refused.
func TestOffsetBeyondDiskRefused(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		first []record.Record
	}{
		{"nothing declared", []record.Record{dataRec(1, "vda", 0, []byte("x"))}},
		{"declared", []record.Record{membersRec(t, 1, vda)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := openT(t, newFS())
			defer j.Close()
			appendT(t, j, tc.first...)
			for _, r := range []record.Record{
				zeroRec(2, "vda", 1<<62, 1<<20),
				zeroRec(2, "vda", record.MaxDiskSize, 1),
			} {
				if err := j.Append(ctx, []record.Record{r}); !errors.Is(err, record.ErrMembership) {
					t.Fatalf("zero at %d: %v, want ErrMembership", r.Offset, err)
				}
			}
			if j.LastSeq() != 1 {
				t.Fatalf("LastSeq %d", j.LastSeq())
			}
		})
	}
}

// TestMembershipRules: what a declaration allows and what it does to the
// restore points after it.
func TestMembershipRules(t *testing.T) {
	ctx := context.Background()
	j := openT(t, newFS())
	defer j.Close()
	synced := func() {
		t.Helper()
		appendT(t, j, markRec(j.LastSeq()+1, record.SyncComplete, "", ""))
	}
	isPoint := func(s uint64) bool {
		_, err := j.View(ctx, Target{Seq: s})
		if err != nil && !errors.Is(err, ErrNoPoint) {
			t.Fatal(err)
		}
		if err == nil {
			j.mu.Lock()
			delete(j.pins, s)
			j.mu.Unlock()
		}
		return err == nil
	}
	// Records of no declared disk, and ranges past a declared size, are
	// refused; a marker of an undeclared disk too.
	appendT(t, j, membersRec(t, 1, vda))
	for _, bad := range []record.Record{
		dataRec(2, "vdb", 0, []byte("x")),
		markRec(2, record.SyncComplete, "vdb", ""),
		dataRec(2, "vda", sizeA-1, []byte("xy")),
	} {
		if err := j.Append(ctx, []record.Record{bad}); !errors.Is(err, record.ErrMembership) {
			t.Fatalf("%v of %s: %v, want ErrMembership", bad.Kind, bad.Disk, err)
		}
	}
	// A declaration inside the same append counts from its seq on.
	appendT(t, j, membersRec(t, 2, vda, vdb), dataRec(3, "vdb", 0, []byte("x")))
	synced() // 4
	if !isPoint(4) {
		t.Fatal("no point once both declared disks are in sync")
	}
	// vdb leaves: points go on with vda alone, and views show vda only.
	appendT(t, j, membersRec(t, 5, vda))
	if !isPoint(5) {
		t.Fatal("no point after vdb left")
	}
	if err := j.Append(ctx, []record.Record{dataRec(6, "vdb", 0, []byte("x"))}); !errors.Is(err, record.ErrMembership) {
		t.Fatalf("vdb after it left: %v", err)
	}
	v, err := j.View(ctx, Target{Seq: 5})
	if err != nil {
		t.Fatal(err)
	}
	if got := v.Disks(); !reflect.DeepEqual(got, []string{"vda"}) {
		t.Fatalf("after vdb left: disks %v", got)
	}
	v.Close()
	// vdb comes back: it was not captured while it was out, so it must
	// complete its initial sync again; so must a disk whose size changed.
	appendT(t, j, membersRec(t, 6, vda, vdb))
	if isPoint(6) {
		t.Fatal("a point while vdb, back, has not synced again")
	}
	synced() // 7
	bigger := vda
	bigger.Size += 512
	appendT(t, j, membersRec(t, 8, bigger, vdb))
	if isPoint(8) {
		t.Fatal("a point while vda, resized, has not synced again")
	}
	appendT(t, j, markRec(9, record.SyncComplete, "vda", ""))
	if !isPoint(9) {
		t.Fatal("no point after the resized disk synced")
	}
	// A declaration of no disk: no point.
	appendT(t, j, membersRec(t, 10))
	if _, err := j.View(ctx, Target{Seq: 10}); !errors.Is(err, ErrNoPoint) || !strings.Contains(err.Error(), "declares no disk") {
		t.Fatalf("empty declaration: %v", err)
	}
}

// TestLegacyJournalDeclares: a journal whose stream named its disks
// before the host declared anything keeps their sync state at the first
// declaration: an upgraded host does not lose its restore points.
func TestLegacyJournalDeclares(t *testing.T) {
	ctx := context.Background()
	j := openT(t, newFS())
	defer j.Close()
	appendT(t, j,
		dataRec(1, "vda", 0, []byte("a")),
		dataRec(2, "old", 0, []byte("o")),
		markRec(3, record.SyncComplete, "", ""),
		membersRec(t, 4, vda),
		dataRec(5, "vda", 1, []byte("b")),
	)
	for _, s := range []uint64{3, 4, 5} {
		v, err := j.View(ctx, Target{Seq: s})
		if err != nil {
			t.Fatalf("seq %d: %v", s, err)
		}
		want := []string{"vda"}
		if s == 3 {
			want = []string{"old", "vda"}
		}
		if got := v.Disks(); !reflect.DeepEqual(got, want) {
			t.Fatalf("seq %d: disks %v, want %v", s, got, want)
		}
		v.Close()
	}
}

// TestMembershipSurvivesCompact: a folded base layer still knows its
// disks and their sizes, through a reopen.
func TestMembershipSurvivesCompact(t *testing.T) {
	ctx := context.Background()
	fs := newFS()
	ret := Retention{Window: 10 * time.Second, Schedules: []Schedule{{Every: time.Second, Keep: time.Hour}}}
	j := openT(t, fs, func(o *Options) { o.Retention = ret })
	recs := []record.Record{
		membersRec(t, 1, vda, vdb),
		dataRec(2, "vda", 0, bytes.Repeat([]byte("a"), 600)),
		markRec(3, record.SyncComplete, "", ""),
		dataRec(4, "vdb", 0, []byte("b")),
		membersRec(t, 5, vda),
		dataRec(6, "vda", 0, []byte("c")),
	}
	for i := range recs {
		recs[i].Time = int64(recs[i].Seq) * 1e9
	}
	appendT(t, j, recs...)
	// Fold everything up to seq 5 into layers, keeping points 3 and 4.
	if err := j.Compact(ctx, time.Unix(15, 5e8)); err != nil {
		t.Fatal(err)
	}
	check := func(j *Journal) {
		t.Helper()
		if j.first != 6 {
			t.Fatalf("first retained seq %d, want 6", j.first)
		}
		for s, want := range map[uint64][]string{4: {"vda", "vdb"}, 5: {"vda"}, 6: {"vda"}} {
			v, err := j.View(ctx, Target{Seq: s})
			if err != nil {
				t.Fatalf("seq %d: %v", s, err)
			}
			if got := v.Disks(); !reflect.DeepEqual(got, want) {
				t.Fatalf("seq %d: disks %v, want %v", s, got, want)
			}
			d, _ := v.Disk("vda")
			if d.Size() != sizeA {
				t.Fatalf("seq %d: vda of %d bytes", s, d.Size())
			}
			v.Close()
		}
		// The membership at the window's start still rules what is taken.
		if err := j.Append(ctx, []record.Record{dataRec(j.LastSeq()+1, "vdb", 0, []byte("x"))}); !errors.Is(err, record.ErrMembership) {
			t.Fatalf("vdb after the fold: %v", err)
		}
	}
	check(j)
	j.Close()
	fs.Crash()
	j = openT(t, fs, func(o *Options) { o.Retention = ret })
	defer j.Close()
	check(j)
}
