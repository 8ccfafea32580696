package sender_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/qcdp/qcdp/shipper/sender"
	"github.com/qcdp/qcdp/stream"
)

// TestFailedOver: the recovery site fails the group over while it streams.
// The running session is refused with stream.CodeFailedOver; Stats says
// so with the replica's words, every Hello meets the same refusal while it
// lasts, nothing more is acknowledged and WaitAcked fails with
// ErrFailedOver. Once the recovery site undoes the failover a Hello is
// welcomed, FailedOver is cleared, and what was spooled meanwhile reaches
// the replica.
func TestFailedOver(t *testing.T) {
	st := newSite(t, 1000)
	sp := openSpool(t, "g1")
	appendN(t, sp, 50, 1000)
	r := startSender(t, st, sp, nil)
	waitAcked(t, sp, 10*time.Second)
	if got := r.s.Stats().FailedOver; got != "" {
		t.Fatalf("FailedOver %q while streaming", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	why := "group acme/g1 has failed over at the recovery site: failed over (test)"
	st.fence.Store(&why)
	if err := st.srv.Stop(ctx, "acme", "g1", stream.CodeFailedOver, why); err != nil {
		t.Fatal(err)
	}
	for r.s.Stats().FailedOver == "" {
		if ctx.Err() != nil {
			t.Fatalf("the sender never said the group failed over: %+v", r.s.Stats())
		}
		time.Sleep(2 * time.Millisecond)
	}
	if s := r.s.Stats(); s.FailedOver != why || s.Connected {
		t.Fatalf("stats of a failed-over group: %+v", s)
	}
	acked := sp.Acked()
	appendN(t, sp, 20, 1000)
	n0 := r.s.Stats().Reconnects
	if !refusedAgain(t, r.s, n0) {
		t.Fatalf("the sender was welcomed while the group is failed over: %+v", r.s.Stats())
	}
	if s := r.s.Stats(); s.FailedOver != why || sp.Acked() != acked {
		t.Fatalf("after more Hellos: FailedOver %q, acked %d (was %d)", s.FailedOver, sp.Acked(), acked)
	}
	if err := r.s.WaitAcked(ctx, sp.LastSeq()); !errors.Is(err, sender.ErrFailedOver) {
		t.Fatalf("WaitAcked while failed over: %v, want ErrFailedOver", err)
	}

	// The recovery site undoes the failover.
	st.fence.Store(nil)
	for r.s.Stats().FailedOver != "" {
		if ctx.Err() != nil {
			t.Fatalf("never welcomed again: %+v", r.s.Stats())
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := r.s.WaitAcked(ctx, sp.LastSeq()); err != nil {
		t.Fatalf("WaitAcked once the failover is undone: %v (%+v)", err, r.s.Stats())
	}
	if s := r.s.Stats(); s.FailedOver != "" || s.LastAcked != sp.LastSeq() {
		t.Fatalf("stats once welcomed again: %+v", s)
	}
	wctx, wcancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer wcancel()
	if err := r.s.WaitAcked(wctx, sp.LastSeq()+1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitAcked for a seq never written: %v, want the context's deadline", err)
	}
}
