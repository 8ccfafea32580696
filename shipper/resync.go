package shipper

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/qcdp/qcdp/nbd"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/stream"
)

// ErrResyncHeld is MarkDisk's answer to a ResyncEnd while a resync copy
// of the disk holds its bracket open (HoldResync).
var ErrResyncHeld = fmt.Errorf("%w: a resync copy of the disk is under way", ErrResyncPending)

// HoldResync keeps disk's resync bracket open until release is called: a
// copy that is not a write log (a bitmap or hash resync, package filter)
// streams into the disk meanwhile, so MarkDisk(ResyncEnd) is
// ErrResyncHeld (an ErrResyncPending) and no restore point falls inside
// it. Holds nest; release is idempotent.
func (s *Sequencer) HoldResync(disk string) (release func()) {
	s.mu.Lock()
	if s.holds == nil {
		s.holds = map[string]int{}
	}
	s.holds[disk]++
	s.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.holds[disk]--; s.holds[disk] <= 0 {
				delete(s.holds, disk)
			}
		})
	}
}

// rangeLock orders a resync's copy of a range against the live writes QEMU's
// mirror forwards for it. A resync reads a range from the source and
// appends it; a live write to that range appended in between would be
// overwritten in the stream by the older bytes the resync read. So a
// resync watches the range before it reads (WatchRange): a live write
// that enters the export afterwards marks the watch raced, and the resync
// reads again. It then holds the range only while it appends (Commit), and
// a live write waits just for that append, never for QEMU: a resync that
// held the range across its read of QEMU's export could wait on a QEMU
// that was draining, which waits on the live write (a deadlock). A live
// write that entered before the watch does no harm: QEMU's write-blocking
// mirror writes the source before it forwards a write, so the resync reads
// those bytes or newer ones, and newer ones race it.
type rangeLock struct {
	busy    atomic.Int32 // ranges held or watched: the write path looks at nothing else while it is 0
	mu      sync.Mutex
	cond    *sync.Cond
	spans   [][2]int64 // held [off, end)
	watches map[*Watch]struct{}
}

func (l *rangeLock) overlaps(off, end int64) bool {
	for _, s := range l.spans {
		if off < s[1] && s[0] < end {
			return true
		}
	}
	return false
}

// enter is a live write's way in: it waits while a resync holds a range
// it overlaps, and marks the watches it overlaps raced.
func (l *rangeLock) enter(off, n int64) {
	if l.busy.Load() == 0 {
		return
	}
	end := off + n
	l.mu.Lock()
	defer l.mu.Unlock()
	for l.overlaps(off, end) {
		l.cond.Wait()
	}
	for w := range l.watches {
		if off < w.end && w.off < end {
			w.raced = true
		}
	}
}

// Watch is a range a resync is about to read from the source (WatchRange).
type Watch struct {
	l        *rangeLock
	off, end int64
	raced    bool // a live write entered the range since the watch began (l.mu)
	done     bool
}

// WatchRange starts watching [off, off+n) for a resync: read the range
// from the source after it, then Commit what was read. It returns a
// *Watch as an unnamed interface, which a consumer (package filter) can
// name without importing this package.
func (e *CaptureExport) WatchRange(off, n int64) interface {
	Commit(write func() error) (raced bool, err error)
	Cancel()
} {
	l := &e.locks
	w := &Watch{l: l, off: off, end: off + n}
	l.mu.Lock()
	if l.cond == nil {
		l.cond = sync.NewCond(&l.mu)
		l.watches = map[*Watch]struct{}{}
	}
	l.watches[w] = struct{}{}
	l.busy.Add(1)
	l.mu.Unlock()
	return w
}

// Commit appends the bytes the resync read (write: ResyncWrite or
// ResyncZero) unless a live write entered the range since the watch
// began: then it appends nothing and reports raced, and the resync reads
// the range again under a new watch. Live writes to the range wait while
// write runs. The watch ends either way.
func (w *Watch) Commit(write func() error) (raced bool, err error) {
	l := w.l
	l.mu.Lock()
	for l.overlaps(w.off, w.end) { // another resync's append
		l.cond.Wait()
	}
	raced = w.raced
	w.endLocked()
	if raced {
		l.mu.Unlock()
		return true, nil
	}
	l.spans = append(l.spans, [2]int64{w.off, w.end})
	l.busy.Add(1)
	l.mu.Unlock()
	err = write()
	l.mu.Lock()
	for i, s := range l.spans {
		if s == [2]int64{w.off, w.end} {
			l.spans = append(l.spans[:i], l.spans[i+1:]...)
			break
		}
	}
	l.busy.Add(-1)
	l.cond.Broadcast()
	l.mu.Unlock()
	return false, err
}

// Cancel ends the watch without appending anything.
func (w *Watch) Cancel() {
	w.l.mu.Lock()
	defer w.l.mu.Unlock()
	w.endLocked()
}

func (w *Watch) endLocked() {
	if w.done {
		return
	}
	w.done = true
	delete(w.l.watches, w)
	w.l.busy.Add(-1)
}

// ResyncWrite appends p at off as a resync copy of the source, inside a
// Watch's Commit, while the disk's resync bracket is open.
func (e *CaptureExport) ResyncWrite(p []byte, off int64) error {
	if err := e.check("resync write", off, int64(len(p)), nbd.ENOSPC); err != nil {
		return err
	}
	r := record.Record{Kind: record.Data, Disk: e.disk, Offset: uint64(off), Length: uint64(len(p)), Payload: p}
	return e.resyncPut(&r)
}

// ResyncZero appends a Zero record of the range, as ResyncWrite.
func (e *CaptureExport) ResyncZero(off, n int64) error {
	if err := e.check("resync zero", off, n, nbd.ENOSPC); err != nil {
		return err
	}
	r := record.Record{Kind: record.Zero, Disk: e.disk, Offset: uint64(off), Length: uint64(n)}
	return e.resyncPut(&r)
}

func (e *CaptureExport) resyncPut(r *record.Record) error {
	if r.Length == 0 {
		return nil
	}
	if e.paused.Load() {
		return fmt.Errorf("capture %s: resync: %w", e.disk, ErrPaused)
	}
	if _, err := e.seq.append(r); err != nil {
		return fmt.Errorf("capture %s: resync [%d,+%d): %w", e.disk, r.Offset, r.Length, err)
	}
	return nil
}

// Refusals counts the writes the export refused since it was made (never
// reset): a caller that saw it unchanged across a span of time knows that
// every write QEMU forwarded in it was taken.
func (e *CaptureExport) Refusals() int64 { return e.refusals.Load() }

// LastSeq is the seq of the newest record the group's stream holds: a
// hash resync asks the replica to hold it before it compares
// (filter.ReplicaHasher).
func (g *Group) LastSeq() uint64 { return g.Spool().LastSeq() }

// ErrNotWelcomed is a hash query of a group whose replica has not
// welcomed its spool (yet, or at all: diverged).
var ErrNotWelcomed = errors.New("shipper: the replica has not welcomed the group's spool")

// ErrNoReplica is a hash query of a group that streams to no replica.
var ErrNoReplica = errors.New("shipper: the group has no replica")

// ReplicaHashes asks the group's replica for block hashes of one of its
// disks (sender.Sender.Hashes; filter.ReplicaHasher).
func (g *Group) ReplicaHashes(ctx context.Context, disk string, off uint64, bs, count uint32, after uint64) (stream.HashReply, error) {
	s := g.Sender()
	if s == nil {
		return stream.HashReply{}, fmt.Errorf("%w: group %s", ErrNoReplica, g.name)
	}
	// Only a journal bound to this spool describes what this stream
	// wrote: one that refuses it as diverged (another spool's, or holding
	// records this spool lost) is not compared with until an operator's
	// repair, and nothing is compared before the replica has welcomed the
	// spool once.
	st := s.Stats()
	switch {
	case st.Diverged != "":
		return stream.HashReply{}, fmt.Errorf("%w: group %s: the replica refuses this spool: %s", ErrNotWelcomed, g.name, st.Diverged)
	case !s.Welcomed():
		return stream.HashReply{}, fmt.Errorf("%w: group %s", ErrNotWelcomed, g.name)
	}
	return s.Hashes(ctx, disk, off, bs, count, after)
}
