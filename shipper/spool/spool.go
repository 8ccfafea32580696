package spool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/qcdp/qcdp/record/logfile"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

// Errors.
var (
	ErrCorrupt = errors.New("spool: corrupt segment")
	ErrTorn    = errors.New("spool: torn record")
	ErrGroup   = errors.New("spool: segment of another group")
	ErrFull    = errors.New("spool: full")
	ErrBroken  = errors.New("spool: broken")
	ErrClosed  = errors.New("spool: closed")
	ErrSeq     = errors.New("spool: seq out of order")
	ErrGone    = errors.New("spool: seq no longer retained")
)

// DefaultSegmentBytes is the segment size when Options.SegmentBytes is 0.
const DefaultSegmentBytes = 64 << 20

// writevMin is the payload size from which Append writes header and payload
// with writev instead of copying the payload behind the header.
const writevMin = 64 << 10

// Options configure a Spool.
type Options struct {
	Dir   string // the spool directory, created if missing
	Group string // the protection group; checked against every segment header
	// SegmentBytes is the size at which a new segment starts (default 64 MiB).
	// When MaxBytes is set, segments are at most MaxBytes/4 so that
	// acknowledgements free room in useful steps.
	SegmentBytes int64
	// MaxBytes bounds the bytes of retained segments; 0 means no bound.
	MaxBytes int64
	// SyncInterval and SyncBytes make a background goroutine fsync every
	// SyncInterval and whenever SyncBytes have been appended since the last
	// fsync. Both 0 (the default): only Sync fsyncs.
	SyncInterval time.Duration
	SyncBytes    int64
	FS           vfs.FS       // default vfs.Default
	Logger       *slog.Logger // default slog.Default()
}

type segment struct {
	path   string
	first  uint64 // seq in the name and header
	last   uint64 // seq of the last record, or first-1 when empty
	hdrLen int64
	size   int64    // end of the last complete record
	synced int64    // bytes known to be fsync'd
	f      vfs.File // write handle; nil once closed
}

// Spool is a protection group's local spool. Its methods are safe for
// concurrent use.
type Spool struct {
	opts Options
	fs   vfs.FS
	log  *slog.Logger

	// syncSem (capacity 1) serialises Sync, Ack and Close: whoever holds it
	// may fsync and close segment handles outside mu.
	syncSem chan struct{}
	idMu    sync.Mutex    // serialises writes of the identity file
	brokeCh chan struct{} // closed when the spool breaks
	kick    chan struct{}
	stop    chan struct{}
	wg      sync.WaitGroup

	mu           sync.Mutex
	segs         []*segment // retained, oldest first
	active       *segment   // the segment appended to, or nil
	last         uint64
	acked        uint64
	retained     int64 // bytes of retained segments
	unsynced     int64
	dirDirty     bool // a segment was created since the directory was synced
	broken       error
	brokenLogged bool
	id           identity // as published
	recopy       []string // disks owed a full re-copy, as published (recopy.go)
	closed       bool
	waitCh       chan struct{} // closed at the next append, made by Wait
	buf          []byte        // encode buffer
	// afterSync, set by tests before any append, runs after each background sync.
	afterSync func()
	iov       [2][]byte
}

// Open opens (creating if need be) the spool in opts.Dir and recovers it:
// every complete record is kept, a torn tail of the last segment is saved
// beside it and cut off, corruption anywhere else fails with ErrCorrupt.
// What it keeps is fsync'd before it returns (if that fails, so does Open).
func Open(ctx context.Context, opts Options) (*Spool, error) {
	if err := record.ValidDiskName(opts.Group); err != nil {
		return nil, fmt.Errorf("spool: group: %w", err)
	}
	if opts.FS == nil {
		opts.FS = vfs.Default
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.SegmentBytes <= 0 {
		opts.SegmentBytes = DefaultSegmentBytes
	}
	if opts.MaxBytes > 0 && opts.SegmentBytes > opts.MaxBytes/4 {
		opts.SegmentBytes = max(opts.MaxBytes/4, 1)
	}
	s := &Spool{
		opts:    opts,
		fs:      opts.FS,
		log:     opts.Logger.With("group", opts.Group, "spool", opts.Dir),
		syncSem: make(chan struct{}, 1),
		brokeCh: make(chan struct{}),
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
	}
	if err := s.fs.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	if err := s.recover(ctx); err != nil {
		s.closeFiles()
		return nil, err
	}
	if err := s.openIdentity(); err != nil {
		s.closeFiles()
		return nil, err
	}
	if err := s.loadRecopy(); err != nil {
		s.closeFiles()
		return nil, err
	}
	if opts.SyncInterval > 0 || opts.SyncBytes > 0 {
		s.wg.Add(1)
		go s.syncLoop(opts.SyncInterval)
	}
	return s, nil
}

func (s *Spool) path(name string) string { return filepath.Join(s.opts.Dir, name) }

func readAcked(fs vfs.FS, dir string) (uint64, error) {
	path := filepath.Join(dir, ackedName)
	f, err := fs.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	b := make([]byte, ackedLen+1)
	n, err := io.ReadFull(f, b)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return 0, fmt.Errorf("spool: read %s: %w", path, err)
	}
	seq, err := decodeAcked(b[:n])
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return seq, nil
}

// listSegments returns the segment names in dir and their first seqs, oldest
// first.
func listSegments(fs vfs.FS, dir string) ([]string, []uint64, error) {
	names, err := fs.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("spool: %w", err)
	}
	var segs []string
	var firsts []uint64
	for _, n := range names { // sorted, and the fixed-width names sort by seq
		if first, ok := parseSegName(n); ok {
			segs = append(segs, n)
			firsts = append(firsts, first)
		}
	}
	return segs, firsts, nil
}

func (s *Spool) recover(ctx context.Context) error {
	acked, err := readAcked(s.fs, s.opts.Dir)
	if err != nil {
		return err
	}
	s.acked, s.last = acked, acked
	names, firsts, err := listSegments(s.fs, s.opts.Dir)
	if err != nil {
		return err
	}
	var prevLast uint64
	for i, name := range names {
		if err := ctx.Err(); err != nil {
			return err
		}
		isLast := i == len(names)-1
		path := s.path(name)
		sc, err := s.scanFile(path, firsts[i], isLast)
		if err != nil {
			return err
		}
		if sc.Torn != nil {
			if err := s.cutTorn(path, sc); err != nil {
				return err
			}
			if sc.Header.Len == 0 {
				continue // the segment header itself was torn: the file is gone
			}
		}
		if i > 0 && firsts[i] != prevLast+1 {
			return fmt.Errorf("%w: %s: first seq %d, previous segment ends at %d", ErrCorrupt, path, firsts[i], prevLast)
		}
		if i == 0 && firsts[i] > acked+1 {
			return fmt.Errorf("%w: %s: first seq %d, but only %d is acknowledged: records missing", ErrCorrupt, path, firsts[i], acked)
		}
		seg := &segment{path: path, first: firsts[i], last: firsts[i] - 1, hdrLen: sc.Header.Len, size: sc.End, synced: sc.End}
		if sc.Records > 0 {
			seg.last = sc.Last
		}
		prevLast = seg.last
		s.segs = append(s.segs, seg)
		s.retained += seg.size
		s.last = max(s.last, seg.last)
	}
	// Segments wholly acknowledged before a crash cut Ack short.
	if err := s.dropAcked(); err != nil {
		return err
	}
	if n := len(s.segs); n > 0 && s.segs[n-1].last < s.segs[n-1].first && s.segs[n-1].first != s.last+1 {
		// An empty newest segment left behind by a crash, at a seq the
		// acknowledged seq has overtaken: Append will start the right one.
		if err := s.fs.Remove(s.segs[n-1].path); err != nil {
			return fmt.Errorf("spool: %w", err)
		}
		s.retained -= s.segs[n-1].size
		s.segs = s.segs[:n-1]
	}
	// Recovery reports what it found as durable (synced: Sync has nothing
	// to do for it): make it so. The files may hold pages no fsync has
	// reached, left by a crash of the daemon or by a failed fsync before a
	// reopen.
	for _, seg := range s.segs {
		if err := vfs.SyncFile(s.fs, seg.path); err != nil {
			return fmt.Errorf("spool: make what recovery found durable: %w", err)
		}
	}
	if err := s.fs.SyncDir(s.opts.Dir); err != nil {
		return fmt.Errorf("spool: make what recovery found durable: %w", err)
	}
	if n := len(s.segs); n > 0 && s.segs[n-1].last == s.last {
		seg := s.segs[n-1]
		f, err := s.fs.OpenFile(seg.path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return fmt.Errorf("spool: %w", err)
		}
		seg.f = f
		s.active = seg
	}
	return nil
}

func (s *Spool) scanFile(path string, first uint64, isLast bool) (logfile.Result, error) {
	f, err := s.fs.Open(path)
	if err != nil {
		return logfile.Result{}, fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return logfile.Result{}, fmt.Errorf("spool: %w", err)
	}
	return segFormat.Scan(f, path, fi.Size(), logfile.ScanOptions{Group: s.opts.Group, First: first, Ordered: true, MayTear: isLast}, nil)
}

// cutTorn saves the torn tail of the segment at path beside it, then
// truncates the segment to its last complete record (or removes it when even
// its header is torn).
func (s *Spool) cutTorn(path string, sc logfile.Result) error {
	keep, err := segFormat.CutTorn(s.fs, s.opts.Dir, path, sc)
	if err != nil {
		return err
	}
	s.log.Warn("spool: cut a torn tail", "err", sc.Torn, "bytes", sc.Size-sc.End, "kept", keep)
	return nil
}

// dropAcked removes the oldest segments whose records are all acknowledged.
// The active segment goes too when everything is acknowledged: the next
// Append starts a new one. The caller holds syncSem or is Open.
func (s *Spool) dropAcked() error {
	s.mu.Lock()
	var drop []*segment
	for len(s.segs) > 0 {
		seg := s.segs[0]
		if seg.last < seg.first || seg.last > s.acked {
			break // empty (only the newest can be), or not all acknowledged
		}
		drop = append(drop, seg)
		s.segs = s.segs[1:]
		s.retained -= seg.size
		if seg == s.active {
			s.active = nil
		}
	}
	s.mu.Unlock()
	for _, seg := range drop {
		if seg.f != nil {
			seg.f.Close() // its data is acknowledged; a close error changes nothing
			seg.f = nil
		}
		if err := s.fs.Remove(seg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("spool: drop acknowledged segment: %w", err)
		}
	}
	return nil
}

// Append adds r at the end of the spool. r.Seq must be LastSeq()+1. It
// returns once the record is in the operating system's page cache, without
// waiting for an fsync; ErrFull at once when the budget is used up. After a
// failed write the segment is cut back to its last complete record, so no
// garbage stays behind; if that fails too, the spool is broken and every
// later Append fails with ErrBroken.
func (s *Spool) Append(r *record.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return ErrClosed
	case s.broken != nil:
		return fmt.Errorf("%w: %w", ErrBroken, s.broken)
	case r.Seq != s.last+1:
		return fmt.Errorf("%w: append seq %d after %d", ErrSeq, r.Seq, s.last)
	}
	if err := r.Validate(); err != nil {
		return fmt.Errorf("spool: append seq %d: %w", r.Seq, err)
	}
	n := int64(record.EncodedLen(r))
	if s.opts.MaxBytes > 0 && s.retained+n > s.opts.MaxBytes {
		return fmt.Errorf("%w: seq %d: %d bytes retained, %d more would pass %d", ErrFull, r.Seq, s.retained, n, s.opts.MaxBytes)
	}
	if s.active == nil || s.active.size+n > s.opts.SegmentBytes && s.active.last >= s.active.first {
		if err := s.rotate(r.Seq); err != nil {
			return err
		}
	}
	seg := s.active
	var w int
	var err error
	if len(r.Payload) >= writevMin {
		s.buf = record.AppendHeader(s.buf[:0], r)
		s.iov[0], s.iov[1] = s.buf, r.Payload
		w, err = vfs.Writev(seg.f, s.iov[:])
		s.iov[1] = nil
	} else {
		s.buf = record.AppendEncode(s.buf[:0], r)
		w, err = seg.f.Write(s.buf)
	}
	if err == nil && int64(w) != n {
		err = io.ErrShortWrite
	}
	if err != nil {
		if terr := seg.f.Truncate(seg.size); terr != nil {
			s.breakLocked(fmt.Errorf("%s: cut back to %d after a failed write: %w", seg.path, seg.size, terr))
			return fmt.Errorf("%w: append seq %d to %s at offset %d: %w", ErrBroken, r.Seq, seg.path, seg.size, err)
		}
		return fmt.Errorf("spool: append seq %d to %s at offset %d: %w", r.Seq, seg.path, seg.size, err)
	}
	seg.size += n
	seg.last = r.Seq
	s.last = r.Seq
	s.retained += n
	s.unsynced += n
	if s.opts.SyncBytes > 0 && s.unsynced >= s.opts.SyncBytes {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	if s.waitCh != nil {
		close(s.waitCh)
		s.waitCh = nil
	}
	return nil
}

// rotate starts a new segment whose first record will be first. The old
// active segment's handle stays open for Sync to fsync and close.
func (s *Spool) rotate(first uint64) error {
	path := s.path(segName(first))
	f, err := s.fs.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("spool: new segment for seq %d: %w", first, err)
	}
	s.buf = segFormat.AppendHeader(s.buf[:0], s.opts.Group, first)
	if _, err := f.Write(s.buf); err != nil {
		f.Close()
		if rerr := s.fs.Remove(path); rerr != nil {
			s.breakLocked(fmt.Errorf("remove %s after a failed header write: %w", path, rerr))
			return fmt.Errorf("%w: new segment %s: %w", ErrBroken, path, err)
		}
		return fmt.Errorf("spool: new segment %s: %w", path, err)
	}
	hl := int64(len(s.buf))
	seg := &segment{path: path, first: first, last: first - 1, hdrLen: hl, size: hl, f: f}
	s.segs = append(s.segs, seg)
	s.active = seg
	s.retained += hl
	s.unsynced += hl
	s.dirDirty = true
	return nil
}

// Sync makes every record appended before the call durable: it fsyncs each
// segment with unsynced data and the directory after a new segment. It is
// what the capture export's FLUSH (and FUA) waits for. A failed fsync breaks
// the spool: the kernel may have dropped the pages, so what is on disk is
// unknown until the spool is reopened.
func (s *Spool) Sync(ctx context.Context) error {
	select {
	case s.syncSem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.syncSem }()
	return s.syncHeld()
}

type syncJob struct {
	seg *segment
	f   vfs.File
	to  int64
}

func (s *Spool) syncHeld() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if s.broken != nil {
		s.mu.Unlock()
		return fmt.Errorf("%w: %w", ErrBroken, s.broken)
	}
	var jobs []syncJob
	for _, seg := range s.segs {
		if seg.f != nil && seg.size > seg.synced {
			jobs = append(jobs, syncJob{seg, seg.f, seg.size})
		}
	}
	dir := s.dirDirty
	s.dirDirty = false
	s.unsynced = 0
	s.mu.Unlock()

	for _, j := range jobs {
		if err := j.f.Sync(); err != nil {
			err = fmt.Errorf("fsync %s: %w", j.seg.path, err)
			s.mu.Lock()
			s.breakLocked(err)
			s.mu.Unlock()
			return fmt.Errorf("%w: %w", ErrBroken, err)
		}
	}
	if dir {
		if err := s.fs.SyncDir(s.opts.Dir); err != nil {
			s.mu.Lock()
			s.dirDirty = true
			s.mu.Unlock()
			return fmt.Errorf("spool: %w", err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, j := range jobs {
		j.seg.synced = max(j.seg.synced, j.to)
	}
	for _, seg := range s.segs {
		if seg != s.active && seg.f != nil && seg.synced == seg.size {
			seg.f.Close() // fsync'd and sealed: nothing left to lose
			seg.f = nil
		}
	}
	return nil
}

func (s *Spool) syncLoop(interval time.Duration) {
	defer s.wg.Done()
	var tick <-chan time.Time
	if interval > 0 {
		t := time.NewTicker(interval)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-s.stop:
			return
		case <-tick:
		case <-s.kick:
		}
		select {
		case s.syncSem <- struct{}{}:
		case <-s.stop:
			return
		}
		s.mu.Lock()
		broken := s.broken != nil
		s.mu.Unlock()
		var err error
		if !broken { // already reported by whoever broke it
			err = s.syncHeld()
		}
		<-s.syncSem
		if err != nil && !errors.Is(err, ErrClosed) {
			s.log.Error("spool: background sync", "err", err)
		}
		if s.afterSync != nil {
			s.afterSync()
		}
	}
}

// breakLocked breaks the spool with err (the first cause is kept).
func (s *Spool) breakLocked(err error) {
	if s.broken != nil {
		return
	}
	s.broken = err
	close(s.brokeCh)
	if s.waitCh != nil {
		close(s.waitCh) // Wait reports it
		s.waitCh = nil
	}
}

// Broken returns a channel closed when the spool breaks: a write or an
// fsync failed in a way that leaves what is on disk unknown. A broken
// spool refuses every Append and Sync for good; its owner closes it and
// opens the directory again (recovery then finds what is really there).
func (s *Spool) Broken() <-chan struct{} { return s.brokeCh }

// Err returns why the spool is broken, nil while it is not.
func (s *Spool) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.broken != nil {
		return fmt.Errorf("%w: %w", ErrBroken, s.broken)
	}
	return nil
}

// Ack records that the replica has made every record up to seq durable:
// seq is persisted (so that after a restart readers start after it), and the
// segments whose records are all acknowledged are deleted, freeing budget.
// It may wait for an fsync in progress.
func (s *Spool) Ack(seq uint64) error {
	s.syncSem <- struct{}{}
	defer func() { <-s.syncSem }()
	s.mu.Lock()
	last, acked, closed := s.last, s.acked, s.closed
	s.mu.Unlock()
	switch {
	case closed:
		return ErrClosed
	case seq > last:
		return fmt.Errorf("%w: ack of seq %d beyond the last %d", ErrSeq, seq, last)
	case seq <= acked:
		return nil
	}
	if err := vfs.Publish(s.fs, s.path(ackedName), encodeAcked(seq)); err != nil {
		return fmt.Errorf("spool: ack seq %d: %w", seq, err)
	}
	s.mu.Lock()
	s.acked = seq
	s.mu.Unlock()
	return s.dropAcked()
}

// Acked returns the last acknowledged seq.
func (s *Spool) Acked() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acked
}

// LastSeq returns the seq of the last record appended (or acknowledged), 0
// for an empty spool.
func (s *Spool) LastSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// Group returns the protection group the spool belongs to.
func (s *Spool) Group() string { return s.opts.Group }

// Stats describe what a spool retains.
type Stats struct {
	FirstSeq uint64 `json:"first_seq"` // oldest retained record, 0 if none
	LastSeq  uint64 `json:"last_seq"`
	Acked    uint64 `json:"acked"`
	Segments int    `json:"segments"`
	Bytes    int64  `json:"bytes"`    // bytes of retained segments
	Records  uint64 `json:"records"`  // retained records
	Unsynced int64  `json:"unsynced"` // bytes appended since the last fsync
}

// Stats returns the spool's current figures.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{LastSeq: s.last, Acked: s.acked, Segments: len(s.segs), Bytes: s.retained, Unsynced: s.unsynced}
	for _, seg := range s.segs {
		if seg.last >= seg.first {
			if st.FirstSeq == 0 {
				st.FirstSeq = seg.first
			}
			st.Records += seg.last - seg.first + 1
		}
	}
	return st
}

// Wait blocks until LastSeq() >= seq, ctx is done or the spool is closed.
func (s *Spool) Wait(ctx context.Context, seq uint64) error {
	for {
		s.mu.Lock()
		switch {
		case s.last >= seq:
			s.mu.Unlock()
			return nil
		case s.closed:
			s.mu.Unlock()
			return ErrClosed
		case s.broken != nil:
			err := s.broken
			s.mu.Unlock()
			return fmt.Errorf("%w: %w", ErrBroken, err)
		}
		if s.waitCh == nil {
			s.waitCh = make(chan struct{})
		}
		ch := s.waitCh
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Close stops the background sync, waits for it, and closes the segment
// files. It does not fsync: call Sync first for that.
func (s *Spool) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	s.closed = true
	if s.waitCh != nil {
		close(s.waitCh)
		s.waitCh = nil
	}
	s.mu.Unlock()
	close(s.stop)
	s.wg.Wait()
	s.syncSem <- struct{}{}
	defer func() { <-s.syncSem }()
	return s.closeFiles()
}

func (s *Spool) closeFiles() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, seg := range s.segs {
		if seg.f != nil {
			if err := seg.f.Close(); err != nil {
				errs = append(errs, fmt.Errorf("spool: %w", err))
			}
			seg.f = nil
		}
	}
	s.active = nil
	return errors.Join(errs...)
}
