package shipper

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
)

// TestResyncRangeLock: a live write that enters a range a resync watches
// makes the resync's commit report raced and append nothing (the resync
// reads again); a live write elsewhere does not; while a commit appends,
// a live write to its range waits and lands after it; the bracket cannot
// close while a resync holds it.
func TestResyncRangeLock(t *testing.T) {
	ctx := context.Background()
	sp := openSpool(t, 0)
	seq := NewSequencer(sp)
	exp, err := seq.Export("vda", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := seq.MarkDisk(record.ResyncBegin, "vda"); err != nil {
		t.Fatal(err)
	}
	release := seq.HoldResync("vda")
	resync := func(b byte) func() error {
		return func() error { return exp.ResyncWrite(bytes.Repeat([]byte{b}, 8192), 4096) }
	}

	// Raced: a live write into the watched range.
	w := exp.WatchRange(4096, 8192)
	if err := exp.WriteAt(ctx, bytes.Repeat([]byte{7}, 512), 64<<10); err != nil { // elsewhere
		t.Fatal(err)
	}
	if err := exp.WriteAt(ctx, bytes.Repeat([]byte{2}, 512), 8192); err != nil { // into it: at once
		t.Fatal(err)
	}
	if raced, err := w.Commit(resync(1)); !raced || err != nil {
		t.Fatalf("commit after a live write into the range: raced %v, %v", raced, err)
	}

	// Not raced: the commit appends, and a live write arriving during it
	// waits and lands after it.
	w = exp.WatchRange(4096, 8192)
	live := make(chan error, 1)
	raced, err := w.Commit(func() error {
		go func() { live <- exp.WriteAt(ctx, bytes.Repeat([]byte{3}, 512), 8192) }()
		select {
		case err := <-live:
			return fmt.Errorf("a live write went through during the commit's append (%v)", err)
		case <-time.After(100 * time.Millisecond):
		}
		return resync(4)()
	})
	if raced || err != nil {
		t.Fatalf("commit: raced %v, %v", raced, err)
	}
	if err := <-live; err != nil {
		t.Fatal(err)
	}
	exp.WatchRange(0, 4096).Cancel()

	if _, err := seq.MarkDisk(record.ResyncEnd, "vda"); !errors.Is(err, ErrResyncPending) {
		t.Fatalf("resync-end while a resync holds the bracket: %v", err)
	}
	release()
	release()
	if _, err := seq.MarkDisk(record.ResyncEnd, "vda"); err != nil {
		t.Fatalf("resync-end after the hold: %v", err)
	}
	var order []string
	for _, r := range readAll(t, sp, 1) {
		if r.Kind == record.Data {
			order = append(order, fmt.Sprintf("%d@%d", r.Length, r.Offset))
		}
	}
	want := []string{"512@65536", "512@8192", "8192@4096", "512@8192"}
	if !slices.Equal(order, want) {
		t.Fatalf("data records %v, want %v: the raced commit appends nothing, the committed one lands before the live write it held", order, want)
	}
	if n := exp.Refusals(); n != 0 {
		t.Fatalf("%d refusals", n)
	}
	if exp.locks.busy.Load() != 0 {
		t.Fatalf("%d ranges still held or watched", exp.locks.busy.Load())
	}
}
