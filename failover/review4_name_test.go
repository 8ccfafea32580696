package failover

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica/journal"
)

// TestReview4DotDotVMName: a hostile protected host names its VM ".."
// (record.VMDefinition.Validate checks only the name's length and UTF-8;
// domainName keeps dots). The standby's directory is then
// standby_dir/<tenant>/<group>/.. = standby_dir/<tenant>: the failover
// chowns it to QEMU's user, and its teardown (a failure, undo) removes it
// whole, with every other group's standby overlays and state files of the
// tenant in it.
func TestReview4DotDotVMName(t *testing.T) {
	ctx := context.Background()
	e, site, lv, p := newFixture(t)
	def := testDef()
	def.Name = ".."
	if err := def.Validate(); err != nil {
		t.Fatalf("a VM named \"..\" is a valid definition (any name a hypervisor allows is): %v", err)
	}
	site.defs = []journal.DefinitionAt{{Seq: 3, Def: def}}
	site.decl = record.Declaration{Disks: []record.Member{{Disk: "web1.vda", Size: 1 << 30, VM: "uuid-1"}}}
	// Another group of the same tenant has a committed standby: its disk.
	other := filepath.Join(p.StandbyDir, "t", "other", "db1")
	if err := os.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(other, "vda.qcow2"), []byte("the only copy of a committed standby's disk"), 0o600); err != nil {
		t.Fatal(err)
	}
	lv.failStart = ".." // the standby fails to start: the failover undoes itself
	_, err := e.Failover(ctx, "t", "g", ModeStart, journal.Target{})
	t.Logf("failover: %v", err)
	if _, serr := os.Stat(filepath.Join(other, "vda.qcow2")); serr != nil {
		t.Fatalf("another group's standby disk is gone after a failed failover of group g: %v", serr)
	}
}
