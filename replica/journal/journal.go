package journal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/qcdp/qcdp/record/logfile"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

// Errors.
var (
	ErrCorrupt = errors.New("journal: corrupt")
	ErrTorn    = errors.New("journal: torn record")
	ErrGroup   = errors.New("journal: file of another group")
	ErrSeq     = errors.New("journal: seq out of order")
	ErrClosed  = errors.New("journal: closed")
	ErrBroken  = errors.New("journal: broken")
	// ErrNoPoint: the target is not a restore point (before the first
	// sync-complete of every disk, inside a resync bracket, outside the
	// retained range, or an unknown bookmark). The wrapping error says why.
	ErrNoPoint = errors.New("journal: no restore point")
	ErrNoDisk  = errors.New("journal: no such disk")
)

// DefaultSegmentBytes is the segment size when Options.SegmentBytes is 0.
const DefaultSegmentBytes = 64 << 20

// Options configure a Journal.
type Options struct {
	Dir       string    // the group's journal directory, created if missing
	Group     string    // the protection group; checked against every file
	Retention Retention // zero value: keep everything
	// SegmentBytes is the size from which Append starts a new segment
	// (default 64 MiB).
	SegmentBytes int64
	FS           vfs.FS       // default vfs.Default
	Logger       *slog.Logger // default slog.Default()
}

type segment struct {
	path  string
	first uint64
	last  uint64 // first-1 when empty
	size  int64  // end of the last complete record
	file  blob
}

func newSegment(path string, first, last uint64, size int64) *segment {
	return &segment{path: path, first: first, last: last, size: size, file: blob{path: path}}
}

// Journal is one protection group's journal at the recovery site. Its
// methods are safe for concurrent use.
type Journal struct {
	opts Options
	fs   vfs.FS
	log  *slog.Logger

	appendMu  sync.Mutex // serialises Append, Close; owns wf and buf
	compactMu sync.Mutex // serialises Compact
	wf        vfs.File   // the active segment's write handle
	buf       []byte
	iov       [][]byte
	ackf      vfs.File // the ACKED file, read-write
	ackSlot   int      // the slot of ACKED holding the newest mark
	mark      mark     // the newest mark, durable

	mu      sync.RWMutex
	closed  bool
	broken  error
	segs    []*segment // oldest first; the last one is appended to
	man     *manifest  // as published
	layers  []*layer   // loaded layers of man, oldest first
	first   uint64     // first retained seq (man.first)
	last    uint64
	recs    []entry // recs[i].seq == first+i
	disks   []string
	diskID  map[string]uint16
	index   []*diskIndex // by disk id
	names   map[uint64]string
	start   streamState    // stream state as of first-1
	state   streamState    // stream state as of last
	valid   bool           // validState(state)
	invalid []span         // boundaries in [first-1, last] that are no restore point
	marks   []uint64       // seqs of marker records in [first, last]
	mems    []*membership  // declarations of the Members records in [first, last]
	defRecs []uint64       // seqs of the Definition records in [first, last]
	defs    defTable       // the definitions kept (DEFINITIONS), as published
	pins    map[uint64]int // seqs of open views
	gen     uint64         // bumped whenever layers change
	overlay uint64         // counter for overlay file names
}

// Open opens (creating if need be) the journal in opts.Dir and recovers it:
// the manifest names the layers and the first retained seq; every segment is
// checked (through its index file when it has a valid one); what follows the
// acknowledged mark (ACKED), a torn tail or records never acknowledged, is
// kept beside its segment and cut off; anything acknowledged that is
// damaged or missing, and corruption anywhere else, fails with ErrCorrupt.
// Before it returns, what it reports as durable (LastSeq) is fsync'd and
// is the mark.
func Open(ctx context.Context, opts Options) (*Journal, error) {
	if err := record.ValidDiskName(opts.Group); err != nil {
		return nil, fmt.Errorf("journal: group: %w", err)
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
	j := &Journal{
		opts:   opts,
		fs:     opts.FS,
		log:    opts.Logger.With("group", opts.Group, "journal", opts.Dir),
		diskID: map[string]uint16{},
		names:  map[uint64]string{},
		pins:   map[uint64]int{},
	}
	if err := j.fs.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	if err := j.recover(ctx); err != nil {
		j.closeFiles()
		return nil, err
	}
	return j, nil
}

func (j *Journal) path(name string) string { return filepath.Join(j.opts.Dir, name) }

func (j *Journal) recover(ctx context.Context) error {
	man, err := readManifest(j.fs, j.opts.Dir, j.opts.Group)
	if err != nil {
		return err
	}
	j.man = man
	ackPath := j.path(ackedName)
	m, slot, st, err := readAcked(j.fs, ackPath, j.opts.Group)
	if err != nil {
		return err
	}
	if st == ackExact && m.seq+1 < man.first {
		return fmt.Errorf("%w: %s: acknowledged up to seq %d, but the manifest has folded up to seq %d", ErrCorrupt, ackPath, m.seq, man.first-1)
	}
	j.first, j.last = man.first, man.first-1
	j.start = streamState{flags: man.state, mem: man.mem}.clone()
	j.state = j.start.clone()
	j.valid = validState(j.state)
	if !validState(j.start) {
		j.invalid = []span{{man.first - 1, man.first - 1}}
	}
	names, err := j.fs.ReadDir(j.opts.Dir)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	inMan := map[uint64]bool{}
	for _, l := range man.layers {
		inMan[l.id] = true
	}
	var segNames []string
	for _, n := range names {
		switch {
		case strings.HasSuffix(n, ".tmp"):
			j.removeQuiet(n)
		case strings.HasSuffix(n, layerSuffix) || strings.HasSuffix(n, layerSuffix+idxSuffix):
			// Layers of a compaction that never published its manifest,
			// or of one whose clean-up a crash cut short.
			if id, ok := parseLayerName(strings.TrimSuffix(n, idxSuffix)); !ok || !inMan[id] {
				j.removeQuiet(n)
			}
		case n == overlayDir:
			j.removeOverlays()
		default:
			if _, ok := parseSegName(n); ok {
				segNames = append(segNames, n)
			}
		}
	}
	for _, l := range man.layers {
		if err := ctx.Err(); err != nil {
			return err
		}
		var prev *layer
		if n := len(j.layers); n > 0 {
			prev = j.layers[n-1]
		}
		ly, err := j.loadLayer(l, prev)
		if err != nil {
			return err
		}
		j.layers = append(j.layers, ly)
	}
	sort.Strings(segNames)
	for i, n := range segNames {
		if err := ctx.Err(); err != nil {
			return err
		}
		first, _ := parseSegName(n)
		isLast := i == len(segNames)-1
		if !isLast {
			next, _ := parseSegName(segNames[i+1])
			if next <= man.first {
				// Wholly folded into the layers: a crash cut the clean-up short.
				j.removeQuiet(n)
				j.removeQuiet(n + idxSuffix)
				continue
			}
		}
		if err := j.loadSegment(n, first, isLast, ruleFor(m, st, first, isLast)); err != nil {
			return err
		}
	}
	if st != ackNone {
		if err := j.checkMark(m, st); err != nil {
			return err
		}
	}
	if n := len(j.segs); n > 0 && j.segs[n-1].last < j.segs[n-1].first && j.segs[n-1].first != j.last+1 {
		seg := j.segs[n-1]
		if err := j.fs.Remove(seg.path); err != nil {
			return fmt.Errorf("journal: %w", err)
		}
		j.segs = j.segs[:n-1]
	}
	if n := len(j.segs); n > 0 {
		f, err := j.fs.OpenFile(j.segs[n-1].path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return fmt.Errorf("journal: %w", err)
		}
		j.wf = f
	}
	if err := j.persistMark(m, slot, st); err != nil {
		return err
	}
	return j.loadDefinitions()
}

func (j *Journal) removeQuiet(name string) {
	if err := j.fs.Remove(j.path(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		j.log.Warn("journal: remove leftover file", "file", name, "err", err)
	}
}

// loadSegment adds the segment file name to the journal: from its index
// file when that is valid and covers the whole file, else by scanning it
// as rule says.
func (j *Journal) loadSegment(name string, first uint64, isLast bool, rule segRule) error {
	path := j.path(name)
	fi, err := j.fs.Stat(path)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if rule.dropAll {
		j.removeQuiet(name + idxSuffix)
		return j.cutUnacked(path, logfile.Result{Size: fi.Size()})
	}
	size := fi.Size()
	if rule.limit >= 0 {
		size = min(size, rule.limit)
	}
	if !isLast && size == fi.Size() {
		if x := j.readIndex(path+idxSuffix, idxKindSeg); x != nil && x.covered == fi.Size() {
			err := j.useIndex(x, path, first)
			if err == nil {
				j.segs = append(j.segs, newSegment(path, first, first+uint64(len(x.entries))-1, fi.Size()))
				return nil
			}
			if !errors.Is(err, errIndex) {
				return err
			}
		}
	}
	f, err := j.fs.Open(path)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	defer f.Close()
	next := first
	if first > j.last+1 && j.last+1 >= j.first {
		return fmt.Errorf("%w: %s: first seq %d, but the journal ends at %d: records missing", ErrCorrupt, path, first, j.last)
	}
	sc, err := scanFile(f, path, size, segMagic, j.opts.Group, first, rule.mayTear, rule.durable, func(r *record.Record, pos int64) error {
		next = r.Seq + 1
		if r.Seq < j.first {
			return nil // folded into the layers
		}
		if r.Seq != j.last+1 {
			return fmt.Errorf("%w: %s offset %d: seq %d, but the journal ends at %d", ErrCorrupt, path, pos, r.Seq, j.last)
		}
		if err := j.addLocked(r, pos); err != nil {
			return fmt.Errorf("%s offset %d: %w", path, pos, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if sc.Torn != nil {
		if err := j.cutTorn(path, sc); err != nil {
			return err
		}
		if sc.Header.Len == 0 {
			return nil
		}
	} else if size < fi.Size() {
		if err := j.cutUnacked(path, logfile.Result{Header: sc.Header, Size: fi.Size(), End: sc.End}); err != nil {
			return err
		}
	}
	j.segs = append(j.segs, newSegment(path, first, next-1, sc.End))
	if !isLast && sc.Records > 0 {
		// The index file was missing or stale: write it for the next Open.
		j.writeIndex(j.segs[len(j.segs)-1])
	}
	return nil
}

// useIndex adds the entries of a segment's index file, checking that they
// continue the journal. It returns errIndex, before it added anything,
// when the index does not fit: the caller scans the segment instead.
func (j *Journal) useIndex(x *idxFile, path string, first uint64) (err error) {
	if len(x.entries) == 0 {
		return errIndex
	}
	j.recs = slices.Grow(j.recs, len(x.entries))
	for i := range x.entries {
		if x.entries[i].seq != first+uint64(i) {
			return errIndex
		}
	}
	if first > j.last+1 && j.last+1 >= j.first {
		return errIndex
	}
	for i := range x.entries {
		e := x.entries[i]
		if e.seq < j.first {
			continue
		}
		if e.seq != j.last+1 {
			return errIndex // cannot happen after the check above; be safe
		}
		disk := ""
		if e.disk != noDisk {
			disk = x.disks[e.disk]
		}
		var m *membership
		if e.kind == record.Members {
			// The index holds no declaration: read it from its record.
			if m, err = j.readMembers(path, &e); err != nil {
				return err
			}
		}
		if err := j.addEntryLocked(e, disk, x.names[e.seq], m); err != nil {
			return err
		}
	}
	return nil
}

// readMembers reads the declaration of the Members record e of the file
// at path, checking the record whole.
func (j *Journal) readMembers(path string, e *entry) (*membership, error) {
	f, err := j.fs.Open(path)
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	defer f.Close()
	r, buf, err := readRecord(f, path, e, "")
	if err != nil {
		return nil, err
	}
	defer putBuf(buf)
	d, err := r.Declaration()
	if err != nil {
		return nil, fmt.Errorf("%w: %s offset %d, seq %d: %w", ErrCorrupt, path, e.pos, e.seq, err)
	}
	return newMembership(e.seq, d), nil
}

func (j *Journal) readIndex(path string, kind byte) *idxFile {
	f, err := j.fs.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() > 1<<30 {
		return nil
	}
	b := make([]byte, fi.Size())
	if _, err := io.ReadFull(f, b); err != nil {
		return nil
	}
	x, err := decodeIndex(b)
	if err != nil || x.kind != kind {
		j.log.Warn("journal: index file unusable; rescanning", "file", path, "err", err)
		return nil
	}
	return x
}

// writeIndex publishes the index file of a sealed segment. It is a cache:
// a failure costs a scan at the next Open, so it is logged, not returned.
func (j *Journal) writeIndex(seg *segment) {
	x := &idxFile{kind: idxKindSeg, covered: seg.size, names: map[uint64]string{}}
	ids := map[uint16]uint16{}
	for s := max(seg.first, j.first); s <= seg.last; s++ {
		e := j.recs[s-j.first]
		if e.disk != noDisk {
			id, ok := ids[e.disk]
			if !ok {
				id = uint16(len(x.disks))
				ids[e.disk] = id
				x.disks = append(x.disks, j.disks[e.disk])
			}
			e.disk = id
		}
		if n, ok := j.names[s]; ok {
			x.names[s] = n
		}
		x.entries = append(x.entries, e)
	}
	if seg.first < j.first {
		return // partly folded: the next Open scans it
	}
	if err := vfs.Publish(j.fs, seg.path+idxSuffix, encodeIndex(x)); err != nil {
		j.log.Warn("journal: write segment index", "segment", seg.path, "err", err)
	}
}

// cutTorn saves the torn tail of the segment beside it, then truncates the
// segment to its last complete record (or removes it when even its header
// is torn).
func (j *Journal) cutTorn(path string, sc logfile.Result) error {
	keep, err := segFormat.CutTorn(j.fs, j.opts.Dir, path, sc)
	if err != nil {
		return err
	}
	j.log.Warn("journal: cut a torn tail", "err", sc.Torn, "bytes", sc.Size-sc.End, "kept", keep)
	return nil
}

// cutUnacked saves the bytes of a segment past the acknowledged mark beside
// it, then cuts them off (or removes the segment when res.Header.Len is 0).
// Append never acknowledged them: a crash came before their fsync or their
// mark, or the fsync failed. The host still holds them and sends them again.
func (j *Journal) cutUnacked(path string, res logfile.Result) error {
	keep, err := segFormat.CutTorn(j.fs, j.opts.Dir, path, res)
	if err != nil {
		return err
	}
	j.log.Warn("journal: cut records past the acknowledged mark", "segment", path, "offset", res.End, "bytes", res.Size-res.End, "kept", keep)
	return nil
}

// checkMark fails with ErrCorrupt, naming the file, offset and first seq
// lost, when records the mark says were acknowledged are missing; and when
// an exact mark is not where the records say.
func (j *Journal) checkMark(m mark, st ackState) error {
	var seg *segment
	for _, s := range j.segs {
		if s.first == m.seg {
			seg = s
		}
	}
	if j.last < m.seq {
		path, off := j.path(segName(m.seg)), m.end
		switch n := len(j.segs); {
		case seg != nil:
			off = seg.size
		case m.seg == 0 && n > 0:
			path, off = j.segs[n-1].path, j.segs[n-1].size
		case m.seg == 0:
			path, off = j.opts.Dir, 0
		}
		return fmt.Errorf("%w: %s offset %d, seq %d: missing, but seqs up to %d were acknowledged (%s: segment %d, offset %d)",
			ErrCorrupt, path, off, j.last+1, m.seq, ackedName, m.seg, m.end)
	}
	if st == ackExact && m.seq >= j.first && m.seg != 0 && (seg == nil || seg.last != m.seq || seg.size != m.end) {
		return fmt.Errorf("%w: %s offset %d, seq %d: the acknowledged mark (%s) is not where the segment's records end",
			ErrCorrupt, j.path(segName(m.seg)), m.end, m.seq, ackedName)
	}
	return nil
}

// markOfLocked returns the mark of the journal as it is: its last seq and
// where that record ends, when a segment holds it.
func (j *Journal) markOfLocked() mark {
	m := mark{seq: j.last}
	for _, s := range j.segs {
		if s.last >= s.first && s.last == j.last {
			m.seg, m.end = s.first, s.size
		}
	}
	return m
}

// persistMark makes what Open reports durable and the mark: the records it
// kept past the old mark (which recovery read from files that may hold
// pages no fsync reached) are fsync'd first; then the mark is written into
// the slot that does not hold the old one, or, for a journal that has none,
// the ACKED file is created.
func (j *Journal) persistMark(old mark, slot int, st ackState) error {
	m := j.markOfLocked()
	path := j.path(ackedName)
	if st != ackExact && len(j.segs) > 0 {
		var sync []*segment
		for _, s := range j.segs {
			// Without a mark, only the newest segment can hold what no
			// fsync reached: Append fsync'd each segment before the next.
			if st == ackNone && s == j.segs[len(j.segs)-1] || st == ackDamaged && s.last > old.seq {
				sync = append(sync, s)
			}
		}
		for _, s := range sync {
			if err := vfs.SyncFile(j.fs, s.path); err != nil {
				return fmt.Errorf("journal: make what recovery found durable: %w", err)
			}
		}
		if err := j.fs.SyncDir(j.opts.Dir); err != nil {
			return fmt.Errorf("journal: make what recovery found durable: %w", err)
		}
	}
	if st == ackNone {
		if err := vfs.Publish(j.fs, path, encodeAcked(j.opts.Group, m)); err != nil {
			return fmt.Errorf("journal: %w", err)
		}
	}
	f, err := j.fs.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	j.ackf, j.ackSlot, j.mark = f, slot, m
	if st == ackNone {
		return nil
	}
	// Written again even when unchanged: the mark just read may be a page
	// whose fsync failed, which a later fsync would not write.
	if err := j.writeMark(m); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	return nil
}

// writeMark makes m the durable mark: it is written into the slot of the
// ACKED file that does not hold the newest mark, then fsync'd. A crash
// during the write leaves the other slot, which names less. The caller
// holds appendMu or is Open.
func (j *Journal) writeMark(m mark) error {
	slot := 1 - j.ackSlot
	// The whole slot, the zeroes after its checksum too: a damaged slot is
	// written again whole.
	if _, err := j.ackf.WriteAt(markSlot(j.opts.Group, m), int64(slot)*ackedSlotLen); err != nil {
		return fmt.Errorf("write %s: %w", j.path(ackedName), err)
	}
	if err := vfs.Datasync(j.ackf); err != nil { // in place: the size never changes
		return fmt.Errorf("fsync %s: %w", j.path(ackedName), err)
	}
	j.ackSlot, j.mark = slot, m
	return nil
}

// writevMin is the payload size from which Append writes the payload with
// writev instead of copying it behind its header.
const writevMin = 64 << 10

// writeBufMax bounds the buffer Append encodes headers and small payloads
// into; a larger append is written in several writes, which one fsync
// covers. It is what a journal keeps between appends.
const writeBufMax = 1 << 20

// Append makes recs durable (written and fsync'd) and the acknowledged mark
// (ACKED) name the newest of them before it returns: from then on, losing
// any of them is corruption, never a torn tail. recs must be in seq order
// with recs[0].Seq == LastSeq()+1, else ErrSeq and nothing is written.
// They must stay inside the group's membership (see the package doc),
// else the error wraps record.ErrMembership and nothing is written.
// Payloads are written before Append returns: the caller may reuse its
// buffers at once. After a failed write the segment is cut back to its last
// complete record; if that fails too, or an fsync or the mark's write
// fails, the journal is broken (ErrBroken) until reopened. A batch that
// spans segments is made durable and marked segment by segment: after an
// error a prefix of recs may be durable, and LastSeq says how far.
func (j *Journal) Append(ctx context.Context, recs []record.Record) error {
	if len(recs) == 0 {
		return nil
	}
	j.appendMu.Lock()
	defer j.appendMu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	j.mu.RLock()
	closed, broken, last := j.closed, j.broken, j.last
	j.mu.RUnlock()
	switch {
	case closed:
		return ErrClosed
	case broken != nil:
		return fmt.Errorf("%w: %w", ErrBroken, broken)
	}
	for i := range recs {
		r := &recs[i]
		if r.Seq != last+1+uint64(i) {
			return fmt.Errorf("%w: seq %d at position %d, want %d", ErrSeq, r.Seq, i, last+1+uint64(i))
		}
		if err := r.Validate(); err != nil {
			return fmt.Errorf("journal: append seq %d: %w", r.Seq, err)
		}
	}
	if err := j.admit(recs); err != nil {
		return fmt.Errorf("journal: append: %w", err)
	}
	// Before any of recs is written: what Append acknowledges, the
	// DEFINITIONS file holds.
	if err := j.appendDefinitions(recs); err != nil {
		return err
	}
	var segNew bool
	for len(recs) > 0 {
		// Fill the active segment up to its size, then start the next.
		seg := j.active()
		if seg == nil || seg.size >= j.opts.SegmentBytes && seg.last >= seg.first {
			if err := j.rotate(recs[0].Seq); err != nil {
				return err
			}
			seg, segNew = j.active(), true
		}
		n, room := 0, j.opts.SegmentBytes-seg.size
		for n < len(recs) && (n == 0 || room > 0) {
			room -= int64(record.EncodedLen(&recs[n]))
			n++
		}
		if err := j.write(seg, recs[:n]); err != nil {
			return err
		}
		if err := j.wf.Sync(); err != nil {
			return j.breakOn(fmt.Errorf("fsync %s: %w", seg.path, err))
		}
		if segNew {
			if err := j.fs.SyncDir(j.opts.Dir); err != nil {
				return j.breakOn(fmt.Errorf("fsync directory %s: %w", j.opts.Dir, err))
			}
			segNew = false
		}
		end := seg.size
		for i := range recs[:n] {
			end += int64(record.EncodedLen(&recs[i]))
		}
		// The mark is durable before LastSeq names the records, so no
		// acknowledgement gets ahead of it.
		if err := j.writeMark(mark{seq: recs[n-1].Seq, seg: seg.first, end: end}); err != nil {
			return j.breakOn(err)
		}
		j.mu.Lock()
		pos := seg.size
		var aerr error
		for i := range recs[:n] {
			if aerr == nil {
				// Admitted above: only a record that does not decode again fails.
				aerr = j.addLocked(&recs[i], pos)
			}
			pos += int64(record.EncodedLen(&recs[i]))
		}
		seg.size, seg.last = pos, recs[n-1].Seq
		j.mu.Unlock()
		if aerr != nil {
			return j.breakOn(aerr)
		}
		recs = recs[n:]
	}
	return nil
}

func (j *Journal) active() *segment {
	j.mu.RLock()
	defer j.mu.RUnlock()
	if len(j.segs) == 0 || j.wf == nil {
		return nil
	}
	return j.segs[len(j.segs)-1]
}

func (j *Journal) breakOn(err error) error {
	j.mu.Lock()
	j.broken = err
	j.mu.Unlock()
	return fmt.Errorf("%w: %w", ErrBroken, err)
}

// write writes recs at the end of seg (without fsync), cutting the segment
// back on failure. Headers and small records are copied into one buffer,
// large payloads are written from the caller's memory with writev.
func (j *Journal) write(seg *segment, recs []record.Record) error {
	need := 0
	for i := range recs {
		need += record.EncodedLen(&recs[i])
		if len(recs[i].Payload) >= writevMin {
			need -= len(recs[i].Payload)
		}
	}
	if need = min(need, writeBufMax); cap(j.buf) < need {
		j.buf = make([]byte, 0, need) // no append below reallocates: iov may alias it
	}
	b, start, total, written := j.buf[:0], 0, 0, 0
	j.iov = j.iov[:0]
	// put writes what iov holds, then starts over in an empty buffer.
	put := func() error {
		if len(b) > start {
			j.iov = append(j.iov, b[start:])
			total += len(b) - start
		}
		w, err := vfs.Writev(j.wf, j.iov)
		clear(j.iov)
		j.iov = j.iov[:0]
		written += w
		if err == nil && written != total {
			err = io.ErrShortWrite
		}
		b, start = b[:0], 0
		return err
	}
	var err error
	for i := range recs {
		r := &recs[i]
		n := record.EncodedLen(r)
		if len(r.Payload) >= writevMin {
			n -= len(r.Payload)
		}
		if len(b)+n > cap(b) && len(b) > 0 {
			// The buffer is full: write what it holds rather than grow it
			// (the bound keeps an idle journal from holding a batch's size).
			if err = put(); err != nil {
				break
			}
		}
		if len(r.Payload) >= writevMin {
			b = record.AppendHeader(b, r)
			j.iov = append(j.iov, b[start:], r.Payload)
			total += len(b) - start + len(r.Payload)
			start = len(b)
		} else {
			b = record.AppendEncode(b, r)
		}
	}
	if err == nil {
		err = put()
	}
	if err != nil {
		if terr := j.wf.Truncate(seg.size); terr != nil {
			return j.breakOn(fmt.Errorf("%s: cut back to %d after a failed write: %w (write: %w)", seg.path, seg.size, terr, err))
		}
		return fmt.Errorf("journal: append seq %d to %s at offset %d: %w", recs[0].Seq, seg.path, seg.size, err)
	}
	return nil
}

// rotate seals the active segment (its index file is published) and starts
// a new one whose first record will be first.
func (j *Journal) rotate(first uint64) error {
	if old := j.active(); old != nil {
		j.mu.RLock()
		j.writeIndex(old)
		j.mu.RUnlock()
		if err := j.wf.Close(); err != nil {
			j.log.Warn("journal: close sealed segment", "segment", old.path, "err", err)
		}
		j.wf = nil
	}
	path := j.path(segName(first))
	f, err := j.fs.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("journal: new segment for seq %d: %w", first, err)
	}
	hdr := segFormat.AppendHeader(nil, j.opts.Group, first)
	if _, err := f.Write(hdr); err != nil {
		f.Close()
		if rerr := j.fs.Remove(path); rerr != nil {
			return j.breakOn(fmt.Errorf("remove %s after a failed header write: %w", path, rerr))
		}
		return fmt.Errorf("journal: new segment %s: %w", path, err)
	}
	j.wf = f
	j.mu.Lock()
	j.segs = append(j.segs, newSegment(path, first, first-1, int64(len(hdr))))
	j.mu.Unlock()
	return nil
}

// LastSeq returns the highest durable seq, 0 when the journal is empty.
func (j *Journal) LastSeq() uint64 {
	j.mu.RLock()
	defer j.mu.RUnlock()
	return j.last
}

// Group returns the protection group of the journal.
func (j *Journal) Group() string { return j.opts.Group }

// Close closes the journal's files. Everything Append returned for is
// already durable. Views opened from the journal fail after Close.
func (j *Journal) Close() error {
	j.appendMu.Lock()
	defer j.appendMu.Unlock()
	j.compactMu.Lock()
	defer j.compactMu.Unlock()
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return ErrClosed
	}
	j.closed = true
	j.mu.Unlock()
	return j.closeFiles()
}

func (j *Journal) closeFiles() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	var errs []error
	if j.wf != nil {
		if err := j.wf.Close(); err != nil {
			errs = append(errs, fmt.Errorf("journal: %w", err))
		}
		j.wf = nil
	}
	if j.ackf != nil {
		if err := j.ackf.Close(); err != nil {
			errs = append(errs, fmt.Errorf("journal: %w", err))
		}
		j.ackf = nil
	}
	for _, s := range j.segs {
		s.file.closeReader()
	}
	for _, l := range j.layers {
		l.close()
	}
	return errors.Join(errs...)
}
