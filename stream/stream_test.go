package stream

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/qcdp/qcdp/record"
)

func genRecords(first uint64, n int, seed uint64) []record.Record {
	rng := rand.New(rand.NewPCG(seed, 1))
	recs := make([]record.Record, n)
	for i := range recs {
		r := record.Record{Seq: first + uint64(i), Time: int64(first+uint64(i)) * 1000, Disk: "vda"}
		switch rng.IntN(8) {
		case 0:
			r.Kind, r.Offset, r.Length = record.Zero, 512*uint64(rng.IntN(100)), 4096
		case 1:
			r.Kind, r.Disk, r.Marker, r.Name = record.Marker, "", record.UserBookmark, fmt.Sprintf("b%d", i)
		case 2:
			r.Kind, r.Offset, r.Length, r.Payload = record.Data, 4096, 4096, make([]byte, 4096) // all zero
		default:
			p := make([]byte, 1+rng.IntN(2000))
			for j := range p {
				p[j] = byte(rng.IntN(4)) // compressible
			}
			r.Kind, r.Offset, r.Length, r.Payload = record.Data, uint64(rng.IntN(1<<20)), uint64(len(p)), p
		}
		recs[i] = r
	}
	return recs
}

func encodeBatch(t testing.TB, compress bool, recs []record.Record) []byte {
	t.Helper()
	e := NewBatchEncoder(compress)
	for i := range recs {
		if err := e.Add(&recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	return bytes.Clone(e.Frame())
}

func readOne(b []byte) (Frame, error) { return NewReader(bytes.NewReader(b)).Next() }

func sameRecord(a, b record.Record) bool {
	return a.Seq == b.Seq && a.Time == b.Time && a.Kind == b.Kind && a.Disk == b.Disk && a.Offset == b.Offset &&
		a.Length == b.Length && a.Marker == b.Marker && a.Name == b.Name && bytes.Equal(a.Payload, b.Payload)
}

func TestBatchRoundTrip(t *testing.T) {
	for _, compress := range []bool{false, true} {
		recs := genRecords(41, 200, 3)
		f, err := readOne(encodeBatch(t, compress, recs))
		if err != nil {
			t.Fatal(err)
		}
		d := NewBatchDecoder()
		defer d.Close()
		bi, got, err := d.Decode(f)
		if err != nil {
			t.Fatal(err)
		}
		if bi.First != 41 || bi.Count != 200 || (bi.Flags == BatchZstd) != compress {
			t.Fatalf("compress %v: header %+v", compress, bi)
		}
		for i := range recs {
			want := recs[i]
			if want.Kind == record.Data && allZero(want.Payload) {
				want.Kind, want.Payload = record.Zero, nil
			}
			if !sameRecord(got[i], want) {
				t.Fatalf("compress %v: record %d: got %+v want %+v", compress, i, got[i], want)
			}
		}
		if compress && bi.Wire >= bi.RawLen/2 {
			t.Errorf("compressible batch: %d wire bytes for %d raw", bi.Wire, bi.RawLen)
		}
	}
}

// testSpool is a spool identity for tests.
var testSpool = SpoolID{ID: [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, Created: 1, Epoch: 1}

func TestHandshakeMessages(t *testing.T) {
	hello := HelloMsg{Group: "web", Host: "kvm1", LastSeq: 77, Spool: testSpool, Intact: 70}
	b, err := AppendHello(nil, hello)
	if err != nil {
		t.Fatal(err)
	}
	welcome := WelcomeMsg{Durable: 70, Spool: testSpool.ID, Epoch: 1}
	b = AppendWelcome(b, welcome)
	b = AppendAck(b, 71)
	b = AppendRefuse(b, CodeDenied, "no")
	b = AppendPing(b)
	r := NewReader(bytes.NewReader(b))
	f, _ := r.Next()
	hello.Version = Version
	if h, err := DecodeHello(f); err != nil || h != hello {
		t.Fatalf("hello %+v %v", h, err)
	}
	f, _ = r.Next()
	if w, err := DecodeWelcome(f); err != nil || w != welcome {
		t.Fatalf("welcome %+v %v", w, err)
	}
	f, _ = r.Next()
	if s, err := DecodeAck(f); err != nil || s != 71 {
		t.Fatalf("ack %d %v", s, err)
	}
	f, _ = r.Next()
	if re, err := DecodeRefuse(f); err != nil || re.Code != CodeDenied || re.Message != "no" || !errors.Is(re, ErrRefused) {
		t.Fatalf("refuse %+v %v", re, err)
	}
	if f, err := r.Next(); err != nil || f.Type != Ping || len(f.Payload) != 0 {
		t.Fatalf("ping %+v %v", f, err)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("end: %v", err)
	}
}

// A Hello that does not name its spool, or vouches past its last seq, is
// neither written nor read.
func TestHelloNamesItsSpool(t *testing.T) {
	for name, h := range map[string]HelloMsg{
		"no spool id":   {Group: "web", Spool: SpoolID{Epoch: 1}},
		"epoch 0":       {Group: "web", Spool: SpoolID{ID: testSpool.ID}},
		"intact > last": {Group: "web", Spool: testSpool, LastSeq: 5, Intact: 6},
	} {
		if _, err := AppendHello(nil, h); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: AppendHello: %v", name, err)
		}
		good := HelloMsg{Group: h.Group, Spool: testSpool, LastSeq: 9}
		b, err := AppendHello(nil, good)
		if err != nil {
			t.Fatal(err)
		}
		p := b[HeaderLen:]
		copy(p[12:28], h.Spool.ID[:])
		p[36], p[44], p[0] = byte(h.Spool.Epoch), byte(h.Intact), byte(h.LastSeq)
		setVersion(b, Version)
		f, err := readOne(b)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeHello(f); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: DecodeHello: %v", name, err)
		}
	}
}

// A Hello of another version (an older host's, or a future one's) is still
// read far enough to refuse it with a message naming both versions.
func TestForeignVersion(t *testing.T) {
	for _, v := range []uint8{1, 7} {
		b, _ := AppendHello(nil, HelloMsg{Group: "web", Host: "kvm1", Spool: testSpool})
		if v > Version {
			b = append(b, make([]byte, 100)...) // a longer future hello
		} else {
			b = b[:len(b)-40] // a v1 hello had no spool identity
		}
		setVersion(b, v)
		f, err := readOne(b)
		if err != nil {
			t.Fatal(err)
		}
		_, err = DecodeHello(f)
		var ve *VersionError
		if !errors.As(err, &ve) || !errors.Is(err, ErrVersion) || ve.Peer != v || ve.Local != Version {
			t.Fatalf("v%d: got %v", v, err)
		}
		if !strings.Contains(err.Error(), fmt.Sprintf("v%d", Version)) || !strings.Contains(err.Error(), fmt.Sprintf("v%d", v)) {
			t.Fatalf("message %q", err)
		}
	}
	// A data frame of another version is refused by the reader itself.
	for _, v := range []uint8{1, Version + 1} {
		b := AppendAck(nil, 3)
		setVersion(b, v)
		if _, err := readOne(b); !errors.Is(err, ErrVersion) {
			t.Fatalf("ack v%d: %v", v, err)
		}
	}
}

// setVersion rewrites a frame's version and length (to the rest of f),
// fixing both checksums, as a peer of that version would write it.
func setVersion(f []byte, v uint8) {
	f[9] = v
	n := len(f) - HeaderLen
	f[12], f[13], f[14], f[15] = byte(n), byte(n>>8), byte(n>>16), byte(n>>24)
	crcFix(f)
}

func crcFix(f []byte) {
	h := castagnoli
	put := func(b []byte, v uint32) { b[0], b[1], b[2], b[3] = byte(v), byte(v>>8), byte(v>>16), byte(v>>24) }
	put(f[4:], crcOf(h, f[8:16]))
	put(f[0:], crcOf(h, f[4:]))
}

// newReader returns a Reader of b, one that reserves its frames or not.
func newReader(b []byte, reserve bool) *Reader {
	r := NewReader(bytes.NewReader(b))
	if reserve {
		r.Reserve = func(int64) error { return nil }
	}
	return r
}

// Cutting a stream of frames at every offset gives the frames before the
// cut, then ErrTruncated (or io.EOF at a frame boundary), never a frame;
// with Reserve set too.
func TestTruncation(t *testing.T) {
	for _, reserve := range []bool{false, true} {
		testTruncation(t, reserve)
	}
}

func testTruncation(t *testing.T, reserve bool) {
	var b []byte
	var ends []int
	b, _ = AppendHello(b, HelloMsg{Group: "g", Host: "h", LastSeq: 1, Spool: testSpool})
	ends = append(ends, len(b))
	b = append(b, encodeBatch(t, true, genRecords(2, 20, 1))...)
	ends = append(ends, len(b))
	b = AppendAck(b, 21)
	ends = append(ends, len(b))
	for cut := 0; cut < len(b); cut++ {
		r := newReader(b[:cut], reserve)
		whole := 0
		for _, e := range ends {
			if e <= cut {
				whole++
			}
		}
		for i := 0; i < whole; i++ {
			if _, err := r.Next(); err != nil {
				t.Fatalf("cut %d: frame %d: %v", cut, i, err)
			}
		}
		_, err := r.Next()
		atBoundary := cut == 0 || whole > 0 && ends[whole-1] == cut
		if atBoundary && err != io.EOF || !atBoundary && !errors.Is(err, ErrTruncated) {
			t.Fatalf("reserve %v, cut %d: %v", reserve, cut, err)
		}
	}
}

// Every single bit flipped in a frame is detected, with Reserve set too.
func TestBitFlips(t *testing.T) {
	frames := [][]byte{encodeBatch(t, true, genRecords(5, 10, 9)), encodeBatch(t, false, genRecords(5, 3, 9)), AppendAck(nil, 9)}
	for i, good := range append(frames, frames...) {
		fi, reserve := i%len(frames), i >= len(frames)
		for bit := 0; bit < 8*len(good); bit++ {
			b := bytes.Clone(good)
			b[bit/8] ^= 1 << (bit % 8)
			f, err := newReader(b, reserve).Next()
			if err == nil {
				t.Fatalf("frame %d: bit %d flipped: read %v frame", fi, bit, f.Type)
			}
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrTruncated) &&
				!errors.Is(err, ErrVersion) && !errors.Is(err, ErrProtocol) {
				t.Fatalf("frame %d: bit %d: untyped error %v", fi, bit, err)
			}
		}
	}
}

// A batch whose checksums are right but whose content lies is refused: the
// decoder checks what the frame checksum cannot.
func TestBatchLies(t *testing.T) {
	recs := genRecords(10, 5, 2)
	d := NewBatchDecoder()
	defer d.Close()
	mutate := func(compress bool, fn func(p []byte)) error {
		f := encodeBatch(t, compress, recs)
		fn(f[HeaderLen:])
		crcFix(f)
		fr, err := readOne(f)
		if err != nil {
			return err
		}
		_, _, err = d.Decode(fr)
		return err
	}
	cases := map[string]func(p []byte){
		"count high":     func(p []byte) { p[8]++ },
		"count low":      func(p []byte) { p[8]-- },
		"first seq":      func(p []byte) { p[0]++ },
		"first seq zero": func(p []byte) { clear(p[0:8]) },
		"raw len high":   func(p []byte) { p[16]++ },
		"raw len huge":   func(p []byte) { p[19] = 0x7f },
		"unknown flag":   func(p []byte) { p[12] |= 2 },
	}
	for name, fn := range cases {
		for _, c := range []bool{false, true} {
			if err := mutate(c, fn); err == nil {
				t.Errorf("%s (compress %v): accepted", name, c)
			} else if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrTooLarge) {
				t.Errorf("%s (compress %v): %v", name, c, err)
			}
		}
	}
}

func TestBatchFull(t *testing.T) {
	e := NewBatchEncoder(false)
	big := record.Record{Seq: 1, Kind: record.Data, Disk: "vda", Length: record.MaxPayload, Payload: bytes.Repeat([]byte{1}, record.MaxPayload)}
	if err := e.Add(&big); err != nil {
		t.Fatal(err)
	}
	big.Seq = 2
	if err := e.Add(&big); !errors.Is(err, ErrBatchFull) {
		t.Fatalf("second 32 MiB record: %v", err)
	}
	small := record.Record{Seq: 2, Kind: record.Zero, Disk: "vda", Length: 512}
	if err := e.Add(&small); err != nil {
		t.Fatal(err)
	}
	if e.Count() != 2 {
		t.Fatalf("count %d", e.Count())
	}
}

func FuzzFrame(f *testing.F) {
	hello, _ := AppendHello(nil, HelloMsg{Group: "web", Host: "kvm1", LastSeq: 9, Spool: testSpool, Intact: 9})
	f.Add(hello)
	f.Add(AppendRefuse(AppendWelcome(nil, WelcomeMsg{Durable: 4, Spool: testSpool.ID, Epoch: 1}), CodeVersion, "replica speaks stream v2, host sent v7"))
	f.Add(encodeBatch(f, true, genRecords(1, 4, 1)))
	f.Add(encodeBatch(f, false, genRecords(1, 4, 1)))
	d := NewBatchDecoder() // shared like a connection's: its buffer is reused
	defer d.Close()
	f.Fuzz(func(t *testing.T, b []byte) {
		// With Reserve set, the same frames, each reserved for at least
		// its payload.
		rr := NewReader(bytes.NewReader(b))
		var cost int64
		rr.Reserve = func(c int64) error { cost = c; return nil }
		for {
			cost = 0
			fr, err := rr.Next()
			if err != nil {
				break
			}
			if cost < int64(len(fr.Payload)) {
				t.Fatalf("%v frame of %d bytes reserved %d", fr.Type, len(fr.Payload), cost)
			}
		}
		r := NewReader(bufio.NewReader(bytes.NewReader(b)))
		for {
			fr, err := r.Next()
			if err != nil {
				return
			}
			if limit, _ := MaxPayload(fr.Type); fr.Version == Version && len(fr.Payload) > limit {
				t.Fatalf("%v payload of %d bytes passed", fr.Type, len(fr.Payload))
			}
			switch fr.Type {
			case Hello:
				if h, err := DecodeHello(fr); err == nil && (len(h.Group) > MaxName || len(h.Host) > MaxHost) {
					t.Fatalf("hello %+v", h)
				}
			case Welcome:
				DecodeWelcome(fr)
			case Refuse:
				if re, err := DecodeRefuse(fr); err == nil && len(re.Message) > MaxMessage {
					t.Fatal("long message")
				}
			case Ack:
				DecodeAck(fr)
			case Batch:
				checkBatch(t, d, fr)
			}
		}
	})
}

// FuzzBatch feeds batch payloads (checksums made right) to the decoder.
func FuzzBatch(f *testing.F) {
	for _, c := range []bool{false, true} {
		f.Add(encodeBatch(f, c, genRecords(3, 6, 4))[HeaderLen:])
	}
	d := NewBatchDecoder()
	defer d.Close()
	f.Fuzz(func(t *testing.T, p []byte) {
		if len(p) > BatchHeaderLen+MaxBatchRaw {
			return
		}
		checkBatch(t, d, Frame{Type: Batch, Version: Version, Payload: p})
	})
}

func checkBatch(t *testing.T, d *BatchDecoder, fr Frame) {
	bi, recs, err := d.Decode(fr)
	if err != nil {
		return
	}
	if len(recs) != bi.Count || bi.RawLen > MaxBatchRaw {
		t.Fatalf("batch %+v with %d records", bi, len(recs))
	}
	for i, r := range recs {
		if r.Seq != bi.First+uint64(i) {
			t.Fatalf("record %d seq %d in batch at %d", i, r.Seq, bi.First)
		}
		if err := r.Validate(); err != nil {
			t.Fatal(err)
		}
	}
}

func crcOf(tab *crc32.Table, b []byte) uint32 { return crc32.Checksum(b, tab) }
