package stream

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
)

// Type is a frame type. Never change the values.
type Type uint8

// Frame types.
const (
	Hello   Type = 1 // host → replica: the first frame
	Welcome Type = 2 // replica → host: the handshake succeeded
	Refuse  Type = 3 // replica → host: the handshake failed, or the stream ends in error
	Batch   Type = 4 // host → replica: records
	Ack     Type = 5 // replica → host: records up to a seq are durable
	Ping    Type = 6 // host → replica: keepalive; answered by an Ack
	HashQ   Type = 7 // host → replica: the first frame of a hash query connection
	Hashes  Type = 8 // replica → host: block hashes, the answer to a HashQ
)

func (t Type) String() string {
	switch t {
	case Hello:
		return "hello"
	case Welcome:
		return "welcome"
	case Refuse:
		return "refuse"
	case Batch:
		return "batch"
	case Ack:
		return "ack"
	case Ping:
		return "ping"
	case HashQ:
		return "hash-query"
	case Hashes:
		return "hashes"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Layout constants. Never change.
const (
	// Version is the stream protocol version this package writes. Version
	// 2 added the spool identity to Hello and Welcome; version 3 lets
	// batches carry Definition records (record.Definition) and has every
	// layout of version 2.
	Version = 3
	// MinVersion is the oldest version this package still reads and
	// writes (see Speaks): a replica answers a host of version 2 in
	// version 2. A peer of version 1 is refused during the handshake.
	MinVersion = 2
	// HeaderLen is the length of the frame header.
	HeaderLen = 16
	// MaxBatchRaw bounds the uncompressed data of a batch: it holds a
	// record of the largest payload (record.MaxLen) with room to spare.
	MaxBatchRaw = 64 << 20
	// BatchHeaderLen is the fixed part of a Batch payload.
	BatchHeaderLen = 20
	// MaxHost bounds the host name in a Hello; MaxMessage a Refuse message.
	MaxHost    = 255
	MaxMessage = 1024
	// maxForeign bounds the payload of a handshake frame of another
	// version: enough for any Hello or Refuse a future version may write.
	maxForeign = 64 << 10
	// readChunk is the step in which a payload buffer grows while reading.
	readChunk = 1 << 20
)

// Errors. They are wrapped with the frame type and the offending field.
var (
	ErrCorrupt   = errors.New("stream: corrupt frame")            // a checksum or a field is wrong
	ErrTruncated = errors.New("stream: truncated frame")          // the connection ended inside a frame
	ErrTooLarge  = errors.New("stream: frame too large")          // a length over its bound
	ErrProtocol  = errors.New("stream: protocol error")           // a frame out of place, a seq gap
	ErrVersion   = errors.New("stream: unknown protocol version") // see VersionError
	ErrRefused   = errors.New("stream: refused")                  // see RefusedError
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Speaks reports whether this package reads and writes frames of protocol
// version v: MinVersion to Version, whose layouts are all the same.
func Speaks(v uint8) bool { return v >= MinVersion && v <= Version }

// MaxPayload returns the largest payload a frame of type t and of a
// version this package speaks may have, and false for a type it does not
// know.
func MaxPayload(t Type) (int, bool) {
	switch t {
	case Hello:
		return helloFixed + MaxName + MaxHost, true
	case Welcome:
		return welcomeLen, true
	case Ack:
		return 8, true
	case Refuse:
		return 4 + MaxMessage, true
	case Batch:
		return BatchHeaderLen + MaxBatchRaw, true
	case Ping:
		return 0, true
	case HashQ:
		return hashQueryLen + 2*MaxName, true
	case Hashes:
		return hashReplyLen + MaxHashBlocks*HashLen, true
	}
	return 0, false
}

// handshake reports whether t is a frame a peer of another version must
// still be able to read.
func handshake(t Type) bool { return t == Hello || t == Welcome || t == Refuse || t == HashQ }

// Frame is one decoded frame. Payload aliases the Reader's buffer and is
// valid until the next call to Next.
type Frame struct {
	Type    Type
	Version uint8
	Payload []byte
}

// Reader reads frames from a connection. It is not safe for concurrent use.
type Reader struct {
	r    io.Reader
	hdr  [HeaderLen]byte
	head [BatchHeaderLen]byte // a batch header read before Reserve
	buf  []byte

	// Reserve, when set, is asked for the memory a frame will take before
	// any of it is allocated: once the frame's header has been checked
	// (and, for a Batch, the batch header read: see FrameCost), Next calls
	// Reserve with FrameCost, and reads the payload only if Reserve
	// returns nil. A non-nil error is returned by Next as it is, with the
	// payload left unread: the connection cannot be read any further.
	// Reserve may wait for memory to free up. It is not called for an
	// empty payload.
	//
	// With Reserve set, every payload is allocated whole once reserved
	// (the reservation, not the pace of the peer, bounds it) and belongs
	// to the caller: the Reader keeps no reference to it, so it stays
	// valid after the next call to Next and is freed once the caller
	// drops it. The caller returns the reservation then.
	Reserve func(cost int64) error
}

// NewReader returns a Reader of r; r should be buffered.
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

// Next reads the next frame. It returns io.EOF if the connection ends
// cleanly between frames, ErrTruncated inside one, ErrCorrupt for a
// checksum or header mismatch, ErrTooLarge for a length over its type's
// bound, ErrVersion for a data frame of a version this package does not
// speak (see Speaks) and ErrProtocol for an unknown type. Handshake frames
// (Hello, Welcome, Refuse, HashQ) of any version are returned: their
// decoders report a version they do not speak.
func (r *Reader) Next() (Frame, error) {
	if _, err := io.ReadFull(r.r, r.hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return Frame{}, fmt.Errorf("%w: header cut short", ErrTruncated)
		}
		return Frame{}, err
	}
	t, v, n, err := parseHeader(r.hdr[:])
	if err != nil {
		return Frame{}, err
	}
	if r.Reserve != nil {
		return r.reserved(t, v, n)
	}
	r.buf = r.buf[:0]
	for len(r.buf) < n {
		// Grow only as bytes arrive: a length that passed its bound still
		// costs memory only once the peer has sent that much.
		step := min(n-len(r.buf), readChunk)
		r.buf = slices.Grow(r.buf, step)
		m, err := io.ReadFull(r.r, r.buf[len(r.buf):len(r.buf)+step])
		r.buf = r.buf[:len(r.buf)+m]
		if err != nil {
			return Frame{}, truncated(err, t, len(r.buf), n)
		}
	}
	if err := r.check(t, r.buf); err != nil {
		return Frame{}, err
	}
	return Frame{Type: t, Version: v, Payload: r.buf}, nil
}

// reserved reads a payload of n bytes into a buffer of its own, once
// Reserve has granted its cost.
func (r *Reader) reserved(t Type, v uint8, n int) (Frame, error) {
	r.buf = nil
	head, got := r.head[:], 0
	if t == Batch && n >= BatchHeaderLen {
		m, err := io.ReadFull(r.r, head)
		if err != nil {
			return Frame{}, truncated(err, t, m, n)
		}
		got = m
	}
	if n > 0 {
		if err := r.Reserve(FrameCost(t, n, head[:got])); err != nil {
			return Frame{}, err
		}
	}
	p := make([]byte, n)
	copy(p, head[:got])
	if m, err := io.ReadFull(r.r, p[got:]); err != nil {
		return Frame{}, truncated(err, t, got+m, n)
	}
	if err := r.check(t, p); err != nil {
		return Frame{}, err
	}
	return Frame{Type: t, Version: v, Payload: p}, nil
}

// check verifies the frame checksum over the header and payload p.
func (r *Reader) check(t Type, p []byte) error {
	if got, want := crc32.Update(crc32.Checksum(r.hdr[4:], castagnoli), castagnoli, p), binary.LittleEndian.Uint32(r.hdr[:]); got != want {
		return fmt.Errorf("%w: %v frame checksum %#08x, want %#08x", ErrCorrupt, t, got, want)
	}
	return nil
}

// truncated explains a read that ended after m of a payload's n bytes.
func truncated(err error, t Type, m, n int) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %v payload: %d of %d bytes", ErrTruncated, t, m, n)
	}
	return err
}

// parseHeader checks a frame header and returns its type, version and
// payload length, bounded.
func parseHeader(h []byte) (Type, uint8, int, error) {
	if got, want := crc32.Checksum(h[8:16], castagnoli), binary.LittleEndian.Uint32(h[4:]); got != want {
		return 0, 0, 0, fmt.Errorf("%w: header checksum %#08x, want %#08x", ErrCorrupt, got, want)
	}
	t, v := Type(h[8]), h[9]
	if f := binary.LittleEndian.Uint16(h[10:]); f != 0 {
		return 0, 0, 0, fmt.Errorf("%w: %v frame flags %#x", ErrCorrupt, t, f)
	}
	n := binary.LittleEndian.Uint32(h[12:])
	limit, known := MaxPayload(t)
	switch {
	case !Speaks(v) && handshake(t):
		limit = maxForeign
	case !Speaks(v):
		return 0, 0, 0, &VersionError{Local: Version, Peer: v, What: t.String()}
	case !known:
		return 0, 0, 0, fmt.Errorf("%w: unknown frame type %d", ErrProtocol, uint8(t))
	}
	if int64(n) > int64(limit) {
		return 0, 0, 0, fmt.Errorf("%w: %v payload of %d bytes, at most %d", ErrTooLarge, t, n, limit)
	}
	return t, v, int(n), nil
}

// beginFrame appends room for a frame header to dst; sealFrame fills it in
// once the payload follows it.
func beginFrame(dst []byte) []byte { return append(dst, make([]byte, HeaderLen)...) }

// sealFrame writes the header of the frame of version v that starts at
// f[0] and whose payload is the rest of f.
func sealFrame(f []byte, t Type, v uint8) {
	if !Speaks(v) {
		panic(fmt.Sprintf("stream: a %v frame of version %d, which this package does not write", t, v))
	}
	f[8], f[9] = byte(t), v
	binary.LittleEndian.PutUint16(f[10:], 0)
	binary.LittleEndian.PutUint32(f[12:], uint32(len(f)-HeaderLen))
	binary.LittleEndian.PutUint32(f[4:], crc32.Checksum(f[8:16], castagnoli))
	binary.LittleEndian.PutUint32(f[0:], crc32.Checksum(f[4:], castagnoli))
}

// appendFrame appends a whole frame of type t and version v with payload p.
func appendFrame(dst []byte, t Type, v uint8, p []byte) []byte {
	start := len(dst)
	dst = beginFrame(dst)
	dst = append(dst, p...)
	sealFrame(dst[start:], t, v)
	return dst
}

// VersionError is a peer speaking another protocol version. It wraps
// ErrVersion; its message names both versions.
type VersionError struct {
	Local, Peer uint8
	What        string // the frame it came in
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("stream: this side speaks stream v%d, the peer sent v%d (%s)", e.Local, e.Peer, e.What)
}

// Unwrap returns ErrVersion.
func (e *VersionError) Unwrap() error { return ErrVersion }
