package logfile

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

var (
	errCorrupt = errors.New("test: corrupt")
	errTorn    = errors.New("test: torn")
	errGroup   = errors.New("test: group")
	testFormat = Format{Magic: "QCTT", Version: 1, Prefix: "test", Kind: "segment", Corrupt: errCorrupt, Torn: errTorn, Group: errGroup}
)

// file writes a header and three records and returns the bytes and where
// each record ends.
func file(t *testing.T) ([]byte, []int) {
	t.Helper()
	b := testFormat.AppendHeader(nil, "g1", 5)
	var ends []int
	for i := uint64(0); i < 3; i++ {
		b = record.AppendEncode(b, &record.Record{Seq: 5 + i, Kind: record.Data, Disk: "vda", Length: 3, Payload: []byte{1, 2, 3}})
		ends = append(ends, len(b))
	}
	return b, ends
}

func scan(t *testing.T, b []byte, o ScanOptions) (Result, error) {
	t.Helper()
	fs := vfs.NewMemFS()
	f, err := fs.Create("/f")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	return testFormat.Scan(f, "/f", int64(len(b)), o, nil)
}

func TestScan(t *testing.T) {
	b, ends := file(t)
	o := ScanOptions{Group: "g1", First: 5, Ordered: true, MayTear: true}
	res, err := scan(t, b, o)
	if err != nil || res.Torn != nil || res.Records != 3 || res.First != 5 || res.Last != 7 || res.End != int64(len(b)) {
		t.Fatalf("whole file: %+v, %v", res, err)
	}
	if h, err := testFormat.ParseHeader(b); err != nil || h.Group != "g1" || h.First != 5 || h.Len != HeaderLen("g1") {
		t.Fatalf("header: %+v, %v", h, err)
	}
	// Cut anywhere in the last record: a torn tail after record two, in a
	// file that may tear; corruption in one that may not.
	for cut := ends[1] + 1; cut < ends[2]; cut++ {
		res, err := scan(t, b[:cut], o)
		if err != nil || !errors.Is(res.Torn, errTorn) || res.End != int64(ends[1]) || res.Records != 2 {
			t.Fatalf("cut at %d: %+v, %v", cut, res, err)
		}
		if _, err := scan(t, b[:cut], ScanOptions{Group: "g1", First: 5, Ordered: true}); !errors.Is(err, errCorrupt) {
			t.Fatalf("cut at %d of a file that may not tear: %v", cut, err)
		}
	}
	// A flipped bit in the middle record is corruption, even where tails may tear.
	bad := append([]byte(nil), b...)
	bad[ends[0]+20] ^= 1
	if _, err := scan(t, bad, o); !errors.Is(err, errCorrupt) {
		t.Fatalf("flipped bit: %v", err)
	}
	if _, err := scan(t, b, ScanOptions{Group: "g2", First: 5}); !errors.Is(err, errGroup) {
		t.Fatalf("another group's file: %v", err)
	}
	if _, err := scan(t, b, ScanOptions{Group: "g1", First: 6}); !errors.Is(err, errCorrupt) {
		t.Fatalf("a header disagreeing with the name: %v", err)
	}
	res, err = scan(t, b[:HeaderLen("g1")-1], o)
	if err != nil || !errors.Is(res.Torn, errTorn) || res.Header.Len != 0 {
		t.Fatalf("torn header: %+v, %v", res, err)
	}
}

// TestScanDurable: only bytes past what the owner acknowledged may be a
// torn tail; a file cut, flipped or ended before it is corruption naming
// the offset and seq of the first record lost.
func TestScanDurable(t *testing.T) {
	b, ends := file(t)
	hl := int(HeaderLen("g1"))
	for _, durable := range []int{0, hl, ends[0], ends[1], ends[2]} {
		o := ScanOptions{Group: "g1", First: 5, Ordered: true, MayTear: true, Durable: int64(durable)}
		for cut := 0; cut <= len(b); cut++ {
			res, err := scan(t, b[:cut], o)
			if cut < durable {
				if !errors.Is(err, errCorrupt) {
					t.Fatalf("durable %d, cut at %d: %+v, %v, want corruption", durable, cut, res, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("durable %d, cut at %d: %v", durable, cut, err)
			}
		}
		// A bit flipped in the newest record, which ends at the end of the
		// file: torn only when it was not acknowledged.
		bad := append([]byte(nil), b...)
		bad[ends[2]-1] ^= 1
		res, err := scan(t, bad, o)
		switch {
		case durable <= ends[1]:
			if err != nil || !errors.Is(res.Torn, errTorn) || res.End != int64(ends[1]) {
				t.Fatalf("durable %d, newest record flipped: %+v, %v, want a torn tail", durable, res, err)
			}
		case !errors.Is(err, errCorrupt) || !strings.Contains(err.Error(), fmt.Sprintf("/f offset %d, seq 7", ends[1])):
			t.Fatalf("durable %d, newest record flipped: %v, want corruption at offset %d, seq 7", durable, err, ends[1])
		}
	}
	// The file ends cleanly before what was acknowledged.
	_, err := scan(t, b[:ends[1]], ScanOptions{Group: "g1", First: 5, Ordered: true, MayTear: true, Durable: int64(ends[2])})
	if !errors.Is(err, errCorrupt) || !strings.Contains(err.Error(), fmt.Sprintf("/f offset %d, seq 7", ends[1])) {
		t.Fatalf("ends before the acknowledged offset: %v", err)
	}
}
