package journal

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

const t0 = int64(1e18)

func at(seq uint64) time.Time { return time.Unix(0, t0+int64(seq)*1e9) }

// snapsAt replays the model over recs and snapshots it after each seq in want.
func snapsAt(recs []record.Record, want map[uint64]bool) map[uint64]snap {
	m := newModel()
	out := map[uint64]snap{}
	for i := range recs {
		m.apply(&recs[i])
		if want[recs[i].Seq] {
			out[recs[i].Seq] = m.snap(recs[i].Time)
		}
	}
	return out
}

// checkAll checks every restore point the journal lists and a sample of
// seqs against the model, and that seqs before the window resolve to the
// newest long-term point at or before them.
func checkAll(t *testing.T, j *Journal, recs []record.Record, rng *rand.Rand) {
	t.Helper()
	ctx := context.Background()
	pts, w, err := j.Points(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64]bool{}
	var long []uint64
	for _, p := range pts {
		want[p.Seq] = true
		if p.LongTerm {
			long = append(long, p.Seq)
		}
	}
	sample := map[uint64]bool{}
	for range 25 {
		s := 1 + uint64(rng.IntN(int(j.LastSeq())))
		sample[s] = true
		want[s] = true
	}
	if w.FirstSeq > 0 {
		want[w.FirstSeq], sample[w.FirstSeq] = true, true
		want[w.LastSeq], sample[w.LastSeq] = true, true
	}
	snaps := snapsAt(recs, want)
	for _, p := range pts {
		checkView(t, j, p.Seq, snaps[p.Seq])
	}
	first := j.first
	for s := range sample {
		if s+1 >= first {
			checkView(t, j, s, snaps[s])
			continue
		}
		v, err := j.View(ctx, Target{Seq: s})
		var newest uint64
		for _, l := range long {
			if l <= s {
				newest = l
			}
		}
		if newest == 0 {
			if !errors.Is(err, ErrNoPoint) {
				t.Fatalf("seq %d before every point: %v", s, err)
			}
			continue
		}
		if err != nil || v.Point().Seq != newest {
			t.Fatalf("seq %d resolves to %v (%v), want long-term point %d", s, v, err, newest)
		}
		v.Close()
	}
}

func TestCompactMatchesModel(t *testing.T) {
	ctx := context.Background()
	for seed := uint64(1); seed <= 6; seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 11))
			fs := newFS()
			ret := Retention{Window: 150 * time.Second, Schedules: []Schedule{{Every: 40 * time.Second, Keep: 400 * time.Second}, {Every: 200 * time.Second, Keep: 5000 * time.Second}}, Bookmarks: 300 * time.Second}
			j := openT(t, fs, func(o *Options) { o.Retention = ret })
			defer func() { j.Close() }()
			recs := genStream(rng, 1, 1200, t0)
			if seed > 3 { // the same, with the membership declared
				recs = declaredStream(t, rng, genStream(rng, 1, 2400, t0))[:1200]
			}
			for k := 0; k < len(recs); k += 200 {
				appendAll(t, j, rng, recs[k:k+200])
				if err := j.Compact(ctx, at(uint64(k+200))); err != nil {
					t.Fatalf("Compact: %v", err)
				}
				checkAll(t, j, recs[:k+200], rng)
			}
			if j.first < 500 {
				t.Fatalf("first retained seq %d: nothing was folded", j.first)
			}
			pts, _, _ := j.Points(ctx)
			nlong := 0
			for _, p := range pts {
				if p.LongTerm {
					nlong++
				}
			}
			if nlong < 3 {
				t.Fatalf("%d long-term points: %+v", nlong, pts)
			}
			if _, err := j.Verify(ctx); err != nil {
				t.Fatal(err)
			}
			j.Close()
			fs.Crash()
			j = openT(t, fs, func(o *Options) { o.Retention = ret })
			checkAll(t, j, recs, rng)
		})
	}
}

// TestCompactCrash crashes a Compact at every one of its filesystem steps:
// after reopening, nothing acknowledged is lost and every view still
// matches the model (either the old or the new layout, never a mix).
func TestCompactCrash(t *testing.T) {
	ctx := context.Background()
	ret := Retention{Window: 100 * time.Second, Schedules: []Schedule{{Every: 60 * time.Second, Keep: 1000 * time.Second}}}
	setup := func(fs *vfs.MemFS) (*Journal, []record.Record) {
		rng := rand.New(rand.NewPCG(5, 5))
		recs := genStream(rng, 1, 300, t0)
		j := openT(t, fs, func(o *Options) { o.Retention = ret })
		appendAll(t, j, rng, recs[:150])
		if err := j.Compact(ctx, at(150)); err != nil {
			t.Fatal(err)
		}
		appendAll(t, j, rng, recs[150:])
		return j, recs
	}
	// Count the steps of the second Compact.
	fs := newFS()
	j, _ := setup(fs)
	steps := 0
	fs.SetInjector(func(op vfs.Op, _ string) error {
		switch op {
		case vfs.OpWrite, vfs.OpSync, vfs.OpRename, vfs.OpRemove, vfs.OpSyncDir, vfs.OpOpen, vfs.OpTruncate:
			steps++
		}
		return nil
	})
	if err := j.Compact(ctx, at(300)); err != nil {
		t.Fatal(err)
	}
	fs.SetInjector(nil)
	j.Close()
	if steps < 10 {
		t.Fatalf("only %d steps", steps)
	}
	t.Logf("%d steps", steps)
	for n := 1; n <= steps+1; n += 1 + n/40 {
		fs := newFS()
		j, recs := setup(fs)
		last := j.LastSeq()
		k := 0
		fs.SetInjector(func(op vfs.Op, _ string) error {
			switch op {
			case vfs.OpWrite, vfs.OpSync, vfs.OpRename, vfs.OpRemove, vfs.OpSyncDir, vfs.OpOpen, vfs.OpTruncate:
				if k++; k >= n {
					return errors.New("power lost")
				}
			}
			return nil
		})
		j.Compact(ctx, at(300)) // fails at step n: the power went
		fs.SetInjector(nil)
		fs.Crash()
		j.Close()
		j = openT(t, fs, func(o *Options) { o.Retention = ret })
		if j.LastSeq() != last {
			t.Fatalf("step %d: LastSeq %d after crash, want %d", n, j.LastSeq(), last)
		}
		checkAll(t, j, recs, rand.New(rand.NewPCG(uint64(n), 3)))
		// And the compaction completes after the restart.
		if err := j.Compact(ctx, at(300)); err != nil {
			t.Fatalf("step %d: Compact after restart: %v", n, err)
		}
		checkAll(t, j, recs, rand.New(rand.NewPCG(uint64(n), 4)))
		j.Close()
	}
}
