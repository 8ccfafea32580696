package spool

import (
	"encoding/binary"
	"fmt"
	"github.com/qcdp/qcdp/record/logfile"
	"hash/crc32"
	"strconv"
	"strings"
)

// On-disk constants. Never change.
const (
	segMagic      = "QCDS"
	segVersion    = 1
	ackedMagic    = "QCDA"
	ackedVersion  = 1
	ackedLen      = 20
	ackedName     = "acked"
	segSuffix     = ".seg"
	segNameDigits = 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func segName(first uint64) string {
	return fmt.Sprintf("%0*d%s", segNameDigits, first, segSuffix)
}

// parseSegName returns the first seq a segment file name says, and false for
// any other name.
func parseSegName(name string) (uint64, bool) {
	s, ok := strings.CutSuffix(name, segSuffix)
	if !ok || len(s) != segNameDigits {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	return v, err == nil
}

// segFormat is the spool's segment file: logfile's layout, the spool's
// magic, version and sentinel errors.
var segFormat = logfile.Format{Magic: segMagic, Version: segVersion, Prefix: "spool", Kind: "segment",
	Corrupt: ErrCorrupt, Torn: ErrTorn, Group: ErrGroup}

func encodeAcked(seq uint64) []byte {
	b := make([]byte, 0, ackedLen)
	b = append(b, ackedMagic...)
	b = binary.LittleEndian.AppendUint16(b, ackedVersion)
	b = append(b, 0, 0)
	b = binary.LittleEndian.AppendUint64(b, seq)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func decodeAcked(b []byte) (uint64, error) {
	if len(b) != ackedLen || string(b[:4]) != ackedMagic ||
		binary.LittleEndian.Uint16(b[4:]) != ackedVersion || b[6] != 0 || b[7] != 0 ||
		crc32.Checksum(b[:16], castagnoli) != binary.LittleEndian.Uint32(b[16:]) {
		return 0, fmt.Errorf("%w: acked file of %d bytes is invalid", ErrCorrupt, len(b))
	}
	return binary.LittleEndian.Uint64(b[8:]), nil
}
