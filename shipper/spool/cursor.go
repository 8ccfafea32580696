package spool

import (
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

// Cursor reads a spool's records in seq order while appends go on. It is
// not safe for concurrent use; a spool may have many cursors.
type Cursor struct {
	s    *Spool
	next uint64
	seg  *segment
	f    vfs.File
	off  int64
	rd   vfs.Window
}

// Cursor returns a cursor whose first record is seq from, or the oldest
// retained record when from is 0. A seq no longer retained fails with
// ErrGone at the first Next.
func (s *Spool) Cursor(from uint64) *Cursor {
	return &Cursor{s: s, next: from}
}

// Next returns the next record, or io.EOF at the current end of the spool
// (call Spool.Wait to wait for more). The record's Payload aliases the
// cursor's buffer and is valid only until the next call to Next or Close.
func (c *Cursor) Next() (record.Record, error) {
	for {
		if c.f == nil {
			if err := c.open(); err != nil {
				return record.Record{}, err
			}
		}
		s := c.s
		s.mu.Lock()
		end, sealed := c.seg.size, c.seg != s.active
		s.mu.Unlock()
		if c.off >= end {
			if !sealed {
				return record.Record{}, io.EOF
			}
			c.closeFile()
			continue
		}
		b, err := c.rd.At(c.off, record.FrameLen, end)
		if err != nil {
			return record.Record{}, fmt.Errorf("spool: read %s offset %d: %w", c.seg.path, c.off, err)
		}
		n, err := record.PeekLen(b)
		var r record.Record
		if err == nil {
			if b, err = c.rd.At(c.off, n, end); err != nil {
				return record.Record{}, fmt.Errorf("spool: read %s offset %d: %w", c.seg.path, c.off, err)
			}
			r, n, err = record.Decode(b)
		}
		switch {
		case errors.Is(err, record.ErrUnknownType):
			c.off += int64(n)
			continue
		case err != nil:
			// Everything before end was written by a successful Append.
			return record.Record{}, fmt.Errorf("%w: %s offset %d, seq %d: %w", ErrCorrupt, c.seg.path, c.off, c.next, err)
		}
		c.off += int64(n)
		if c.next == 0 {
			c.next = r.Seq
		}
		if r.Seq < c.next {
			continue
		}
		if r.Seq != c.next {
			return record.Record{}, fmt.Errorf("%w: %s offset %d: seq %d, want %d", ErrCorrupt, c.seg.path, c.off-int64(n), r.Seq, c.next)
		}
		c.next++
		return r, nil
	}
}

// open opens the segment holding c.next.
func (c *Cursor) open() error {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	var first uint64
	for _, seg := range s.segs {
		if seg.last >= seg.first {
			first = seg.first
			break
		}
	}
	if c.next == 0 {
		if first == 0 {
			return io.EOF
		}
		c.next = first
	}
	if c.next > s.last {
		return io.EOF
	}
	if first == 0 || c.next < first {
		return fmt.Errorf("%w: seq %d (oldest retained: %d)", ErrGone, c.next, first)
	}
	i := sort.Search(len(s.segs), func(i int) bool { return s.segs[i].first > c.next }) - 1
	seg := s.segs[i]
	f, err := s.fs.Open(seg.path)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	c.seg, c.f, c.off = seg, f, seg.hdrLen
	c.rd.Reset(f)
	return nil
}

func (c *Cursor) closeFile() {
	if c.f != nil {
		c.f.Close() // read-only: nothing to lose
		c.f = nil
	}
}

// Close releases the cursor's file.
func (c *Cursor) Close() error {
	c.closeFile()
	return nil
}
