package journal

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/qcdp/qcdp/record"
)

// Point is a restore point.
type Point struct {
	Seq  uint64    `json:"seq"`  // the state after the record of this seq
	Time time.Time `json:"time"` // its capture time
	// Kind is the marker the point is at; 0 for a plain record boundary
	// (a long-term point kept by schedule).
	Kind     record.MarkerKind `json:"kind"`
	Name     string            `json:"name,omitempty"`
	LongTerm bool              `json:"long_term"` // kept after the window passed it
}

// Gap is a run of record boundaries inside the window that are no restore
// point: a disk's resync bracket, or a disk's initial sync.
type Gap struct {
	FromSeq uint64 `json:"from_seq"`
	ToSeq   uint64 `json:"to_seq"`
}

// Window is the short-term range in which every record boundary, except
// those in Gaps, is a restore point. It is zero when there is none.
type Window struct {
	FirstSeq  uint64    `json:"first_seq"`
	LastSeq   uint64    `json:"last_seq"`
	FirstTime time.Time `json:"first_time"`
	LastTime  time.Time `json:"last_time"`
	Gaps      []Gap     `json:"gaps,omitempty"`
}

// Target picks a restore point: set exactly one of Seq, Time or Bookmark.
// It resolves to the newest valid restore point at or before it; a target
// inside the window that is no restore point (inside a resync bracket,
// before every disk's initial sync) is refused with ErrNoPoint, not moved.
type Target struct {
	Seq      uint64
	Time     time.Time
	Bookmark string // a user or app-consistent bookmark's name; the newest of that name
}

func (t Target) String() string {
	switch {
	case t.Bookmark != "":
		return fmt.Sprintf("bookmark %q", t.Bookmark)
	case !t.Time.IsZero():
		return "time " + t.Time.UTC().Format(time.RFC3339Nano)
	}
	return fmt.Sprintf("seq %d", t.Seq)
}

// timeOfLocked returns the capture time of boundary seq (in the window or
// at a layer's end).
func (j *Journal) timeOfLocked(seq uint64) int64 {
	if seq >= j.first && seq <= j.last {
		return j.recs[seq-j.first].time
	}
	for _, l := range j.layers {
		if l.ref.to == seq {
			return l.ref.time
		}
	}
	return 0
}

// Points lists the restore points: the long-term points, then the markers
// in the window that are restore points, oldest first; and the window.
func (j *Journal) Points(ctx context.Context) ([]Point, Window, error) {
	j.mu.RLock()
	defer j.mu.RUnlock()
	if j.closed {
		return nil, Window{}, ErrClosed
	}
	pts := []Point{}
	for _, l := range j.layers {
		if l.ref.kept && l.ref.valid && l.ref.to < j.first-1 {
			pts = append(pts, Point{Seq: l.ref.to, Time: time.Unix(0, l.ref.time), Kind: l.ref.marker, Name: l.ref.name, LongTerm: true})
		}
	}
	for _, s := range j.marks {
		e := &j.recs[s-j.first]
		switch e.marker {
		case record.ResyncBegin, record.ResyncEnd:
			continue
		}
		if !inSpans(j.invalid, s) {
			pts = append(pts, Point{Seq: s, Time: time.Unix(0, e.time), Kind: e.marker, Name: j.names[s]})
		}
	}
	return pts, j.windowLocked(), ctx.Err()
}

func (j *Journal) windowLocked() Window {
	lo, hi := j.first-1, j.last
	for lo <= hi && inSpans(j.invalid, lo) {
		lo++
	}
	for hi >= lo && inSpans(j.invalid, hi) {
		hi--
	}
	if lo > hi || lo == 0 && j.last == 0 {
		return Window{}
	}
	if lo == 0 {
		lo = 1 // seq 0 (nothing written) is never a point; only reachable when invalid anyway
	}
	w := Window{FirstSeq: lo, LastSeq: hi, FirstTime: time.Unix(0, j.timeOfLocked(lo)), LastTime: time.Unix(0, j.timeOfLocked(hi))}
	for _, s := range j.invalid {
		if s.to > lo && s.from < hi {
			w.Gaps = append(w.Gaps, Gap{FromSeq: s.from, ToSeq: s.to})
		}
	}
	return w
}

// resolveLocked turns a target into the seq of a restore point.
func (j *Journal) resolveLocked(t Target) (uint64, error) {
	switch {
	case t.Bookmark != "":
		for i := len(j.marks) - 1; i >= 0; i-- {
			s := j.marks[i]
			if m := j.recs[s-j.first].marker; isBookmark(m, j.names[s]) && j.names[s] == t.Bookmark {
				return j.checkSeqLocked(s, t)
			}
		}
		for i := len(j.layers) - 1; i >= 0; i-- {
			if r := j.layers[i].ref; r.kept && r.valid && r.name == t.Bookmark {
				return r.to, nil
			}
		}
		return 0, fmt.Errorf("%w: %v: no such bookmark is retained", ErrNoPoint, t)
	case !t.Time.IsZero():
		ns := t.Time.UnixNano()
		if j.last >= j.first && j.recs[0].time <= ns {
			i := sort.Search(len(j.recs), func(i int) bool { return j.recs[i].time > ns })
			return j.checkSeqLocked(j.first+uint64(i)-1, t)
		}
		if n := len(j.layers); n > 0 && j.layers[n-1].ref.time <= ns {
			return j.checkSeqLocked(j.first-1, t)
		}
		for i := len(j.layers) - 1; i >= 0; i-- {
			if r := j.layers[i].ref; r.kept && r.valid && r.time <= ns {
				return r.to, nil
			}
		}
		return 0, fmt.Errorf("%w: %v is before the oldest retained restore point", ErrNoPoint, t)
	}
	return j.checkSeqLocked(t.Seq, t)
}

func (j *Journal) checkSeqLocked(s uint64, t Target) (uint64, error) {
	if s > j.last {
		return 0, fmt.Errorf("%w: %v: seq %d is beyond the last durable seq %d", ErrNoPoint, t, s, j.last)
	}
	if s+1 >= j.first {
		if inSpans(j.invalid, s) {
			return 0, fmt.Errorf("%w: %v: seq %d: %s", ErrNoPoint, t, s, whyInvalid(j.stateAtLocked(s)))
		}
		return s, nil
	}
	// A layer boundary asked for exactly is that point, kept by schedule
	// or not: a view opened at it before (a failover's standby, served
	// again after a restart, whose pin did not survive it) finds the same
	// state, never an older kept one.
	for i := len(j.layers) - 1; i >= 0; i-- {
		if r := j.layers[i].ref; r.to == s && r.valid {
			return s, nil
		}
	}
	for i := len(j.layers) - 1; i >= 0; i-- {
		if r := j.layers[i].ref; r.to <= s && (r.kept && r.valid || r.valid && j.pins[r.to] > 0) {
			return r.to, nil
		}
	}
	return 0, fmt.Errorf("%w: %v: seq %d is before the oldest retained restore point", ErrNoPoint, t, s)
}

// stateAtLocked replays the stream state from the window's start to seq s.
func (j *Journal) stateAtLocked(s uint64) streamState {
	st := j.start.clone()
	for q := j.first; q <= s && q <= j.last; q++ {
		e := &j.recs[q-j.first]
		d := ""
		if e.disk != noDisk {
			d = j.disks[e.disk]
		}
		st.apply(e, d, j.memOfLocked(q))
	}
	return st
}
