package stream

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/qcdp/qcdp/record"
)

// MaxName bounds a group name on the wire (record.MaxDisk: group names
// follow the disk name rules).
const MaxName = record.MaxDisk

// helloFixed is the fixed part of a Hello payload, welcomeLen a Welcome's
// payload (version 2).
const (
	helloFixed = 52
	welcomeLen = 32
)

// SpoolID names one spool on the host: a random ID made when the spool
// was created (never all zero), its creation time, and its epoch, which
// the spool bumps every time it is opened (package shipper/spool). The
// replica binds a group's journal to the ID of the first spool that
// streams into it and refuses every other as diverged.
type SpoolID struct {
	ID      [16]byte
	Created int64  // Unix nanoseconds: tells an operator which spool is older
	Epoch   uint64 // at least 1
}

// String is the ID in hex.
func (s SpoolID) String() string { return hex.EncodeToString(s.ID[:]) }

// HelloMsg opens a stream: the host names the group it ships, the spool
// it ships from and the last seq that spool holds.
type HelloMsg struct {
	Version uint8   // the protocol version the host speaks (the frame's version)
	Group   string  // checked by the receiver before any use (record.ValidDiskName)
	Host    string  // the host's own name, for logs; the certificate is what counts
	Spool   SpoolID // the spool the records come from
	LastSeq uint64  // the last seq the host's spool holds (appended or acknowledged)
	// Intact is the highest seq up to which the spool vouches that every
	// record it ever held is unchanged since the replica last welcomed it
	// (at most LastSeq). A spool that lost records it had (a crash before
	// their fsync, a spool directory restored from a copy) reports where
	// the loss begins: a replica holding more than Intact holds records
	// the spool no longer has, and refuses it as diverged.
	Intact uint64
}

func (h HelloMsg) check() error {
	switch {
	case h.Spool.ID == [16]byte{}:
		return errors.New("no spool id")
	case h.Spool.Epoch == 0:
		return errors.New("spool epoch 0")
	case h.Intact > h.LastSeq:
		return fmt.Errorf("intact seq %d past the last seq %d", h.Intact, h.LastSeq)
	}
	return nil
}

// AppendHello appends a Hello frame. It fails if a name is too long or
// the spool is not named.
func AppendHello(dst []byte, h HelloMsg) ([]byte, error) {
	if len(h.Group) > MaxName || len(h.Host) > MaxHost {
		return dst, fmt.Errorf("%w: hello: group of %d bytes or host of %d bytes too long", ErrTooLarge, len(h.Group), len(h.Host))
	}
	if err := h.check(); err != nil {
		return dst, fmt.Errorf("%w: hello: %w", ErrProtocol, err)
	}
	p := make([]byte, helloFixed, helloFixed+len(h.Group)+len(h.Host))
	binary.LittleEndian.PutUint64(p, h.LastSeq)
	p[8], p[9] = byte(len(h.Group)), byte(len(h.Host))
	copy(p[12:28], h.Spool.ID[:])
	binary.LittleEndian.PutUint64(p[28:], uint64(h.Spool.Created))
	binary.LittleEndian.PutUint64(p[36:], h.Spool.Epoch)
	binary.LittleEndian.PutUint64(p[44:], h.Intact)
	p = append(append(p, h.Group...), h.Host...)
	return appendFrame(dst, Hello, Version, p), nil
}

// DecodeHello decodes a Hello frame of any version this package speaks
// (Version says which: a replica answers in it). A Hello of another
// version fails with a *VersionError (wrapping ErrVersion) whose message
// names both versions; its group and host are not read.
func DecodeHello(f Frame) (HelloMsg, error) {
	if f.Type != Hello {
		return HelloMsg{}, fmt.Errorf("%w: %v frame where a hello belongs", ErrProtocol, f.Type)
	}
	if !Speaks(f.Version) {
		return HelloMsg{Version: f.Version}, &VersionError{Local: Version, Peer: f.Version, What: "hello"}
	}
	p := f.Payload
	if len(p) < helloFixed {
		return HelloMsg{}, fmt.Errorf("%w: hello of %d bytes", ErrCorrupt, len(p))
	}
	gl, hl := int(p[8]), int(p[9])
	if gl > MaxName || p[10] != 0 || p[11] != 0 || helloFixed+gl+hl != len(p) {
		return HelloMsg{}, fmt.Errorf("%w: hello: group length %d, host length %d in %d bytes", ErrCorrupt, gl, hl, len(p))
	}
	h := HelloMsg{
		Version: f.Version,
		LastSeq: binary.LittleEndian.Uint64(p),
		Spool: SpoolID{
			ID:      [16]byte(p[12:28]),
			Created: int64(binary.LittleEndian.Uint64(p[28:])),
			Epoch:   binary.LittleEndian.Uint64(p[36:]),
		},
		Intact: binary.LittleEndian.Uint64(p[44:]),
		Group:  string(p[helloFixed : helloFixed+gl]),
		Host:   string(p[helloFixed+gl:]),
	}
	if err := h.check(); err != nil {
		return HelloMsg{}, fmt.Errorf("%w: hello: %w", ErrCorrupt, err)
	}
	return h, nil
}

// WelcomeMsg accepts a stream: the replica holds every record up to
// Durable, and they came from the spool whose ID and epoch it echoes (the
// host acknowledges nothing to a spool the replica did not name).
type WelcomeMsg struct {
	Durable uint64
	Spool   [16]byte
	Epoch   uint64
}

// AppendWelcome appends a Welcome frame of version Version.
func AppendWelcome(dst []byte, w WelcomeMsg) []byte { return AppendWelcomeV(dst, Version, w) }

// AppendWelcomeV appends a Welcome frame of version v, the version of the
// Hello it answers; it panics unless Speaks(v).
func AppendWelcomeV(dst []byte, v uint8, w WelcomeMsg) []byte {
	p := binary.LittleEndian.AppendUint64(make([]byte, 0, welcomeLen), w.Durable)
	p = append(p, w.Spool[:]...)
	return appendFrame(dst, Welcome, v, binary.LittleEndian.AppendUint64(p, w.Epoch))
}

// DecodeWelcome decodes a Welcome frame of any version this package
// speaks (f.Version is the version the replica agreed to). A Welcome of
// another version fails with a *VersionError.
func DecodeWelcome(f Frame) (WelcomeMsg, error) {
	if f.Type != Welcome {
		return WelcomeMsg{}, fmt.Errorf("%w: %v frame where a welcome belongs", ErrProtocol, f.Type)
	}
	if !Speaks(f.Version) {
		return WelcomeMsg{}, &VersionError{Local: Version, Peer: f.Version, What: "welcome"}
	}
	p := f.Payload
	if len(p) != welcomeLen {
		return WelcomeMsg{}, fmt.Errorf("%w: welcome of %d bytes", ErrCorrupt, len(p))
	}
	return WelcomeMsg{
		Durable: binary.LittleEndian.Uint64(p),
		Spool:   [16]byte(p[8:24]),
		Epoch:   binary.LittleEndian.Uint64(p[24:]),
	}, nil
}

// AppendAck appends an Ack frame of version Version: every record up to
// seq is durable.
func AppendAck(dst []byte, seq uint64) []byte { return AppendAckV(dst, Version, seq) }

// AppendAckV appends an Ack frame of version v, the stream's; it panics
// unless Speaks(v).
func AppendAckV(dst []byte, v uint8, seq uint64) []byte {
	var p [8]byte
	binary.LittleEndian.PutUint64(p[:], seq)
	return appendFrame(dst, Ack, v, p[:])
}

// DecodeAck decodes an Ack frame.
func DecodeAck(f Frame) (uint64, error) {
	if f.Type != Ack {
		return 0, fmt.Errorf("%w: %v frame where an ack belongs", ErrProtocol, f.Type)
	}
	if len(f.Payload) != 8 {
		return 0, fmt.Errorf("%w: ack of %d bytes", ErrCorrupt, len(f.Payload))
	}
	return binary.LittleEndian.Uint64(f.Payload), nil
}

// AppendPing appends a Ping frame.
func AppendPing(dst []byte) []byte { return appendFrame(dst, Ping, Version, nil) }

// Code says why a replica refused a stream. Never change the values.
type Code uint16

// Refusal codes.
const (
	CodeVersion     Code = 1 // the host speaks another protocol version
	CodeBadRequest  Code = 2 // a malformed hello, or a group name that is not a valid name
	CodeDenied      Code = 3 // the host's certificate may not write this group (tenant, host)
	CodeUnavailable Code = 4 // the replica cannot open the group's journal now
	CodeDiverged    Code = 5 // the replica holds records of another spool, or records the host's spool lost: resync needed
	CodeProtocol    Code = 6 // a frame out of place, a corrupt batch, a seq gap
	CodeReplaced    Code = 7 // a newer connection for the same group took over
	CodeShutdown    Code = 8 // the replica daemon is stopping
	CodeInternal    Code = 9 // the replica failed (journal write error)
	// CodeFailedOver: the group failed over at the recovery site (package
	// failover) and takes no stream until its failover is undone or failed
	// back. The host stops its captures cleanly and keeps tracking.
	CodeFailedOver Code = 10
)

func (c Code) String() string {
	switch c {
	case CodeVersion:
		return "version"
	case CodeBadRequest:
		return "bad-request"
	case CodeFailedOver:
		return "failed-over"
	case CodeDenied:
		return "denied"
	case CodeUnavailable:
		return "unavailable"
	case CodeDiverged:
		return "diverged"
	case CodeProtocol:
		return "protocol"
	case CodeReplaced:
		return "replaced"
	case CodeShutdown:
		return "shutdown"
	case CodeInternal:
		return "internal"
	}
	return fmt.Sprintf("code(%d)", uint16(c))
}

// RefusedError is a Refuse received from the replica. It wraps ErrRefused.
type RefusedError struct {
	Code    Code
	Message string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("stream: replica refused (%v): %s", e.Code, e.Message)
}

// Unwrap returns ErrRefused.
func (e *RefusedError) Unwrap() error { return ErrRefused }

// AppendRefuse appends a Refuse frame of version Version; a message over
// MaxMessage bytes is cut.
func AppendRefuse(dst []byte, code Code, msg string) []byte {
	return AppendRefuseV(dst, Version, code, msg)
}

// AppendRefuseV appends a Refuse frame of version v, the stream's once its
// Hello was read; it panics unless Speaks(v). (A peer of any version reads
// a Refuse of any version: AppendRefuse answers a Hello this package does
// not speak.)
func AppendRefuseV(dst []byte, v uint8, code Code, msg string) []byte {
	if len(msg) > MaxMessage {
		msg = msg[:MaxMessage]
	}
	p := make([]byte, 4, 4+len(msg))
	binary.LittleEndian.PutUint16(p, uint16(code))
	binary.LittleEndian.PutUint16(p[2:], uint16(len(msg)))
	return appendFrame(dst, Refuse, v, append(p, msg...))
}

// DecodeRefuse decodes a Refuse frame into a *RefusedError. The code and
// message of a Refuse are laid out the same in every version, so a Refuse
// of another version is read too.
func DecodeRefuse(f Frame) (*RefusedError, error) {
	if f.Type != Refuse {
		return nil, fmt.Errorf("%w: %v frame where a refuse belongs", ErrProtocol, f.Type)
	}
	p := f.Payload
	if len(p) < 4 {
		return nil, fmt.Errorf("%w: refuse of %d bytes", ErrCorrupt, len(p))
	}
	ml := int(binary.LittleEndian.Uint16(p[2:]))
	if ml > MaxMessage || 4+ml > len(p) || Speaks(f.Version) && 4+ml != len(p) {
		return nil, fmt.Errorf("%w: refuse message length %d in %d bytes", ErrCorrupt, ml, len(p))
	}
	return &RefusedError{Code: Code(binary.LittleEndian.Uint16(p)), Message: string(p[4 : 4+ml])}, nil
}
