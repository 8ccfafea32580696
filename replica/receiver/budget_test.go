package receiver

import (
	"context"
	"testing"
	"time"
)

// The budget serves waiters in order (a large one is not starved by small
// ones arriving after it), and a waiter that gives up lets the ones behind
// it through.
func TestBudgetOrder(t *testing.T) {
	b := newBudget(10)
	if !b.tryAcquire(6) || b.tryAcquire(5) {
		t.Fatal("tryAcquire past the size")
	}
	ctx := context.Background()
	large := make(chan error, 1)
	go func() { large <- b.acquire(ctx, 8) }()
	waitWaiters(t, b, 1)
	if b.tryAcquire(1) {
		t.Fatal("a small request went ahead of a waiting large one")
	}
	small := make(chan error, 1)
	go func() { small <- b.acquire(ctx, 2) }()
	waitWaiters(t, b, 2)
	b.release(6)
	if err := <-large; err != nil {
		t.Fatal(err)
	}
	if err := <-small; err != nil {
		t.Fatal(err)
	}
	if b.inUse() != 10 {
		t.Fatalf("in use %d, want 10", b.inUse())
	}

	// A waiter at the head gives up: the one behind it, which fits, goes.
	cctx, cancel := context.WithCancel(ctx)
	gaveUp := make(chan error, 1)
	go func() { gaveUp <- b.acquire(cctx, 9) }()
	waitWaiters(t, b, 1)
	after := make(chan error, 1)
	go func() { after <- b.acquire(ctx, 2) }()
	waitWaiters(t, b, 2)
	b.release(2)
	cancel()
	if err := <-gaveUp; err == nil {
		t.Fatal("a cancelled waiter was granted")
	}
	if err := <-after; err != nil {
		t.Fatal(err)
	}
	b.release(10)
	if b.inUse() != 0 || len(b.waiters) != 0 {
		t.Fatalf("in use %d, %d waiters", b.inUse(), len(b.waiters))
	}
}

// waitWaiters waits until n requests wait in line.
func waitWaiters(t *testing.T, b *budget, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.mu.Lock()
		w := len(b.waiters)
		b.mu.Unlock()
		if w == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d waiters, want %d", w, n)
		}
		time.Sleep(time.Millisecond)
	}
}
