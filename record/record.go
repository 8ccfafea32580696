package record

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
	"strings"
)

// Kind is the record type byte. Never change the values.
type Kind uint8

// Record types known to this version.
const (
	Data   Kind = 1 // guest data: Payload holds Length bytes
	Zero   Kind = 2 // the range reads as zeroes
	Trim   Kind = 3 // the range was discarded
	Marker Kind = 4 // a point in the stream; see MarkerKind
	// Members declares the group's membership: Payload holds a Declaration
	// (see DecodeDeclaration).
	Members Kind = 5
	// Definition carries one VM's definition (hardware, disks, NICs) as
	// JSON: Payload holds a VMDefinition, Name its id (see
	// DecodeDefinition). Since stream version 3.
	Definition Kind = 6
)

func (k Kind) String() string {
	switch k {
	case Data:
		return "data"
	case Zero:
		return "zero"
	case Trim:
		return "trim"
	case Marker:
		return "marker"
	case Members:
		return "members"
	case Definition:
		return "definition"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// MarshalText names the kind as String does ("data"), so that JSON carries
// names, not numbers.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText reads what MarshalText writes, "kind(N)" included.
func (k *Kind) UnmarshalText(b []byte) error {
	for c := Data; c <= Definition; c++ {
		if string(b) == c.String() {
			*k = c
			return nil
		}
	}
	n, err := numbered(string(b), "kind")
	if err != nil {
		return err
	}
	*k = Kind(n)
	return nil
}

// MarkerKind says what a Marker record marks. Never change the values.
type MarkerKind uint8

// Marker kinds.
const (
	SyncComplete    MarkerKind = 1 // the mirror reached READY: the stream is a write log from here
	CrashConsistent MarkerKind = 2 // a crash-consistent point across the group
	AppConsistent   MarkerKind = 3 // guest agent freeze/thaw bookmark
	UserBookmark    MarkerKind = 4 // a user's named bookmark
	ResyncBegin     MarkerKind = 5 // a resync of the disk starts
	ResyncEnd       MarkerKind = 6 // the resync of the disk is complete
)

func (m MarkerKind) String() string {
	switch m {
	case SyncComplete:
		return "sync-complete"
	case CrashConsistent:
		return "crash-consistent"
	case AppConsistent:
		return "app-consistent"
	case UserBookmark:
		return "user-bookmark"
	case ResyncBegin:
		return "resync-begin"
	case ResyncEnd:
		return "resync-end"
	}
	return fmt.Sprintf("marker(%d)", uint8(m))
}

// MarshalText names the marker kind as String does ("sync-complete"), and
// 0, no marker (a plain record boundary), "none": JSON carries names, not
// numbers.
func (m MarkerKind) MarshalText() ([]byte, error) {
	if m == 0 {
		return []byte("none"), nil
	}
	return []byte(m.String()), nil
}

// UnmarshalText reads what MarshalText writes, "marker(N)" included.
func (m *MarkerKind) UnmarshalText(b []byte) error {
	if string(b) == "none" {
		*m = 0
		return nil
	}
	for c := SyncComplete; c <= ResyncEnd; c++ {
		if string(b) == c.String() {
			*m = c
			return nil
		}
	}
	n, err := numbered(string(b), "marker")
	if err != nil {
		return err
	}
	*m = MarkerKind(n)
	return nil
}

// numbered reads "prefix(N)", how String names a value it does not know.
func numbered(s, prefix string) (uint8, error) {
	t, ok := strings.CutPrefix(s, prefix+"(")
	if t, ok2 := strings.CutSuffix(t, ")"); ok && ok2 {
		if n, err := strconv.ParseUint(t, 10, 8); err == nil {
			return uint8(n), nil
		}
	}
	return 0, fmt.Errorf("record: unknown %s %q", prefix, s)
}

// Layout constants. Never change.
const (
	// Version is the body layout version this package writes.
	Version = 1
	// FrameLen is the length of the frame every record starts with.
	FrameLen = 16
	// BodyHeaderLen is the fixed part of a version 1 body.
	BodyHeaderLen = 36
	// MaxDisk and MaxName bound the disk and marker name strings.
	MaxDisk = 64
	MaxName = 255
	// MaxPayload bounds a Data payload (QEMU's NBD client sends at most 32 MiB).
	MaxPayload = 32 << 20
	// MaxBody bounds the body length of any record, of any type.
	MaxBody = BodyHeaderLen + MaxDisk + MaxName + MaxPayload
	// MaxLen bounds the encoded length of any record.
	MaxLen = FrameLen + MaxBody
)

// Errors. Decode wraps them with the offending field.
var (
	ErrShort       = errors.New("record: short record")
	ErrCorrupt     = errors.New("record: corrupt record")
	ErrUnknownType = errors.New("record: unknown record type")
	ErrInvalid     = errors.New("record: invalid record")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Record is one captured write or marker of a protection group.
type Record struct {
	Seq    uint64     // the group's sequence number, from 1
	Time   int64      // capture time, unix nanoseconds
	Kind   Kind       // Data, Zero, Trim, Marker or Members
	Disk   string     // the disk (Data, Zero, Trim); optional for Marker; "" for Members
	Offset uint64     // first byte of the range
	Length uint64     // bytes covered; for Data equals len(Payload)
	Marker MarkerKind // Marker records only
	Name   string     // marker or bookmark name; may be empty
	// Payload is the data of a Data record, the encoded declaration of a
	// Members record. After Decode it aliases the decoded buffer: copy it to
	// keep it past the buffer's reuse.
	Payload []byte
}

// ValidDiskName reports whether s may be used as a disk (or group) name:
// 1 to 64 bytes of [A-Za-z0-9._-], not "." or "..". Names that pass are
// safe as a single file path element.
func ValidDiskName(s string) error {
	if len(s) == 0 || len(s) > MaxDisk {
		return fmt.Errorf("%w: disk name length %d not in 1..%d", ErrInvalid, len(s), MaxDisk)
	}
	if s == "." || s == ".." {
		return fmt.Errorf("%w: disk name %q", ErrInvalid, s)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w: disk name %q: byte %d (%#x) not in [A-Za-z0-9._-]", ErrInvalid, s, i, c)
		}
	}
	return nil
}

// Validate checks r against the rules Decode enforces, so that whatever
// encodes also decodes.
func (r *Record) Validate() error {
	if len(r.Name) > MaxName {
		return fmt.Errorf("%w: name length %d > %d", ErrInvalid, len(r.Name), MaxName)
	}
	if r.Offset+r.Length < r.Offset {
		return fmt.Errorf("%w: offset %d + length %d overflows", ErrInvalid, r.Offset, r.Length)
	}
	switch r.Kind {
	case Data, Zero, Trim:
		if err := ValidDiskName(r.Disk); err != nil {
			return err
		}
		if r.Marker != 0 {
			return fmt.Errorf("%w: %v record with marker kind %d", ErrInvalid, r.Kind, r.Marker)
		}
		if r.Kind == Data {
			if len(r.Payload) > MaxPayload {
				return fmt.Errorf("%w: payload %d > %d", ErrInvalid, len(r.Payload), MaxPayload)
			}
			if uint64(len(r.Payload)) != r.Length {
				return fmt.Errorf("%w: data length %d != payload %d", ErrInvalid, r.Length, len(r.Payload))
			}
		} else if len(r.Payload) != 0 {
			return fmt.Errorf("%w: %v record with %d payload bytes", ErrInvalid, r.Kind, len(r.Payload))
		}
	case Marker:
		if r.Disk != "" {
			if err := ValidDiskName(r.Disk); err != nil {
				return err
			}
		}
		if r.Marker < SyncComplete || r.Marker > ResyncEnd {
			return fmt.Errorf("%w: marker kind %d", ErrInvalid, r.Marker)
		}
		if r.Offset != 0 || r.Length != 0 || len(r.Payload) != 0 {
			return fmt.Errorf("%w: marker with a range or payload", ErrInvalid)
		}
	case Members:
		if r.Disk != "" || r.Name != "" || r.Marker != 0 || r.Offset != 0 || r.Length != uint64(len(r.Payload)) {
			return fmt.Errorf("%w: members record with a disk, name, marker or range", ErrInvalid)
		}
		if _, err := DecodeDeclaration(r.Payload); err != nil {
			return fmt.Errorf("members record: %w", err)
		}
	case Definition:
		if r.Disk != "" || r.Marker != 0 || r.Offset != 0 || r.Length != uint64(len(r.Payload)) {
			return fmt.Errorf("%w: definition record with a disk, marker or range", ErrInvalid)
		}
		if _, err := r.Definition(); err != nil {
			return fmt.Errorf("definition record: %w", err)
		}
	default:
		return fmt.Errorf("%w: kind %d", ErrInvalid, r.Kind)
	}
	return nil
}

// EncodedLen is the number of bytes AppendEncode adds for r.
func EncodedLen(r *Record) int {
	return FrameLen + BodyHeaderLen + len(r.Disk) + len(r.Name) + len(r.Payload)
}

// AppendEncode appends the encoding of r to dst and returns the extended
// slice. It allocates only to grow dst. r must pass Validate; AppendEncode
// panics if a string or the payload is too long to encode at all.
func AppendEncode(dst []byte, r *Record) []byte {
	dst = AppendHeader(dst, r)
	return append(dst, r.Payload...)
}

// AppendHeader appends the encoding of r without its payload: the caller
// writes r.Payload right after the returned bytes (as with writev). The
// checksum covers the payload all the same.
func AppendHeader(dst []byte, r *Record) []byte {
	if len(r.Disk) > MaxDisk || len(r.Name) > MaxName || len(r.Payload) > MaxPayload {
		panic("record: AppendHeader: field too long; call Validate first")
	}
	start := len(dst)
	hlen := FrameLen + BodyHeaderLen + len(r.Disk) + len(r.Name)
	body := hlen - FrameLen + len(r.Payload)
	dst = grow(dst, hlen)
	h := dst[start : start+hlen]
	h[8] = byte(r.Kind)
	h[9] = Version
	binary.LittleEndian.PutUint16(h[10:], 0)
	binary.LittleEndian.PutUint32(h[12:], uint32(body))
	binary.LittleEndian.PutUint32(h[4:], crc32.Checksum(h[8:16], castagnoli))
	b := h[FrameLen:]
	binary.LittleEndian.PutUint64(b[0:], r.Seq)
	binary.LittleEndian.PutUint64(b[8:], uint64(r.Time))
	binary.LittleEndian.PutUint64(b[16:], r.Offset)
	binary.LittleEndian.PutUint64(b[24:], r.Length)
	b[32] = byte(r.Marker)
	b[33] = byte(len(r.Disk))
	b[34] = byte(len(r.Name))
	b[35] = 0
	n := copy(b[BodyHeaderLen:], r.Disk)
	copy(b[BodyHeaderLen+n:], r.Name)
	crc := crc32.Update(0, castagnoli, h[4:])
	crc = crc32.Update(crc, castagnoli, r.Payload)
	binary.LittleEndian.PutUint32(h[0:], crc)
	return dst
}

func grow(b []byte, n int) []byte {
	if cap(b)-len(b) < n {
		nb := make([]byte, len(b), 2*cap(b)+n)
		copy(nb, b)
		b = nb
	}
	return b[:len(b)+n]
}

// PeekLen checks the frame at the start of b and returns the encoded length
// of the record it begins, without reading the body. It returns ErrShort if b
// is shorter than a frame and ErrCorrupt if the frame is invalid.
func PeekLen(b []byte) (int, error) {
	if len(b) < FrameLen {
		return 0, fmt.Errorf("%w: %d bytes, frame needs %d", ErrShort, len(b), FrameLen)
	}
	if got, want := crc32.Checksum(b[8:16], castagnoli), binary.LittleEndian.Uint32(b[4:]); got != want {
		return 0, fmt.Errorf("%w: header checksum %#08x, want %#08x", ErrCorrupt, got, want)
	}
	if f := binary.LittleEndian.Uint16(b[10:]); f != 0 {
		return 0, fmt.Errorf("%w: flags %#x", ErrCorrupt, f)
	}
	body := binary.LittleEndian.Uint32(b[12:])
	if body > MaxBody {
		return 0, fmt.Errorf("%w: body length %d > %d", ErrCorrupt, body, MaxBody)
	}
	return FrameLen + int(body), nil
}

// Decode decodes the record at the start of b and returns it with its
// encoded length n. The returned Payload aliases b.
//
// Errors, wrapped with the offending field:
//   - ErrShort: b ends inside the record; more bytes are needed.
//   - ErrCorrupt: a checksum, the frame, the version or a field is invalid.
//   - ErrUnknownType: the record is intact (its checksums match) but of a
//     type this version does not know; n is set so that the caller can skip it.
func Decode(b []byte) (r Record, n int, err error) {
	n, err = PeekLen(b)
	if err != nil {
		return Record{}, 0, err
	}
	if len(b) < n {
		return Record{}, 0, fmt.Errorf("%w: %d bytes, record needs %d", ErrShort, len(b), n)
	}
	if got, want := crc32.Checksum(b[4:n], castagnoli), binary.LittleEndian.Uint32(b); got != want {
		return Record{}, 0, fmt.Errorf("%w: record checksum %#08x, want %#08x", ErrCorrupt, got, want)
	}
	k := Kind(b[8])
	switch k {
	case Data, Zero, Trim, Marker, Members, Definition:
	default:
		return Record{}, n, fmt.Errorf("%w: type %d", ErrUnknownType, b[8])
	}
	if v := b[9]; v != Version {
		return Record{}, 0, fmt.Errorf("%w: %v record version %d", ErrCorrupt, k, v)
	}
	body := b[FrameLen:n]
	if len(body) < BodyHeaderLen {
		return Record{}, 0, fmt.Errorf("%w: body length %d < %d", ErrCorrupt, len(body), BodyHeaderLen)
	}
	dl, nl := int(body[33]), int(body[34])
	if dl > MaxDisk || BodyHeaderLen+dl+nl > len(body) || body[35] != 0 {
		return Record{}, 0, fmt.Errorf("%w: disk length %d, name length %d in body of %d", ErrCorrupt, dl, nl, len(body))
	}
	r = Record{
		Seq:    binary.LittleEndian.Uint64(body[0:]),
		Time:   int64(binary.LittleEndian.Uint64(body[8:])),
		Kind:   k,
		Offset: binary.LittleEndian.Uint64(body[16:]),
		Length: binary.LittleEndian.Uint64(body[24:]),
		Marker: MarkerKind(body[32]),
	}
	p := BodyHeaderLen
	if dl > 0 {
		r.Disk = string(body[p : p+dl])
	}
	p += dl
	if nl > 0 {
		r.Name = string(body[p : p+nl])
	}
	p += nl
	if p < len(body) {
		r.Payload = body[p:len(body):len(body)]
	}
	if err := r.Validate(); err != nil {
		return Record{}, 0, fmt.Errorf("%w: seq %d: %w", ErrCorrupt, r.Seq, err)
	}
	return r, n, nil
}
