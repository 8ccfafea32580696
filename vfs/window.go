package vfs

import (
	"errors"
	"io"
)

// WindowChunk is how much a Window reads at a time.
const WindowChunk = 256 << 10

// Window reads a file through a buffer that slides over it, never past a
// limit the caller gives: the scanners of the spool and the journal use it
// to read records whose lengths come off the disk.
type Window struct {
	f     File
	buf   []byte
	start int64 // file offset of buf[0]
	n     int   // valid bytes in buf
}

// NewWindow reads f.
func NewWindow(f File) *Window { return &Window{f: f} }

// At returns the file's bytes [off, off+want) clipped at limit; it is
// shorter than want only when limit (or the file) ends first. It allocates
// at most min(want, limit-off) bytes beyond its chunk, so a length read off
// the disk cannot make it allocate more than the file holds. The bytes are
// valid until the next call.
func (w *Window) At(off int64, want int, limit int64) ([]byte, error) {
	if rest := limit - off; int64(want) > rest {
		want = int(max(rest, 0))
	}
	if off >= w.start && off+int64(want) <= w.start+int64(w.n) {
		i := int(off - w.start)
		return w.buf[i : i+want], nil
	}
	size := max(want, WindowChunk)
	if rest := limit - off; int64(size) > rest {
		size = int(max(rest, 0))
	}
	if cap(w.buf) < size {
		w.buf = make([]byte, size)
	}
	w.buf = w.buf[:size]
	n, err := w.f.ReadAt(w.buf, off)
	if err != nil && !errors.Is(err, io.EOF) {
		w.n = 0
		return nil, err
	}
	w.start, w.n = off, n
	return w.buf[:min(n, want)], nil
}

// AllZero reports whether the file's bytes [off, limit) are all zero (a
// preallocated or torn tail).
func (w *Window) AllZero(off, limit int64) (bool, error) {
	for off < limit {
		b, err := w.At(off, WindowChunk, limit)
		if err != nil {
			return false, err
		}
		if len(b) == 0 {
			return true, nil
		}
		for _, c := range b {
			if c != 0 {
				return false, nil
			}
		}
		off += int64(len(b))
	}
	return true, nil
}

// Reset makes w read f instead, keeping its buffer.
func (w *Window) Reset(f File) { w.f, w.start, w.n = f, 0, 0 }
