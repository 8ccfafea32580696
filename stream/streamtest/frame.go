package streamtest

import (
	"encoding/binary"
	"hash/crc32"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Reseal recomputes the checksums of a frame whose header or payload a
// test rewrote (to play a peer of another version, say), and its length.
func Reseal(f []byte) {
	binary.LittleEndian.PutUint32(f[12:], uint32(len(f)-16))
	binary.LittleEndian.PutUint32(f[4:], crc32.Checksum(f[8:16], castagnoli))
	binary.LittleEndian.PutUint32(f[0:], crc32.Checksum(f[4:], castagnoli))
}
