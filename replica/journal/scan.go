package journal

import (
	"errors"
	"fmt"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

// scanResult is what scanning one segment or layer file found.
type scanResult struct {
	hdr  fileHeader
	size int64 // file size
	end  int64 // end of the last good record (or of the header)
	last uint64
	n    int64
	torn error // ErrTorn with where, when the tail from end on is torn
}

// scanFile reads every record of the file, checking its checksums, and calls
// visit with each record and its file offset (the record's payload is valid
// only during the call). For a segment (magic segMagic) the seqs must run on
// from the header's first seq. Only the newest segment (mayTear) may have a
// torn tail; anything else that does not decode is ErrCorrupt naming the
// file, offset and seq.
func scanFile(f vfs.File, path string, size int64, magic, group string, nameFirst uint64, mayTear bool, visit func(r *record.Record, pos int64) error) (scanResult, error) {
	sc := scanResult{size: size}
	rd := vfs.NewWindow(f)
	b, err := rd.At(0, fileFixedLen+255+4, size)
	if err != nil {
		return sc, fmt.Errorf("journal: read %s: %w", path, err)
	}
	hdr, herr := parseFileHeader(b, magic)
	if herr != nil {
		zero, err := rd.AllZero(0, size)
		if err != nil {
			return sc, fmt.Errorf("journal: read %s: %w", path, err)
		}
		if mayTear && (errors.Is(herr, errHeaderShort) || zero) {
			sc.torn = fmt.Errorf("%w: %s offset 0: file header: %w", ErrTorn, path, herr)
			return sc, nil
		}
		return sc, fmt.Errorf("%w: %s offset 0: file header: %w", ErrCorrupt, path, herr)
	}
	if hdr.group != group {
		return sc, fmt.Errorf("%w: %s belongs to group %q, not %q", ErrGroup, path, hdr.group, group)
	}
	if hdr.first != nameFirst {
		return sc, fmt.Errorf("%w: %s offset 8: header says %d, name says %d", ErrCorrupt, path, hdr.first, nameFirst)
	}
	seg := magic == segMagic
	sc.hdr = hdr
	sc.end = hdr.len
	next := hdr.first
	off := hdr.len
	for off < size {
		b, err := rd.At(off, record.FrameLen, size)
		if err != nil {
			return sc, fmt.Errorf("journal: read %s offset %d: %w", path, off, err)
		}
		n, derr := record.PeekLen(b)
		var r record.Record
		if derr == nil {
			if b, err = rd.At(off, n, size); err != nil {
				return sc, fmt.Errorf("journal: read %s offset %d: %w", path, off, err)
			}
			r, n, derr = record.Decode(b)
		}
		switch {
		case errors.Is(derr, record.ErrUnknownType):
			off += int64(n)
			sc.end = off
			continue
		case derr != nil:
			return sc, sc.bad(rd, path, off, next, mayTear, derr)
		case seg && r.Seq != next:
			return sc, fmt.Errorf("%w: %s offset %d: seq %d, want %d", ErrCorrupt, path, off, r.Seq, next)
		}
		if visit != nil {
			if err := visit(&r, off); err != nil {
				return sc, err
			}
		}
		sc.last = r.Seq
		sc.n++
		next++
		off += int64(n)
		sc.end = off
	}
	return sc, nil
}

// bad classifies a record that does not decode at off: a torn tail when the
// file may tear and nothing but zeroes or the record's own bytes follow it,
// else corruption.
func (sc *scanResult) bad(rd *vfs.Window, path string, off int64, seq uint64, mayTear bool, derr error) error {
	if mayTear {
		torn := errors.Is(derr, record.ErrShort)
		if !torn {
			// An intact frame whose record ends exactly at the end of the
			// file was the last write: its pages were lost.
			if b, err := rd.At(off, record.FrameLen, sc.size); err == nil {
				if n, err := record.PeekLen(b); err == nil && off+int64(n) == sc.size {
					torn = true
				}
			}
		}
		if !torn {
			zero, err := rd.AllZero(off, sc.size)
			if err != nil {
				return fmt.Errorf("journal: read %s offset %d: %w", path, off, err)
			}
			torn = zero
		}
		if torn {
			sc.torn = fmt.Errorf("%w: %s offset %d, seq %d: %w", ErrTorn, path, off, seq, derr)
			return nil
		}
	}
	return fmt.Errorf("%w: %s offset %d, seq %d: %w", ErrCorrupt, path, off, seq, derr)
}
