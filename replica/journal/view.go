package journal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/qcdp/qcdp/nbd"
	"github.com/qcdp/qcdp/record"
)

// View is the state of every disk of the group at one restore point. Opening
// one copies nothing: reads look the newest version of each byte up in the
// index. A view pins its point: Compact keeps it until the view is closed.
type View struct {
	j      *Journal
	point  Point
	mem    *membership // the declaration in effect at the point; nil for none
	mu     sync.Mutex
	closed bool
	ovs    []*Overlay
}

// View opens the view of the restore point target resolves to.
func (j *Journal) View(ctx context.Context, at Target) (*View, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil, ErrClosed
	}
	s, err := j.resolveLocked(at)
	if err != nil {
		return nil, err
	}
	j.pins[s]++
	p := Point{Seq: s, Time: time.Unix(0, j.timeOfLocked(s))}
	if s >= j.first && s <= j.last && j.recs[s-j.first].kind == record.Marker {
		p.Kind, p.Name = j.recs[s-j.first].marker, j.names[s]
	}
	for _, l := range j.layers {
		if l.ref.to == s && s+1 < j.first {
			p.Kind, p.Name, p.LongTerm = l.ref.marker, l.ref.name, true
		}
	}
	return &View{j: j, point: p, mem: j.memAtLocked(s)}, nil
}

// Newest opens a view of the newest state the journal holds, the state
// after its last durable record, whether or not that is a restore point
// (it may fall inside a resync bracket). A hash resync compares a source
// against it: the records that follow are applied on top of exactly this
// state. It fails with ErrNoPoint when the journal holds nothing.
func (j *Journal) Newest(ctx context.Context) (*View, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.closed {
		return nil, ErrClosed
	}
	s := j.last
	if s+1 < j.first || s == 0 && len(j.layers) == 0 {
		return nil, fmt.Errorf("%w: the journal holds no record", ErrNoPoint)
	}
	j.pins[s]++
	return &View{j: j, point: Point{Seq: s, Time: time.Unix(0, j.timeOfLocked(s))}, mem: j.memAtLocked(s)}, nil
}

// Point returns the restore point the view shows.
func (v *View) Point() Point { return v.point }

// Close releases the view's point and removes the overlays of its writable
// disks.
func (v *View) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return nil
	}
	v.closed = true
	var errs []error
	for _, o := range v.ovs {
		errs = append(errs, o.close())
	}
	v.j.mu.Lock()
	if v.j.pins[v.point.Seq]--; v.j.pins[v.point.Seq] <= 0 {
		delete(v.j.pins, v.point.Seq)
	}
	v.j.mu.Unlock()
	return errors.Join(errs...)
}

// layersLocked returns how many layers the view sees, checking that they
// reach its seq: the records after them up to the seq are all retained.
func (v *View) layersLocked() (int, error) {
	j, s := v.j, v.point.Seq
	if j.closed {
		return 0, ErrClosed
	}
	n := sort.Search(len(j.layers), func(i int) bool { return j.layers[i].ref.to > s })
	top := uint64(0)
	if n > 0 {
		top = j.layers[n-1].ref.to
	}
	if top != min(s, j.first-1) {
		return 0, fmt.Errorf("journal: view of seq %d: layers end at %d, records start at %d", s, top, j.first)
	}
	return n, nil
}

// Disks returns the names of the view's disks, sorted: those the group
// declared, or for a group that had declared none by the view's point,
// those it has data for.
func (v *View) Disks() []string {
	if v.mem != nil {
		names := make([]string, len(v.mem.decl.Disks))
		for i, d := range v.mem.decl.Disks {
			names[i] = d.Disk
		}
		return names
	}
	j := v.j
	j.mu.RLock()
	defer j.mu.RUnlock()
	var names []string
	for _, d := range j.disksLocked() {
		if v.sizeLocked(d) > 0 {
			names = append(names, d)
		}
	}
	return names
}

func (j *Journal) disksLocked() []string {
	set := map[string]bool{}
	for _, d := range j.disks {
		set[d] = true
	}
	for _, l := range j.layers {
		for d := range l.ends {
			set[d] = true
		}
	}
	return sortedKeys(set)
}

// sizeLocked is the disk's size as the view shows it: its declared size,
// 0 for a disk not declared; or, for a group that had declared nothing by
// the view's point, the end of the highest byte written at or before it,
// in 512-byte sectors.
func (v *View) sizeLocked(disk string) int64 {
	if v.mem != nil {
		size, _ := v.mem.size(disk)
		return int64(size) // at most record.MaxDiskSize
	}
	end := (v.writtenLocked(disk) + 511) &^ 511
	return int64(min(end, 1<<62))
}

// writtenLocked is the end of the highest byte of disk written at or
// before the view's point; 0 when nothing was.
func (v *View) writtenLocked(disk string) uint64 {
	j, s := v.j, v.point.Seq
	var end uint64
	n := sort.Search(len(j.layers), func(i int) bool { return j.layers[i].ref.to > s })
	if n > 0 {
		end = j.layers[n-1].ends[disk]
	}
	if id, ok := j.diskID[disk]; ok && s >= j.first {
		end = max(end, j.index[id].endAt(s))
	}
	return end
}

// Written reports whether any byte of disk was written at or before the
// view's point: a disk the group declared but whose data never arrived
// has none (a hash resync then copies it whole).
func (v *View) Written(disk string) bool {
	v.j.mu.RLock()
	defer v.j.mu.RUnlock()
	return v.writtenLocked(disk) > 0
}

// Disk returns the read-only export of one disk of the view.
func (v *View) Disk(name string) (*DiskView, error) {
	if err := record.ValidDiskName(name); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	v.j.mu.RLock()
	size := v.sizeLocked(name)
	v.j.mu.RUnlock()
	if size == 0 {
		return nil, fmt.Errorf("%w: %q at seq %d", ErrNoDisk, name, v.point.Seq)
	}
	return &DiskView{v: v, disk: name, size: size}, nil
}

// DiskView is one disk of a view, served read-only over NBD: it implements
// nbd.Export, nbd.Reader and nbd.Extenter.
type DiskView struct {
	v    *View
	disk string
	size int64
}

var (
	_ nbd.Reader   = (*DiskView)(nil)
	_ nbd.Extenter = (*DiskView)(nil)
)

// Size implements nbd.Export.
func (d *DiskView) Size() int64 { return d.size }

// Name returns the disk's name.
func (d *DiskView) Name() string { return d.disk }

func (d *DiskView) check(off, n int64) error {
	if off < 0 || n < 0 || off+n > d.size || off+n < off {
		return fmt.Errorf("journal: range [%d, +%d) outside disk %s of %d bytes", off, n, d.disk, d.size)
	}
	d.v.mu.Lock()
	closed := d.v.closed
	d.v.mu.Unlock()
	if closed {
		return fmt.Errorf("journal: view of seq %d is closed", d.v.point.Seq)
	}
	return nil
}

// ReadAt implements nbd.Reader. A record whose checksum does not match
// fails the read with ErrCorrupt: corruption is never served.
func (d *DiskView) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := d.check(off, int64(len(p))); err != nil {
		return err
	}
	j := d.v.j
	j.mu.RLock()
	defer j.mu.RUnlock()
	nl, err := d.v.layersLocked()
	if err != nil {
		return err
	}
	pieces := j.piecesLocked(d.disk, d.v.point.Seq, nl, uint64(off), uint64(len(p)))
	for i := range pieces {
		if err := ctx.Err(); err != nil {
			return err
		}
		pc := &pieces[i]
		dst := p[pc.off-uint64(off) : pc.off-uint64(off)+pc.n]
		if pc.kind != record.Data {
			clear(dst)
			continue
		}
		if err := j.readPayload(pc.b, pc.bit, &pc.e, d.disk, dst, pc.delta); err != nil {
			return err
		}
	}
	return nil
}

// LastWrites returns, for each block of bs bytes of [off, off+n), the seq
// of the newest record (data, zero or trim) that shaped it as the view
// shows it; 0 where nothing ever did. It reads the index only: a block's
// hash kept from the state after seq s still holds when its LastWrites
// entry is at most s. off is a multiple of bs; the last block may be cut
// by n.
func (d *DiskView) LastWrites(off, n, bs int64) ([]uint64, error) {
	if bs <= 0 || off%bs != 0 {
		return nil, fmt.Errorf("journal: last writes of [%d,+%d) in blocks of %d", off, n, bs)
	}
	pieces, err := d.pieces(off, n)
	if err != nil {
		return nil, err
	}
	out := make([]uint64, (n+bs-1)/bs)
	for _, pc := range pieces {
		if pc.kind == 0 {
			continue
		}
		for b := (int64(pc.off) - off) / bs; b < int64(len(out)) && off+b*bs < int64(pc.off+pc.n); b++ {
			out[b] = max(out[b], pc.e.seq)
		}
	}
	return out, nil
}

// pieces returns the pieces that make up [off, off+n) of the disk at the
// view's point, from the index alone.
func (d *DiskView) pieces(off, n int64) ([]piece, error) {
	if err := d.check(off, n); err != nil {
		return nil, err
	}
	j := d.v.j
	j.mu.RLock()
	defer j.mu.RUnlock()
	nl, err := d.v.layersLocked()
	if err != nil {
		return nil, err
	}
	return j.piecesLocked(d.disk, d.v.point.Seq, nl, uint64(off), uint64(n)), nil
}

// maxExtentQuery bounds the range one Extents call resolves.
const maxExtentQuery = 256 << 20

// Extents implements nbd.Extenter for base:allocation: data is allocated;
// a zero record reads as zeroes and is allocated; a trimmed or never
// written range is a hole that reads as zeroes.
func (d *DiskView) Extents(ctx context.Context, off, length int64) ([]nbd.Extent, error) {
	pieces, err := d.pieces(off, min(length, maxExtentQuery))
	if err != nil {
		return nil, err
	}
	return extentsOf(pieces), ctx.Err()
}

func extentsOf(pieces []piece) []nbd.Extent {
	var out []nbd.Extent
	for _, pc := range pieces {
		x := nbd.Extent{Length: int64(pc.n)}
		switch pc.kind {
		case record.Zero:
			x.Zero = true
		case record.Trim, 0:
			x.Hole, x.Zero = true, true
		}
		if n := len(out); n > 0 && out[n-1].Hole == x.Hole && out[n-1].Zero == x.Zero {
			out[n-1].Length += x.Length
		} else {
			out = append(out, x)
		}
	}
	return out
}

// piece is a run of a disk and where its bytes come from.
type piece struct {
	off, n uint64
	kind   record.Kind // Data, Zero, Trim, or 0 for never written
	b      *blob
	bit    int
	e      entry
	delta  uint64 // offset of the run in the record's payload
}

// piecesLocked returns the pieces that make up [off, off+n) of disk at
// seq s seeing the first nl layers, sorted by offset.
func (j *Journal) piecesLocked(disk string, s uint64, nl int, off, n uint64) []piece {
	var out, gaps []piece
	id, ok := j.diskID[disk]
	if ok && s >= j.first {
		var w walker
		di := j.index[id]
		for a := off; a < off+n; {
			b := min((a>>fineShift+1)<<fineShift, off+n)
			w.init(s, di.fine[a>>fineShift], di.coarse[a>>coarseShift], di.huge)
			unc := []span{{a, b}} // [from, to) here
			for len(unc) > 0 {
				q, more := w.next()
				if !more || q < j.first {
					break
				}
				e := j.recs[q-j.first]
				unc = j.cover(unc, &e, &out)
			}
			for _, u := range unc {
				gaps = append(gaps, piece{off: u.from, n: u.to - u.from})
			}
			a = b
		}
	} else {
		gaps = []piece{{off: off, n: n}}
	}
	for li := nl - 1; li >= 0 && len(gaps) > 0; li-- {
		ext := j.layers[li].disks[disk]
		if len(ext) == 0 {
			continue
		}
		var next []piece
		for _, g := range gaps {
			a, end := g.off, g.off+g.n
			for i := findExt(ext, a); i < len(ext) && a < end && ext[i].off < end; i++ {
				x := &ext[i]
				if x.off > a {
					next = append(next, piece{off: a, n: x.off - a})
					a = x.off
				}
				b := min(end, x.off+x.length)
				out = append(out, piece{off: a, n: b - a, kind: x.kind, b: &j.layers[li].file, bit: x.bit, e: x.entry, delta: a - x.off})
				a = b
			}
			if a < end {
				next = append(next, piece{off: a, n: end - a})
			}
		}
		gaps = next
	}
	out = append(out, gaps...)
	sort.Slice(out, func(a, b int) bool { return out[a].off < out[b].off })
	return out
}

// cover takes from the uncovered runs unc what record e covers, appending
// those pieces to out, and returns what stays uncovered.
func (j *Journal) cover(unc []span, e *entry, out *[]piece) []span {
	lo, hi := e.off, e.off+e.length
	var rest []span
	for _, u := range unc {
		if hi <= u.from || lo >= u.to {
			rest = append(rest, u)
			continue
		}
		a, b := max(lo, u.from), min(hi, u.to)
		pc := piece{off: a, n: b - a, kind: e.kind, e: *e, delta: a - lo}
		if e.kind == record.Data {
			seg := j.segmentOfLocked(e.seq)
			pc.b, pc.bit = &seg.file, int(e.seq-seg.first)
		}
		*out = append(*out, pc)
		if u.from < a {
			rest = append(rest, span{u.from, a})
		}
		if b < u.to {
			rest = append(rest, span{b, u.to})
		}
	}
	return rest
}

func (j *Journal) segmentOfLocked(seq uint64) *segment {
	i := sort.Search(len(j.segs), func(i int) bool { return j.segs[i].first > seq })
	return j.segs[i-1]
}

// Restore writes the disk as the view shows it into w, which must read as
// zeroes where nothing is written (a new or truncated raw file): holes and
// zero ranges are skipped. It returns the number of data bytes written.
func Restore(ctx context.Context, d *DiskView, w io.WriterAt) (int64, error) {
	const step = 4 << 20
	buf := make([]byte, step)
	var written int64
	for off := int64(0); off < d.size; {
		xs, err := d.Extents(ctx, off, min(step, d.size-off))
		if err != nil {
			return written, err
		}
		for _, x := range xs {
			if !x.Hole && !x.Zero {
				p := buf[:x.Length]
				if err := d.ReadAt(ctx, p, off); err != nil {
					return written, err
				}
				if _, err := w.WriteAt(p, off); err != nil {
					return written, fmt.Errorf("journal: restore %s: %w", d.disk, err)
				}
				written += x.Length
			}
			off += x.Length
		}
	}
	return written, nil
}
