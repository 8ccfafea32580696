package shipper

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/qcdp/qcdp/nbd"
	"github.com/qcdp/qcdp/record"
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

// rangeLock keeps the writes QEMU's mirror forwards out of the ranges a
// resync is copying: a resync reads a range from the source and appends
// it; a live write to that range appended in between would be overwritten
// in the stream by the older bytes the resync read. Live writes wait while
// a resync holds a range they overlap. A live write already past the wait
// when a resync locks its range does no harm: QEMU's write-blocking mirror
// writes the source before it forwards a write, so the resync reads those
// bytes or newer ones.
type rangeLock struct {
	held  atomic.Int32 // ranges held: the write path looks at nothing else while it is 0
	mu    sync.Mutex
	cond  *sync.Cond
	spans [][2]int64 // held [off, end)
}

func (l *rangeLock) overlaps(off, end int64) bool {
	for _, s := range l.spans {
		if off < s[1] && s[0] < end {
			return true
		}
	}
	return false
}

// lock holds [off, off+n) against live writes and other resync ranges.
func (l *rangeLock) lock(off, n int64) (unlock func()) {
	end := off + n
	l.mu.Lock()
	if l.cond == nil {
		l.cond = sync.NewCond(&l.mu)
	}
	for l.overlaps(off, end) {
		l.cond.Wait()
	}
	l.spans = append(l.spans, [2]int64{off, end})
	l.held.Add(1)
	l.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			for i, s := range l.spans {
				if s == [2]int64{off, end} {
					l.spans = append(l.spans[:i], l.spans[i+1:]...)
					break
				}
			}
			l.held.Add(-1)
			l.cond.Broadcast()
			l.mu.Unlock()
		})
	}
}

// wait returns once no resync holds a range overlapping [off, off+n).
func (l *rangeLock) wait(off, n int64) {
	if l.held.Load() == 0 {
		return
	}
	l.mu.Lock()
	for l.overlaps(off, off+n) {
		l.cond.Wait()
	}
	l.mu.Unlock()
}

// LockRange holds [off, off+n) of the disk for a resync: live writes to
// it wait until unlock. Write the range's resync bytes with ResyncWrite or
// ResyncZero while holding it.
func (e *CaptureExport) LockRange(off, n int64) (unlock func()) { return e.locks.lock(off, n) }

// ResyncWrite appends p at off as a resync copy of the source: the caller
// holds the range (LockRange) and the disk's resync bracket is open.
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
