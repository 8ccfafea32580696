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

// EpochTag is the part of a spool epoch that the epochs descending from
// it carry (its low 32 bits), and EpochParent the tag of the epoch e
// descends from (its high 32 bits; 0: e descends from none). Package
// shipper/spool makes them; the replica checks them.
func EpochTag(e uint64) uint64    { return e & 0xffffffff }
func EpochParent(e uint64) uint64 { return e >> 32 }
