package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica/journal"
)

// The view rows: one journal grows through the sizes asked for; at each
// size the time to open a view of a random restore point and read one
// 4 KiB block of it, and the time to reopen the journal (what a replica
// daemon's restart costs before its first view).

const (
	viewRecord = 1024     // payload bytes of each record
	viewArea   = 64 << 20 // the disk area the records land in, at random 1 KiB-aligned offsets
	viewBatch  = 4096     // records per Append (one fsync each)
	viewOpens  = 25       // views opened at each size
)

// viewStep is what was measured at one journal size.
type viewStep struct {
	records  int           // retained records (the marker included)
	fill     time.Duration // appending the records since the previous step
	open     []time.Duration
	reopen   time.Duration // Close + Open of the journal
	reached  bool          // false: the fill budget ran out before this size
	filledTo int           // when !reached: how many records the journal held
}

// measureViews grows a journal in dir through sizes, giving the appends
// budget in all.
func measureViews(ctx context.Context, dir string, sizes []int, budget time.Duration) ([]viewStep, error) {
	open := func() (*journal.Journal, error) {
		return journal.Open(ctx, journal.Options{Dir: dir, Group: "view", Logger: quietLog})
	}
	j, err := open()
	if err != nil {
		return nil, err
	}
	defer func() { j.Close() }()
	now := time.Now().UnixNano()
	// The initial sync is complete from seq 1: every boundary is a point.
	if err := j.Append(ctx, []record.Record{{Seq: 1, Time: now, Kind: record.Marker, Marker: record.SyncComplete, Disk: "vda"}}); err != nil {
		return nil, err
	}
	pay := newPayloads(viewBatch, viewRecord)
	rng := rand.New(rand.NewPCG(7, 7))
	batch := make([]record.Record, 0, viewBatch)
	offs := []uint64{0, 0} // by seq: where each record wrote (seq 1 is the marker)
	var filling time.Duration
	var steps []viewStep
	for _, size := range sizes {
		st := viewStep{records: size}
		t0 := time.Now()
		for int(j.LastSeq()) < size {
			if filling+time.Since(t0) > budget {
				break
			}
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			batch = batch[:0]
			now := time.Now().UnixNano()
			for s := j.LastSeq() + 1; len(batch) < viewBatch && s <= uint64(size); s++ {
				off := uint64(rng.IntN(viewArea/viewRecord)) * viewRecord
				batch = append(batch, record.Record{Seq: s, Time: now, Kind: record.Data, Disk: "vda",
					Offset: off, Length: viewRecord, Payload: pay.next()})
			}
			if err := j.Append(ctx, batch); err != nil {
				return nil, fmt.Errorf("fill journal to %d records: %w", size, err)
			}
			for i := range batch {
				offs = append(offs, batch[i].Offset)
			}
		}
		st.fill = time.Since(t0)
		filling += st.fill
		if int(j.LastSeq()) < size {
			st.filledTo = int(j.LastSeq())
			steps = append(steps, st)
			break
		}
		st.reached = true
		last := j.LastSeq()
		buf := make([]byte, 4096)
		for range viewOpens {
			// A random point, and the 4 KiB block holding the record of that
			// seq: a block with data in the view, resolved through the index.
			at := journal.Target{Seq: 2 + rng.Uint64N(last-1)}
			off := int64(offs[at.Seq]) &^ 4095
			t := time.Now()
			v, err := j.View(ctx, at)
			if err != nil {
				return nil, fmt.Errorf("view of %v with %d records: %w", at, last, err)
			}
			dv, err := v.Disk("vda")
			if err == nil {
				err = dv.ReadAt(ctx, buf[:min(int64(len(buf)), dv.Size()-off)], off)
			}
			st.open = append(st.open, time.Since(t))
			if cerr := v.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return nil, fmt.Errorf("read a block of the view of %v with %d records: %w", at, last, err)
			}
		}
		slices.Sort(st.open)
		t := time.Now()
		if err := j.Close(); err != nil {
			return nil, err
		}
		if j, err = open(); err != nil {
			return nil, fmt.Errorf("reopen the journal with %d records: %w", last, err)
		}
		st.reopen = time.Since(t)
		steps = append(steps, st)
	}
	return steps, nil
}
