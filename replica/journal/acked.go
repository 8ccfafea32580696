package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"

	"github.com/qcdp/qcdp/vfs"
)

// mark is the journal's high-water mark: the newest record Append
// acknowledged, and where that record ends.
type mark struct {
	seq uint64 // the highest acknowledged seq; 0: none
	seg uint64 // first seq (file name) of the segment holding it; 0: none does
	end int64  // offset in that segment where the record ends
}

// encodeMarkSlot lays out one slot of the ACKED file (ackedFixed+g+4
// bytes; the rest of its ackedSlotLen bytes are zeroes):
//
//	0      4      6   7   8          16          24         32      32+g
//	+------+------+---+---+----------+-----------+----------+-------+--------+
//	|"QCJA"| vers |g  | 0 | seq      | segment   | end      | group | CRC32C |
//	+------+------+---+---+----------+-----------+----------+-------+--------+
//
// The CRC32C covers bytes [0, 32+g).
func encodeMarkSlot(group string, m mark) []byte {
	b := make([]byte, 0, ackedFixed+len(group)+4)
	b = append(b, ackedMagic...)
	b = binary.LittleEndian.AppendUint16(b, ackedVersion)
	b = append(b, byte(len(group)), 0)
	b = binary.LittleEndian.AppendUint64(b, m.seq)
	b = binary.LittleEndian.AppendUint64(b, m.seg)
	b = binary.LittleEndian.AppendUint64(b, uint64(m.end))
	b = append(b, group...)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

var errMark = errors.New("journal: bad ACKED slot")

// decodeMarkSlot decodes one ackedSlotLen-byte slot. A slot of another
// group is ErrGroup.
func decodeMarkSlot(group string, b []byte) (mark, error) {
	if len(b) != ackedSlotLen {
		return mark{}, fmt.Errorf("%w: %d bytes", errMark, len(b))
	}
	n := ackedFixed + int(b[6]) + 4
	if got, want := crc32.Checksum(b[:n-4], castagnoli), binary.LittleEndian.Uint32(b[n-4:]); got != want {
		return mark{}, fmt.Errorf("%w: checksum %#08x, want %#08x", errMark, got, want)
	}
	if string(b[:4]) != ackedMagic || binary.LittleEndian.Uint16(b[4:]) != ackedVersion || b[7] != 0 {
		return mark{}, fmt.Errorf("%w: magic or version", errMark)
	}
	for _, c := range b[n:] {
		if c != 0 {
			return mark{}, fmt.Errorf("%w: bytes after the checksum", errMark)
		}
	}
	m := mark{
		seq: binary.LittleEndian.Uint64(b[8:]),
		seg: binary.LittleEndian.Uint64(b[16:]),
		end: int64(binary.LittleEndian.Uint64(b[24:])),
	}
	if g := string(b[ackedFixed : n-4]); g != group {
		return mark{}, fmt.Errorf("%w: %w: group %q, not %q", errMark, ErrGroup, g, group)
	}
	if m.end < 0 || m.seg == 0 && m.end != 0 || m.seg > m.seq {
		return mark{}, fmt.Errorf("%w: seq %d in segment %d at offset %d", errMark, m.seq, m.seg, m.end)
	}
	return m, nil
}

// markSlot is the whole ackedSlotLen-byte slot holding m.
func markSlot(group string, m mark) []byte {
	b := make([]byte, ackedSlotLen)
	copy(b, encodeMarkSlot(group, m))
	return b
}

// encodeAcked lays out a whole ACKED file with m in both slots.
func encodeAcked(group string, m mark) []byte {
	s := markSlot(group, m)
	return append(s, s...)
}

// ackState is what Open found in the ACKED file.
type ackState int

const (
	ackNone    ackState = iota // no file: a journal written before the mark existed
	ackExact                   // both slots check: the newer is exactly what was acknowledged
	ackDamaged                 // one slot does not check: the other one is a lower bound
)

// readAcked reads the ACKED file of the journal: the newest mark of its
// two slots, which slot holds it, and how far it can be trusted. A file
// neither of whose slots checks is ErrCorrupt.
func readAcked(fs vfs.FS, path, group string) (m mark, slot int, st ackState, err error) {
	f, err := fs.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return mark{}, 0, ackNone, nil
	}
	if err != nil {
		return mark{}, 0, 0, fmt.Errorf("journal: %w", err)
	}
	defer f.Close()
	b := make([]byte, 2*ackedSlotLen+1)
	n, err := io.ReadFull(f, b)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return mark{}, 0, 0, fmt.Errorf("journal: read %s: %w", path, err)
	}
	b = b[:n]
	var ms [2]mark
	var errs [2]error
	for i := range 2 {
		lo, hi := min(i*ackedSlotLen, n), min((i+1)*ackedSlotLen, n)
		ms[i], errs[i] = decodeMarkSlot(group, b[lo:hi])
		if errors.Is(errs[i], ErrGroup) {
			return mark{}, 0, 0, fmt.Errorf("%s offset %d: %w", path, lo, errs[i])
		}
	}
	switch {
	case errs[0] != nil && errs[1] != nil:
		return mark{}, 0, 0, fmt.Errorf("%w: %s offset 0: no slot of the acknowledged mark checks: %w; offset %d: %w",
			ErrCorrupt, path, errs[0], ackedSlotLen, errs[1])
	case n != 2*ackedSlotLen:
		// A slot is whole and checks: the file grew or shrank, which no
		// write of ours does.
		return mark{}, 0, 0, fmt.Errorf("%w: %s: %d bytes, want %d", ErrCorrupt, path, n, 2*ackedSlotLen)
	case errs[0] != nil:
		return ms[1], 1, ackDamaged, nil
	case errs[1] != nil:
		return ms[0], 0, ackDamaged, nil
	case ms[1].seq > ms[0].seq:
		return ms[1], 1, ackExact, nil
	}
	return ms[0], 0, ackExact, nil
}

// segRule says how recovery reads one segment, by what the mark says.
type segRule struct {
	mayTear bool  // its end may be torn
	durable int64 // logfile.ScanOptions.Durable: the bytes before it were acknowledged
	limit   int64 // read only this many bytes, cutting what follows (never acknowledged); -1: all
	dropAll bool  // every record in it is past the mark: cut it whole
}

// ruleFor returns how recovery reads the segment whose first seq is first.
// Without a mark only the newest segment may tear. With an exact mark the
// segment holding the mark is read up to the mark and cut there, and the
// segments after it are cut whole: nothing past the mark was acknowledged
// (a crash came before its fsync, or the fsync failed). With a damaged
// mark, what follows it is recovered as without one (it may have been
// acknowledged), but nothing before it may tear.
func ruleFor(m mark, st ackState, first uint64, isLast bool) segRule {
	r := segRule{mayTear: isLast, limit: -1}
	switch {
	case st == ackNone:
	case st == ackExact && first > m.seq:
		r.dropAll = true
	case st == ackExact && first == m.seg:
		r.mayTear, r.durable, r.limit = false, m.end, m.end
	case first < m.seg:
		r.mayTear = false
	case first == m.seg:
		r.durable = m.end
	}
	return r
}
