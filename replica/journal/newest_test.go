package journal

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
)

// readWhole reads a disk of the view whole.
func readWhole(t *testing.T, v *View, disk string) []byte {
	t.Helper()
	d, err := v.Disk(disk)
	if err != nil {
		t.Fatalf("view of seq %d: disk %s: %v", v.Point().Seq, disk, err)
	}
	buf := make([]byte, d.Size())
	if err := d.ReadAt(context.Background(), buf, 0); err != nil {
		t.Fatalf("view of seq %d: read disk %s: %v", v.Point().Seq, disk, err)
	}
	return buf
}

func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

func cat(ps ...[]byte) []byte { return bytes.Join(ps, nil) }

func TestNewestEmpty(t *testing.T) {
	ctx := context.Background()
	fs := newFS()
	j := openT(t, fs)
	if v, err := j.Newest(ctx); !errors.Is(err, ErrNoPoint) {
		t.Fatalf("Newest of an empty journal: %v, %v; want ErrNoPoint", v, err)
	}
	if len(j.pins) != 0 {
		t.Fatalf("a failed Newest pinned %v", j.pins)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := j.Newest(cctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Newest with a canceled context: %v", err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := j.Newest(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Newest of a closed journal: %v, want ErrClosed", err)
	}
	// Reopened empty: still nothing.
	j = openT(t, fs)
	defer j.Close()
	if _, err := j.Newest(ctx); !errors.Is(err, ErrNoPoint) {
		t.Fatalf("Newest of a reopened empty journal: %v; want ErrNoPoint", err)
	}
}

// Newest shows the state after the last record, inside a resync bracket
// too, where View refuses the same seq; and it pins its point.
func TestNewestInsideResync(t *testing.T) {
	ctx := context.Background()
	j := openT(t, newFS())
	defer j.Close()
	const K = 4096
	app := func(recs ...record.Record) {
		t.Helper()
		if err := j.Append(ctx, recs); err != nil {
			t.Fatal(err)
		}
	}
	newest := func(wantSeq uint64, want map[string][]byte) *View {
		t.Helper()
		v, err := j.Newest(ctx)
		if err != nil {
			t.Fatalf("Newest: %v", err)
		}
		if v.Point().Seq != wantSeq {
			t.Fatalf("Newest shows seq %d, want %d", v.Point().Seq, wantSeq)
		}
		if want := time.Unix(0, int64(wantSeq)*1e6); !v.Point().Time.Equal(want) {
			t.Fatalf("Newest's time %v, want %v (the record's)", v.Point().Time, want)
		}
		for disk, w := range want {
			if got := readWhole(t, v, disk); !bytes.Equal(got, w) {
				t.Fatalf("Newest (seq %d) disk %s: %d bytes %q..., want %d bytes %q...", wantSeq, disk, len(got), got[:min(len(got), 8)], len(w), w[:min(len(w), 8)])
			}
		}
		return v
	}
	refused := func(seq uint64, why string) {
		t.Helper()
		v, err := j.View(ctx, Target{Seq: seq})
		if !errors.Is(err, ErrNoPoint) || !strings.Contains(err.Error(), why) {
			if v != nil {
				v.Close()
			}
			t.Fatalf("View(seq %d): %v; want ErrNoPoint saying %q", seq, err, why)
		}
	}

	// Before the initial sync completes there is no restore point, but
	// there is a newest state.
	app(dataRec(1, "vda", 0, fill('a', K)))
	refused(1, "has not completed its initial sync")
	newest(1, map[string][]byte{"vda": fill('a', K)}).Close()

	app(markRec(2, record.SyncComplete, "vda", ""),
		dataRec(3, "vda", K, fill('b', K)),
		dataRec(4, "vdb", 0, fill('x', 512)),
		markRec(5, record.SyncComplete, "vdb", ""))
	before := map[string][]byte{"vda": cat(fill('a', K), fill('b', K)), "vdb": fill('x', 512)}
	v, err := j.View(ctx, Target{Seq: 5})
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
	newest(5, before).Close()

	// A resync bracket opens on vda: the newest state is right after the
	// marker, and is no restore point.
	app(markRec(6, record.ResyncBegin, "vda", ""))
	refused(6, "disk vda is inside a resync bracket")
	newest(6, before).Close()

	// The resync copies a block, another write grows the disk, vdb writes.
	app(dataRec(7, "vda", 0, fill('c', K)),
		dataRec(8, "vda", 2*K, fill('d', 700)),
		dataRec(9, "vdb", 0, fill('y', 100)))
	inside := map[string][]byte{
		"vda": cat(fill('c', K), fill('b', K), fill('d', 700), make([]byte, 1024-700)), // the size is rounded up to 512
		"vdb": cat(fill('y', 100), fill('x', 412)),
	}
	for s := uint64(6); s <= 9; s++ {
		refused(s, "disk vda is inside a resync bracket")
	}
	nv := newest(9, inside)
	if d, err := nv.Disk("vdc"); !errors.Is(err, ErrNoDisk) {
		t.Fatalf("Newest: a disk never written: %v, %v; want ErrNoDisk", d, err)
	}
	// The restore point before the bracket still shows the old state.
	v, err = j.View(ctx, Target{Seq: 5})
	if err != nil {
		t.Fatal(err)
	}
	if got := readWhole(t, v, "vda"); !bytes.Equal(got, before["vda"]) {
		t.Fatal("View(seq 5) shows the bracket's writes")
	}
	v.Close()

	// The view pins its point, once per view; Close releases it once.
	if j.pins[9] != 1 {
		t.Fatalf("pins %v, want seq 9 pinned once", j.pins)
	}
	nv2 := newest(9, inside)
	if j.pins[9] != 2 {
		t.Fatalf("pins %v, want seq 9 pinned twice", j.pins)
	}
	if err := nv2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := nv2.Close(); err != nil { // twice: no effect
		t.Fatal(err)
	}
	if j.pins[9] != 1 {
		t.Fatalf("pins %v after closing one view (twice), want seq 9 pinned once", j.pins)
	}
	d, err := nv2.Disk("vda")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.ReadAt(ctx, make([]byte, 10), 0); err == nil {
		t.Fatal("a closed view still reads")
	}

	// Records after the view do not change it.
	app(dataRec(10, "vda", 0, fill('e', 2*K)))
	if got := readWhole(t, nv, "vda"); !bytes.Equal(got, inside["vda"]) {
		t.Fatal("the newest view changed when a record was appended")
	}
	if err := nv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := j.pins[9]; ok || len(j.pins) != 0 {
		t.Fatalf("pins %v after every view closed", j.pins)
	}

	// The bracket closes: the newest state is a restore point again,
	// and View shows the same bytes as Newest.
	app(markRec(11, record.ResyncEnd, "vda", ""))
	after := map[string][]byte{"vda": cat(fill('e', 2*K), fill('d', 700), make([]byte, 1024-700)), "vdb": inside["vdb"]}
	newest(11, after).Close()
	v, err = j.View(ctx, Target{Seq: 11})
	if err != nil {
		t.Fatal(err)
	}
	if got := readWhole(t, v, "vda"); !bytes.Equal(got, after["vda"]) {
		t.Fatal("View(seq 11) and Newest differ")
	}
	v.Close()
	refused(10, "disk vda is inside a resync bracket")
}

// A Newest view inside a resync bracket keeps its point while Compact
// folds the records past it, and lets it go once closed; a journal whose
// records are all folded still has a newest state.
func TestNewestPinnedAcrossCompact(t *testing.T) {
	ctx := context.Background()
	fs := newFS()
	ret := Retention{WindowBytes: 1} // every record leaves the window at once
	j := openT(t, fs, func(o *Options) { o.Retention = ret })
	defer func() { j.Close() }()
	const K = 4096
	recs := []record.Record{
		dataRec(1, "vda", 0, fill('a', 2*K)),
		markRec(2, record.SyncComplete, "vda", ""),
		markRec(3, record.ResyncBegin, "vda", ""),
		dataRec(4, "vda", K, fill('b', K)),
	}
	if err := j.Append(ctx, recs); err != nil {
		t.Fatal(err)
	}
	want := cat(fill('a', K), fill('b', K))
	nv, err := j.Newest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if nv.Point().Seq != 4 {
		t.Fatalf("Newest shows seq %d", nv.Point().Seq)
	}
	more := []record.Record{
		dataRec(5, "vda", 0, fill('c', 2*K)),
		markRec(6, record.ResyncEnd, "vda", ""),
		dataRec(7, "vda", K, fill('d', 512)),
	}
	if err := j.Append(ctx, more); err != nil {
		t.Fatal(err)
	}
	now := time.Unix(0, 8e6)
	if err := j.Compact(ctx, now); err != nil {
		t.Fatal(err)
	}
	if j.first <= 4 {
		t.Fatalf("the window still starts at %d: the test wants seq 4 folded", j.first)
	}
	if got := readWhole(t, nv, "vda"); !bytes.Equal(got, want) {
		t.Fatalf("the pinned newest view of seq 4 changed under Compact: %q...", got[:8])
	}
	layerAt := func(s uint64) bool {
		for _, l := range j.layers {
			if l.ref.to == s {
				return true
			}
		}
		return false
	}
	if !layerAt(4) {
		t.Fatal("no layer ends at the pinned seq 4")
	}
	if err := nv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := j.Append(ctx, []record.Record{dataRec(8, "vda", 0, fill('e', 512))}); err != nil {
		t.Fatal(err)
	}
	if err := j.Compact(ctx, time.Unix(0, 9e6)); err != nil {
		t.Fatal(err)
	}
	if layerAt(4) {
		t.Fatal("the layer at seq 4 (inside a bracket, no restore point) outlived its view")
	}

	// Every record is folded: Newest still shows the last one's state.
	last := cat(fill('e', 512), fill('c', K-512), fill('d', 512), fill('c', K-512))
	check := func(j *Journal) {
		t.Helper()
		v, err := j.Newest(ctx)
		if err != nil {
			t.Fatalf("Newest after every record was folded: %v", err)
		}
		defer v.Close()
		if v.Point().Seq != 8 {
			t.Fatalf("Newest shows seq %d, want 8", v.Point().Seq)
		}
		if got := readWhole(t, v, "vda"); !bytes.Equal(got, last) {
			t.Fatalf("Newest after folding: %q...", got[:8])
		}
	}
	if j.first != 9 {
		t.Fatalf("window starts at %d, want every record folded", j.first)
	}
	check(j)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	fs.Crash()
	j = openT(t, fs, func(o *Options) { o.Retention = ret })
	check(j)
}
