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
// byte for byte; those of the older versions this package still speaks
// (MinVersion on) must decode too, and what a replica writes to a host of
// that version must be their bytes (TestGoldenV2); those of versions it no
// longer speaks must still be read far enough to be refused clearly
// (TestGoldenOlderVersions). QCDP_WRITE_GOLDEN=1 writes the fixtures of
// the current version that are missing; remove one first to write it
// again on purpose.

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
	// goldenDefinitionBatch (version 3 on) declares the group's membership,
	// then defines its VM. The definition's JSON is written out here, not
	// made by encoding/json, so that the fixture pins the frame, not the
	// JSON encoder.
	goldenDefinitionJSON = `{"id":"4c4c4544-0042","name":"db-1","source":"libvirt","vcpus":2,"memory_mib":4096,` +
		`"machine":"pc-q35-7.2","disks":[{"disk":"vm1.vda","target":"vda","bus":"virtio","size":21474836480,"boot":1}],` +
		`"nics":[{"mac":"52:54:00:00:00:42","model":"virtio","network":"default"}]}`
	goldenDefinitionBatch = func() []record.Record {
		m, err := record.MembersRecord(record.Declaration{Disks: []record.Member{
			{Disk: "vm1.vda", Size: 20 << 30, VM: "4c4c4544-0042", VMName: "db-1", Target: "vda"}}})
		if err != nil {
			panic(err)
		}
		m.Seq, m.Time = 300, 1700000000000000300
		return []record.Record{m,
			{Seq: 301, Time: 1700000000000000301, Kind: record.Definition, Name: "4c4c4544-0042",
				Length: uint64(len(goldenDefinitionJSON)), Payload: []byte(goldenDefinitionJSON)},
			{Seq: 302, Time: 1700000000000000302, Kind: record.Data, Disk: "vm1.vda", Offset: 0, Length: 4, Payload: []byte("boot")},
		}
	}()
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
		// Version 3 on: a batch that defines a VM.
		"batch-definition": batch(false, goldenDefinitionBatch),
		"ack":              AppendAck(nil, goldenAck),
		"ping":             AppendPing(nil),
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
	t.Run("batch-definition", func(t *testing.T) {
		b, f := readGoldenFrame(t, "batch-definition")
		raw := 0
		for i := range goldenDefinitionBatch {
			raw += record.EncodedLen(&goldenDefinitionBatch[i])
		}
		checkFrame(t, f, Batch, BatchHeaderLen+raw)
		checkGoldenBatch(t, f, BatchInfo{First: 300, Count: len(goldenDefinitionBatch), Flags: 0, RawLen: raw, Wire: len(f.Payload)}, goldenDefinitionBatch)
		d := NewBatchDecoder()
		defer d.Close()
		_, recs, _ := d.Decode(f)
		def, err := recs[1].Definition()
		if err != nil || def.ID != "4c4c4544-0042" || def.VCPUs != 2 || len(def.Disks) != 1 || def.Disks[0].Disk != "vm1.vda" {
			t.Fatalf("definition %+v %v", def, err)
		}
		reencode(t, "batch-definition", b)
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

// TestGoldenV2 reads the fixtures of stream version 2, which this package
// still speaks: every frame decodes as it did, what a replica writes to a
// host of version 2 (Welcome, Ack, Refuse, Hashes: the *V encoders) is the
// fixture's bytes, and the frames a host of version 3 writes are the
// version 2 fixtures but for the version byte (the layouts are the same).
// A version 2 batch that holds a Definition record is a protocol error.
func TestGoldenV2(t *testing.T) {
	const v = 2
	if !Speaks(v) || Speaks(1) || Speaks(Version+1) {
		t.Fatalf("Speaks: v1 %v, v2 %v, v%d %v", Speaks(1), Speaks(v), Version+1, Speaks(Version+1))
	}
	frame := func(t *testing.T, name string) ([]byte, Frame) {
		t.Helper()
		b := readGolden(t, goldenPathV(v, name))
		r := NewReader(bytes.NewReader(b))
		f, err := r.Next()
		if err != nil {
			t.Fatalf("%s: %v", goldenPathV(v, name), err)
		}
		if f.Version != v {
			t.Fatalf("%s: frame version %d, want %d", goldenPathV(v, name), f.Version, v)
		}
		if _, err := r.Next(); !errors.Is(err, io.EOF) {
			t.Fatalf("%s: after the frame: %v, want io.EOF", goldenPathV(v, name), err)
		}
		return b, f
	}
	// asV2 is a frame of the current version relabelled as version 2.
	asV2 := func(b []byte) []byte {
		c := bytes.Clone(b)
		setVersion(c, v)
		return c
	}
	same := func(t *testing.T, name string, got, want []byte) {
		t.Helper()
		if !bytes.Equal(got, want) {
			t.Fatalf("%s:\n got  %x\n want %x", goldenPathV(v, name), got, want)
		}
	}
	enc := goldenFrames(t)
	t.Run("hello", func(t *testing.T) {
		b, f := frame(t, "hello")
		h, err := DecodeHello(f)
		want := goldenHello
		want.Version = v
		if err != nil || h != want {
			t.Fatalf("hello %+v (%v), want %+v", h, err, want)
		}
		same(t, "hello", asV2(enc["hello"]), b)
	})
	t.Run("welcome", func(t *testing.T) {
		b, f := frame(t, "welcome")
		w, err := DecodeWelcome(f)
		if err != nil || w != goldenWelcome {
			t.Fatalf("welcome %+v (%v), want %+v", w, err, goldenWelcome)
		}
		same(t, "welcome", AppendWelcomeV(nil, v, goldenWelcome), b)
	})
	t.Run("refuse", func(t *testing.T) {
		b, f := frame(t, "refuse")
		r, err := DecodeRefuse(f)
		if err != nil || r.Code != goldenRefuse.Code || r.Message != goldenRefuse.Message {
			t.Fatalf("refuse %+v (%v)", r, err)
		}
		same(t, "refuse", AppendRefuseV(nil, v, goldenRefuse.Code, goldenRefuse.Message), b)
	})
	t.Run("ack", func(t *testing.T) {
		b, f := frame(t, "ack")
		s, err := DecodeAck(f)
		if err != nil || s != goldenAck {
			t.Fatalf("ack %#x (%v)", s, err)
		}
		same(t, "ack", AppendAckV(nil, v, goldenAck), b)
	})
	t.Run("ping", func(t *testing.T) {
		b, f := frame(t, "ping")
		if f.Type != Ping || len(f.Payload) != 0 {
			t.Fatalf("frame %v of %d bytes", f.Type, len(f.Payload))
		}
		same(t, "ping", asV2(enc["ping"]), b)
	})
	t.Run("batch-raw", func(t *testing.T) {
		b, f := frame(t, "batch-raw")
		raw := 0
		for i := range goldenRawBatch {
			raw += record.EncodedLen(&goldenRawBatch[i])
		}
		checkGoldenBatch(t, f, BatchInfo{First: 100, Count: len(goldenRawBatch), RawLen: raw, Wire: len(f.Payload)}, goldenRawBatch)
		same(t, "batch-raw", asV2(enc["batch-raw"]), b)
	})
	t.Run("batch-zstd", func(t *testing.T) {
		_, f := frame(t, "batch-zstd")
		raw := 0
		for i := range goldenZstdBatch {
			raw += record.EncodedLen(&goldenZstdBatch[i])
		}
		checkGoldenBatch(t, f, BatchInfo{First: 7, Count: len(goldenZstdBatch), Flags: BatchZstd, RawLen: raw, Wire: len(f.Payload)}, goldenZstdBatch)
	})
	t.Run("batch-members", func(t *testing.T) {
		_, f := frame(t, "batch-members")
		d := NewBatchDecoder()
		defer d.Close()
		if _, recs, err := d.Decode(f); err != nil || len(recs) != 3 || recs[0].Kind != record.Members {
			t.Fatalf("%d records, %v", len(recs), err)
		}
	})
	t.Run("hashquery", func(t *testing.T) {
		b, f := frame(t, "hashquery")
		q, err := DecodeHashQuery(f)
		if err != nil || q != goldenHashQuery {
			t.Fatalf("hash query %+v (%v)", q, err)
		}
		q3, _ := AppendHashQuery(nil, goldenHashQuery)
		same(t, "hashquery", asV2(q3), b)
	})
	t.Run("hashes", func(t *testing.T) {
		b, f := frame(t, "hashes")
		r, err := DecodeHashReply(f)
		if err != nil || !reflect.DeepEqual(r, goldenHashReply) {
			t.Fatalf("hashes %+v (%v)", r, err)
		}
		out, err := AppendHashReplyV(nil, v, goldenHashReply)
		if err != nil {
			t.Fatal(err)
		}
		same(t, "hashes", out, b)
	})
	t.Run("definition in a v2 batch", func(t *testing.T) {
		f, err := readOne(asV2(enc["batch-definition"]))
		if err != nil {
			t.Fatal(err)
		}
		d := NewBatchDecoder()
		defer d.Close()
		_, _, err = d.Decode(f)
		if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "must speak stream v3 for definitions") {
			t.Fatalf("a v2 batch with a definition: %v, want ErrProtocol", err)
		}
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
