package record

import (
	"encoding/hex"
	"fmt"
)

// SpoolID is the random id a host's spool is made with (package
// shipper/spool): the spool, the stream's Hello and the replica's journal
// binding all name a spool by it.
type SpoolID [16]byte

// String is the id in hex.
func (id SpoolID) String() string { return hex.EncodeToString(id[:]) }

// MarshalText writes the id in hex (for JSON).
func (id SpoolID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText reads an id written by MarshalText.
func (id *SpoolID) UnmarshalText(b []byte) error {
	if len(b) != 2*len(id) {
		return fmt.Errorf("record: spool id %q: want %d hex digits", b, 2*len(id))
	}
	_, err := hex.Decode(id[:], b)
	return err
}

// Spool epochs come in two kinds. A spool not yet welcomed by its
// replica since it had an identity counts its epochs up from 1 by random
// steps (below 2^63: a legacy epoch, compared by size). Once welcomed,
// each open's epoch descends from the epoch last welcomed: bit 63 set,
// bits 62..32 the parent's tag, bits 31..0 random.
const epochLineage = 1 << 63

// EpochTag is the part of an epoch that the epochs descending from it
// carry: 31 bits, never 0.
func EpochTag(e uint64) uint64 { return e&0x7fffffff | 1 }

// EpochParent is the tag of the epoch e descends from, 0 for a legacy
// epoch, which descends from none.
func EpochParent(e uint64) uint64 {
	if e&epochLineage == 0 {
		return 0
	}
	return e >> 32 & 0x7fffffff
}

// EpochDescending returns an epoch descending from parent, with low as
// its random part.
func EpochDescending(parent uint64, low uint32) uint64 {
	return epochLineage | EpochTag(parent)<<32 | uint64(low)
}
