package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/qcdp/qcdp/nbd"
	"github.com/qcdp/qcdp/record"
)

const modelDisk = 320 << 10

var modelDisks = []string{"vda", "vdb"}

// Per-byte allocation state in the model.
const (
	mUnwritten = iota
	mData
	mZero
	mTrim
)

// model is the reference: each disk's bytes and allocation state, applied
// record by record, and the restore-point rules written out plainly.
type model struct {
	data   map[string][]byte
	alloc  map[string][]byte
	seen   map[string]bool
	synced map[string]bool
	resync map[string]bool
	// declared is the group's declared disks (each modelDisk bytes), nil
	// until a Members record: then they, not seen, are the group's disks.
	declared map[string]bool
}

func newModel() *model {
	return &model{data: map[string][]byte{}, alloc: map[string][]byte{}, seen: map[string]bool{}, synced: map[string]bool{}, resync: map[string]bool{}}
}

func (m *model) apply(r *record.Record) {
	if r.Disk != "" {
		m.seen[r.Disk] = true
		if m.data[r.Disk] == nil {
			m.data[r.Disk] = make([]byte, modelDisk)
			m.alloc[r.Disk] = make([]byte, modelDisk)
		}
	}
	d, a := m.data[r.Disk], m.alloc[r.Disk]
	switch r.Kind {
	case record.Members:
		decl, _ := r.Declaration()
		next := map[string]bool{}
		for _, x := range decl.Disks {
			next[x.Disk] = true
			if m.declared != nil && !m.declared[x.Disk] {
				// Back after leaving, or new: it must sync again.
				delete(m.synced, x.Disk)
				delete(m.resync, x.Disk)
			}
		}
		for disk := range m.resync {
			if !next[disk] {
				delete(m.resync, disk)
			}
		}
		m.declared = next
	case record.Data:
		copy(d[r.Offset:], r.Payload)
		for i := r.Offset; i < r.Offset+r.Length; i++ {
			a[i] = mData
		}
	case record.Zero, record.Trim:
		st := byte(mZero)
		if r.Kind == record.Trim {
			st = mTrim
		}
		for i := r.Offset; i < r.Offset+r.Length; i++ {
			d[i], a[i] = 0, st
		}
	case record.Marker:
		switch r.Marker {
		case record.SyncComplete:
			m.synced[r.Disk] = true
		case record.ResyncBegin:
			m.resync[r.Disk] = true
		case record.ResyncEnd:
			delete(m.resync, r.Disk)
		}
	}
}

func (m *model) valid() bool {
	disks := m.seen
	if m.declared != nil {
		disks = m.declared
	}
	if len(disks) == 0 || len(m.resync) > 0 {
		return false
	}
	for d := range disks {
		if !m.synced[d] {
			return false
		}
	}
	return true
}

type snap struct {
	valid    bool
	data     map[string][]byte
	alloc    map[string][]byte
	time     int64
	declared []string // the declared disks, sorted; nil before any declaration
}

func (m *model) snap(t int64) snap {
	s := snap{valid: m.valid(), data: map[string][]byte{}, alloc: map[string][]byte{}, time: t}
	if m.declared != nil {
		s.declared = append(sortedKeys(m.declared), []string{}...)
	}
	for d := range m.data {
		s.data[d] = bytes.Clone(m.data[d])
		s.alloc[d] = bytes.Clone(m.alloc[d])
	}
	return s
}

// genStream makes n records from seq first on: an initial sync per disk,
// then writes (some crossing chunk and record boundaries, some tiny), zero
// and trim records, crash-consistent markers, bookmarks and resync brackets.
func genStream(rng *rand.Rand, first uint64, n int, t0 int64) []record.Record {
	var out []record.Record
	seq := first
	synced := map[string]bool{}
	inResync := map[string]bool{}
	add := func(r record.Record) {
		r.Seq = seq
		r.Time = t0 + int64(seq)*1e9
		seq++
		out = append(out, r)
	}
	for len(out) < n {
		disk := modelDisks[rng.IntN(len(modelDisks))]
		switch x := rng.IntN(100); {
		case x < 3 && !synced[disk] && len(out) > 5:
			add(record.Record{Kind: record.Marker, Marker: record.SyncComplete, Disk: disk})
			synced[disk] = true
		case x < 5 && !inResync[disk] && synced[disk]:
			add(record.Record{Kind: record.Marker, Marker: record.ResyncBegin, Disk: disk})
			inResync[disk] = true
		case x < 9 && inResync[disk]:
			add(record.Record{Kind: record.Marker, Marker: record.ResyncEnd, Disk: disk})
			delete(inResync, disk)
		case x < 11:
			add(record.Record{Kind: record.Marker, Marker: record.CrashConsistent})
		case x < 13:
			add(record.Record{Kind: record.Marker, Marker: record.UserBookmark, Name: fmt.Sprintf("bm%d", rng.IntN(6))})
		case x < 18:
			off := uint64(rng.IntN(modelDisk - 1))
			l := uint64(1 + rng.IntN(min(modelDisk-int(off), 150<<10)))
			k := record.Zero
			if x < 15 {
				k = record.Trim
			}
			add(record.Record{Kind: k, Disk: disk, Offset: off, Length: l})
		default:
			var l int
			switch rng.IntN(4) {
			case 0:
				l = 1 + rng.IntN(200)
			case 1:
				l = 4096
			case 2:
				l = 1 + rng.IntN(140<<10)
			default:
				l = 512 * (1 + rng.IntN(16))
			}
			off := rng.IntN(modelDisk - l)
			if rng.IntN(2) == 0 {
				off &^= 511
			}
			p := make([]byte, l)
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			p[0] = byte(seq) | 1
			add(record.Record{Kind: record.Data, Disk: disk, Offset: uint64(off), Length: uint64(l), Payload: p})
		}
	}
	return out
}

// declaredStream is genStream's records with the group's membership
// declared: both disks at first, then vdb leaving and coming back now and
// then (its records dropped while it is out, its initial sync again after
// it is back). Seqs and times are made consecutive again.
func declaredStream(t testing.TB, rng *rand.Rand, recs []record.Record) []record.Record {
	decl := func(disks ...string) record.Record {
		var d record.Declaration
		for _, x := range disks {
			d.Disks = append(d.Disks, record.Member{Disk: x, Size: modelDisk, VM: "vm", Target: x})
		}
		r, err := record.MembersRecord(d)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	out := []record.Record{decl(modelDisks...)}
	in, owed := true, false
	for _, r := range recs {
		switch x := rng.IntN(100); {
		case x < 2 && in:
			out, in, owed = append(out, decl("vda")), false, false
		case x < 2:
			out, in, owed = append(out, decl(modelDisks...)), true, true
		case x < 8 && owed:
			out, owed = append(out, record.Record{Kind: record.Marker, Marker: record.SyncComplete, Disk: "vdb"}), false
		}
		if r.Disk == "vdb" && !in {
			continue
		}
		out = append(out, r)
	}
	first, t0 := recs[0].Seq, recs[0].Time-int64(recs[0].Seq)*1e9
	for i := range out {
		out[i].Seq = first + uint64(i)
		out[i].Time = t0 + int64(out[i].Seq)*1e9
	}
	return out
}

// appendAll appends recs in batches of random size.
func appendAll(t testing.TB, j *Journal, rng *rand.Rand, recs []record.Record) {
	t.Helper()
	for len(recs) > 0 {
		k := min(len(recs), 1+rng.IntN(12))
		if err := j.Append(context.Background(), recs[:k]); err != nil {
			t.Fatalf("Append %d..%d: %v", recs[0].Seq, recs[k-1].Seq, err)
		}
		recs = recs[k:]
	}
}

// checkView compares every disk of the view of seq with the model's snapshot.
func checkView(t testing.TB, j *Journal, seq uint64, want snap) {
	t.Helper()
	ctx := context.Background()
	v, err := j.View(ctx, Target{Seq: seq})
	if !want.valid {
		if !errors.Is(err, ErrNoPoint) {
			t.Fatalf("View(seq %d), no restore point: err = %v, want ErrNoPoint", seq, err)
		}
		return
	}
	if err != nil {
		t.Fatalf("View(seq %d): %v", seq, err)
	}
	defer v.Close()
	if v.Point().Seq != seq {
		t.Fatalf("View(seq %d) shows seq %d", seq, v.Point().Seq)
	}
	if want.declared != nil {
		if got := v.Disks(); !slices.Equal(got, want.declared) {
			t.Fatalf("View(seq %d): disks %v, declared %v", seq, got, want.declared)
		}
	}
	for _, disk := range modelDisks {
		if want.declared != nil {
			d, err := v.Disk(disk)
			if !slices.Contains(want.declared, disk) {
				if !errors.Is(err, ErrNoDisk) {
					t.Fatalf("seq %d: disk %s, not declared: %v", seq, disk, err)
				}
				continue
			}
			if err != nil || d.Size() != modelDisk {
				t.Fatalf("seq %d: disk %s: %v, want its declared %d bytes", seq, disk, err, modelDisk)
			}
			if want.data[disk] == nil {
				want.data[disk], want.alloc[disk] = make([]byte, modelDisk), make([]byte, modelDisk)
			}
			checkExport(t, fmt.Sprintf("seq %d disk %s", seq, disk), d, want.data[disk], want.alloc[disk])
			continue
		}
		wd, wa := want.data[disk], want.alloc[disk]
		d, err := v.Disk(disk)
		if wd == nil || bytes.Count(wa, []byte{mUnwritten}) == len(wa) {
			if err == nil && d.Size() > 0 {
				// Only trims or nothing: sizes may differ, content must be zero.
				buf := make([]byte, d.Size())
				if err := d.ReadAt(ctx, buf, 0); err != nil || bytes.Count(buf, []byte{0}) != len(buf) {
					t.Fatalf("seq %d disk %s: expected nothing, read %v", seq, disk, err)
				}
			}
			continue
		}
		if err != nil {
			t.Fatalf("seq %d disk %s: %v", seq, disk, err)
		}
		checkExport(t, fmt.Sprintf("seq %d disk %s", seq, disk), d, wd, wa)
	}
}

type export interface {
	nbd.Reader
	nbd.Extenter
	Size() int64
}

func checkExport(t testing.TB, what string, d export, wd, wa []byte) {
	t.Helper()
	ctx := context.Background()
	size := d.Size()
	hi := bytes.LastIndexFunc(wa, func(r rune) bool { return r == mData || r == mZero || r == mTrim }) + 1
	if size < int64(hi) || size > int64(len(wd)) {
		t.Fatalf("%s: size %d, model has data up to %d", what, size, hi)
	}
	got := make([]byte, size)
	// Read in odd pieces, as a client might.
	for off := int64(0); off < size; {
		n := min(size-off, int64(1+(off*7919)%(200<<10)))
		if err := d.ReadAt(ctx, got[off:off+n], off); err != nil {
			t.Fatalf("%s: ReadAt(%d, %d): %v", what, off, n, err)
		}
		off += n
	}
	if i := firstDiff(got, wd[:size]); i >= 0 {
		t.Fatalf("%s: byte %d = %#x, model %#x", what, i, got[i], wd[i])
	}
	for off := int64(0); off < size; {
		xs, err := d.Extents(ctx, off, size-off)
		if err != nil || len(xs) == 0 {
			t.Fatalf("%s: Extents(%d): %v %v", what, off, xs, err)
		}
		for _, x := range xs {
			for i := off; i < off+x.Length; i++ {
				a := wa[i]
				ok := false
				switch {
				case !x.Hole && !x.Zero:
					ok = a == mData
				case !x.Hole && x.Zero:
					ok = a == mZero
				case x.Hole && x.Zero:
					ok = a == mTrim || a == mUnwritten
				}
				if !ok {
					t.Fatalf("%s: byte %d in extent %+v at %d, model state %d", what, i, x, off, a)
				}
			}
			off += x.Length
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

func TestViewsMatchModel(t *testing.T) {
	for seed := uint64(1); seed <= 8; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			recs := genStream(rng, 1, 400, 1e18)
			if seed > 4 { // the same, with the membership declared
				recs = declaredStream(t, rng, recs)
			}
			fs := newFS()
			j := openT(t, fs)
			defer j.Close()
			appendAll(t, j, rng, recs)
			m := newModel()
			snaps := map[uint64]snap{}
			for i := range recs {
				m.apply(&recs[i])
				if rng.IntN(12) == 0 || recs[i].Kind == record.Marker {
					snaps[recs[i].Seq] = m.snap(recs[i].Time)
				}
			}
			for seq, s := range snaps {
				checkView(t, j, seq, s)
			}
			// Reopened from the index files, the views are the same.
			j.Close()
			j = openT(t, fs)
			for seq, s := range snaps {
				checkView(t, j, seq, s)
			}
		})
	}
}
