package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

// On-disk constants. Never change.
const (
	segMagic      = "QCDS"
	segVersion    = 1
	segFixedLen   = 16 // magic, version, group length, reserved, first seq
	ackedMagic    = "QCDA"
	ackedVersion  = 1
	ackedLen      = 20
	ackedName     = "acked"
	segSuffix     = ".seg"
	segNameDigits = 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func segName(first uint64) string {
	return fmt.Sprintf("%0*d%s", segNameDigits, first, segSuffix)
}

// parseSegName returns the first seq a segment file name says, and false for
// any other name.
func parseSegName(name string) (uint64, bool) {
	s, ok := strings.CutSuffix(name, segSuffix)
	if !ok || len(s) != segNameDigits {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	return v, err == nil
}

func segHeaderLen(group string) int64 { return int64(segFixedLen + len(group) + 4) }

func appendSegHeader(dst []byte, group string, first uint64) []byte {
	start := len(dst)
	dst = append(dst, segMagic...)
	dst = binary.LittleEndian.AppendUint16(dst, segVersion)
	dst = append(dst, byte(len(group)), 0)
	dst = binary.LittleEndian.AppendUint64(dst, first)
	dst = append(dst, group...)
	return binary.LittleEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

type segHeader struct {
	group string
	first uint64
	len   int64
}

// errHeaderShort means the file ends inside the segment header.
var errHeaderShort = errors.New("spool: segment header cut short")

// parseSegHeader decodes a segment header from the start of b.
func parseSegHeader(b []byte) (segHeader, error) {
	if len(b) < segFixedLen {
		return segHeader{}, fmt.Errorf("%w: %d bytes", errHeaderShort, len(b))
	}
	if string(b[:4]) != segMagic {
		return segHeader{}, fmt.Errorf("bad magic %q", b[:4])
	}
	g := int(b[6])
	n := segFixedLen + g + 4
	if len(b) < n {
		return segHeader{}, fmt.Errorf("%w: %d bytes of %d", errHeaderShort, len(b), n)
	}
	if got, want := crc32.Checksum(b[:n-4], castagnoli), binary.LittleEndian.Uint32(b[n-4:]); got != want {
		return segHeader{}, fmt.Errorf("header checksum %#08x, want %#08x", got, want)
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != segVersion {
		return segHeader{}, fmt.Errorf("segment version %d", v)
	}
	if b[7] != 0 {
		return segHeader{}, fmt.Errorf("reserved header byte %#x", b[7])
	}
	return segHeader{
		group: string(b[segFixedLen : segFixedLen+g]),
		first: binary.LittleEndian.Uint64(b[8:]),
		len:   int64(n),
	}, nil
}

func encodeAcked(seq uint64) []byte {
	b := make([]byte, 0, ackedLen)
	b = append(b, ackedMagic...)
	b = binary.LittleEndian.AppendUint16(b, ackedVersion)
	b = append(b, 0, 0)
	b = binary.LittleEndian.AppendUint64(b, seq)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func decodeAcked(b []byte) (uint64, error) {
	if len(b) != ackedLen || string(b[:4]) != ackedMagic ||
		binary.LittleEndian.Uint16(b[4:]) != ackedVersion || b[6] != 0 || b[7] != 0 ||
		crc32.Checksum(b[:16], castagnoli) != binary.LittleEndian.Uint32(b[16:]) {
		return 0, fmt.Errorf("%w: acked file of %d bytes is invalid", ErrCorrupt, len(b))
	}
	return binary.LittleEndian.Uint64(b[8:]), nil
}

// scan is what scanning one segment found.
type scan struct {
	path    string
	hdr     segHeader
	size    int64  // file size
	end     int64  // end of the last good record (or of the header)
	first   uint64 // first record's seq, 0 if none
	last    uint64 // last record's seq, 0 if none
	records int64
	torn    error // ErrTorn wrapped with where, when the tail from end on is torn
}

// scanSegment reads the segment at path of size bytes, calling visit (when
// not nil) for every good record in order. want is the seq the first record
// must have (0: whatever the header says). last says whether this is the
// newest segment, the only one that may have a torn tail. Records aliased by
// visit are valid only during the call.
//
// It returns ErrCorrupt for corruption, ErrGroup for another group's segment,
// and reports a torn tail in scan.torn (the header too may be torn: then
// scan.hdr.len is 0).
func scanSegment(f vfs.File, path string, size int64, group string, nameFirst uint64, isLast bool, visit func(r *record.Record) error) (scan, error) {
	sc := scan{path: path, size: size}
	rd := vfs.NewWindow(f)
	b, err := rd.At(0, segFixedLen+255+4, size)
	if err != nil {
		return sc, fmt.Errorf("spool: read %s: %w", path, err)
	}
	hdr, herr := parseSegHeader(b)
	if herr != nil {
		zero, err := rd.AllZero(0, size)
		if err != nil {
			return sc, fmt.Errorf("spool: read %s: %w", path, err)
		}
		if isLast && (errors.Is(herr, errHeaderShort) || zero) {
			sc.torn = fmt.Errorf("%w: %s offset 0: segment header: %w", ErrTorn, path, herr)
			return sc, nil
		}
		return sc, fmt.Errorf("%w: %s offset 0: segment header: %w", ErrCorrupt, path, herr)
	}
	if hdr.group != group {
		return sc, fmt.Errorf("%w: %s belongs to group %q, not %q", ErrGroup, path, hdr.group, group)
	}
	if hdr.first != nameFirst {
		return sc, fmt.Errorf("%w: %s offset 8: header says first seq %d", ErrCorrupt, path, hdr.first)
	}
	sc.hdr = hdr
	sc.end = hdr.len
	next := hdr.first
	off := hdr.len
	for off < size {
		b, err := rd.At(off, record.FrameLen, size)
		if err != nil {
			return sc, fmt.Errorf("spool: read %s offset %d: %w", path, off, err)
		}
		n, derr := record.PeekLen(b)
		var r record.Record
		if derr == nil {
			if b, err = rd.At(off, n, size); err != nil {
				return sc, fmt.Errorf("spool: read %s offset %d: %w", path, off, err)
			}
			r, n, derr = record.Decode(b)
		}
		switch {
		case errors.Is(derr, record.ErrUnknownType):
			off += int64(n)
			sc.end = off
			continue
		case derr != nil:
			return sc, sc.bad(rd, off, next, isLast, derr)
		case r.Seq != next:
			return sc, fmt.Errorf("%w: %s offset %d: seq %d, want %d", ErrCorrupt, path, off, r.Seq, next)
		}
		if visit != nil {
			if err := visit(&r); err != nil {
				return sc, err
			}
		}
		if sc.first == 0 {
			sc.first = r.Seq
		}
		sc.last = r.Seq
		sc.records++
		next++
		off += int64(n)
		sc.end = off
	}
	return sc, nil
}

// bad classifies a record that does not decode at off: a torn tail when it
// is in the last segment and nothing but zeroes or its own bytes follow it,
// else corruption.
func (sc *scan) bad(rd *vfs.Window, off int64, seq uint64, isLast bool, derr error) error {
	if isLast {
		torn := errors.Is(derr, record.ErrShort)
		if !torn {
			// A record whose frame is intact and which ends exactly at the
			// end of the file was the last write: its pages were lost.
			if b, err := rd.At(off, record.FrameLen, sc.size); err == nil {
				if n, err := record.PeekLen(b); err == nil && off+int64(n) == sc.size {
					torn = true
				}
			}
		}
		if !torn {
			zero, err := rd.AllZero(off, sc.size)
			if err != nil {
				return fmt.Errorf("spool: read %s offset %d: %w", sc.path, off, err)
			}
			torn = zero
		}
		if torn {
			sc.torn = fmt.Errorf("%w: %s offset %d, seq %d: %w", ErrTorn, sc.path, off, seq, derr)
			return nil
		}
	}
	return fmt.Errorf("%w: %s offset %d, seq %d: %w", ErrCorrupt, sc.path, off, seq, derr)
}
