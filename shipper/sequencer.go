package shipper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qcdp/qcdp/nbd"
	"github.com/qcdp/qcdp/proc"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/shipper/spool"
)

// Sequencer orders the writes of one protection group. Its methods are safe
// for concurrent use; it must be the only writer of its spool.
type Sequencer struct {
	sp  *spool.Spool // replaced by reopened: read it under mu
	clk *captureClock
	log atomic.Pointer[slog.Logger] // nil: slog.Default

	mu   sync.Mutex
	next uint64
	// resync holds, per disk, the seq of its open resync-begin marker, or
	// 0 when the marker is owed: a write of that disk was refused, so the
	// stream lacks it until QEMU re-copies the chunk, and no record may be
	// sequenced before the marker says so.
	resync map[string]uint64
	owed   int // disks in resync whose marker is owed (seq 0): the write path checks only this
	// refused holds the disks that had a write refused since their last
	// ResyncEnd attempt: such a bracket may not close yet, because QEMU
	// has one more chunk to re-copy.
	refused map[string]bool
	mem     members     // the group's declared membership (members.go)
	defs    definitions // the group's VM definitions (definitions.go)
	// exported holds the disks Export was asked for: with the declared
	// ones, the disks a reopened spool that lost records owes a re-copy.
	exported map[string]bool
	// holds counts, per disk, the resync copies under way (HoldResync).
	holds map[string]int
	// recopy holds the disks owed a full re-copy: what the spool keeps
	// (spool.OweRecopy), and more while keeping it fails (recopyUnkept).
	recopy       map[string]bool
	recopyUnkept bool
}

// ErrResyncPending is MarkDisk's answer to a ResyncEnd when a write of the
// disk was refused after the caller last saw the job converged: the
// bracket stays open; ask again when the job has converged again.
var ErrResyncPending = errors.New("shipper: a write was refused since; the resync is not over")

// NewSequencer returns the sequencer of the group whose spool is sp; it
// continues after sp.LastSeq().
func NewSequencer(sp *spool.Spool) *Sequencer {
	return newSequencer(sp, systemClock())
}

func newSequencer(sp *spool.Spool, read readClock) *Sequencer {
	s := &Sequencer{sp: sp, clk: newCaptureClock(read, lastTime(sp)), next: sp.LastSeq() + 1,
		resync: map[string]uint64{}, refused: map[string]bool{}, exported: map[string]bool{}, recopy: map[string]bool{},
		defs: definitions{cur: map[string][]byte{}, owed: map[string]bool{}}}
	// A disk still owed a re-copy is out of sync: its bracket is written
	// again before the next record, whether or not its VM runs.
	for _, d := range sp.RecopyOwed() {
		s.recopy[d] = true
		s.resync[d] = 0
		s.owed++
	}
	return s
}

// lastTime is the capture time of the spool's last record, 0 when it
// holds none (all acknowledged: the replica then clamps a host whose clock
// went back across a restart, see package replica/receiver).
func lastTime(sp *spool.Spool) int64 {
	last := sp.LastSeq()
	if last == 0 || last <= sp.Acked() {
		return 0
	}
	c := sp.Cursor(last)
	defer c.Close()
	r, err := c.Next()
	if err != nil || r.Seq != last {
		return 0
	}
	return r.Time
}

// SetLogger sets where the sequencer's capture exports log refusals.
func (s *Sequencer) SetLogger(l *slog.Logger) { s.log.Store(l) }

func (s *Sequencer) logger() *slog.Logger {
	if l := s.log.Load(); l != nil {
		return l
	}
	return slog.Default()
}

// ClockSteps reports how often the wall clock was seen to step back and by
// how much in all: capture times did not follow it (see captureClock).
func (s *Sequencer) ClockSteps() (n int64, back time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clk.steps, s.clk.back
}

// append stamps r with the next seq and the capture time and appends it to
// the spool, under one lock: the stamp order is the spool order, and capture
// times never decrease along it.
func (s *Sequencer) append(r *record.Record) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.appendLocked(r)
}

// appendLocked first writes the group's membership if it is owed, the
// resync-begin markers owed (of declared disks) and the VM definitions
// owed, then r. When the spool refuses r, or r's disk is not declared,
// r's disk owes one.
func (s *Sequencer) appendLocked(r *record.Record) (uint64, error) {
	if err := s.admitLocked(r); err != nil {
		s.refusedLocked(r)
		return 0, err
	}
	for disk, seq := range s.resync {
		if s.owed == 0 {
			break
		}
		if seq != 0 || !s.mem.declared(disk) {
			continue
		}
		m := record.Record{Kind: record.Marker, Marker: record.ResyncBegin, Disk: disk}
		seq, err := s.put(&m)
		if err != nil {
			s.refusedLocked(r)
			return 0, fmt.Errorf("resync-begin marker of %s owed: %w", disk, err)
		}
		s.resync[disk] = seq
		s.owed--
	}
	// After the markers: a definition's record is a record boundary too.
	if err := s.defineOwedLocked(); err != nil {
		s.refusedLocked(r)
		return 0, err
	}
	seq, err := s.put(r)
	if err != nil {
		s.refusedLocked(r)
		return 0, err
	}
	return seq, nil
}

func (s *Sequencer) put(r *record.Record) (uint64, error) {
	r.Seq = s.next
	r.Time = s.clk.stamp()
	if err := s.sp.Append(r); err != nil {
		return 0, err
	}
	s.next++
	return r.Seq, nil
}

// refuse notes that r was refused before it reached the spool.
func (s *Sequencer) refuse(r *record.Record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refusedLocked(r)
}

// refusedLocked notes that a disk's write is missing from the stream.
func (s *Sequencer) refusedLocked(r *record.Record) {
	if r.Kind == record.Marker || r.Disk == "" {
		return
	}
	s.refused[r.Disk] = true
	if _, open := s.resync[r.Disk]; !open {
		s.resync[r.Disk] = 0
		s.owed++
	}
}

// MarkDisk appends a marker about one disk and returns its seq. Resync
// markers bracket the part of the stream in which the disk's writes are not
// in write order: ResyncBegin while a bracket is open returns the open
// marker's seq instead of writing a second one (a refused write opens one by
// itself), and ResyncEnd closes it.
func (s *Sequencer) MarkDisk(kind record.MarkerKind, disk string) (uint64, error) {
	if err := record.ValidDiskName(disk); err != nil {
		return 0, fmt.Errorf("shipper: marker %v: %w", kind, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch kind {
	case record.ResyncBegin:
		open, isOpen := s.resync[disk]
		if open != 0 {
			return open, nil
		}
		if isOpen {
			delete(s.resync, disk) // owed: this marker is the one owed
			s.owed--
		}
	case record.ResyncEnd:
		if s.holds[disk] > 0 {
			return 0, fmt.Errorf("shipper: marker %v of %s: %w", kind, disk, ErrResyncHeld)
		}
		if s.recopy[disk] {
			return 0, fmt.Errorf("shipper: marker %v of %s: %w: answered writes were lost; a full re-copy of the disk is owed", kind, disk, ErrResyncPending)
		}
		if s.refused[disk] {
			delete(s.refused, disk)
			return 0, fmt.Errorf("shipper: marker %v of %s: %w", kind, disk, ErrResyncPending)
		}
	}
	r := record.Record{Kind: record.Marker, Marker: kind, Disk: disk}
	seq, err := s.appendLocked(&r)
	if err != nil {
		if kind == record.ResyncBegin {
			s.resync[disk] = 0
			s.owed++
		}
		return 0, fmt.Errorf("shipper: marker %v of %s: %w", kind, disk, err)
	}
	switch kind {
	case record.ResyncBegin:
		s.resync[disk] = seq
	case record.ResyncEnd:
		delete(s.resync, disk)
	}
	return seq, nil
}

// Mark appends a marker of kind with an optional name (at most
// record.MaxName bytes) and returns its seq.
func (s *Sequencer) Mark(kind record.MarkerKind, name string) (uint64, error) {
	r := record.Record{Kind: record.Marker, Marker: kind, Name: name}
	seq, err := s.append(&r)
	if err != nil {
		return 0, fmt.Errorf("shipper: marker %v %q: %w", kind, name, err)
	}
	return seq, nil
}

// Sync makes every record sequenced so far durable in the spool.
func (s *Sequencer) Sync(ctx context.Context) error { return s.spool().Sync(ctx) }

// spool is the spool appended to now.
func (s *Sequencer) spool() *spool.Spool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sp
}

// reopened makes sp, the group's spool opened again after it broke, the
// one appended to. The old one refused every write since it broke (each
// refusal owes its disk a resync bracket, written first); seqs go on
// after sp.LastSeq(). Records the reopened spool no longer holds (they
// never reached the disk: an fsync failed and the kernel dropped its
// pages) were answered as written, so QEMU no longer tracks them and the
// replica never got them: every disk of the group (declared or exported)
// is then owed a full re-copy (spool.OweRecopy, kept across restarts) and
// a resync bracket, written before the next record and not closed until
// the re-copy has run (RecopyOwed, RecopyStarted; the host engine starts
// it).
func (s *Sequencer) reopened(sp *spool.Spool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := sp.LastSeq() + 1
	s.sp = sp
	if next < s.next {
		disks := s.groupDisksLocked()
		s.logger().Error("capture: the reopened spool lost records that were answered as written; every disk of the group is re-copied in full",
			"first_lost", next, "last_lost", s.next-1, "disks", disks)
		s.oweRecopyLocked(disks...)
	}
	s.next = next
}

// groupDisksLocked returns the declared and exported disks, sorted.
func (s *Sequencer) groupDisksLocked() []string {
	set := maps.Clone(s.exported)
	for _, m := range s.mem.decl.Disks {
		set[m.Disk] = true
	}
	return slices.Sorted(maps.Keys(set))
}

// RecopyOwed returns the disks owed a full re-copy because answered
// writes were lost (see reopened): the host engine starts a new capture
// job of each (cancelling the one running), which copies the whole disk,
// and calls RecopyStarted once the old job is gone. Until then the disk's
// resync bracket stays open (MarkDisk(ResyncEnd) is ErrResyncPending), so
// no restore point is offered that lacks the lost writes. It also tries
// again to keep what is owed in the spool, if that failed.
func (s *Sequencer) RecopyOwed() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.recopyUnkept {
		s.keepRecopyLocked()
	}
	return slices.Sorted(maps.Keys(s.recopy))
}

// OweRecopy owes disks a full re-copy, as a heal that lost answered
// writes does (reopened): each gets a resync bracket, written before the
// next record, that stays open until its re-copy started (RecopyStarted).
func (s *Sequencer) OweRecopy(disks ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.oweRecopyLocked(disks...)
}

func (s *Sequencer) oweRecopyLocked(disks ...string) {
	for _, d := range disks {
		s.recopy[d] = true
		// The open bracket's marker may be one of the lost records: a
		// new one is owed.
		if seq, open := s.resync[d]; !open || seq != 0 {
			s.resync[d] = 0
			s.owed++
		}
	}
	s.keepRecopyLocked()
}

// keepRecopyLocked keeps the re-copies owed in the spool directory, so a
// restarted daemon owes them too; when that fails they stay owed in memory
// and RecopyOwed tries again.
func (s *Sequencer) keepRecopyLocked() {
	if err := s.sp.OweRecopy(slices.Sorted(maps.Keys(s.recopy))...); err != nil {
		if !s.recopyUnkept {
			s.logger().Error("capture: keep the re-copies owed in the spool directory (they stay owed in memory; retried)", "err", err)
		}
		s.recopyUnkept = true
		return
	}
	s.recopyUnkept = false
}

// RecopyStarted records that disk's full re-copy has started: its old
// capture job is gone and a new one copies the whole disk, whose READY
// may close the bracket.
func (s *Sequencer) RecopyStarted(disk string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.sp.RecopyStarted(disk); err != nil {
		return fmt.Errorf("shipper: re-copy of %s started: %w", disk, err)
	}
	delete(s.recopy, disk)
	return nil
}

// Export returns the capture export of one disk of the group, of size bytes.
func (s *Sequencer) Export(disk string, size int64) (*CaptureExport, error) {
	if err := record.ValidDiskName(disk); err != nil {
		return nil, fmt.Errorf("shipper: capture export: %w", err)
	}
	if size < 0 {
		return nil, fmt.Errorf("shipper: capture export %s: negative size %d", disk, size)
	}
	s.mu.Lock()
	s.exported[disk] = true
	s.mu.Unlock()
	return &CaptureExport{seq: s, disk: disk, size: size}, nil
}

// CaptureExport is the NBD export QEMU's write-blocking mirror writes one
// disk's writes into. Every write, zero and trim becomes a record of the
// group's spool, in arrival order. It implements nbd.Export, nbd.Writer,
// nbd.Zeroer, nbd.Trimmer, nbd.Flusher and nbd.Authorizer.
//
// Who may open it: one group's capture server serves the disks of every VM
// in the group on one socket, which QEMU's shared group (or root) may
// connect to; so an export with an owner (SetOwner: the host engine gives
// each disk its VM's QEMU process) opens to that process alone, known by
// the kernel's credentials of the connection, and refuses every other
// process, root tools included. An export without an owner opens to
// whoever the socket admits: `qcdp capture` and tests, where nothing
// knows which process will write.
//
// It is write-only (no nbd.Reader): the mirror never reads its target, and
// a capture export holds no disk image to read from: the replica serves
// reads of protected data, from its journal.
type CaptureExport struct {
	seq    *Sequencer
	disk   string
	size   int64
	owner  atomic.Pointer[proc.Process] // nil: any peer the socket admits
	paused atomic.Bool
	// refused counts the writes refused since the last one taken: the
	// first of a run is logged, and the run's count when writes are
	// taken again, so a full spool or a failed disk is in the log once.
	refused  atomic.Int64
	refusals atomic.Int64 // every write refused, never reset (Refusals)
	locks    rangeLock    // ranges a resync is copying (resync.go)
}

// ErrPaused is why a paused capture export refuses writes.
var ErrPaused = errors.New("shipper: capture paused by the operator")

// ErrNotOwner is why a capture export refuses to open to a peer.
var ErrNotOwner = errors.New("shipper: peer is not the capture export's owner")

// SetOwner makes owner the only process that may open the export from now
// on (see CaptureExport). owner is a PID with the start time it had when
// the caller found it (proc.Lookup), so a process that later gets the PID
// of an owner that ended is refused. Connections already open keep their
// export: the caller sets the owner before the owner connects.
func (e *CaptureExport) SetOwner(owner proc.Process) { e.owner.Store(&owner) }

// Owner returns the export's owner; ok is false when any peer may open it.
func (e *CaptureExport) Owner() (owner proc.Process, ok bool) {
	if o := e.owner.Load(); o != nil {
		return *o, true
	}
	return proc.Process{}, false
}

// Allow implements nbd.Authorizer: without an owner every peer may open
// the export; with one, only the connection whose kernel credentials name
// the owner process (same PID, same start time).
func (e *CaptureExport) Allow(p nbd.Peer) error {
	o := e.owner.Load()
	switch {
	case o == nil:
		return nil
	case !p.HasCred:
		return fmt.Errorf("capture %s: %w %v: the peer's credentials are unknown", e.disk, ErrNotOwner, *o)
	case p.Cred.PID != o.PID:
		return fmt.Errorf("capture %s: %w: pid %d (uid %d) is not the owner %v", e.disk, ErrNotOwner, p.Cred.PID, p.Cred.UID, *o)
	case p.Cred.Start != o.Start:
		return fmt.Errorf("capture %s: %w: pid %d started at %d, not at the owner's %d: the owner ended and its PID was reused",
			e.disk, ErrNotOwner, p.Cred.PID, p.Cred.Start, o.Start)
	}
	return nil
}

// SetPaused makes the export refuse (paused) or take (not paused) writes.
// A refused write is answered EIO at once, so QEMU's job stops and QEMU keeps
// tracking the chunk; the stream owes the disk a resync bracket, as for any
// refused write. Pausing the QEMU job itself would not do: a paused
// write-blocking mirror still copies every guest write to its target.
func (e *CaptureExport) SetPaused(paused bool) { e.paused.Store(paused) }

var (
	_ nbd.Export  = (*CaptureExport)(nil)
	_ nbd.Writer  = (*CaptureExport)(nil)
	_ nbd.Zeroer  = (*CaptureExport)(nil)
	_ nbd.Trimmer = (*CaptureExport)(nil)
	_ nbd.Flusher = (*CaptureExport)(nil)

	_ nbd.Authorizer = (*CaptureExport)(nil)
)

// Disk returns the disk name.
func (e *CaptureExport) Disk() string { return e.disk }

// Size implements nbd.Export.
func (e *CaptureExport) Size() int64 { return e.size }

func (e *CaptureExport) check(op string, off, length int64, errno nbd.Errno) error {
	if off < 0 || length < 0 || length > e.size-off || off > e.size {
		return fmt.Errorf("capture %s: %s [%d,+%d) beyond size %d: %w", e.disk, op, off, length, e.size, errno)
	}
	return nil
}

// put appends r, answering EIO at once when the spool cannot take it.
func (e *CaptureExport) put(r *record.Record) error {
	e.locks.enter(int64(r.Offset), int64(r.Length))
	if e.paused.Load() {
		e.refusals.Add(1)
		e.seq.refuse(r)
		return fmt.Errorf("capture %s: %w: %w", e.disk, nbd.EIO, ErrPaused)
	}
	if _, err := e.seq.append(r); err != nil {
		e.refusals.Add(1)
		if e.refused.Add(1) == 1 {
			e.seq.logger().Error("capture: the spool refuses writes (or the disk is not declared); answering EIO (the mirror stops and QEMU tracks the changes)",
				"disk", e.disk, "err", err)
		}
		return fmt.Errorf("capture %s: %w: %w", e.disk, nbd.EIO, err)
	}
	if n := e.refused.Load(); n > 0 && e.refused.CompareAndSwap(n, 0) {
		e.seq.logger().Info("capture: the spool takes writes again", "disk", e.disk, "refused", n)
	}
	return nil
}

// WriteAt implements nbd.Writer: p becomes a Data record. The spool writes p
// out before Append returns, so p is not kept and needs no copy.
func (e *CaptureExport) WriteAt(ctx context.Context, p []byte, off int64) error {
	if err := e.check("write", off, int64(len(p)), nbd.ENOSPC); err != nil {
		return err
	}
	if len(p) > record.MaxPayload {
		return fmt.Errorf("capture %s: write of %d bytes: %w", e.disk, len(p), nbd.EINVAL)
	}
	if len(p) == 0 {
		return nil
	}
	r := record.Record{Kind: record.Data, Disk: e.disk, Offset: uint64(off), Length: uint64(len(p)), Payload: p}
	return e.put(&r)
}

// Zero implements nbd.Zeroer: the range becomes a Zero record, which is
// always cheap, so a fast zero is fine.
func (e *CaptureExport) Zero(ctx context.Context, off, length int64, flags nbd.ZeroFlags) error {
	if err := e.check("zero", off, length, nbd.ENOSPC); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	r := record.Record{Kind: record.Zero, Disk: e.disk, Offset: uint64(off), Length: uint64(length)}
	return e.put(&r)
}

// Trim implements nbd.Trimmer: the range becomes a Trim record. (QEMU's
// mirror filter swallows guest discards, so these are rare in practice.)
func (e *CaptureExport) Trim(ctx context.Context, off, length int64) error {
	if err := e.check("trim", off, length, nbd.EINVAL); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	r := record.Record{Kind: record.Trim, Disk: e.disk, Offset: uint64(off), Length: uint64(length)}
	return e.put(&r)
}

// Flush implements nbd.Flusher: it fsyncs the spool, which holds the
// writes of every disk of the group, so it covers every connection.
func (e *CaptureExport) Flush(ctx context.Context) error {
	if err := e.seq.Sync(ctx); err != nil {
		return fmt.Errorf("capture %s: flush: %w: %w", e.disk, nbd.EIO, err)
	}
	return nil
}
