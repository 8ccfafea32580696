package journal

import (
	"slices"

	"github.com/qcdp/qcdp/record"
)

// Members returns the group's declared membership at the view's point;
// ok is false for a group that had declared none by then.
func (v *View) Members() (d record.Declaration, ok bool) {
	if v.mem == nil {
		return record.Declaration{}, false
	}
	return record.Declaration{Disks: slices.Clone(v.mem.decl.Disks)}, true
}
