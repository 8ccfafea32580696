package journal

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"

	"github.com/qcdp/qcdp/nbd"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

// Overlay is a writable disk of a view: writes go to a sparse overlay (an
// append-only scratch file in DIR/overlays and an in-memory extent map),
// never to the journal; reads see the overlay over the view. The overlay is
// deleted when the view is closed, and any left by a crash at Open.
type Overlay struct {
	d    *DiskView
	fs   vfs.FS
	path string

	mu     sync.Mutex
	f      vfs.File
	end    int64   // bytes in the scratch file
	ext    []ovExt // sorted by offset, not overlapping
	closed bool
}

type ovExt struct {
	off, n uint64
	kind   record.Kind // Data (at pos in the scratch file), Zero or Trim
	pos    int64
}

var (
	_ nbd.Reader   = (*Overlay)(nil)
	_ nbd.Writer   = (*Overlay)(nil)
	_ nbd.Zeroer   = (*Overlay)(nil)
	_ nbd.Trimmer  = (*Overlay)(nil)
	_ nbd.Flusher  = (*Overlay)(nil)
	_ nbd.Extenter = (*Overlay)(nil)
)

// Writable returns a writable export of the view's disk.
func (v *View) Writable(disk string) (*Overlay, error) {
	d, err := v.Disk(disk)
	if err != nil {
		return nil, err
	}
	j := v.j
	dir := filepath.Join(j.opts.Dir, overlayDir)
	if err := j.fs.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	j.mu.Lock()
	j.overlay++
	n := j.overlay
	j.mu.Unlock()
	path := filepath.Join(dir, fmt.Sprintf("%d-%d-%s", v.point.Seq, n, disk))
	f, err := j.fs.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("journal: overlay: %w", err)
	}
	o := &Overlay{d: d, fs: j.fs, path: path, f: f}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		o.close()
		return nil, fmt.Errorf("journal: view of seq %d is closed", v.point.Seq)
	}
	v.ovs = append(v.ovs, o)
	return o, nil
}

func (o *Overlay) close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil
	}
	o.closed = true
	o.f.Close() // scratch: removed next
	if err := o.fs.Remove(o.path); err != nil {
		return fmt.Errorf("journal: remove overlay: %w", err)
	}
	return nil
}

// Size implements nbd.Export.
func (o *Overlay) Size() int64 { return o.d.size }

func (o *Overlay) checkLocked(off, n int64) error {
	if o.closed {
		return fmt.Errorf("journal: overlay of %s is closed", o.d.disk)
	}
	if off < 0 || n < 0 || off+n > o.d.size || off+n < off {
		return fmt.Errorf("journal: range [%d, +%d) outside disk %s of %d bytes", off, n, o.d.disk, o.d.size)
	}
	return nil
}

// insert puts x over whatever the overlay had in its range.
func (o *Overlay) insert(x ovExt) {
	lo, hi := x.off, x.off+x.n
	i := sort.Search(len(o.ext), func(i int) bool { return o.ext[i].off+o.ext[i].n > lo })
	k := i
	var repl []ovExt
	var tail []ovExt
	for ; k < len(o.ext) && o.ext[k].off < hi; k++ {
		e := o.ext[k]
		if e.off < lo {
			repl = append(repl, ovExt{off: e.off, n: lo - e.off, kind: e.kind, pos: e.pos})
		}
		if end := e.off + e.n; end > hi {
			t := ovExt{off: hi, n: end - hi, kind: e.kind, pos: e.pos}
			if e.kind == record.Data {
				t.pos += int64(hi - e.off)
			}
			tail = append(tail, t)
		}
	}
	repl = append(append(repl, x), tail...)
	o.ext = slices.Replace(o.ext, i, k, repl...)
}

// WriteAt implements nbd.Writer.
func (o *Overlay) WriteAt(_ context.Context, p []byte, off int64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.checkLocked(off, int64(len(p))); err != nil {
		return err
	}
	if len(p) == 0 {
		return nil
	}
	if _, err := o.f.Write(p); err != nil {
		if terr := o.f.Truncate(o.end); terr != nil {
			o.closed = true
			return fmt.Errorf("journal: overlay write: %w (and cut back: %w)", err, terr)
		}
		return fmt.Errorf("journal: overlay write: %w", err)
	}
	o.insert(ovExt{off: uint64(off), n: uint64(len(p)), kind: record.Data, pos: o.end})
	o.end += int64(len(p))
	return nil
}

// Zero implements nbd.Zeroer.
func (o *Overlay) Zero(_ context.Context, off, length int64, _ nbd.ZeroFlags) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.checkLocked(off, length); err != nil {
		return err
	}
	if length > 0 {
		o.insert(ovExt{off: uint64(off), n: uint64(length), kind: record.Zero})
	}
	return nil
}

// Trim implements nbd.Trimmer: the range reads as zeroes afterwards.
func (o *Overlay) Trim(_ context.Context, off, length int64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.checkLocked(off, length); err != nil {
		return err
	}
	if length > 0 {
		o.insert(ovExt{off: uint64(off), n: uint64(length), kind: record.Trim})
	}
	return nil
}

// Flush implements nbd.Flusher. The overlay lives as long as its view.
func (o *Overlay) Flush(context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return fmt.Errorf("journal: overlay of %s is closed", o.d.disk)
	}
	if err := o.f.Sync(); err != nil {
		return fmt.Errorf("journal: overlay flush: %w", err)
	}
	return nil
}

// walk calls fn for the overlay's extents and gaps in [off, off+n), in order.
func (o *Overlay) walk(off, n uint64, fn func(x ovExt, gap bool) error) error {
	a, end := off, off+n
	for i := sort.Search(len(o.ext), func(i int) bool { return o.ext[i].off+o.ext[i].n > off }); i < len(o.ext) && o.ext[i].off < end && a < end; i++ {
		x := o.ext[i]
		if x.off > a {
			if err := fn(ovExt{off: a, n: x.off - a}, true); err != nil {
				return err
			}
			a = x.off
		}
		b := min(end, x.off+x.n)
		part := ovExt{off: a, n: b - a, kind: x.kind, pos: x.pos}
		if x.kind == record.Data {
			part.pos += int64(a - x.off)
		}
		if err := fn(part, false); err != nil {
			return err
		}
		a = b
	}
	if a < end {
		return fn(ovExt{off: a, n: end - a}, true)
	}
	return nil
}

// ReadAt implements nbd.Reader.
func (o *Overlay) ReadAt(ctx context.Context, p []byte, off int64) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.checkLocked(off, int64(len(p))); err != nil {
		return err
	}
	return o.walk(uint64(off), uint64(len(p)), func(x ovExt, gap bool) error {
		dst := p[x.off-uint64(off) : x.off-uint64(off)+x.n]
		switch {
		case gap:
			return o.d.ReadAt(ctx, dst, int64(x.off))
		case x.kind == record.Data:
			if _, err := o.f.ReadAt(dst, x.pos); err != nil {
				return fmt.Errorf("journal: overlay read: %w", err)
			}
		default:
			clear(dst)
		}
		return nil
	})
}

// Extents implements nbd.Extenter.
func (o *Overlay) Extents(ctx context.Context, off, length int64) ([]nbd.Extent, error) {
	length = min(length, maxExtentQuery)
	o.mu.Lock()
	defer o.mu.Unlock()
	if err := o.checkLocked(off, length); err != nil {
		return nil, err
	}
	var out []nbd.Extent
	add := func(x nbd.Extent) {
		if n := len(out); n > 0 && out[n-1].Hole == x.Hole && out[n-1].Zero == x.Zero {
			out[n-1].Length += x.Length
		} else {
			out = append(out, x)
		}
	}
	err := o.walk(uint64(off), uint64(length), func(x ovExt, gap bool) error {
		switch {
		case gap:
			for a := int64(x.off); a < int64(x.off+x.n); {
				xs, err := o.d.Extents(ctx, a, int64(x.off+x.n)-a)
				if err != nil {
					return err
				}
				for _, e := range xs {
					add(e)
					a += e.Length
				}
			}
		case x.kind == record.Data:
			add(nbd.Extent{Length: int64(x.n)})
		case x.kind == record.Zero:
			add(nbd.Extent{Length: int64(x.n), Zero: true})
		default:
			add(nbd.Extent{Length: int64(x.n), Hole: true, Zero: true})
		}
		return nil
	})
	return out, err
}

func (j *Journal) removeOverlays() {
	dir := filepath.Join(j.opts.Dir, overlayDir)
	names, err := j.fs.ReadDir(dir)
	if err != nil {
		return
	}
	for _, n := range names {
		j.removeQuiet(filepath.Join(overlayDir, n))
	}
}
