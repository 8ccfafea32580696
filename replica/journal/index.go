package journal

import (
	"fmt"
	"maps"
	"slices"
	"sort"

	"github.com/qcdp/qcdp/record"
)

// The in-memory index of the retained records of one disk. Every record is
// listed, by seq, under each chunk of the disk it touches: 64 KiB chunks for
// records under 4 MiB, 16 MiB chunks for records under 1 GiB, and one list
// for anything larger (huge zero records). Finding the newest version of a
// byte range at seq S is a binary search per list, then a walk back through
// the records of those chunks until the range is covered.
const (
	fineShift   = 16
	coarseShift = 24
	coarseMin   = 4 << 20
	hugeMin     = 1 << 30
)

type diskIndex struct {
	fine   map[uint64][]uint64
	coarse map[uint64][]uint64
	huge   []uint64
	ends   []endStep // where the disk's highest written byte grew
}

type endStep struct {
	seq uint64
	end uint64
}

func newDiskIndex() *diskIndex {
	return &diskIndex{fine: map[uint64][]uint64{}, coarse: map[uint64][]uint64{}}
}

func (d *diskIndex) add(e *entry) {
	if e.length == 0 {
		return
	}
	end := e.off + e.length
	if n := len(d.ends); n == 0 || end > d.ends[n-1].end {
		d.ends = append(d.ends, endStep{e.seq, end})
	}
	switch {
	case e.length >= hugeMin:
		d.huge = append(d.huge, e.seq)
	case e.length >= coarseMin:
		for c := e.off >> coarseShift; c <= (end-1)>>coarseShift; c++ {
			d.coarse[c] = append(d.coarse[c], e.seq)
		}
	default:
		for c := e.off >> fineShift; c <= (end-1)>>fineShift; c++ {
			d.fine[c] = append(d.fine[c], e.seq)
		}
	}
}

// trim drops the seqs below first.
func (d *diskIndex) trim(first uint64) {
	cut := func(l []uint64) []uint64 {
		i := sort.Search(len(l), func(i int) bool { return l[i] >= first })
		if i == 0 {
			return l
		}
		return slices.Clone(l[i:])
	}
	for _, m := range []map[uint64][]uint64{d.fine, d.coarse} {
		for c, l := range m {
			if l = cut(l); len(l) == 0 {
				delete(m, c)
			} else {
				m[c] = l
			}
		}
	}
	d.huge = cut(d.huge)
}

// endAt returns the end of the highest byte written by a record at or
// before seq (0 if none).
func (d *diskIndex) endAt(seq uint64) uint64 {
	i := sort.Search(len(d.ends), func(i int) bool { return d.ends[i].seq > seq })
	if i == 0 {
		return 0
	}
	return d.ends[i-1].end
}

// walker yields, newest first, the seqs at or before a seq from a few
// ascending lists.
type walker struct {
	lists [3][]uint64
	pos   [3]int // next index to yield, counting down; -1 when done
}

func (w *walker) init(at uint64, lists ...[]uint64) {
	for i := range w.lists {
		w.lists[i], w.pos[i] = nil, -1
	}
	for i, l := range lists {
		w.lists[i] = l
		w.pos[i] = sort.Search(len(l), func(k int) bool { return l[k] > at }) - 1
	}
}

func (w *walker) next() (uint64, bool) {
	best, bi := uint64(0), -1
	for i := range w.lists {
		if p := w.pos[i]; p >= 0 && (bi < 0 || w.lists[i][p] > best) {
			best, bi = w.lists[i][p], i
		}
	}
	if bi < 0 {
		return 0, false
	}
	w.pos[bi]--
	return best, true
}

// addLocked indexes r, written at file offset pos. The caller holds mu.
func (j *Journal) addLocked(r *record.Record, pos int64) error {
	e := entry{
		seq: r.Seq, time: r.Time, off: r.Offset, length: r.Length, pos: pos,
		disk: noDisk, kind: r.Kind, marker: r.Marker,
		hlen: uint16(record.FrameLen + record.BodyHeaderLen + len(r.Disk) + len(r.Name)),
	}
	var m *membership
	if r.Kind == record.Members {
		d, err := r.Declaration()
		if err != nil {
			return fmt.Errorf("%w: seq %d: %w", ErrCorrupt, r.Seq, err)
		}
		m = newMembership(r.Seq, d)
	}
	return j.addEntryLocked(e, r.Disk, r.Name, m)
}

// diskIDLocked returns the id of disk, giving it the next one if it has
// none. There are at most maxJournalDisks ids: Append refuses records that
// would need more, so only a journal written before the bound can.
func (j *Journal) diskIDLocked(disk string) (uint16, error) {
	id, ok := j.diskID[disk]
	if !ok {
		if len(j.disks) >= maxJournalDisks {
			return 0, fmt.Errorf("%w: disk %q: the journal names more than %d disks", ErrCorrupt, disk, maxJournalDisks)
		}
		id = uint16(len(j.disks))
		j.disks = append(j.disks, disk)
		j.diskID[disk] = id
		j.index = append(j.index, newDiskIndex())
	}
	return id, nil
}

// addEntryLocked adds the record e of disk, with its marker name, to the
// index and the stream state; m is the declaration of a Members record.
func (j *Journal) addEntryLocked(e entry, disk, name string, m *membership) error {
	if disk != "" {
		id, err := j.diskIDLocked(disk)
		if err != nil {
			return fmt.Errorf("seq %d: %w", e.seq, err)
		}
		e.disk = id
	}
	if e.kind == record.Members && m == nil {
		return fmt.Errorf("%w: seq %d: a members record without its declaration", ErrCorrupt, e.seq)
	}
	j.recs = append(j.recs, e)
	j.last = e.seq
	if name != "" {
		j.names[e.seq] = name
	}
	switch {
	case e.kind == record.Marker:
		j.marks = append(j.marks, e.seq)
	case e.kind == record.Members:
		j.mems = append(j.mems, m)
	case e.kind == record.Definition:
		// Writes no disk and changes no restore point; its definition is
		// kept in DEFINITIONS (definitions.go).
		j.defRecs = append(j.defRecs, e.seq)
	default:
		j.index[e.disk].add(&e)
	}
	if j.state.apply(&e, disk, m) {
		j.valid = validState(j.state)
	}
	if !j.valid {
		j.invalid = addSpan(j.invalid, e.seq)
	}
	return nil
}

// span is a run of seqs [from, to].
type span struct{ from, to uint64 }

func addSpan(s []span, seq uint64) []span {
	if n := len(s); n > 0 && s[n-1].to+1 == seq {
		s[n-1].to = seq
		return s
	}
	return append(s, span{seq, seq})
}

// inSpans reports whether seq is in one of the ascending spans.
func inSpans(s []span, seq uint64) bool {
	i := sort.Search(len(s), func(i int) bool { return s[i].to >= seq })
	return i < len(s) && s[i].from <= seq
}

// apply advances the stream state past e, a record of disk (m is the
// declaration of a Members record), and reports whether it may have
// changed.
func (st *streamState) apply(e *entry, disk string, m *membership) bool {
	if e.kind == record.Members {
		st.declare(m)
		return true
	}
	changed := false
	if disk != "" && st.mem == nil {
		if _, ok := st.flags[disk]; !ok {
			st.flags[disk] = 0
			changed = true
		}
	}
	if e.kind != record.Marker {
		return changed
	}
	if _, ok := st.flags[disk]; disk != "" && !ok {
		return changed // not declared: Append refuses it; nothing to apply
	}
	switch e.marker {
	case record.SyncComplete:
		if disk == "" {
			for d := range st.flags {
				st.flags[d] |= stSynced
			}
		} else {
			st.flags[disk] |= stSynced
		}
	case record.ResyncBegin:
		if disk != "" {
			st.flags[disk] |= stResync
		}
	case record.ResyncEnd:
		if disk != "" {
			st.flags[disk] &^= stResync
		}
	}
	return true
}

// validState says whether the boundary the state describes is a restore
// point: the group has disks (those it declared, or before it declared
// any, those the stream named), every one of them has completed its
// initial sync and none is inside a resync bracket.
func validState(st streamState) bool {
	if len(st.flags) == 0 {
		return false
	}
	for _, f := range st.flags {
		if f != stSynced {
			return false
		}
	}
	return true
}

// whyInvalid names what keeps the state from being a restore point.
func whyInvalid(st streamState) string {
	if len(st.flags) == 0 {
		if st.mem != nil {
			return "the group declares no disk"
		}
		return "no disk of the group has been seen yet"
	}
	for _, d := range sortedKeys(st.flags) {
		if st.flags[d]&stResync != 0 {
			return "disk " + d + " is inside a resync bracket"
		}
	}
	for _, d := range sortedKeys(st.flags) {
		if st.flags[d]&stSynced == 0 {
			return "disk " + d + " has not completed its initial sync"
		}
	}
	return ""
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
