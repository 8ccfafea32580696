package shipper

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/qcdp/qcdp/shipper/sender"
	"github.com/qcdp/qcdp/shipper/spool"
)

// Defaults of GroupOptions.HealMinBackoff and HealMaxBackoff: the first
// reopen of a broken spool is tried at once, the next ones after 1 s,
// 2 s, 4 s and so on up to a minute.
const (
	DefaultHealMinBackoff = time.Second
	DefaultHealMaxBackoff = time.Minute
)

// Group states (Health.State).
const (
	StateOK      = "ok"
	StateHealing = "healing" // the spool broke; it is being reopened
)

// Health is the state of a group's own machinery, apart from its disks:
// whether its spool takes writes, or broke and is being reopened.
type Health struct {
	State string `json:"state"`
	// Error says why the group is healing: what broke the spool, then why
	// the last reopen failed.
	Error string `json:"error,omitempty"`
	// NextTry is when the next reopen is tried (zero while one runs).
	NextTry time.Time `json:"next_try,omitzero"`
	// Heals counts the broken spools reopened since the group opened.
	Heals int64 `json:"heals,omitempty"`
}

// String is the state for a person: "ok", or "healing: spool reopen
// failed: ..., next try in 4s".
func (h Health) String() string {
	if h.State != StateHealing {
		return h.State
	}
	s := StateHealing + ": " + h.Error
	if !h.NextTry.IsZero() {
		s += fmt.Sprintf(", next try in %v", max(time.Until(h.NextTry), 0).Round(time.Second))
	}
	return s
}

// Health returns the group's state now.
func (g *Group) Health() Health {
	g.hmu.Lock()
	defer g.hmu.Unlock()
	return g.health
}

func (g *Group) setHealth(h Health) {
	g.hmu.Lock()
	defer g.hmu.Unlock()
	h.Heals = g.health.Heals
	g.health = h
}

func (g *Group) newSender(sp *spool.Spool) (*sender.Sender, error) {
	if g.sndOpts == nil {
		return nil, nil
	}
	so := *g.sndOpts
	so.Spool = sp
	return sender.New(so)
}

// keep runs the sender of the spool in use until ctx ends, and heals the
// spool whenever it breaks (see Serve).
func (g *Group) keep(ctx context.Context) {
	for {
		g.hmu.Lock()
		sp, snd := g.sp, g.snd
		g.hmu.Unlock()
		stop := g.runSender(ctx, snd)
		select {
		case <-ctx.Done():
			stop()
			return
		case <-sp.Broken():
		}
		stop()
		if !g.heal(ctx, sp) {
			return
		}
	}
}

// runSender runs snd (nil: none) until the returned function is called,
// which waits for it.
func (g *Group) runSender(ctx context.Context, snd *sender.Sender) (stop func()) {
	if snd == nil {
		return func() {}
	}
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		// It returns early only when its spool broke (keep heals it) or
		// was closed (the group is shutting down).
		if err := snd.Run(sctx); err != nil && !errors.Is(err, spool.ErrBroken) && !errors.Is(err, spool.ErrClosed) {
			g.log.Error("sender stopped; the spool keeps the writes", "err", err)
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// heal closes the broken spool old and opens its directory again until
// that succeeds (true) or ctx ends (false), then makes the sequencer
// append to the new spool and a new sender ship it.
func (g *Group) heal(ctx context.Context, old *spool.Spool) bool {
	cause := old.Err()
	g.log.Error("group: the spool broke; capture answers EIO (QEMU tracks the writes) until it is reopened", "err", cause)
	g.hmu.Lock()
	g.reopening = true
	g.hmu.Unlock()
	g.setHealth(Health{State: StateHealing, Error: fmt.Sprintf("spool broken (%v); reopening", cause)})
	if err := old.Close(); err != nil && !errors.Is(err, spool.ErrClosed) {
		g.log.Warn("group: close the broken spool", "err", err)
	}
	minB := cmpOr(g.opts.HealMinBackoff, DefaultHealMinBackoff)
	maxB := max(cmpOr(g.opts.HealMaxBackoff, DefaultHealMaxBackoff), minB)
	backoff := minB
	for {
		sp, snd, err := g.reopen(ctx)
		if err == nil {
			g.seq.reopened(sp)
			g.hmu.Lock()
			g.sp, g.snd, g.reopening = sp, snd, false
			g.health = Health{State: StateOK, Heals: g.health.Heals + 1}
			g.hmu.Unlock()
			g.log.Info("group: spool reopened; capture and stream resume", "last_seq", sp.LastSeq(), "epoch", sp.Identity().Epoch)
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		g.log.Error("group: spool reopen failed", "err", err, "retry_in", backoff)
		g.setHealth(Health{State: StateHealing, Error: fmt.Sprintf("spool reopen failed: %v", err), NextTry: time.Now().Add(backoff)})
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
		g.setHealth(Health{State: StateHealing, Error: fmt.Sprintf("spool reopen failed: %v; reopening", err)})
		backoff = min(2*backoff, maxB)
	}
}

// reopen opens the spool and makes its sender.
func (g *Group) reopen(ctx context.Context) (*spool.Spool, *sender.Sender, error) {
	sp, err := spool.Open(ctx, g.opts.Spool)
	if err != nil {
		return nil, nil, err
	}
	snd, err := g.newSender(sp)
	if err != nil {
		sp.Close()
		return nil, nil, err
	}
	return sp, snd, nil
}

func cmpOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}
