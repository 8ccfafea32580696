package stream

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/qcdp/qcdp/record"
)

// The fixtures in testdata/v<N>-*.hex are frames of stream version N as this
// package wrote them. Never edit them: a new protocol version gets new
// fixtures. Those of the current version must decode and be written again
// byte for byte; those of older versions must still be read far enough to
// be refused clearly (TestGoldenOlderVersions). QCDP_WRITE_GOLDEN=1 writes
// the fixtures of the current version that are missing; remove one first
// to write it again on purpose.

// goldenHello, goldenWelcome and so on are what the fixtures hold.
var (
	goldenHello = HelloMsg{Version: Version, Group: "db-prod", Host: "host-17.example", LastSeq: 0x0102030405060708,
		Spool: SpoolID{ID: [16]byte{0x3f, 0x2a, 0x9c, 0x1d, 0x44, 0x05, 0x4b, 0x67, 0x80, 0x11, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x01},
			Created: 1700000000123456789, Epoch: 7},
		Intact: 0x0102030405060700}
	goldenWelcome = WelcomeMsg{Durable: 1 << 40, Spool: goldenHello.Spool.ID, Epoch: 7}
	goldenRefuse  = RefusedError{Code: CodeDiverged, Message: "replica holds seq 42, host holds 41"}
	goldenAck     = uint64(0xfedcba9876543210)
	// goldenRawBatch holds one record of each kind; goldenZstdBatch
	// compresses well, so it travels compressed.
	goldenRawBatch = []record.Record{
		{Seq: 100, Time: 1700000000000000100, Kind: record.Data, Disk: "vda", Offset: 4096, Length: 8, Payload: []byte("01234567")},
		{Seq: 101, Time: 1700000000000000101, Kind: record.Zero, Disk: "vdb", Offset: 1 << 30, Length: 65536},
		{Seq: 102, Time: 1700000000000000102, Kind: record.Trim, Disk: "vda", Offset: 512, Length: 1024},
		{Seq: 103, Time: 1700000000000000103, Kind: record.Marker, Marker: record.SyncComplete},
		{Seq: 104, Time: 1700000000000000104, Kind: record.Marker, Marker: record.UserBookmark, Name: "before upgrade"},
		{Seq: 105, Time: 1700000000000000105, Kind: record.Marker, Marker: record.ResyncBegin, Disk: "vdb"},
	}
	goldenZstdBatch = []record.Record{
		{Seq: 7, Time: 1700000000000000007, Kind: record.Data, Disk: "vda", Offset: 0, Length: 1024, Payload: bytes.Repeat([]byte("qcdp"), 256)},
		{Seq: 8, Time: 1700000000000000008, Kind: record.Data, Disk: "vda", Offset: 1024, Length: 1024, Payload: bytes.Repeat([]byte("QCDP"), 256)},
		{Seq: 9, Time: 1700000000000000009, Kind: record.Marker, Marker: record.CrashConsistent, Name: "cc-9"},
	}
)

// goldenFrames builds each fixture's frame with the current encoders.
func goldenFrames(t testing.TB) map[string][]byte {
	t.Helper()
	hello, err := AppendHello(nil, goldenHello)
	if err != nil {
		t.Fatal(err)
	}
	batch := func(compress bool, recs []record.Record) []byte {
		e := NewBatchEncoder(compress)
		for i := range recs {
			if err := e.Add(&recs[i]); err != nil {
				t.Fatal(err)
			}
		}
		return bytes.Clone(e.Frame())
	}
	return map[string][]byte{
		"hello":      hello,
		"welcome":    AppendWelcome(nil, goldenWelcome),
		"refuse":     AppendRefuse(nil, goldenRefuse.Code, goldenRefuse.Message),
		"batch-raw":  batch(false, goldenRawBatch),
		"batch-zstd": batch(true, goldenZstdBatch),
		"ack":        AppendAck(nil, goldenAck),
		"ping":       AppendPing(nil),
	}
}

func goldenPath(name string) string { return goldenPathV(Version, name) }

func goldenPathV(v int, name string) string {
	return filepath.Join("testdata", fmt.Sprintf("v%d-%s.hex", v, name))
}

// readGolden reads the bytes of a fixture.
func readGolden(t *testing.T, path string) []byte {
	t.Helper()
	h, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (QCDP_WRITE_GOLDEN=1 writes missing fixtures)", err)
	}
	b, err := hex.DecodeString(strings.Join(strings.Fields(string(h)), ""))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return b
}

// readGoldenFrame reads a fixture of the current version and returns its
// raw bytes and its one frame.
func readGoldenFrame(t *testing.T, name string) ([]byte, Frame) {
	t.Helper()
	b := readGolden(t, goldenPath(name))
	r := NewReader(bytes.NewReader(b))
	f, err := r.Next()
	if err != nil {
		t.Fatalf("%s: %v", goldenPath(name), err)
	}
	if _, err := r.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("%s: after the frame: %v, want io.EOF", goldenPath(name), err)
	}
	if f.Version != Version {
		t.Fatalf("%s: frame version %d, want %d", goldenPath(name), f.Version, Version)
	}
	return b, f
}

func TestGoldenWrite(t *testing.T) {
	if os.Getenv("QCDP_WRITE_GOLDEN") != "1" {
		t.Skip("QCDP_WRITE_GOLDEN=1 writes the fixtures that are missing")
	}
	for name, b := range goldenFrames(t) {
		path := goldenPath(name)
		if _, err := os.Stat(path); err == nil {
			continue
		}
		var sb strings.Builder
		for i := 0; i < len(b); i += 32 {
			sb.WriteString(hex.EncodeToString(b[i:min(i+32, len(b))]))
			sb.WriteByte('\n')
		}
		if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestGoldenFrames(t *testing.T) {
	enc := goldenFrames(t)
	// reencode: a deterministic encoding must give the fixture's bytes back.
	reencode := func(t *testing.T, name string, b []byte) {
		t.Helper()
		if !bytes.Equal(enc[name], b) {
			t.Fatalf("the encoder no longer writes %s:\n got  %x\n want %x", goldenPath(name), enc[name], b)
		}
	}
	checkFrame := func(t *testing.T, f Frame, typ Type, payloadLen int) {
		t.Helper()
		if f.Type != typ || len(f.Payload) != payloadLen {
			t.Fatalf("frame %v with %d payload bytes, want %v with %d", f.Type, len(f.Payload), typ, payloadLen)
		}
	}

	t.Run("hello", func(t *testing.T) {
		b, f := readGoldenFrame(t, "hello")
		checkFrame(t, f, Hello, helloFixed+len(goldenHello.Group)+len(goldenHello.Host))
		h, err := DecodeHello(f)
		if err != nil {
			t.Fatal(err)
		}
		if h != goldenHello {
			t.Fatalf("hello %+v, want %+v", h, goldenHello)
		}
		reencode(t, "hello", b)
	})
	t.Run("welcome", func(t *testing.T) {
		b, f := readGoldenFrame(t, "welcome")
		checkFrame(t, f, Welcome, welcomeLen)
		w, err := DecodeWelcome(f)
		if err != nil || w != goldenWelcome {
			t.Fatalf("welcome %+v (%v), want %+v", w, err, goldenWelcome)
		}
		reencode(t, "welcome", b)
	})
	t.Run("refuse", func(t *testing.T) {
		b, f := readGoldenFrame(t, "refuse")
		checkFrame(t, f, Refuse, 4+len(goldenRefuse.Message))
		r, err := DecodeRefuse(f)
		if err != nil {
			t.Fatal(err)
		}
		if r.Code != goldenRefuse.Code || r.Message != goldenRefuse.Message {
			t.Fatalf("refuse %v %q, want %v %q", r.Code, r.Message, goldenRefuse.Code, goldenRefuse.Message)
		}
		reencode(t, "refuse", b)
	})
	t.Run("batch-raw", func(t *testing.T) {
		b, f := readGoldenFrame(t, "batch-raw")
		raw := 0
		for i := range goldenRawBatch {
			raw += record.EncodedLen(&goldenRawBatch[i])
		}
		checkFrame(t, f, Batch, BatchHeaderLen+raw)
		checkGoldenBatch(t, f, BatchInfo{First: 100, Count: len(goldenRawBatch), Flags: 0, RawLen: raw, Wire: len(f.Payload)}, goldenRawBatch)
		reencode(t, "batch-raw", b)
	})
	t.Run("batch-zstd", func(t *testing.T) {
		// zstd output may change with the library: decode only.
		_, f := readGoldenFrame(t, "batch-zstd")
		raw := 0
		for i := range goldenZstdBatch {
			raw += record.EncodedLen(&goldenZstdBatch[i])
		}
		if f.Type != Batch || len(f.Payload) >= BatchHeaderLen+raw {
			t.Fatalf("frame %v of %d payload bytes, want a compressed batch (raw %d)", f.Type, len(f.Payload), raw)
		}
		checkGoldenBatch(t, f, BatchInfo{First: 7, Count: len(goldenZstdBatch), Flags: BatchZstd, RawLen: raw, Wire: len(f.Payload)}, goldenZstdBatch)
	})
	t.Run("ack", func(t *testing.T) {
		b, f := readGoldenFrame(t, "ack")
		checkFrame(t, f, Ack, 8)
		s, err := DecodeAck(f)
		if err != nil || s != goldenAck {
			t.Fatalf("ack seq %#x (%v), want %#x", s, err, goldenAck)
		}
		reencode(t, "ack", b)
	})
	t.Run("ping", func(t *testing.T) {
		b, f := readGoldenFrame(t, "ping")
		checkFrame(t, f, Ping, 0)
		if len(b) != HeaderLen {
			t.Fatalf("ping of %d bytes, want %d", len(b), HeaderLen)
		}
		reencode(t, "ping", b)
	})
}

// TestGoldenOlderVersions reads the fixtures of stream version 1 with the
// current code: every frame's checksums still check, a Hello or Welcome
// of version 1 is refused naming both versions, a Refuse of version 1 is
// read whole (it is how a host hears an old replica refuse it), and a data
// frame of version 1 is never taken for one of the current version.
func TestGoldenOlderVersions(t *testing.T) {
	const v = 1
	frame := func(t *testing.T, name string) (Frame, error) {
		t.Helper()
		f, err := NewReader(bytes.NewReader(readGolden(t, goldenPathV(v, name)))).Next()
		if err == nil && f.Version != v {
			t.Fatalf("%s: frame version %d, want %d", goldenPathV(v, name), f.Version, v)
		}
		return f, err
	}
	wantVersionError := func(t *testing.T, err error) {
		t.Helper()
		var ve *VersionError
		if !errors.As(err, &ve) || ve.Local != Version || ve.Peer != v {
			t.Fatalf("got %v, want a VersionError naming v%d and v%d", err, Version, v)
		}
		if want := fmt.Sprintf("this side speaks stream v%d, the peer sent v%d", Version, v); !strings.Contains(err.Error(), want) {
			t.Fatalf("message %q, want it to say %q", err, want)
		}
	}
	t.Run("hello", func(t *testing.T) {
		f, err := frame(t, "hello")
		if err != nil {
			t.Fatal(err)
		}
		h, err := DecodeHello(f)
		wantVersionError(t, err)
		if h.Version != v {
			t.Fatalf("hello version %d, want %d", h.Version, v)
		}
	})
	t.Run("welcome", func(t *testing.T) {
		f, err := frame(t, "welcome")
		if err != nil {
			t.Fatal(err)
		}
		_, err = DecodeWelcome(f)
		wantVersionError(t, err)
	})
	t.Run("refuse", func(t *testing.T) {
		f, err := frame(t, "refuse")
		if err != nil {
			t.Fatal(err)
		}
		r, err := DecodeRefuse(f)
		if err != nil || r.Code != CodeDiverged || r.Message != "replica holds seq 42, host holds 41" {
			t.Fatalf("refuse %+v %v", r, err)
		}
	})
	for _, name := range []string{"batch-raw", "batch-zstd", "ack", "ping"} {
		t.Run(name, func(t *testing.T) {
			_, err := frame(t, name)
			wantVersionError(t, err)
		})
	}
}

func checkGoldenBatch(t *testing.T, f Frame, wantInfo BatchInfo, want []record.Record) {
	t.Helper()
	d := NewBatchDecoder()
	defer d.Close()
	bi, recs, err := d.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	if bi != wantInfo {
		t.Fatalf("batch header %+v, want %+v", bi, wantInfo)
	}
	if len(recs) != len(want) {
		t.Fatalf("%d records, want %d", len(recs), len(want))
	}
	for i := range recs {
		got := recs[i]
		if len(got.Payload) == 0 {
			got.Payload = nil
		}
		if !reflect.DeepEqual(got, want[i]) {
			t.Errorf("record %d:\n got  %+v\n want %+v", i, got, want[i])
		}
	}
}
