package record

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"os"
	"reflect"
	"strings"
	"testing"
)

func testRecords() []Record {
	return []Record{
		{Seq: 1, Time: 1700000000000000001, Kind: Data, Disk: "vda", Offset: 0, Length: 4, Payload: []byte("abcd")},
		{Seq: 2, Time: 1700000000000000002, Kind: Data, Disk: "disk-0.qcow2_x", Offset: 1 << 40, Length: 100, Payload: bytes.Repeat([]byte{0xa5}, 100)},
		{Seq: 3, Time: -1, Kind: Zero, Disk: "vdb", Offset: 4096, Length: 1 << 20},
		{Seq: 4, Time: 0, Kind: Trim, Disk: strings.Repeat("x", MaxDisk), Offset: 512, Length: 512},
		{Seq: 5, Time: 5, Kind: Marker, Marker: SyncComplete},
		{Seq: 6, Time: 6, Kind: Marker, Marker: UserBookmark, Name: strings.Repeat("n", MaxName)},
		{Seq: 7, Time: 7, Kind: Marker, Marker: ResyncBegin, Disk: "vda", Name: "before upgrade"},
		{Seq: 1<<64 - 1, Time: 1<<63 - 1, Kind: Data, Disk: "a", Offset: 1<<64 - 2, Length: 1, Payload: []byte{0}},
	}
}

func TestRoundTrip(t *testing.T) {
	for _, r := range testRecords() {
		t.Run(r.Kind.String(), func(t *testing.T) {
			if err := r.Validate(); err != nil {
				t.Fatal(err)
			}
			b := AppendEncode([]byte("prefix"), &r)
			b = b[len("prefix"):]
			if len(b) != EncodedLen(&r) {
				t.Fatalf("encoded %d bytes, EncodedLen says %d", len(b), EncodedLen(&r))
			}
			got, n, err := Decode(append(b, "trailing"...))
			if err != nil {
				t.Fatal(err)
			}
			if n != len(b) {
				t.Fatalf("n = %d, want %d", n, len(b))
			}
			if len(got.Payload) == 0 {
				got.Payload = nil
			}
			if !reflect.DeepEqual(got, r) {
				t.Fatalf("got %+v\nwant %+v", got, r)
			}
			h := AppendHeader(nil, &r)
			if !bytes.Equal(append(h, r.Payload...), b) {
				t.Fatal("AppendHeader+payload differs from AppendEncode")
			}
		})
	}
}

func TestValidateRejects(t *testing.T) {
	bad := []Record{
		{Kind: Data, Disk: "vda", Length: 3, Payload: []byte("ab")},
		{Kind: Data, Disk: "", Length: 0},
		{Kind: Data, Disk: "../etc", Length: 0},
		{Kind: Data, Disk: "..", Length: 0},
		{Kind: Data, Disk: strings.Repeat("x", MaxDisk+1)},
		{Kind: Zero, Disk: "vda", Length: 1, Payload: []byte("x")},
		{Kind: Trim, Disk: "vda", Offset: 1<<64 - 1, Length: 2},
		{Kind: Marker, Marker: 0},
		{Kind: Marker, Marker: 7},
		{Kind: Marker, Marker: SyncComplete, Length: 1},
		{Kind: Marker, Marker: SyncComplete, Name: strings.Repeat("n", MaxName+1)},
		{Kind: Zero, Disk: "vda", Marker: SyncComplete},
		{Kind: 9, Disk: "vda"},
	}
	for i, r := range bad {
		if err := r.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%d: Validate(%+v) = %v, want ErrInvalid", i, r, err)
		}
	}
}

func TestValidDiskName(t *testing.T) {
	for _, s := range []string{"vda", "a", "disk-1.raw", "A_b", strings.Repeat("z", 64), "..."} {
		if err := ValidDiskName(s); err != nil {
			t.Errorf("ValidDiskName(%q) = %v", s, err)
		}
	}
	for _, s := range []string{"", ".", "..", "a/b", "/x", "a b", "é", "a\x00", strings.Repeat("z", 65)} {
		if err := ValidDiskName(s); err == nil {
			t.Errorf("ValidDiskName(%q) = nil", s)
		}
	}
}

func TestTruncateEveryOffset(t *testing.T) {
	for _, r := range testRecords() {
		b := AppendEncode(nil, &r)
		for i := 0; i < len(b); i++ {
			_, n, err := Decode(b[:i])
			if !errors.Is(err, ErrShort) || n != 0 {
				t.Fatalf("seq %d cut at %d/%d: n=%d err=%v, want ErrShort", r.Seq, i, len(b), n, err)
			}
		}
	}
}

func TestFlipEveryBit(t *testing.T) {
	for _, r := range testRecords() {
		b := AppendEncode(nil, &r)
		for i := 0; i < len(b)*8; i++ {
			c := bytes.Clone(b)
			c[i/8] ^= 1 << (i % 8)
			_, _, err := Decode(c)
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("seq %d bit %d flipped: err=%v, want ErrCorrupt", r.Seq, i, err)
			}
		}
	}
}

// encodeRaw builds a record with any type, version and body, checksums right.
func encodeRaw(typ, version byte, body []byte) []byte {
	b := make([]byte, FrameLen, FrameLen+len(body))
	b[8], b[9] = typ, version
	binary.LittleEndian.PutUint32(b[12:], uint32(len(body)))
	binary.LittleEndian.PutUint32(b[4:], crc32.Checksum(b[8:16], castagnoli))
	b = append(b, body...)
	binary.LittleEndian.PutUint32(b[0:], crc32.Checksum(b[4:], castagnoli))
	return b
}

func TestUnknownTypeSkippable(t *testing.T) {
	unknown := encodeRaw(200, 3, []byte("a record from the future"))
	known := AppendEncode(nil, &testRecords()[0])
	b := append(bytes.Clone(unknown), known...)
	_, n, err := Decode(b)
	if !errors.Is(err, ErrUnknownType) || n != len(unknown) {
		t.Fatalf("Decode = n %d err %v; want ErrUnknownType, n %d", n, err, len(unknown))
	}
	r, _, err := Decode(b[n:])
	if err != nil || r.Seq != 1 {
		t.Fatalf("after skip: %+v %v", r, err)
	}
	// A known type with an unknown version is corruption, not skippable.
	if _, _, err := Decode(encodeRaw(byte(Data), 2, make([]byte, 40))); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("unknown version: %v", err)
	}
}

func TestBoundedLength(t *testing.T) {
	b := make([]byte, FrameLen)
	binary.LittleEndian.PutUint32(b[12:], MaxBody+1)
	binary.LittleEndian.PutUint32(b[4:], crc32.Checksum(b[8:16], castagnoli))
	if _, _, err := Decode(b); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("oversized body: %v, want ErrCorrupt", err)
	}
}

func TestEncodeNoAlloc(t *testing.T) {
	r := testRecords()[1]
	buf := make([]byte, 0, 4096)
	if a := testing.AllocsPerRun(100, func() { buf = AppendEncode(buf[:0], &r) }); a != 0 {
		t.Fatalf("AppendEncode allocates %v times", a)
	}
}

// golden lists what testdata/v1.hex holds: every record version ever
// written, plus one record of a type from the future that must be skipped.
// Never edit the fixture; add a new one for a new version.
var golden = []Record{
	{Seq: 1, Time: 1700000000000000001, Kind: Data, Disk: "vda", Offset: 0, Length: 4, Payload: []byte("abcd")},
	{Seq: 2, Time: 1700000000000000002, Kind: Zero, Disk: "vdb", Offset: 4096, Length: 65536},
	{Seq: 3, Time: 1700000000000000003, Kind: Trim, Disk: "vda", Offset: 512, Length: 512},
	{Seq: 4, Time: 1700000000000000004, Kind: Marker, Marker: SyncComplete},
	{Seq: 5, Time: 1700000000000000005, Kind: Marker, Marker: UserBookmark, Name: "before upgrade"},
}

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	h, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	b, err := hex.DecodeString(strings.Join(strings.Fields(string(h)), ""))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return b
}

func TestGolden(t *testing.T) {
	b := readFixture(t, "testdata/v1.hex")
	var got []Record
	unknown := 0
	for len(b) > 0 {
		r, n, err := Decode(b)
		switch {
		case errors.Is(err, ErrUnknownType):
			unknown++
		case err != nil:
			t.Fatalf("record %d: %v", len(got), err)
		default:
			if len(r.Payload) == 0 {
				r.Payload = nil
			}
			got = append(got, r)
		}
		b = b[n:]
	}
	if unknown != 1 {
		t.Errorf("skipped %d unknown records, want 1", unknown)
	}
	if !reflect.DeepEqual(got, golden) {
		t.Fatalf("got %+v\nwant %+v", got, golden)
	}
}

// TestGoldenEncode keeps the encoder writing the fixture's bytes: a change
// of layout must come with a new type or version, never silently.
func TestGoldenEncode(t *testing.T) {
	want := readFixture(t, "testdata/v1.hex")
	var b []byte
	for i := range golden {
		b = AppendEncode(b, &golden[i])
		if i == 2 {
			b = append(b, encodeRaw(200, 1, []byte("future"))...)
		}
	}
	if os.Getenv("QCDP_WRITE_GOLDEN") == "1" {
		var sb strings.Builder
		for i := 0; i < len(b); i += 32 {
			sb.WriteString(hex.EncodeToString(b[i:min(i+32, len(b))]))
			sb.WriteByte('\n')
		}
		if err := os.WriteFile("testdata/v1.hex", []byte(sb.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if !bytes.Equal(b, want) {
		t.Fatal("encoder output differs from testdata/v1.hex")
	}
}

func FuzzDecode(f *testing.F) {
	for _, r := range testRecords() {
		f.Add(AppendEncode(nil, &r))
	}
	m := goldenMembers()
	f.Add(AppendEncode(nil, &m))
	d := goldenDefinition()
	f.Add(AppendEncode(nil, &d))
	if small, err := DefinitionRecord(VMDefinition{ID: "101", VCPUs: 1, MemoryMiB: 1}); err == nil {
		small.Seq = 8
		f.Add(AppendEncode(nil, &small))
	}
	f.Add(encodeRaw(200, 1, []byte("future")))
	f.Add([]byte{})
	f.Add(make([]byte, FrameLen))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, n, err := Decode(b)
		switch {
		case err == nil:
			if n < FrameLen || n > len(b) {
				t.Fatalf("n = %d of %d", n, len(b))
			}
			if err := r.Validate(); err != nil {
				t.Fatalf("decoded an invalid record: %v", err)
			}
			if e := AppendEncode(nil, &r); !bytes.Equal(e, b[:n]) {
				t.Fatalf("re-encoding differs")
			}
		case errors.Is(err, ErrUnknownType):
			if n < FrameLen || n > len(b) {
				t.Fatalf("unknown type: n = %d of %d", n, len(b))
			}
		case errors.Is(err, ErrShort), errors.Is(err, ErrCorrupt):
			if n != 0 {
				t.Fatalf("error with n = %d", n)
			}
		default:
			t.Fatalf("unexpected error %v", err)
		}
	})
}
