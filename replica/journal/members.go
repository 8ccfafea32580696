package journal

import (
	"fmt"
	"maps"
	"sort"

	"github.com/qcdp/qcdp/record"
)

// maxJournalDisks bounds the disk names one open journal indexes (its ids
// are uint16, noDisk is 0xffff, and the manifest and index files hold at
// most this many): Append refuses a record that would name one more, and
// Open refuses a journal that names more as corrupt.
const maxJournalDisks = maxManDisks

// membership is a declaration of the group's membership (a Members record)
// as the journal keeps it: from seq on, until the next one. It is never
// changed once made.
type membership struct {
	seq  uint64
	decl record.Declaration
}

func newMembership(seq uint64, d record.Declaration) *membership {
	return &membership{seq: seq, decl: d}
}

// size returns a declared disk's size.
func (m *membership) size(disk string) (uint64, bool) {
	d, ok := m.decl.Find(disk)
	return d.Size, ok
}

// streamState is the stream's state as of a seq: per disk, its flags
// (stSynced, stResync), and the declaration in effect (nil before the
// group's first). Once the group has declared, flags holds exactly the
// declared disks.
type streamState struct {
	flags map[string]uint8
	mem   *membership
}

func (st streamState) clone() streamState {
	f := map[string]uint8{}
	if st.flags != nil {
		f = maps.Clone(st.flags)
	}
	return streamState{flags: f, mem: st.mem}
}

// declare applies a declaration: the declared disks become the state's
// disks. One declared before with the same size keeps its flags; one new
// to the membership, back after leaving it, or of another size starts
// over: its writes while it was out were not captured, so it must complete
// its initial sync again. At the group's first declaration, the disks the
// stream named before keep their flags: an upgraded host keeps its points.
func (st *streamState) declare(m *membership) {
	flags := make(map[string]uint8, len(m.decl.Disks))
	for _, d := range m.decl.Disks {
		if st.mem == nil {
			flags[d.Disk] = st.flags[d.Disk]
		} else if old, ok := st.mem.size(d.Disk); ok && old == d.Size {
			flags[d.Disk] = st.flags[d.Disk]
		} else {
			flags[d.Disk] = 0
		}
	}
	st.flags, st.mem = flags, m
}

// admission checks records against the membership before Append writes
// anything: as of the journal's last seq, then moving along the records
// (a declaration counts from its own seq on).
type admission struct {
	j        *Journal // read under j.mu, for diskID and state
	mem      *membership
	legacy   map[string]bool // disks the stream named, before any declaration
	newNames map[string]bool // disk names the journal does not index yet
}

func (j *Journal) admissionLocked() *admission {
	a := &admission{j: j, mem: j.state.mem, newNames: map[string]bool{}}
	if a.mem == nil {
		a.legacy = map[string]bool{}
	}
	return a
}

// admit checks recs, which follow the journal's last seq, against the
// group's membership; the error wraps record.ErrMembership.
func (j *Journal) admit(recs []record.Record) error {
	j.mu.RLock()
	defer j.mu.RUnlock()
	a := j.admissionLocked()
	for i := range recs {
		if err := a.admit(&recs[i]); err != nil {
			return err
		}
	}
	return nil
}

// admit checks r and moves past it. Errors wrap record.ErrMembership.
func (a *admission) admit(r *record.Record) error {
	if r.Kind == record.Members {
		d, err := r.Declaration()
		if err != nil {
			return fmt.Errorf("%w: seq %d: %w", record.ErrMembership, r.Seq, err)
		}
		a.mem, a.legacy = newMembership(r.Seq, d), nil
		return nil
	}
	if r.Disk == "" {
		return nil
	}
	if a.mem != nil {
		if err := a.mem.decl.Admit(r); err != nil {
			return err
		}
	} else {
		if _, ok := a.j.state.flags[r.Disk]; !ok && !a.legacy[r.Disk] {
			a.legacy[r.Disk] = true
			if n := len(a.j.state.flags) + len(a.legacy); n > record.MaxGroupDisks {
				return fmt.Errorf("%w: seq %d: disk %q would make more than %d disks (the group has declared none)",
					record.ErrMembership, r.Seq, r.Disk, record.MaxGroupDisks)
			}
		}
		if r.Offset+r.Length > record.MaxDiskSize {
			return fmt.Errorf("%w: seq %d: %v [%d,+%d) of %s ends past the largest disk (%d bytes)",
				record.ErrMembership, r.Seq, r.Kind, r.Offset, r.Length, r.Disk, uint64(record.MaxDiskSize))
		}
	}
	if _, ok := a.j.diskID[r.Disk]; !ok && !a.newNames[r.Disk] {
		a.newNames[r.Disk] = true
		if len(a.j.disks)+len(a.newNames) > maxJournalDisks {
			return fmt.Errorf("%w: seq %d: disk %q would make the journal name more than %d disks",
				record.ErrMembership, r.Seq, r.Disk, maxJournalDisks)
		}
	}
	return nil
}

// isWrite reports whether records of kind k write a disk's range (data,
// zero, trim), as opposed to markers and declarations.
func isWrite(k record.Kind) bool { return k == record.Data || k == record.Zero || k == record.Trim }

// memAtLocked returns the declaration in effect at boundary s (nil for
// none): from the window's declarations, the window's start, or, below
// the window, the layer that ends at s.
func (j *Journal) memAtLocked(s uint64) *membership {
	if s+1 >= j.first {
		i := sort.Search(len(j.mems), func(i int) bool { return j.mems[i].seq > s })
		if i > 0 {
			return j.mems[i-1]
		}
		return j.start.mem
	}
	for _, l := range j.layers {
		if l.ref.to == s {
			return l.ref.mem
		}
	}
	return nil
}

// memOfLocked returns the declaration made by the Members record of seq s
// in the window.
func (j *Journal) memOfLocked(s uint64) *membership {
	i := sort.Search(len(j.mems), func(i int) bool { return j.mems[i].seq >= s })
	if i < len(j.mems) && j.mems[i].seq == s {
		return j.mems[i]
	}
	return nil
}

// Declaration returns the group's declared membership at the view's point;
// ok is false when the group had declared none by then (a journal written
// before hosts declared: its disks are those the stream named, each as
// large as its highest written byte).
func (v *View) Declaration() (d record.Declaration, ok bool) {
	if m := v.mem; m != nil {
		return m.decl, true
	}
	return record.Declaration{}, false
}
