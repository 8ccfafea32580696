package shipper

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
)

// TestResyncRangeLock: a live write to a range a resync holds waits, and
// reaches the stream after the resync's bytes (it is newer than what the
// resync read); a live write elsewhere does not wait; the bracket cannot
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
	unlock := exp.LockRange(4096, 8192)

	if err := exp.WriteAt(ctx, bytes.Repeat([]byte{7}, 512), 64<<10); err != nil { // elsewhere: at once
		t.Fatal(err)
	}
	live := make(chan error, 1)
	go func() { live <- exp.WriteAt(ctx, bytes.Repeat([]byte{2}, 512), 8192) }()
	select {
	case err := <-live:
		t.Fatalf("a live write into a held range went through (%v)", err)
	case <-time.After(100 * time.Millisecond):
	}
	if err := exp.ResyncWrite(bytes.Repeat([]byte{1}, 8192), 4096); err != nil {
		t.Fatal(err)
	}
	unlock()
	if err := <-live; err != nil {
		t.Fatal(err)
	}
	if _, err := seq.MarkDisk(record.ResyncEnd, "vda"); !errors.Is(err, ErrResyncPending) {
		t.Fatalf("resync-end while a resync holds the bracket: %v", err)
	}
	release()
	release()
	if _, err := seq.MarkDisk(record.ResyncEnd, "vda"); err != nil {
		t.Fatalf("resync-end after the hold: %v", err)
	}
	var order []uint64
	for _, r := range readAll(t, sp, 1) {
		if r.Kind == record.Data {
			order = append(order, r.Offset)
		}
	}
	if !slices.Equal(order, []uint64{64 << 10, 4096, 8192}) {
		t.Fatalf("data records at %v, want 65536 (elsewhere), 4096 (the resync), 8192 (the live write it held)", order)
	}
	if n := exp.Refusals(); n != 0 {
		t.Fatalf("%d refusals", n)
	}
}
