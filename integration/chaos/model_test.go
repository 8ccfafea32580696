package chaos

import (
	"errors"
	"testing"
	"time"

	"github.com/qcdp/qcdp/integration/guest/workload"
)

// apply writes writes 1..upTo of p onto copies of base, as the guest does.
func apply(p workload.Params, base [][]byte, upTo uint64) [][]byte {
	disks := make([][]byte, p.Disks)
	for d := range disks {
		disks[d] = make([]byte, p.AreaBytes())
		if base != nil {
			copy(disks[d], base[d])
		}
	}
	pl := workload.NewPlan(p)
	for range upTo {
		w := pl.Next()
		workload.Encode(disks[w.Disk][w.Block*workload.BlockSize:(w.Block+1)*workload.BlockSize], w.Header(p.Seed))
	}
	return disks
}

// TestEpochLocate: a second boot's states are told apart from the first's,
// and a view that is no state, a corrupt block, a block of another boot
// and a view lacking a completed write are each caught.
func TestEpochLocate(t *testing.T) {
	p1 := workload.Params{Seed: EpochSeed(9, 1), Blocks: 64, Disks: 2, SyncEvery: 10}
	e1, err := NewEpoch(1, p1, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	end1 := apply(p1, nil, 300)
	p2 := p1
	p2.Seed = EpochSeed(9, 2)
	if p2.Seed == p1.Seed {
		t.Fatal("two boots share a seed")
	}
	e2, err := NewEpoch(2, p2, end1, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, seq := range []uint64{0, 1, 57, 200, 300} {
		r, err := e1.Locate(apply(p1, nil, seq), 300)
		if err != nil || !r.Contains(seq) {
			t.Errorf("epoch 1 at seq %d: %v, %v", seq, r, err)
		}
		r, err = e2.Locate(apply(p2, end1, seq), 300)
		if err != nil || !r.Contains(seq) {
			t.Errorf("epoch 2 at seq %d: %v, %v", seq, r, err)
		}
	}
	// A block of epoch 1 that epoch 2 overwrote, shown under epoch 2's
	// newer blocks: a torn state.
	at100 := apply(p2, end1, 100)
	at250 := apply(p2, end1, 250)
	torn := [][]byte{at250[0], at100[1]}
	if _, err := e2.Locate(torn, 250); !errors.Is(err, ErrNotState) || !errors.Is(err, workload.ErrNoState) {
		t.Errorf("disks of two instants: %v", err)
	}
	// Epoch 1's final state is not a state of epoch 2 unless nothing
	// changed it: at seq 0 it is exactly that.
	if r, err := e2.Locate(end1, 300); err != nil || r.Lo != 0 {
		t.Errorf("epoch 2's base: %v, %v", r, err)
	}
	// A flipped bit.
	bad := apply(p2, end1, 120)
	bad[1][5*workload.BlockSize+100] ^= 4
	if _, err := e2.Locate(bad, 120); !errors.Is(err, ErrNotState) {
		t.Errorf("a flipped bit: %v", err)
	}
	// A write the guest completed (known) but the view lacks.
	r, err := e2.Locate(apply(p2, end1, 100), 300)
	if err != nil {
		t.Fatal(err)
	}
	if r.Hi >= 300 {
		t.Errorf("seq 100's state holds until %d, past seq 300 the guest completed", r.Hi)
	}
	// The model is replayed lazily: a view ahead of what was known
	// extends it.
	if r, err := e2.Locate(apply(p2, end1, 290), 10); err != nil || !r.Contains(290) {
		t.Errorf("ahead of known: %v, %v", r, err)
	}
}
