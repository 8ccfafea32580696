package protect

import (
	"context"
	"errors"
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/qcdp/qcdp/hypervisor"
	"github.com/qcdp/qcdp/record"
)

// Freezer is a source that can quiesce a guest's filesystems through its
// QEMU guest agent.
type Freezer interface {
	FreezeFS(ctx context.Context, vm hypervisor.VM) (int, error)
	ThawFS(ctx context.Context, vm hypervisor.VM) (int, error)
}

// ErrUnknownGroup: no group of that name in the policy.
var ErrUnknownGroup = errors.New("protect: no such group")

// ErrBadName: a bookmark name ValidBookmarkName refuses.
var ErrBadName = errors.New("protect: invalid bookmark name")

// ValidBookmarkName checks a bookmark's name: 1 to record.MaxName bytes of
// UTF-8 with no slash, no white space and no control character (it is
// typed on command lines and printed in tables and logs).
func ValidBookmarkName(name string) error {
	if name == "" || len(name) > record.MaxName {
		return fmt.Errorf("%w %q: it must be 1 to %d bytes", ErrBadName, name, record.MaxName)
	}
	if !utf8.ValidString(name) {
		return fmt.Errorf("%w %q: it is not UTF-8", ErrBadName, name)
	}
	for _, r := range name {
		switch {
		case r == '/':
			return fmt.Errorf("%w %q: it must not contain a slash", ErrBadName, name)
		case unicode.IsSpace(r):
			return fmt.Errorf("%w %q: it must not contain white space", ErrBadName, name)
		case unicode.IsControl(r):
			return fmt.Errorf("%w %q: it must not contain control characters", ErrBadName, name)
		}
	}
	return nil
}

// freezeTimeout bounds how long a guest may stay frozen for a bookmark:
// applications stall while it is.
const freezeTimeout = 10 * time.Second

// BookmarkResult says what a bookmark became.
type BookmarkResult struct {
	Seq     uint64   `json:"seq"`
	Kind    string   `json:"kind"`               // app-consistent, crash-consistent or user-bookmark
	Frozen  []string `json:"frozen,omitempty"`   // VMs whose filesystems were frozen
	NoAgent []string `json:"no_agent,omitempty"` // VMs with no answering guest agent
	Failed  []string `json:"failed,omitempty"`   // VMs whose freeze or thaw failed, with why
}

// Bookmark puts a named point into the group's stream. A plain bookmark is
// a user bookmark at the current seq. With app, every protected VM of the
// group is frozen through its guest agent first and thawed right after the
// marker: the point is app-consistent when every VM froze, else it is
// recorded crash-consistent and the VMs without an agent are reported.
func (d *Engine) Bookmark(ctx context.Context, group, name string, app bool) (BookmarkResult, error) {
	var res BookmarkResult
	g, ok := d.groups[group]
	if !ok {
		return res, fmt.Errorf("%w: %q", ErrUnknownGroup, group)
	}
	if err := ValidBookmarkName(name); err != nil {
		return res, err
	}
	d.mu.Lock()
	final := g.final
	d.mu.Unlock()
	if final != 0 {
		// The recovery site checks that the final point is the newest.
		return res, fmt.Errorf("%w: group %s: its final point (seq %d) must stay the newest record until the recovery site fails it over; a VM of the group attached again ends that", ErrPrepared, group, final)
	}
	if !app {
		seq, err := g.Sequencer().Mark(record.UserBookmark, name)
		res.Seq, res.Kind = seq, record.UserBookmark.String()
		return res, err
	}
	type target struct {
		v *vmCapture
		f Freezer
	}
	var vms []target
	d.mu.Lock()
	for _, v := range d.vms {
		if v.group != g || v.detached || v.failedOver {
			continue
		}
		f, _ := v.src.(Freezer)
		vms = append(vms, target{v, f})
	}
	d.mu.Unlock()

	// Not bound to the caller: a freeze whose caller went away may still
	// reach the guest, and what was asked to freeze must be thawed.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), freezeTimeout)
	defer cancel()
	var frozen, attempted []target
	for _, t := range vms {
		if t.f == nil {
			res.NoAgent = append(res.NoAgent, t.v.vm.Name)
			continue
		}
		_, err := t.f.FreezeFS(fctx, t.v.vm)
		switch {
		case err == nil:
			frozen = append(frozen, t)
			res.Frozen = append(res.Frozen, t.v.vm.Name)
		case errors.Is(err, hypervisor.ErrNoAgent):
			res.NoAgent = append(res.NoAgent, t.v.vm.Name)
		default:
			res.Failed = append(res.Failed, fmt.Sprintf("%s: freeze: %v", t.v.vm.Name, err))
		}
		if err == nil || !errors.Is(err, hypervisor.ErrNoAgent) {
			// A freeze that failed or timed out may still have frozen
			// the guest: thawing a guest that is not frozen is harmless.
			attempted = append(attempted, t)
		}
	}
	// App-consistent only when there was something to freeze and all of
	// it froze: a group with no protected VM running gets a
	// crash-consistent point, never an app-consistent claim.
	kind := record.AppConsistent
	if len(vms) == 0 || len(frozen) != len(vms) {
		kind = record.CrashConsistent
	}
	seq, markErr := g.Sequencer().Mark(kind, name)
	// Thaw whatever happens, with a context of its own: a guest must not
	// stay frozen because the caller went away.
	tctx, tcancel := context.WithTimeout(context.Background(), freezeTimeout)
	defer tcancel()
	for _, t := range attempted {
		if _, err := t.f.ThawFS(tctx, t.v.vm); err != nil {
			res.Failed = append(res.Failed, fmt.Sprintf("%s: thaw: %v", t.v.vm.Name, err))
			d.log.Error("guest left frozen", "vm", t.v.vm.Name, "err", err)
		}
	}
	res.Seq, res.Kind = seq, kind.String()
	if markErr != nil {
		return res, fmt.Errorf("protect: group %s: bookmark %q: %w", group, name, markErr)
	}
	d.log.Info("bookmark", "group", group, "name", name, "kind", res.Kind, "seq", seq,
		"frozen", len(res.Frozen), "no_agent", res.NoAgent)
	return res, nil
}

// runSchedules takes the app-consistent bookmarks the policy schedules
// until ctx ends.
func (d *Engine) runSchedules(ctx context.Context) {
	var tickers []*time.Ticker
	cases := make(chan string)
	for _, g := range d.groups {
		if every := g.cfg.AppConsistentEvery; every > 0 {
			t := time.NewTicker(every)
			tickers = append(tickers, t)
			name := g.cfg.Name
			d.wg.Add(1)
			go func() {
				defer d.wg.Done()
				for {
					select {
					case <-ctx.Done():
						return
					case <-t.C:
						select {
						case cases <- name:
						case <-ctx.Done():
							return
						}
					}
				}
			}()
		}
	}
	defer func() {
		for _, t := range tickers {
			t.Stop()
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return
		case group := <-cases:
			if d.sealed(group) {
				continue // failed over, or prepared for a planned failover
			}
			name := "scheduled-" + time.Now().UTC().Format("20060102T150405Z")
			if _, err := d.Bookmark(ctx, group, name, true); err != nil {
				d.log.Warn("scheduled app-consistent bookmark", "group", group, "err", err)
			}
		}
	}
}
