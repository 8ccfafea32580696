package filter

import "testing"

// TestBitmapNames: a disk's generations carry its group, and a full copy
// recognizes the disk's generations under another group (or none) as its
// own to remove, never another disk's.
func TestBitmapNames(t *testing.T) {
	c := &Capture{cfg: Config{Disk: "vm1.vda", Group: "g1"}}
	if c.live() != "qcdp-g1/vm1.vda" || c.copying() != "qcdp-g1/vm1.vda.copying" ||
		c.next() != "qcdp-g1/vm1.vda.next" || c.frozen() != "qcdp-g1/vm1.vda.resync" {
		t.Fatalf("names %q %q %q %q", c.live(), c.copying(), c.next(), c.frozen())
	}
	for name, want := range map[string]bool{
		"qcdp-g1/vm1.vda":         false, // this group's: not another's
		"qcdp-g1/vm1.vda.next":    false,
		"qcdp-g2/vm1.vda":         true, // the disk under another group
		"qcdp-g2/vm1.vda.resync":  true,
		"qcdp-vm1.vda":            true, // the disk under no group (older daemons)
		"qcdp-vm1.vda.copying":    true,
		"qcdp-g2/vm1.vdb":         false, // another disk
		"qcdp-vm1.vdb":            false,
		"backup-vm1.vda":          false, // not ours
		"qcdp-g2/xvm1.vda":        false,
		"qcdp-g2/vm1.vda.unknown": false,
	} {
		if got := c.othersOf(name); got != want {
			t.Errorf("othersOf(%q) = %v, want %v", name, got, want)
		}
	}
	legacy := &Capture{cfg: Config{Disk: "disk0"}}
	if legacy.live() != BitmapName("disk0") {
		t.Fatalf("a disk without a group keeps the old name: %q", legacy.live())
	}
}
