package chaos

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/qcdp/qcdp/record"
)

// ReadJournal reads the records with seqs in [from, to] from a group's
// journal segments in dir (replica/journal's layout: a header of 20 bytes
// and the group's name, then encoded records), while the replica runs:
// it stops at the first record it cannot decode in each segment (one
// being appended). Payloads are dropped. The suite uses it to tell an
// open finding's signature from a plain finding.
func ReadJournal(dir string, from, to uint64) ([]record.Record, error) {
	segs, err := filepath.Glob(filepath.Join(dir, "*.seg"))
	if err != nil {
		return nil, err
	}
	type seg struct {
		path  string
		first uint64
	}
	var ss []seg
	for _, p := range segs {
		n, err := strconv.ParseUint(strings.TrimSuffix(filepath.Base(p), ".seg"), 10, 64)
		if err == nil {
			ss = append(ss, seg{p, n})
		}
	}
	sort.Slice(ss, func(i, j int) bool { return ss[i].first < ss[j].first })
	var out []record.Record
	for i, s := range ss {
		if s.first > to || i+1 < len(ss) && ss[i+1].first <= from {
			continue
		}
		b, err := os.ReadFile(s.path)
		if err != nil {
			return nil, err
		}
		if len(b) < 20 || string(b[:4]) != "QCJS" {
			return nil, fmt.Errorf("chaos: %s is not a journal segment", s.path)
		}
		off := 20 + int(b[6])
		if binary.LittleEndian.Uint64(b[8:]) != s.first {
			return nil, fmt.Errorf("chaos: %s: header names seq %d", s.path, binary.LittleEndian.Uint64(b[8:]))
		}
		for off < len(b) {
			r, n, err := record.Decode(b[off:])
			if err != nil {
				break
			}
			off += n
			if r.Seq >= from && r.Seq <= to {
				r.Payload = nil
				out = append(out, r)
			}
		}
	}
	return out, nil
}
