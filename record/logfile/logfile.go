// Package logfile is the file layout the host's spool and the replica's
// journal share: a checksummed header naming the file's kind, its group and
// its first seq (or id), then records in package record's framing. It owns
// the header codec, the recovery scan that tells a clean end, a torn tail
// and corruption apart, and cutting a torn tail off while keeping a copy.
// A user that knows how much of a file it acknowledged as durable says so
// (ScanOptions.Durable): only what follows may then be a torn tail.
//
// It does not own what the files mean: each user describes its kind of file
// with a Format (magic, version, the words of its messages and its own
// sentinel errors, so that callers keep testing for spool.ErrCorrupt or
// journal.ErrCorrupt).
//
// Header layout, little endian (never change):
//
//	0      4      6   7   8           16          16+g
//	+------+------+---+---+-----------+-----------+--------+
//	|magic | vers |g  | 0 | first/id  | group (g) | CRC32C |
//	+------+------+---+---+-----------+-----------+--------+
package logfile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

// FixedLen is the header's length before the group name. Never change.
const FixedLen = 16

// MaxHeaderLen bounds any header: the group name is at most 255 bytes.
const MaxHeaderLen = FixedLen + 255 + 4

// ErrHeaderShort means the file ends inside its header.
var ErrHeaderShort = errors.New("logfile: header cut short")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Format is one kind of file of records.
type Format struct {
	Magic   string // 4 bytes
	Version uint16
	Prefix  string // "spool", "journal": what messages start with
	Kind    string // "segment", "layer": what the messages call a file
	// The caller's sentinel errors, wrapped by what Scan returns.
	Corrupt, Torn, Group error
}

// Header is a decoded file header.
type Header struct {
	Group string
	First uint64 // a segment's first seq, or the file's id
	Len   int64  // bytes of the header; 0 when it was torn
}

// HeaderLen is the length of the header of a file of group.
func HeaderLen(group string) int64 { return int64(FixedLen + len(group) + 4) }

// AppendHeader appends the header of a file of group to dst.
func (f Format) AppendHeader(dst []byte, group string, first uint64) []byte {
	start := len(dst)
	dst = append(dst, f.Magic...)
	dst = binary.LittleEndian.AppendUint16(dst, f.Version)
	dst = append(dst, byte(len(group)), 0)
	dst = binary.LittleEndian.AppendUint64(dst, first)
	dst = append(dst, group...)
	return binary.LittleEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// ParseHeader decodes a header from the start of b.
func (f Format) ParseHeader(b []byte) (Header, error) {
	if len(b) < FixedLen {
		return Header{}, fmt.Errorf("%w: %d bytes", ErrHeaderShort, len(b))
	}
	if string(b[:4]) != f.Magic {
		return Header{}, fmt.Errorf("bad magic %q, want %q", b[:4], f.Magic)
	}
	g := int(b[6])
	n := FixedLen + g + 4
	if len(b) < n {
		return Header{}, fmt.Errorf("%w: %d bytes of %d", ErrHeaderShort, len(b), n)
	}
	if got, want := crc32.Checksum(b[:n-4], castagnoli), binary.LittleEndian.Uint32(b[n-4:]); got != want {
		return Header{}, fmt.Errorf("header checksum %#08x, want %#08x", got, want)
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != f.Version {
		return Header{}, fmt.Errorf("%s version %d", f.Kind, v)
	}
	if b[7] != 0 {
		return Header{}, fmt.Errorf("reserved header byte %#x", b[7])
	}
	return Header{Group: string(b[FixedLen : FixedLen+g]), First: binary.LittleEndian.Uint64(b[8:]), Len: int64(n)}, nil
}

// ScanOptions say what a file must be.
type ScanOptions struct {
	Group   string
	First   uint64 // what the file's name says its header holds
	Ordered bool   // the records' seqs run on from the header's first seq
	MayTear bool   // the newest file: its tail may be torn
	// Durable is the end of the bytes the file's owner acknowledged as
	// durable (0: unknown). Only bytes from Durable on may be a torn tail:
	// a record that does not decode before it, or a file that ends before
	// it, is corruption even when MayTear is set.
	Durable int64
}

// Result is what scanning a file found.
type Result struct {
	Header  Header
	Size    int64  // file size
	End     int64  // end of the last good record (or of the header)
	First   uint64 // first record's seq, 0 if none
	Last    uint64 // last record's seq, 0 if none
	Records int64
	Torn    error // Format.Torn wrapped with where, when the tail from End on is torn
}

// Scan reads every record of the file at path (size bytes), checking its
// checksums, and calls visit (when not nil) with each good record and its
// offset; the record's payload is valid only during the call. A torn tail
// of a file that may tear, from o.Durable on, is reported in Result.Torn
// (then Header.Len is 0 when even the header is torn); anything else that
// does not decode, and a file that ends before o.Durable, is Format.Corrupt
// naming the file, offset and seq. A file of another group is Format.Group.
func (f Format) Scan(file vfs.File, path string, size int64, o ScanOptions, visit func(r *record.Record, pos int64) error) (Result, error) {
	res := Result{Size: size}
	rd := vfs.NewWindow(file)
	b, err := rd.At(0, MaxHeaderLen, size)
	if err != nil {
		return res, fmt.Errorf("%s: read %s: %w", f.Prefix, path, err)
	}
	hdr, herr := f.ParseHeader(b)
	if herr != nil {
		zero, err := rd.AllZero(0, size)
		if err != nil {
			return res, fmt.Errorf("%s: read %s: %w", f.Prefix, path, err)
		}
		if o.MayTear && o.Durable == 0 && (errors.Is(herr, ErrHeaderShort) || zero) {
			res.Torn = fmt.Errorf("%w: %s offset 0: %s header: %w", f.Torn, path, f.Kind, herr)
			return res, nil
		}
		where := path + " offset 0"
		if o.Ordered {
			where += fmt.Sprintf(", seq %d", o.First)
		}
		return res, fmt.Errorf("%w: %s: %s header: %w", f.Corrupt, where, f.Kind, herr)
	}
	if hdr.Group != o.Group {
		return res, fmt.Errorf("%w: %s belongs to group %q, not %q", f.Group, path, hdr.Group, o.Group)
	}
	if hdr.First != o.First {
		return res, fmt.Errorf("%w: %s offset 8: header says %d, name says %d", f.Corrupt, path, hdr.First, o.First)
	}
	res.Header, res.End = hdr, hdr.Len
	next := hdr.First
	for off := hdr.Len; off < size; {
		b, err := rd.At(off, record.FrameLen, size)
		if err != nil {
			return res, fmt.Errorf("%s: read %s offset %d: %w", f.Prefix, path, off, err)
		}
		n, derr := record.PeekLen(b)
		var r record.Record
		if derr == nil {
			if b, err = rd.At(off, n, size); err != nil {
				return res, fmt.Errorf("%s: read %s offset %d: %w", f.Prefix, path, off, err)
			}
			r, n, derr = record.Decode(b)
		}
		switch {
		case errors.Is(derr, record.ErrUnknownType): // a newer kind: skipped
			off += int64(n)
			res.End = off
			continue
		case derr != nil:
			return res, f.bad(rd, &res, path, off, next, o.MayTear && off >= o.Durable, derr)
		case o.Ordered && r.Seq != next:
			return res, fmt.Errorf("%w: %s offset %d: seq %d, want %d", f.Corrupt, path, off, r.Seq, next)
		}
		if visit != nil {
			if err := visit(&r, off); err != nil {
				return res, err
			}
		}
		if res.Records == 0 {
			res.First = r.Seq
		}
		res.Last = r.Seq
		res.Records++
		next++
		off += int64(n)
		res.End = off
	}
	if res.End < o.Durable {
		return res, fmt.Errorf("%w: %s offset %d, seq %d: the file ends there, but it was acknowledged up to offset %d",
			f.Corrupt, path, res.End, next, o.Durable)
	}
	return res, nil
}

// bad classifies a record that does not decode at off: a torn tail when the
// file may tear and nothing but zeroes or the record's own bytes follow it,
// else corruption.
func (f Format) bad(rd *vfs.Window, res *Result, path string, off int64, seq uint64, mayTear bool, derr error) error {
	if mayTear {
		torn := errors.Is(derr, record.ErrShort)
		if !torn {
			// An intact frame whose record ends exactly at the end of the
			// file was the last write: its pages were lost.
			if b, err := rd.At(off, record.FrameLen, res.Size); err == nil {
				if n, err := record.PeekLen(b); err == nil && off+int64(n) == res.Size {
					torn = true
				}
			}
		}
		if !torn {
			zero, err := rd.AllZero(off, res.Size)
			if err != nil {
				return fmt.Errorf("%s: read %s offset %d: %w", f.Prefix, path, off, err)
			}
			torn = zero
		}
		if torn {
			res.Torn = fmt.Errorf("%w: %s offset %d, seq %d: %w", f.Torn, path, off, seq, derr)
			return nil
		}
	}
	return fmt.Errorf("%w: %s offset %d, seq %d: %w", f.Corrupt, path, off, seq, derr)
}

// TornInfix names the copy CutTorn keeps: <file>.torn-<offset>.
const TornInfix = ".torn-"

// CutTorn saves the torn tail res found in the file at path (in dir) beside
// it, then truncates the file to its last complete record, or removes it
// when even its header is torn. It returns the kept copy's path.
func (f Format) CutTorn(fs vfs.FS, dir, path string, res Result) (string, error) {
	file, err := fs.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return "", fmt.Errorf("%s: %w", f.Prefix, err)
	}
	defer file.Close()
	// The copy is bounded by one record: a longer tail is zeroes from a
	// crash, or records the owner never acknowledged (whose sender still
	// holds them); of those only the place is kept, in the copy's name.
	var tail []byte
	if res.Size-res.End <= record.MaxLen+vfs.WindowChunk {
		tail = make([]byte, res.Size-res.End)
		if _, err := file.ReadAt(tail, res.End); err != nil && !errors.Is(err, io.EOF) {
			return "", fmt.Errorf("%s: read torn tail: %w", f.Prefix, err)
		}
	}
	keep := fmt.Sprintf("%s%s%d", path, TornInfix, res.End)
	if err := vfs.Publish(fs, keep, tail); err != nil {
		return "", fmt.Errorf("%s: keep torn tail: %w", f.Prefix, err)
	}
	if res.Header.Len == 0 {
		if err := fs.Remove(path); err != nil {
			return "", fmt.Errorf("%s: remove torn %s: %w", f.Prefix, f.Kind, err)
		}
		if err := fs.SyncDir(dir); err != nil {
			return "", fmt.Errorf("%s: %w", f.Prefix, err)
		}
		return keep, nil
	}
	if err := file.Truncate(res.End); err != nil {
		return "", fmt.Errorf("%s: cut torn tail: %w", f.Prefix, err)
	}
	if err := file.Sync(); err != nil {
		return "", fmt.Errorf("%s: cut torn tail: %w", f.Prefix, err)
	}
	return keep, nil
}
