package spool

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/qcdp/qcdp/record"
)

// testdata/golden-v1 is a spool directory written by segment version 1 and
// acked version 1: four segments and the acked file. testdata/corrupt-v1 is
// the same spool with one byte of a record in the middle segment flipped.
// Never edit them: a new layout takes a new version and a new fixture, and
// these must still open. QCDP_WRITE_GOLDEN=1 writes the fixtures that are
// missing; remove one first to write it again on purpose.

const (
	goldenDir         = "testdata/golden-v1"
	goldenCorruptDir  = "testdata/corrupt-v1"
	goldenGroup       = "db-prod"
	goldenAcked       = 2
	goldenSegmentSize = 300
)

// goldenRecords are the records the fixture holds, in seq order: every
// kind, every marker kind, markers with and without disk and name.
var goldenRecords = []record.Record{
	{Seq: 1, Time: 1700000000000000001, Kind: record.Data, Disk: "vda", Offset: 0, Length: 12, Payload: []byte("hello, spool")},
	{Seq: 2, Time: 1700000000000000002, Kind: record.Zero, Disk: "vdb", Offset: 1 << 20, Length: 65536},
	{Seq: 3, Time: 1700000000000000003, Kind: record.Trim, Disk: "vda", Offset: 4096, Length: 8192},
	{Seq: 4, Time: 1700000000000000004, Kind: record.Marker, Marker: record.SyncComplete},
	{Seq: 5, Time: 1700000000000000005, Kind: record.Data, Disk: "vdb", Offset: 1<<40 + 512, Length: 64, Payload: bytes.Repeat([]byte{0xa5, 0x5a}, 32)},
	{Seq: 6, Time: 1700000000000000006, Kind: record.Marker, Marker: record.UserBookmark, Name: "before upgrade"},
	{Seq: 7, Time: 1700000000000000007, Kind: record.Marker, Marker: record.ResyncBegin, Disk: "vdb"},
	{Seq: 8, Time: 1700000000000000008, Kind: record.Data, Disk: "vdb", Offset: 0, Length: 3, Payload: []byte{0, 1, 2}},
	{Seq: 9, Time: 1700000000000000009, Kind: record.Marker, Marker: record.ResyncEnd, Disk: "vdb"},
	{Seq: 10, Time: 1700000000000000010, Kind: record.Marker, Marker: record.CrashConsistent, Name: "cc"},
	{Seq: 11, Time: 1700000000000000011, Kind: record.Marker, Marker: record.AppConsistent, Disk: "vda", Name: "fsfreeze"},
	{Seq: 12, Time: 1700000000000000012, Kind: record.Data, Disk: "vda", Offset: 512, Length: 5, Payload: []byte("tail!")},
}

// goldenSegments is the fixture's layout: names and sizes of the segments.
var goldenSegments = []SegmentInfo{
	{Name: "00000000000000000001.seg", FirstSeq: 1, LastSeq: 4, Records: 4, Bytes: 256},
	{Name: "00000000000000000005.seg", FirstSeq: 5, LastSeq: 7, Records: 3, Bytes: 267},
	{Name: "00000000000000000008.seg", FirstSeq: 8, LastSeq: 11, Records: 4, Bytes: 257},
	{Name: "00000000000000000012.seg", FirstSeq: 12, LastSeq: 12, Records: 1, Bytes: 87},
}

// The byte flipped in corrupt-v1: in the payload of seq 6, the second record
// of the second segment (not the newest: no torn tail), whose frame
// starts at goldenCorruptOffset.
const (
	goldenCorruptSeg    = "00000000000000000005.seg"
	goldenCorruptOffset = 146
	goldenCorruptSeq    = 6
)

func TestGoldenWrite(t *testing.T) {
	if os.Getenv("QCDP_WRITE_GOLDEN") != "1" {
		t.Skip("QCDP_WRITE_GOLDEN=1 writes the fixtures that are missing")
	}
	if _, err := os.Stat(goldenDir); errors.Is(err, os.ErrNotExist) {
		s, err := Open(context.Background(), Options{Dir: goldenDir, Group: goldenGroup, SegmentBytes: goldenSegmentSize, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		for i := range goldenRecords {
			if err := s.Append(&goldenRecords[i]); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := s.Ack(goldenAcked); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(goldenCorruptDir); errors.Is(err, os.ErrNotExist) {
		dir := copyGolden(t, goldenDir)
		path := filepath.Join(dir, goldenCorruptSeg)
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		// The last byte of the name "before upgrade", well inside the record.
		b[goldenCorruptOffset+record.EncodedLen(&goldenRecords[goldenCorruptSeq-1])-1] ^= 0x01
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(dir, goldenCorruptDir); err != nil {
			t.Fatal(err)
		}
	}
}

// copyGolden copies a fixture directory into a temporary one, so that
// opening it cannot change the fixture.
func copyGolden(t testing.TB, src string) string {
	t.Helper()
	names, err := os.ReadDir(src)
	if err != nil {
		t.Fatalf("%v (QCDP_WRITE_GOLDEN=1 writes missing fixtures)", err)
	}
	dst := filepath.Join(t.TempDir(), "spool")
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(src, n.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, n.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func TestGoldenSpool(t *testing.T) {
	ctx := context.Background()
	dir := copyGolden(t, goldenDir)

	// The layout, read without changing anything.
	rep, err := Inspect(ctx, dir, InspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Group != goldenGroup || rep.Acked != goldenAcked || rep.FirstSeq != 1 || rep.LastSeq != 12 || rep.Records != 12 || rep.Torn != "" || rep.Unknown != 0 || rep.Identity != nil {
		t.Fatalf("Inspect: %+v", rep)
	}
	if !reflect.DeepEqual(rep.Segments, goldenSegments) {
		t.Fatalf("segments %+v\nwant %+v", rep.Segments, goldenSegments)
	}
	wantMarkers := []MarkerInfo{
		{Seq: 4, Time: 1700000000000000004, Kind: "sync-complete"},
		{Seq: 6, Time: 1700000000000000006, Kind: "user-bookmark", Name: "before upgrade"},
		{Seq: 7, Time: 1700000000000000007, Kind: "resync-begin", Disk: "vdb"},
		{Seq: 9, Time: 1700000000000000009, Kind: "resync-end", Disk: "vdb"},
		{Seq: 10, Time: 1700000000000000010, Kind: "crash-consistent", Name: "cc"},
		{Seq: 11, Time: 1700000000000000011, Kind: "app-consistent", Disk: "vda", Name: "fsfreeze"},
	}
	if !reflect.DeepEqual(rep.Markers, wantMarkers) {
		t.Fatalf("markers %+v\nwant %+v", rep.Markers, wantMarkers)
	}

	// The spool, opened and read with the current code.
	s, err := Open(ctx, Options{Dir: dir, Group: goldenGroup, SegmentBytes: goldenSegmentSize, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Acked() != goldenAcked || s.LastSeq() != 12 {
		t.Fatalf("Acked %d, LastSeq %d; want %d, 12", s.Acked(), s.LastSeq(), goldenAcked)
	}
	// Written before spools had an identity: it gets one, and vouches for
	// all it holds (a replica whose journal names no spool binds it).
	if id := s.Identity(); id.ID == (ID{}) || id.Epoch != 1 || s.Intact() != 12 {
		t.Fatalf("identity %+v, intact %d; want a new one at epoch 1, intact 12", id, s.Intact())
	}
	if rep, err := Inspect(ctx, dir, InspectOptions{}); err != nil || rep.Identity == nil || *rep.Identity != s.Identity() {
		t.Fatalf("Inspect after Open: identity %+v, %v; want %+v", rep.Identity, err, s.Identity())
	}
	if st := s.Stats(); st.Segments != 4 || st.FirstSeq != 1 || st.Records != 12 || st.Bytes != 256+267+257+87 {
		t.Fatalf("Stats %+v", st)
	}
	c := s.Cursor(0)
	defer c.Close()
	for i := range goldenRecords {
		r, err := c.Next()
		if err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if len(r.Payload) == 0 {
			r.Payload = nil
		}
		if !reflect.DeepEqual(r, goldenRecords[i]) {
			t.Fatalf("record %d:\n got  %+v\n want %+v", i, r, goldenRecords[i])
		}
	}
	if _, err := c.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last record: %v, want io.EOF", err)
	}
	// The next record goes on in the newest segment.
	if err := s.Append(&record.Record{Seq: 13, Kind: record.Marker, Marker: record.CrashConsistent}); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Segments != 4 {
		t.Fatalf("after one append: %d segments", st.Segments)
	}
}

func TestGoldenCorrupt(t *testing.T) {
	ctx := context.Background()
	dir := copyGolden(t, goldenCorruptDir)
	where := filepath.Join(dir, goldenCorruptSeg) + " offset 146, seq 6"
	_, err := Open(ctx, Options{Dir: dir, Group: goldenGroup, Logger: quiet})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), where) {
		t.Fatalf("Open: %v, want ErrCorrupt at %q", err, where)
	}
	_, err = Inspect(ctx, dir, InspectOptions{})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), where) {
		t.Fatalf("Inspect: %v, want ErrCorrupt at %q", err, where)
	}
	// Nothing was cut or kept aside: corruption in the middle is refused.
	names, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != 5 {
		t.Fatalf("%d files after a refused Open, want 5: %v", len(names), names)
	}
}
