package failover

import (
	"context"
	"fmt"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica/journal"
)

// FinalBookmark is the bookmark a protected host writes when it has shut
// the group's VMs down for a planned failover (`qcdp failover prepare` on
// the host): every write they made is before it in the stream.
const FinalBookmark = "qcdp-planned-failover"

// PointsSite is what a planned failover asks of the site besides Site.
type PointsSite interface {
	Points(ctx context.Context, tenant, group string) ([]journal.Point, journal.Window, error)
}

// Planned fails a group over with no data lost. Its host has shut the
// group's VMs down cleanly, drained its spool and marked the final point
// (`qcdp failover prepare GROUP` there, which returns once the replica
// holds it). Planned fences the group, checks that the final point is the
// newest record the replica holds (nothing was written after it, so the
// standbys start from exactly the disks the VMs had when they stopped),
// and starts the standbys from it on the production networks.
func (e *Engine) Planned(ctx context.Context, tenant, group string) (*State, error) {
	unlock, err := e.lock(tenant, group)
	if err != nil {
		return nil, err
	}
	defer unlock()
	ps, ok := e.site.(PointsSite)
	if !ok {
		return nil, fmt.Errorf("failover: the site lists no points")
	}
	final, err := e.finalPoint(ctx, ps, tenant, group)
	if err != nil {
		return nil, err
	}
	fence := func(ctx context.Context) error {
		if err := e.site.Fence(ctx, tenant, group, fmt.Sprintf("failed over (planned) at seq %d", final.Seq)); err != nil {
			return err
		}
		// Fenced: nothing more arrives. The final point must be the end.
		_, w, err := ps.Points(ctx, tenant, group)
		if err != nil {
			return err
		}
		if w.LastSeq != final.Seq {
			return fmt.Errorf("%w: the replica holds records up to seq %d, after the final point at seq %d: the group's VMs wrote after it (started again?); run `qcdp failover prepare %s` on the host again",
				ErrPlan, w.LastSeq, final.Seq, group)
		}
		return nil
	}
	return e.failover(ctx, tenant, group, ModePlanned, journal.Target{Seq: final.Seq}, fence)
}

// finalPoint is the group's newest final bookmark, which must be its
// newest record.
func (e *Engine) finalPoint(ctx context.Context, ps PointsSite, tenant, group string) (journal.Point, error) {
	points, w, err := ps.Points(ctx, tenant, group)
	if err != nil {
		return journal.Point{}, fmt.Errorf("failover of %s/%s: %w", tenant, group, err)
	}
	for i := len(points) - 1; i >= 0; i-- {
		p := points[i]
		if p.Kind != record.UserBookmark || p.Name != FinalBookmark {
			continue
		}
		if p.Seq != w.LastSeq {
			return journal.Point{}, fmt.Errorf("%w: the final point of %s/%s (seq %d, %s) is not its newest record (seq %d): its VMs wrote after it; run `qcdp failover prepare %s` on the protected host again",
				ErrPlan, tenant, group, p.Seq, p.Time.UTC().Format(time.RFC3339), w.LastSeq, group)
		}
		return p, nil
	}
	return journal.Point{}, fmt.Errorf("%w: %s/%s has no final point: run `qcdp failover prepare %s` on the protected host first (it shuts the VMs down and drains the stream)",
		ErrPlan, tenant, group, group)
}
