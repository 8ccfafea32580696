package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/qcdp/qcdp/record/logfile"
	"hash/crc32"
	"strconv"
	"strings"

	"github.com/qcdp/qcdp/record"
)

// On-disk constants. Never change.
const (
	segMagic        = "QCJS" // a segment: records with consecutive seqs
	layerMagic      = "QCJL" // a layer (base or long-term delta): records sorted by disk and offset
	fileVersion     = 1
	idxMagic        = "QCJI"
	idxVersion      = 1
	idxFixedLen     = 28 // magic, version, file kind, reserved, covered size, count, disks, reserved
	idxEntryLen     = 46
	manMagic        = "QCJM"
	manVersion      = 1
	manVersionDecls = 2 // a manifest that names declarations (manifest.go)
	manifestName    = "MANIFEST"
	ackedName       = "ACKED"
	ackedMagic      = "QCJA"
	ackedVersion    = 1
	ackedFixed      = 32  // magic, version, group length, reserved, seq, segment, end
	ackedSlotLen    = 512 // the file is two slots, each in a sector of its own
	segSuffix       = ".seg"
	layerSuffix     = ".lay"
	idxSuffix       = ".idx"
	tornInfix       = logfile.TornInfix
	overlayDir      = "overlays"
	nameDigits      = 20
	noDisk          = 0xffff
	idxKindSeg      = 1
	idxKindLayer    = 2
	maxIdxDisks     = 4096
	maxManLayers    = 1 << 16
	maxManDisks     = 4096
	maxLayerPoint   = record.MaxName
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func segName(first uint64) string { return fmt.Sprintf("%0*d%s", nameDigits, first, segSuffix) }

func layerName(gen, id uint64) string {
	return fmt.Sprintf("%0*d-%0*d%s", nameDigits, gen, nameDigits, id, layerSuffix)
}

// parseSegName returns the first seq a segment file name says.
func parseSegName(name string) (uint64, bool) {
	s, ok := strings.CutSuffix(name, segSuffix)
	if !ok || len(s) != nameDigits {
		return 0, false
	}
	return parseDigits(s)
}

func parseDigits(s string) (uint64, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	return v, err == nil
}

// entry is what the index keeps of one record: everything but the payload,
// and where the record is in its file.
type entry struct {
	seq    uint64
	time   int64
	off    uint64
	length uint64
	pos    int64 // file offset of the record's frame
	disk   uint16
	kind   record.Kind
	marker record.MarkerKind
	hlen   uint16 // encoded length before the payload
}

// encodedLen is the record's full encoded length.
func (e *entry) encodedLen() int64 {
	if e.kind == record.Data || e.kind == record.Members || e.kind == record.Definition {
		return int64(e.hlen) + int64(e.length)
	}
	return int64(e.hlen)
}

// idxFile is a decoded index file: the entries of every record of one
// segment or layer file, and the disk names they refer to.
type idxFile struct {
	kind    byte
	covered int64 // the data file's size the index describes
	disks   []string
	entries []entry
	names   map[uint64]string // marker names (and Definition records' VM ids) by seq
}

// encodeIndex lays out an index file:
//
//	0      4      6   7   8             16      20      22  24
//	+------+------+---+---+-------------+-------+-------+---+--------------+
//	|"QCJI"| vers |k  | 0 | covered size| count | disks | 0 | disk table...|
//	+------+------+---+---+-------------+-------+-------+---+--------------+
//	| entries: seq, time, offset, length, pos (8 each), disk (2), kind,     |
//	| marker, name length (1 each), 1 zero byte, then the name bytes ...    |
//	+-----------------------------------------------------------------------+
//	| CRC32C of everything before                                          |
//
// The disk table is, per disk, a length byte and the name. The entry of a
// Members record (segments only) has no disk (0xffff) and its length is
// that of its declaration, which is read from the record itself. The entry
// of a Definition record (segments only) has no disk either, its length is
// that of its JSON and its name is the VM's id.
func encodeIndex(x *idxFile) []byte {
	b := make([]byte, 0, idxFixedLen+len(x.entries)*idxEntryLen+64)
	b = append(b, idxMagic...)
	b = binary.LittleEndian.AppendUint16(b, idxVersion)
	b = append(b, x.kind, 0)
	b = binary.LittleEndian.AppendUint64(b, uint64(x.covered))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(x.entries)))
	b = binary.LittleEndian.AppendUint16(b, uint16(len(x.disks)))
	b = append(b, 0, 0)
	b = binary.LittleEndian.AppendUint32(b, 0) // pad to idxFixedLen
	for _, d := range x.disks {
		b = append(b, byte(len(d)))
		b = append(b, d...)
	}
	for i := range x.entries {
		e := &x.entries[i]
		name := x.names[e.seq]
		if e.kind != record.Marker && e.kind != record.Definition {
			name = ""
		}
		b = binary.LittleEndian.AppendUint64(b, e.seq)
		b = binary.LittleEndian.AppendUint64(b, uint64(e.time))
		b = binary.LittleEndian.AppendUint64(b, e.off)
		b = binary.LittleEndian.AppendUint64(b, e.length)
		b = binary.LittleEndian.AppendUint64(b, uint64(e.pos))
		b = binary.LittleEndian.AppendUint16(b, e.disk)
		b = append(b, byte(e.kind), byte(e.marker), byte(len(name)), 0)
		b = append(b, name...)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

var errIndex = errors.New("journal: bad index file")

// decodeIndex decodes an index file. Every count is bounded by the bytes
// present before anything is allocated from it.
func decodeIndex(b []byte) (*idxFile, error) {
	if len(b) < idxFixedLen+4 {
		return nil, fmt.Errorf("%w: %d bytes", errIndex, len(b))
	}
	body := b[:len(b)-4]
	if got, want := crc32.Checksum(body, castagnoli), binary.LittleEndian.Uint32(b[len(b)-4:]); got != want {
		return nil, fmt.Errorf("%w: checksum %#08x, want %#08x", errIndex, got, want)
	}
	if string(b[:4]) != idxMagic || binary.LittleEndian.Uint16(b[4:]) != idxVersion || b[7] != 0 {
		return nil, fmt.Errorf("%w: magic or version", errIndex)
	}
	x := &idxFile{kind: b[6], covered: int64(binary.LittleEndian.Uint64(b[8:]))}
	if x.kind != idxKindSeg && x.kind != idxKindLayer || x.covered < 0 {
		return nil, fmt.Errorf("%w: kind %d, covered %d", errIndex, x.kind, x.covered)
	}
	count := int(binary.LittleEndian.Uint32(b[16:]))
	nd := int(binary.LittleEndian.Uint16(b[20:]))
	if nd > maxIdxDisks || count > (len(body)-idxFixedLen)/idxEntryLen {
		return nil, fmt.Errorf("%w: %d entries, %d disks in %d bytes", errIndex, count, nd, len(b))
	}
	p := idxFixedLen
	x.disks = make([]string, 0, nd)
	for range nd {
		if p >= len(body) {
			return nil, fmt.Errorf("%w: disk table cut short", errIndex)
		}
		l := int(body[p])
		p++
		if p+l > len(body) {
			return nil, fmt.Errorf("%w: disk table cut short", errIndex)
		}
		d := string(body[p : p+l])
		if err := record.ValidDiskName(d); err != nil {
			return nil, fmt.Errorf("%w: %w", errIndex, err)
		}
		x.disks = append(x.disks, d)
		p += l
	}
	x.entries = make([]entry, 0, count)
	for range count {
		if p+idxEntryLen > len(body) {
			return nil, fmt.Errorf("%w: entries cut short", errIndex)
		}
		e := entry{
			seq:    binary.LittleEndian.Uint64(body[p:]),
			time:   int64(binary.LittleEndian.Uint64(body[p+8:])),
			off:    binary.LittleEndian.Uint64(body[p+16:]),
			length: binary.LittleEndian.Uint64(body[p+24:]),
			pos:    int64(binary.LittleEndian.Uint64(body[p+32:])),
			disk:   binary.LittleEndian.Uint16(body[p+40:]),
			kind:   record.Kind(body[p+42]),
			marker: record.MarkerKind(body[p+43]),
		}
		nl := int(body[p+44])
		if body[p+45] != 0 || p+idxEntryLen+nl > len(body) {
			return nil, fmt.Errorf("%w: entry %d invalid", errIndex, len(x.entries))
		}
		if e.disk != noDisk && int(e.disk) >= nd || e.pos < 0 {
			return nil, fmt.Errorf("%w: entry %d: disk %d of %d, pos %d", errIndex, len(x.entries), e.disk, nd, e.pos)
		}
		var dl int
		if e.disk != noDisk {
			dl = len(x.disks[e.disk])
		}
		if nl > 0 && e.kind != record.Marker && e.kind != record.Definition {
			return nil, fmt.Errorf("%w: entry %d: a name on a %v record", errIndex, len(x.entries), e.kind)
		}
		if nl > 0 {
			if x.names == nil {
				x.names = map[uint64]string{}
			}
			x.names[e.seq] = string(body[p+idxEntryLen : p+idxEntryLen+nl])
		}
		e.hlen = uint16(record.FrameLen + record.BodyHeaderLen + dl + nl)
		switch e.kind {
		case record.Data, record.Zero, record.Trim:
			if e.disk == noDisk || e.marker != 0 || e.off+e.length < e.off || e.kind == record.Data && e.length > record.MaxPayload {
				return nil, fmt.Errorf("%w: entry %d (seq %d) invalid", errIndex, len(x.entries), e.seq)
			}
		case record.Marker:
			if e.marker < record.SyncComplete || e.marker > record.ResyncEnd || e.off != 0 || e.length != 0 {
				return nil, fmt.Errorf("%w: entry %d (seq %d) invalid marker", errIndex, len(x.entries), e.seq)
			}
		case record.Members:
			// Its declaration is read from the record itself.
			if e.disk != noDisk || e.marker != 0 || e.off != 0 || e.length > record.MaxDeclaration || x.kind != idxKindSeg {
				return nil, fmt.Errorf("%w: entry %d (seq %d) invalid members record", errIndex, len(x.entries), e.seq)
			}
		case record.Definition:
			// Named by its VM; its definition is the DEFINITIONS file's.
			if e.disk != noDisk || e.marker != 0 || e.off != 0 || e.length > record.MaxDefinition || nl == 0 || x.kind != idxKindSeg {
				return nil, fmt.Errorf("%w: entry %d (seq %d) invalid definition record", errIndex, len(x.entries), e.seq)
			}
		default:
			return nil, fmt.Errorf("%w: entry %d (seq %d) kind %d", errIndex, len(x.entries), e.seq, e.kind)
		}
		x.entries = append(x.entries, e)
		p += idxEntryLen + nl
	}
	if p != len(body) {
		return nil, fmt.Errorf("%w: %d trailing bytes", errIndex, len(body)-p)
	}
	return x, nil
}
