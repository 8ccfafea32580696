package journal

import (
	"slices"
	"sort"
	"time"

	"github.com/qcdp/qcdp/record"
)

// Retention says what the journal keeps.
type Retention struct {
	// Window and WindowBytes bound the short-term window, in which every
	// record boundary is a restore point: a record leaves it when it is
	// older than Window, or when the newer records alone fill WindowBytes
	// (0: no bound of that kind). Both 0: keep everything.
	Window      time.Duration
	WindowBytes int64
	// Schedules keep long-term restore points once the window has passed
	// them: for each schedule, the newest restore point of every Every-long
	// slot of time younger than Keep.
	Schedules []Schedule
	// Bookmarks keeps named bookmarks (user and app-consistent) this long
	// after their time, as long-term restore points.
	Bookmarks time.Duration
}

// Schedule is one long-term retention rule, for example hourly for a day
// (Every: time.Hour, Keep: 24 * time.Hour).
type Schedule struct {
	Every time.Duration
	Keep  time.Duration
}

func (r Retention) zero() bool { return r.Window <= 0 && r.WindowBytes <= 0 }

// The rules below decide what a Compact keeps; compact.go carries it out.
// They work on plain values (the window's entries, the candidate points,
// the old layers' refs) so that each can be tested on its own.

// windowStart returns the first seq the short-term window keeps as of now.
// recs are the retained records (recs[i].seq == first+i). A record leaves
// the window when it is older than ret.Window, or when the newer records
// alone fill ret.WindowBytes. The window never moves back.
func windowStart(recs []entry, first uint64, ret Retention, now time.Time) uint64 {
	start := first
	if ret.Window > 0 {
		cut := now.Add(-ret.Window).UnixNano()
		i := sort.Search(len(recs), func(i int) bool { return recs[i].time >= cut })
		start = max(start, first+uint64(i))
	}
	if ret.WindowBytes > 0 {
		var sum int64
		i := len(recs)
		for i > 0 && sum+recs[i-1].encodedLen() <= ret.WindowBytes {
			sum += recs[i-1].encodedLen()
			i--
		}
		start = max(start, first+uint64(i))
	}
	return start
}

// candidate is a restore point a rule may keep once it is below the
// window: an old layer's end, or a valid boundary leaving the window.
type candidate struct {
	seq  uint64
	time int64
	mk   record.MarkerKind
	name string
}

// keptPoints returns the seqs of the candidates that some rule of ret keeps
// as of now.
func keptPoints(cands []candidate, ret Retention, now time.Time) map[uint64]bool {
	keep := map[uint64]bool{}
	for _, s := range keptBookmarks(cands, ret.Bookmarks, now) {
		keep[s] = true
	}
	for _, sc := range ret.Schedules {
		for _, s := range keptBySchedule(cands, sc, now) {
			keep[s] = true
		}
	}
	return keep
}

// isBookmark reports whether a marker is a bookmark: a user's, an
// app-consistent one, or a named crash-consistent one (an app-consistent
// bookmark whose freeze fell back keeps its name).
func isBookmark(mk record.MarkerKind, name string) bool {
	return mk == record.UserBookmark || mk == record.AppConsistent || mk == record.CrashConsistent && name != ""
}

// keptBookmarks returns, ascending, the bookmarks among cands that are
// younger than keep (0: none is kept).
func keptBookmarks(cands []candidate, keep time.Duration, now time.Time) []uint64 {
	if keep <= 0 {
		return nil
	}
	oldest := now.Add(-keep).UnixNano()
	var out []uint64
	for _, c := range cands {
		if isBookmark(c.mk, c.name) && c.time >= oldest {
			out = append(out, c.seq)
		}
	}
	slices.Sort(out)
	return out
}

// keptBySchedule returns, ascending, the newest candidate of every
// sc.Every-long slot of time (slots aligned on the Unix epoch) among the
// candidates younger than sc.Keep. A schedule with a zero field keeps
// nothing.
func keptBySchedule(cands []candidate, sc Schedule, now time.Time) []uint64 {
	if sc.Every <= 0 || sc.Keep <= 0 {
		return nil
	}
	oldest := now.Add(-sc.Keep).UnixNano()
	slot := map[int64]uint64{}
	for _, c := range cands {
		if c.time < oldest {
			continue
		}
		k := c.time / int64(sc.Every)
		slot[k] = max(slot[k], c.seq)
	}
	out := make([]uint64, 0, len(slot))
	for _, s := range slot {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// layerBounds returns the ends of the layers a compaction leaves when the
// window starts at first: the kept points and the points of open views
// (pins) below the window, ascending, then the window's start boundary
// first-1. None when there is nothing below the window.
func layerBounds(keep map[uint64]bool, pins map[uint64]int, first uint64) []uint64 {
	var bounds []uint64
	for s := range keep {
		if s+1 < first {
			bounds = append(bounds, s)
		}
	}
	for s := range pins {
		if s+1 < first && !keep[s] {
			bounds = append(bounds, s)
		}
	}
	slices.Sort(bounds)
	if first > 1 {
		bounds = append(bounds, first-1)
	}
	return bounds
}

// newLayer is what one layer of a compaction holds: the changes of seqs
// (from, to], folded from the old layers olds (indexes, oldest first) and,
// when recs, the window's records (recFrom, to]. reuse is the index of the
// old layer that covers exactly (from, to] and is kept as it is, or -1.
type newLayer struct {
	from, to uint64
	olds     []int
	recs     bool
	recFrom  uint64
	reuse    int
}

// planLayers lays out the new layers ending at bounds over the old layers
// old, when the window used to start at oldFirst. A new layer folds every
// old layer inside its range (an old layer whose point expired is merged
// into its newer neighbour) and the records of its range that leave the
// window; an old layer whose range is unchanged, and that takes no record,
// is kept as it is.
func planLayers(old []layerRef, bounds []uint64, oldFirst uint64) []newLayer {
	var out []newLayer
	from := uint64(0)
	for _, b := range bounds {
		nl := newLayer{from: from, to: b, reuse: -1}
		for i, l := range old {
			if l.from >= from && l.to <= b {
				nl.olds = append(nl.olds, i)
				if l.from == from && l.to == b {
					nl.reuse = i
				}
			}
		}
		if lo := max(from, oldFirst-1); b > lo {
			nl.recs, nl.recFrom = true, lo
			nl.reuse = -1
		}
		out = append(out, nl)
		from = b
	}
	return out
}

// unchanged reports whether a layout leaves the layers as they are: the
// window did not move and every old layer is kept as it is, in place, with
// the same long-term flag.
func unchanged(layout []newLayer, old []layerRef, keep map[uint64]bool, moved bool) bool {
	if moved || len(layout) != len(old) {
		return false
	}
	for i, nl := range layout {
		if nl.reuse != i || old[i].kept != keep[nl.to] {
			return false
		}
	}
	return true
}
