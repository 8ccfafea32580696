package replica

import (
	"slices"
	"testing"

	"github.com/qcdp/qcdp/nbd"
)

// TestOnlyExport: a standby's socket finds its own export's disks and no
// other export of the site, not even one whose id starts the same.
func TestOnlyExport(t *testing.T) {
	var cat nbd.Exports
	for _, n := range []string{"fo-aa/vm1.vda", "fo-aa/vm2.vda", "fo-aab/vm1.vda", "x1/vm1.vda", "ft-aa/vm1.vda"} {
		cat.Add(n, nil)
	}
	o := onlyExport{cat: &cat, prefix: "fo-aa/"}
	if _, ok := o.Lookup("fo-aa/vm1.vda"); !ok {
		t.Fatal("its own disk is not found")
	}
	for _, n := range []string{"fo-aab/vm1.vda", "x1/vm1.vda", "ft-aa/vm1.vda", "fo-aa", ""} {
		if _, ok := o.Lookup(n); ok {
			t.Errorf("%q is served on another export's socket", n)
		}
	}
	names := o.Names()
	slices.Sort(names)
	if !slices.Equal(names, []string{"fo-aa/vm1.vda", "fo-aa/vm2.vda"}) {
		t.Fatalf("names %v", names)
	}
}
