package failover

import (
	"context"
	"testing"

	"github.com/qcdp/qcdp/replica/journal"
)

// streamingSite is a site whose host streams until the fence: each
// Points call sees more records.
type streamingSite struct{ *fakeSite }

func (s streamingSite) Fence(ctx context.Context, tenant, group, why string) error {
	s.mu.Lock()
	s.last += 5 // what arrived between the point's choice and the fence
	s.mu.Unlock()
	return s.fakeSite.Fence(ctx, tenant, group, why)
}

// TestReview4UnplannedDefaultPointBeforeFence: `qcdp failover start`
// without a point picks "the newest" before it fences the group; what the
// replica takes between that choice and the fence (libvirt dial, lookups)
// is durable at the replica but not in the standbys.
func TestReview4UnplannedDefaultPointBeforeFence(t *testing.T) {
	ctx := context.Background()
	e, site, _, _ := newFixture(t)
	e.site = streamingSite{site}
	st, err := e.Failover(ctx, "t", "g", ModeStart, journal.Target{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Point.Seq != site.last {
		t.Fatalf("standbys start from seq %d; when the group was fenced the replica held up to seq %d", st.Point.Seq, site.last)
	}
}
