package failover

import (
	"context"
	"testing"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica/journal"
)

// TestReview4DeclaredDiskMissingFromDefinition: the group declares two
// disks of VM uuid-1 at the point, but the VM's definition in effect there
// names only one (a disk added later whose new definition the host could
// not record: "VM definition not recorded: the recovery site keeps the one
// it had"). The failover succeeds and the standby boots without a
// protected disk whose data the replica holds, and nothing says so.
func TestReview4DeclaredDiskMissingFromDefinition(t *testing.T) {
	ctx := context.Background()
	e, site, _, _ := newFixture(t)
	site.decl.Disks = append(site.decl.Disks, record.Member{Disk: "web1.vdc", Size: 1 << 20, VM: "uuid-1"})
	st, err := e.Failover(ctx, "t", "g", ModeTest, journal.Target{})
	if err != nil {
		return // refused: fine
	}
	for _, vm := range st.VMs {
		if vm.ID == "uuid-1" && len(vm.Disks) < 2 {
			t.Fatalf("standby %s started with disks %+v: the declared, protected disk web1.vdc is silently left out", vm.Domain, vm.Disks)
		}
	}
}
