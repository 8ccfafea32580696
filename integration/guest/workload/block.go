package workload

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// On-disk constants: never change.
const (
	// BlockSize is the size of every write and of every block the
	// workload addresses.
	BlockSize = 4096
	// Magic starts every written block.
	Magic = "QCDPBLK1"
	// Version is the layout version after the magic.
	Version = 1

	offVersion = 8
	offDisk    = 10
	offCRC     = 12
	offSeed    = 16
	offBlock   = 24
	offSeq     = 32
	offPrev    = 40
	offPayload = 48
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Errors Decode returns; each tells a different state of a block apart.
var (
	// ErrBlank: the block is all zero bytes, it was never written.
	ErrBlank = errors.New("workload: blank block")
	// ErrNoMagic: the block is neither blank nor a workload block.
	ErrNoMagic = errors.New("workload: no block magic")
	// ErrVersion: a workload block of a layout this code does not know.
	ErrVersion = errors.New("workload: unknown block version")
	// ErrCRC: the block's CRC32C does not match, it is torn or corrupt.
	ErrCRC = errors.New("workload: block CRC mismatch")
	// ErrPayload: the CRC matches but the payload is not the one its
	// header derives.
	ErrPayload = errors.New("workload: block payload mismatch")
)

// Header is what a written block says about itself.
type Header struct {
	Disk  int
	Seed  uint64
	Block uint64
	Seq   uint64
	Prev  uint64 // seq of the previous write to this block, 0 if none
}

// Encode fills b (BlockSize bytes) with the block h describes.
func Encode(b []byte, h Header) {
	_ = b[BlockSize-1]
	copy(b, Magic)
	binary.LittleEndian.PutUint16(b[offVersion:], Version)
	binary.LittleEndian.PutUint16(b[offDisk:], uint16(h.Disk))
	binary.LittleEndian.PutUint32(b[offCRC:], 0)
	binary.LittleEndian.PutUint64(b[offSeed:], h.Seed)
	binary.LittleEndian.PutUint64(b[offBlock:], h.Block)
	binary.LittleEndian.PutUint64(b[offSeq:], h.Seq)
	binary.LittleEndian.PutUint64(b[offPrev:], h.Prev)
	s := payloadState(h.Seed, h.Seq, h.Block)
	for off := offPayload; off < BlockSize; off += 8 {
		binary.LittleEndian.PutUint64(b[off:], splitmix(&s))
	}
	binary.LittleEndian.PutUint32(b[offCRC:], blockCRC(b))
}

// Decode checks b (BlockSize bytes) and returns its header. The error is
// ErrBlank, ErrNoMagic, ErrVersion, ErrCRC or ErrPayload.
func Decode(b []byte) (Header, error) {
	if len(b) != BlockSize {
		return Header{}, fmt.Errorf("workload: decode %d bytes, want %d", len(b), BlockSize)
	}
	if string(b[:len(Magic)]) != Magic {
		if isZero(b) {
			return Header{}, ErrBlank
		}
		return Header{}, ErrNoMagic
	}
	if v := binary.LittleEndian.Uint16(b[offVersion:]); v != Version {
		return Header{}, fmt.Errorf("%w %d", ErrVersion, v)
	}
	if got, want := binary.LittleEndian.Uint32(b[offCRC:]), blockCRC(b); got != want {
		return Header{}, fmt.Errorf("%w: stored %#08x, computed %#08x", ErrCRC, got, want)
	}
	h := Header{
		Disk:  int(binary.LittleEndian.Uint16(b[offDisk:])),
		Seed:  binary.LittleEndian.Uint64(b[offSeed:]),
		Block: binary.LittleEndian.Uint64(b[offBlock:]),
		Seq:   binary.LittleEndian.Uint64(b[offSeq:]),
		Prev:  binary.LittleEndian.Uint64(b[offPrev:]),
	}
	s := payloadState(h.Seed, h.Seq, h.Block)
	for off := offPayload; off < BlockSize; off += 8 {
		if binary.LittleEndian.Uint64(b[off:]) != splitmix(&s) {
			return h, fmt.Errorf("%w at byte %d (seq %d, block %d)", ErrPayload, off, h.Seq, h.Block)
		}
	}
	return h, nil
}

// blockCRC is the CRC32C of b with its CRC field read as zero.
func blockCRC(b []byte) uint32 {
	var zero [4]byte
	c := crc32.Update(0, castagnoli, b[:offCRC])
	c = crc32.Update(c, castagnoli, zero[:])
	return crc32.Update(c, castagnoli, b[offCRC+4:BlockSize])
}

func payloadState(seed, seq, block uint64) uint64 {
	return seed ^ seq*0x9e3779b97f4a7c15 ^ block*0xc2b2ae3d27d4eb4f
}

// splitmix advances *s and returns the next splitmix64 output.
func splitmix(s *uint64) uint64 {
	*s += 0x9e3779b97f4a7c15
	z := *s
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
