package journal

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"
)

// TestReview4PinLostAcrossReopen: a failover's standby reads a view of
// seq s; retention moves the window past s while the view is open (a
// test failover keeps streaming; a long unplanned one ages out), so s is
// kept only as a pinned, not kept, layer. After the replica daemon
// restarts, failover.Resume exports Target{Seq: s} again: the journal must
// give the same point s (or refuse), never silently another one, since
// the standby's qcow2 overlay holds deltas over s.
func TestReview4PinLostAcrossReopen(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(4, 11))
	fs := newFS()
	ret := Retention{Window: 150 * time.Second, Schedules: []Schedule{{Every: 200 * time.Second, Keep: 5000 * time.Second}}}
	j := openT(t, fs, func(o *Options) { o.Retention = ret })
	recs := genStream(rng, 1, 1200, t0)
	appendAll(t, j, rng, recs[:400])
	if err := j.Compact(ctx, at(400)); err != nil {
		t.Fatal(err)
	}
	// The standby's point: a valid boundary in the window, not a kept one.
	_, w, err := j.Points(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var v *View
	for s := w.LastSeq - 37; s >= w.FirstSeq; s-- {
		if v, err = j.View(ctx, Target{Seq: s}); err == nil {
			break
		}
	}
	if v == nil {
		t.Fatal("no valid point in the window")
	}
	s := v.Point().Seq
	// Streaming goes on; retention moves the window past s.
	appendAll(t, j, rng, recs[400:1200])
	if err := j.Compact(ctx, at(1200)); err != nil {
		t.Fatal(err)
	}
	if j.first <= s+1 {
		t.Fatalf("window still holds %d (first %d)", s, j.first)
	}
	if v2, err := j.View(ctx, Target{Seq: s}); err != nil || v2.Point().Seq != s {
		t.Fatalf("while pinned: %v %v", v2, err)
	} else {
		v2.Close()
	}
	// The replica daemon restarts (the view is not closed: the process died).
	j.Close()
	j = openT(t, fs, func(o *Options) { o.Retention = ret })
	defer j.Close()
	for _, l := range j.layers {
		t.Logf("layer %+v", l.ref)
	}
	t.Logf("s=%d first=%d", s, j.first)
	v3, err := j.View(ctx, Target{Seq: s})
	if err == nil && v3.Point().Seq != s {
		t.Fatalf("after a restart, Target{Seq: %d} silently resolves to seq %d: a resumed standby's overlay would sit over another disk state", s, v3.Point().Seq)
	}
	if err != nil {
		t.Logf("after a restart the point is refused: %v (the standby loses its backing)", err)
	}
}
