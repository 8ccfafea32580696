package stream

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/zeebo/blake3"
)

// The fixtures testdata/v<N>-hashquery.hex and testdata/v<N>-hashes.hex are
// a HashQ and a Hashes frame of stream version N as this package wrote
// them (the convention of golden_test.go; TestGoldenV2 reads those of
// version 2): never edit them. QCDP_WRITE_GOLDEN=1 writes those of the
// current version when they are missing.
var (
	goldenHashQuery = HashQuery{Group: "db-prod", Disk: "vm1.vda", BlockSize: 64 << 10, Offset: 3 * 64 << 10, Count: 1024,
		After: 0x0102030405060708}
	// goldenHashInputs are the blocks whose hashes goldenHashReply holds:
	// the fixture pins BlockHash too.
	goldenHashInputs = [][]byte{[]byte("abc"), nil, bytes.Repeat([]byte("qcdp"), 16<<10)}
	goldenHashReply  = HashReply{Status: HashOK, Offset: 3 * 64 << 10, Size: 10<<30 + 4096, Seq: 0xfedcba9876543210,
		Hashes: []Hash{BlockHash(goldenHashInputs[0]), BlockHash(goldenHashInputs[1]), BlockHash(goldenHashInputs[2])}}
)

// writeGoldenIfMissing writes b as the fixture at path, in the hex format
// of golden_test.go, when QCDP_WRITE_GOLDEN=1 and it does not exist.
func writeGoldenIfMissing(t *testing.T, path string, b []byte) {
	t.Helper()
	if os.Getenv("QCDP_WRITE_GOLDEN") != "1" {
		return
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		return
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

func TestGoldenHashFrames(t *testing.T) {
	t.Run("hashquery", func(t *testing.T) {
		enc, err := AppendHashQuery(nil, goldenHashQuery)
		if err != nil {
			t.Fatal(err)
		}
		writeGoldenIfMissing(t, goldenPath("hashquery"), enc)
		b, f := readGoldenFrame(t, "hashquery")
		if f.Type != HashQ || len(f.Payload) != hashQueryLen+len(goldenHashQuery.Group)+len(goldenHashQuery.Disk) {
			t.Fatalf("frame %v of %d payload bytes", f.Type, len(f.Payload))
		}
		q, err := DecodeHashQuery(f)
		if err != nil {
			t.Fatal(err)
		}
		if q != goldenHashQuery {
			t.Fatalf("hash query %+v, want %+v", q, goldenHashQuery)
		}
		if !bytes.Equal(enc, b) {
			t.Fatalf("the encoder no longer writes %s:\n got  %x\n want %x", goldenPath("hashquery"), enc, b)
		}
		again, err := AppendHashQuery(nil, q)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("re-encoding the decoded query: %v\n got  %x\n want %x", err, again, b)
		}
	})
	t.Run("hashes", func(t *testing.T) {
		enc, err := AppendHashReply(nil, goldenHashReply)
		if err != nil {
			t.Fatal(err)
		}
		writeGoldenIfMissing(t, goldenPath("hashes"), enc)
		b, f := readGoldenFrame(t, "hashes")
		if f.Type != Hashes || len(f.Payload) != hashReplyLen+len(goldenHashReply.Hashes)*HashLen {
			t.Fatalf("frame %v of %d payload bytes", f.Type, len(f.Payload))
		}
		r, err := DecodeHashReply(f)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(r, goldenHashReply) {
			t.Fatalf("hash reply %+v, want %+v", r, goldenHashReply)
		}
		// The fixture's hashes are BLAKE3 cut to 16 bytes of the inputs,
		// independently of BlockHash.
		for i, in := range goldenHashInputs {
			s := blake3.Sum256(in)
			if got := f.Payload[hashReplyLen+i*HashLen : hashReplyLen+(i+1)*HashLen]; !bytes.Equal(got, s[:HashLen]) {
				t.Fatalf("hash %d in the fixture %x, want %x", i, got, s[:HashLen])
			}
		}
		if !bytes.Equal(enc, b) {
			t.Fatalf("the encoder no longer writes %s:\n got  %x\n want %x", goldenPath("hashes"), enc, b)
		}
		again, err := AppendHashReply(nil, r)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("re-encoding the decoded reply: %v\n got  %x\n want %x", err, again, b)
		}
	})
}

// BlockHash is BLAKE3 cut to 128 bits: known answers (BLAKE3's own test
// vectors, cut).
func TestBlockHashKnownAnswers(t *testing.T) {
	for in, want := range map[string]string{
		"":    "af1349b9f5f9a1a6a0404dea36dcc949",
		"abc": "6437b3ac38465133ffb63b75273a8db5",
	} {
		h := BlockHash([]byte(in))
		if got := hex.EncodeToString(h[:]); got != want {
			t.Errorf("BlockHash(%q) = %s, want %s", in, got, want)
		}
	}
	if HashLen != 16 {
		t.Fatalf("HashLen %d", HashLen)
	}
}

// readFrames reads every frame of b, with Reserve set or not.
func readFrames(t *testing.T, b []byte, reserve bool) []Frame {
	t.Helper()
	r := newReader(b, reserve)
	var out []Frame
	for {
		f, err := r.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("frame %d: %v", len(out), err)
		}
		f.Payload = bytes.Clone(f.Payload)
		out = append(out, f)
	}
}

func TestHashRoundTrip(t *testing.T) {
	long := strings.Repeat("g", MaxName)
	queries := []HashQuery{
		goldenHashQuery,
		{Group: "g", Disk: "d", BlockSize: MinHashBlock},
		{Group: long, Disk: strings.Repeat("D", MaxName), BlockSize: MaxHashBlock, Offset: 1 << 62, Count: MaxHashBlocks, After: ^uint64(0)},
		{Group: "web", Disk: "vm.vdb", BlockSize: 1 << 20, Offset: 7 << 20, Count: 0, After: 1},
		{Group: "a.b_c-d", Disk: "A9", BlockSize: 8 << 10, Offset: 8 << 10, Count: 1},
	}
	many := make([]Hash, MaxHashBlocks)
	for i := range many {
		binary.LittleEndian.PutUint32(many[i][:], uint32(i))
		many[i][HashLen-1] = byte(i >> 3)
	}
	replies := []HashReply{
		goldenHashReply,
		{Status: HashOK},
		{Status: HashOK, Offset: 1 << 40, Size: 1<<40 + 1, Seq: 7, Hashes: many},
		{Status: HashNoDisk, Offset: 4096},
		{Status: HashBehind, Offset: 1 << 20, Seq: 99},
	}
	var b []byte
	for _, q := range queries {
		var err error
		if b, err = AppendHashQuery(b, q); err != nil {
			t.Fatalf("%+v: %v", q, err)
		}
	}
	for _, r := range replies {
		var err error
		if b, err = AppendHashReply(b, r); err != nil {
			t.Fatalf("%v reply: %v", r.Status, err)
		}
	}
	for _, reserve := range []bool{false, true} {
		fs := readFrames(t, b, reserve)
		if len(fs) != len(queries)+len(replies) {
			t.Fatalf("%d frames, want %d", len(fs), len(queries)+len(replies))
		}
		for i, q := range queries {
			got, err := DecodeHashQuery(fs[i])
			if err != nil || got != q {
				t.Fatalf("query %d: %+v (%v), want %+v", i, got, err, q)
			}
			if _, err := DecodeHashReply(fs[i]); !errors.Is(err, ErrProtocol) {
				t.Fatalf("a hash query decoded as a reply: %v", err)
			}
		}
		for i, r := range replies {
			f := fs[len(queries)+i]
			got, err := DecodeHashReply(f)
			if err != nil {
				t.Fatalf("reply %d: %v", i, err)
			}
			if len(got.Hashes) == 0 && len(r.Hashes) == 0 {
				got.Hashes, r.Hashes = nil, nil
			}
			if !reflect.DeepEqual(got, r) {
				t.Fatalf("reply %d: %+v, want %+v", i, got, r)
			}
			if _, err := DecodeHashQuery(f); !errors.Is(err, ErrProtocol) {
				t.Fatalf("a hash reply decoded as a query: %v", err)
			}
		}
	}
	// The largest reply is within the frame bound, and so is the
	// largest query: both pass the Reader (above) exactly at it.
	if n, _ := MaxPayload(Hashes); n != hashReplyLen+MaxHashBlocks*HashLen {
		t.Fatalf("MaxPayload(Hashes) = %d", n)
	}
	if n, _ := MaxPayload(HashQ); n != hashQueryLen+2*MaxName {
		t.Fatalf("MaxPayload(HashQ) = %d", n)
	}
	// A reply's hashes do not alias the frame's buffer.
	f := readFrames(t, b, false)[len(queries)]
	r, _ := DecodeHashReply(f)
	clear(f.Payload)
	if r.Hashes[0] != goldenHashReply.Hashes[0] {
		t.Fatal("the decoded hashes alias the payload")
	}
	// Appending keeps what dst held.
	pre := []byte("prefix")
	out, err := AppendHashQuery(bytes.Clone(pre), goldenHashQuery)
	if err != nil || !bytes.HasPrefix(out, pre) {
		t.Fatalf("AppendHashQuery lost dst: %v", err)
	}
	out, err = AppendHashReply(bytes.Clone(pre), goldenHashReply)
	if err != nil || !bytes.HasPrefix(out, pre) {
		t.Fatalf("AppendHashReply lost dst: %v", err)
	}
}

// rawQuery lays a query out as AppendHashQuery would, without checking it.
func rawQuery(q HashQuery) []byte {
	p := make([]byte, hashQueryLen)
	p[0], p[1] = byte(len(q.Group)), byte(len(q.Disk))
	binary.LittleEndian.PutUint32(p[4:], q.BlockSize)
	binary.LittleEndian.PutUint64(p[8:], q.Offset)
	binary.LittleEndian.PutUint32(p[16:], q.Count)
	binary.LittleEndian.PutUint64(p[24:], q.After)
	return append(append(p, q.Group...), q.Disk...)
}

// rawReply lays a reply out, declaring n hashes, without checking it.
func rawReply(status byte, n uint32, hashes int) []byte {
	p := make([]byte, hashReplyLen+hashes*HashLen)
	p[0] = status
	binary.LittleEndian.PutUint32(p[4:], n)
	binary.LittleEndian.PutUint64(p[8:], 4096)
	binary.LittleEndian.PutUint64(p[16:], 1<<20)
	binary.LittleEndian.PutUint64(p[24:], 5)
	for i := range hashes {
		p[hashReplyLen+i*HashLen] = byte(i + 1)
	}
	return p
}

func TestHashQueryRefused(t *testing.T) {
	ok := HashQuery{Group: "web", Disk: "vda", BlockSize: 64 << 10, Offset: 128 << 10, Count: 16, After: 3}
	with := func(f func(*HashQuery)) HashQuery { q := ok; f(&q); return q }
	bad := map[string]HashQuery{
		"block size 0":                  with(func(q *HashQuery) { q.BlockSize = 0; q.Offset = 0 }),
		"block size 4095":               with(func(q *HashQuery) { q.BlockSize = 4095; q.Offset = 0 }),
		"block size 6 KiB":              with(func(q *HashQuery) { q.BlockSize = 6 << 10; q.Offset = 0 }),
		"block size 64 KiB + 4 KiB":     with(func(q *HashQuery) { q.BlockSize = 68 << 10; q.Offset = 0 }),
		"block size 2 KiB":              with(func(q *HashQuery) { q.BlockSize = MinHashBlock / 2; q.Offset = 0 }),
		"block size 32 MiB":             with(func(q *HashQuery) { q.BlockSize = MaxHashBlock * 2; q.Offset = 0 }),
		"block size 2^31":               with(func(q *HashQuery) { q.BlockSize = 1 << 31; q.Offset = 0 }),
		"block size max uint32":         with(func(q *HashQuery) { q.BlockSize = ^uint32(0); q.Offset = 0 }),
		"offset 512":                    with(func(q *HashQuery) { q.Offset = 512 }),
		"offset half a block":           with(func(q *HashQuery) { q.Offset = 32 << 10 }),
		"offset one byte past a block":  with(func(q *HashQuery) { q.Offset = 64<<10 + 1 }),
		"offset past 2^62":              with(func(q *HashQuery) { q.Offset = 1<<62 + 64<<10 }),
		"offset max":                    with(func(q *HashQuery) { q.BlockSize = MinHashBlock; q.Offset = ^uint64(0) &^ (MinHashBlock - 1) }),
		"count MaxHashBlocks+1":         with(func(q *HashQuery) { q.Count = MaxHashBlocks + 1 }),
		"count max uint32":              with(func(q *HashQuery) { q.Count = ^uint32(0) }),
		"group empty":                   with(func(q *HashQuery) { q.Group = "" }),
		"group dot":                     with(func(q *HashQuery) { q.Group = "." }),
		"group dot dot":                 with(func(q *HashQuery) { q.Group = ".." }),
		"group path":                    with(func(q *HashQuery) { q.Group = "../x" }),
		"group with a space":            with(func(q *HashQuery) { q.Group = "a b" }),
		"group with a NUL":              with(func(q *HashQuery) { q.Group = "a\x00" }),
		"group too long":                with(func(q *HashQuery) { q.Group = strings.Repeat("g", MaxName+1) }),
		"disk empty":                    with(func(q *HashQuery) { q.Disk = "" }),
		"disk dot dot":                  with(func(q *HashQuery) { q.Disk = ".." }),
		"disk path":                     with(func(q *HashQuery) { q.Disk = "vm/vda" }),
		"disk non-ASCII":                with(func(q *HashQuery) { q.Disk = "vdä" }),
		"disk too long":                 with(func(q *HashQuery) { q.Disk = strings.Repeat("d", MaxName+1) }),
		"group and disk both too long":  with(func(q *HashQuery) { q.Group, q.Disk = strings.Repeat("g", 200), strings.Repeat("d", 200) }),
		"block size 0 with offset 0":    with(func(q *HashQuery) { q.BlockSize, q.Offset, q.Count = 0, 0, 0 }),
		"block size 1 (a power of two)": with(func(q *HashQuery) { q.BlockSize, q.Offset = 1, 0 }),
	}
	for name, q := range bad {
		t.Run(name, func(t *testing.T) {
			dst := []byte("keep")
			out, err := AppendHashQuery(dst, q)
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("AppendHashQuery: %v, want ErrProtocol", err)
			}
			if string(out) != "keep" {
				t.Fatalf("AppendHashQuery appended to dst on error: %q", out)
			}
			if len(q.Group) > 255 || len(q.Disk) > 255 {
				return // no way to lay it out
			}
			got, err := DecodeHashQuery(Frame{Type: HashQ, Version: Version, Payload: rawQuery(q)})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("DecodeHashQuery: %+v, %v; want ErrCorrupt", got, err)
			}
			if got != (HashQuery{}) {
				t.Fatalf("DecodeHashQuery returned %+v with its error", got)
			}
		})
	}
	// The bounds themselves are accepted.
	good := []HashQuery{
		ok,
		with(func(q *HashQuery) { q.BlockSize, q.Offset = MinHashBlock, MinHashBlock }),
		with(func(q *HashQuery) { q.BlockSize, q.Offset = MaxHashBlock, MaxHashBlock }),
		with(func(q *HashQuery) { q.Count = MaxHashBlocks }),
		with(func(q *HashQuery) { q.Count = 0 }),
		with(func(q *HashQuery) { q.Offset = 0 }),
		with(func(q *HashQuery) { q.Offset = 1 << 62 }),
		with(func(q *HashQuery) { q.After = ^uint64(0) }),
		with(func(q *HashQuery) { q.Group, q.Disk = strings.Repeat("g", MaxName), strings.Repeat("d", MaxName) }),
	}
	for _, q := range good {
		if _, err := AppendHashQuery(nil, q); err != nil {
			t.Errorf("%+v refused: %v", q, err)
		}
		if got, err := DecodeHashQuery(Frame{Type: HashQ, Version: Version, Payload: rawQuery(q)}); err != nil || got != q {
			t.Errorf("%+v decoded as %+v (%v)", q, got, err)
		}
	}
}

// A query whose fields are right but whose layout lies is refused.
func TestHashQueryLayoutRefused(t *testing.T) {
	good := rawQuery(HashQuery{Group: "web", Disk: "vda", BlockSize: 64 << 10, Offset: 128 << 10, Count: 16, After: 3})
	mutate := func(f func([]byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := map[string][]byte{
		"empty":                   {},
		"header cut short":        good[:hashQueryLen-1],
		"header only":             good[:hashQueryLen],
		"names cut short":         good[:len(good)-1],
		"a byte after the names":  append(bytes.Clone(good), 'x'),
		"group length high":       mutate(func(p []byte) []byte { p[0]++; return p }),
		"group length low":        mutate(func(p []byte) []byte { p[0]--; return p }),
		"disk length high":        mutate(func(p []byte) []byte { p[1]++; return p }),
		"disk length low":         mutate(func(p []byte) []byte { p[1]--; return p }),
		"group length 0":          mutate(func(p []byte) []byte { p[0], p[1] = 0, 6; return p }),
		"disk length 0":           mutate(func(p []byte) []byte { p[0], p[1] = 6, 0; return p }),
		"group length 255":        mutate(func(p []byte) []byte { p[0] = 255; return p }),
		"reserved byte 2":         mutate(func(p []byte) []byte { p[2] = 1; return p }),
		"reserved byte 3":         mutate(func(p []byte) []byte { p[3] = 0x80; return p }),
		"reserved byte 20":        mutate(func(p []byte) []byte { p[20] = 1; return p }),
		"reserved byte 21":        mutate(func(p []byte) []byte { p[21] = 1; return p }),
		"reserved byte 22":        mutate(func(p []byte) []byte { p[22] = 1; return p }),
		"reserved byte 23":        mutate(func(p []byte) []byte { p[23] = 0x80; return p }),
		"block size byte flipped": mutate(func(p []byte) []byte { p[4] ^= 1; return p }),
		"offset byte flipped":     mutate(func(p []byte) []byte { p[8] ^= 1; return p }),
		"count high byte":         mutate(func(p []byte) []byte { p[19] = 1; return p }),
	}
	for name, p := range cases {
		got, err := DecodeHashQuery(Frame{Type: HashQ, Version: Version, Payload: p})
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %+v, %v; want ErrCorrupt", name, got, err)
		}
	}
	// Through the Reader, checksums made right: the same.
	for name, p := range cases {
		f, err := readOne(appendFrame(nil, HashQ, Version, p))
		if err != nil {
			continue // the reader refuses it already
		}
		if _, err := DecodeHashQuery(f); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s, read: %v; want ErrCorrupt", name, err)
		}
	}
	// Another frame type where a query belongs.
	for _, typ := range []Type{Hello, Hashes, Batch, Ack, Ping, 0, 99} {
		if _, err := DecodeHashQuery(Frame{Type: typ, Version: Version, Payload: good}); !errors.Is(err, ErrProtocol) {
			t.Errorf("%v frame: %v; want ErrProtocol", typ, err)
		}
	}
}

func TestHashReplyRefused(t *testing.T) {
	h := []Hash{BlockHash([]byte("x")), BlockHash([]byte("y"))}
	bad := map[string]HashReply{
		"status 3":                {Status: 3},
		"status 255":              {Status: 255},
		"status 3 with hashes":    {Status: 3, Hashes: h},
		"no-disk with hashes":     {Status: HashNoDisk, Hashes: h},
		"behind with a hash":      {Status: HashBehind, Hashes: h[:1]},
		"MaxHashBlocks+1 hashes":  {Status: HashOK, Hashes: make([]Hash, MaxHashBlocks+1)},
		"no-disk with many":       {Status: HashNoDisk, Hashes: make([]Hash, MaxHashBlocks+1)},
		"behind, MaxHashBlocks+1": {Status: HashBehind, Hashes: make([]Hash, MaxHashBlocks+1)},
	}
	for name, r := range bad {
		dst := []byte("keep")
		out, err := AppendHashReply(dst, r)
		if !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: AppendHashReply: %v, want ErrProtocol", name, err)
		}
		if string(out) != "keep" {
			t.Errorf("%s: AppendHashReply appended to dst on error", name)
		}
	}
	good := rawReply(0, 2, 2)
	if r, err := DecodeHashReply(Frame{Type: Hashes, Version: Version, Payload: good}); err != nil || len(r.Hashes) != 2 ||
		r.Offset != 4096 || r.Size != 1<<20 || r.Seq != 5 || r.Hashes[1][0] != 2 {
		t.Fatalf("the well-formed reply: %+v %v", r, err)
	}
	mutate := func(f func([]byte) []byte) []byte { return f(bytes.Clone(good)) }
	cases := map[string][]byte{
		"empty":                      {},
		"header cut short":           good[:hashReplyLen-1],
		"a hash cut short":           good[:len(good)-1],
		"a hash missing":             good[:len(good)-HashLen],
		"a byte more":                append(bytes.Clone(good), 0),
		"a hash more":                append(bytes.Clone(good), make([]byte, HashLen)...),
		"count high":                 mutate(func(p []byte) []byte { p[4]++; return p }),
		"count low":                  mutate(func(p []byte) []byte { p[4]--; return p }),
		"count huge":                 mutate(func(p []byte) []byte { p[7] = 0x80; return p }),
		"count wraps the length":     mutate(func(p []byte) []byte { binary.LittleEndian.PutUint32(p[4:], 1<<28+2); return p }),
		"reserved byte 1":            mutate(func(p []byte) []byte { p[1] = 1; return p }),
		"reserved byte 2":            mutate(func(p []byte) []byte { p[2] = 1; return p }),
		"reserved byte 3":            mutate(func(p []byte) []byte { p[3] = 0x80; return p }),
		"status 3":                   mutate(func(p []byte) []byte { p[0] = 3; return p }),
		"status 255":                 mutate(func(p []byte) []byte { p[0] = 255; return p }),
		"no-disk with hashes":        mutate(func(p []byte) []byte { p[0] = byte(HashNoDisk); return p }),
		"behind with hashes":         mutate(func(p []byte) []byte { p[0] = byte(HashBehind); return p }),
		"status 3 without hashes":    rawReply(3, 0, 0),
		"MaxHashBlocks+1 hashes":     rawReply(0, MaxHashBlocks+1, MaxHashBlocks+1),
		"no-disk with a hash":        rawReply(byte(HashNoDisk), 1, 1),
		"behind declaring no hashes": append(rawReply(byte(HashBehind), 0, 0), make([]byte, HashLen)...),
	}
	for name, p := range cases {
		got, err := DecodeHashReply(Frame{Type: Hashes, Version: Version, Payload: p})
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: %+v, %v; want ErrCorrupt", name, got, err)
		}
	}
	for _, typ := range []Type{Hello, HashQ, Refuse, Ack, 0, 99} {
		if _, err := DecodeHashReply(Frame{Type: typ, Version: Version, Payload: good}); !errors.Is(err, ErrProtocol) {
			t.Errorf("%v frame: %v; want ErrProtocol", typ, err)
		}
	}
	// Statuses without hashes decode.
	for _, st := range []HashStatus{HashOK, HashNoDisk, HashBehind} {
		r, err := DecodeHashReply(Frame{Type: Hashes, Version: Version, Payload: rawReply(byte(st), 0, 0)})
		if err != nil || r.Status != st || len(r.Hashes) != 0 {
			t.Errorf("status %v: %+v %v", st, r, err)
		}
	}
}

func TestHashStatusString(t *testing.T) {
	for st, want := range map[HashStatus]string{HashOK: "ok", HashNoDisk: "no-disk", HashBehind: "behind", 3: "status(3)"} {
		if st.String() != want {
			t.Errorf("%d: %q, want %q", uint8(st), st.String(), want)
		}
	}
	if HashOK != 0 || HashNoDisk != 1 || HashBehind != 2 || HashQ != 7 || Hashes != 8 {
		t.Fatal("a wire value changed")
	}
	if HashQ.String() != "hash-query" || Hashes.String() != "hashes" {
		t.Fatalf("type names %q %q", HashQ, Hashes)
	}
}

// A HashQ of another version is still read (it opens a connection, like a
// Hello) and refused by its decoder with a VersionError naming both
// versions; a Hashes frame of another version is refused by the Reader.
func TestHashVersion(t *testing.T) {
	for _, v := range []uint8{1, Version + 1, 7, 255} {
		b, err := AppendHashQuery(nil, goldenHashQuery)
		if err != nil {
			t.Fatal(err)
		}
		if v > Version {
			b = append(b, make([]byte, 64)...) // a longer future query
		}
		setVersion(b, v)
		for _, reserve := range []bool{false, true} {
			f, err := newReader(b, reserve).Next()
			if err != nil {
				t.Fatalf("v%d hash query (reserve %v): the reader refused it: %v", v, reserve, err)
			}
			if f.Type != HashQ || f.Version != v {
				t.Fatalf("v%d: read %v v%d", v, f.Type, f.Version)
			}
			q, err := DecodeHashQuery(f)
			var ve *VersionError
			if !errors.As(err, &ve) || !errors.Is(err, ErrVersion) || ve.Local != Version || ve.Peer != v {
				t.Fatalf("v%d: %+v, %v; want a *VersionError", v, q, err)
			}
			if !strings.Contains(err.Error(), fmt.Sprintf("v%d", v)) || !strings.Contains(err.Error(), fmt.Sprintf("v%d", Version)) {
				t.Fatalf("message %q", err)
			}
		}

		r, err := AppendHashReply(nil, goldenHashReply)
		if err != nil {
			t.Fatal(err)
		}
		setVersion(r, v)
		_, err = readOne(r)
		var ve *VersionError
		if !errors.As(err, &ve) || ve.Peer != v {
			t.Fatalf("v%d hashes frame: %v; want a *VersionError", v, err)
		}
		// Handed to the decoder as it is: refused the same way.
		_, err = DecodeHashReply(Frame{Type: Hashes, Version: v, Payload: r[HeaderLen:]})
		if !errors.As(err, &ve) || ve.Peer != v || ve.Local != Version {
			t.Fatalf("v%d hashes decoded: %v; want a *VersionError", v, err)
		}
	}
	// A foreign HashQ is still bounded.
	b, _ := AppendHashQuery(nil, goldenHashQuery)
	b = append(b, make([]byte, maxForeign)...)
	setVersion(b, 1)
	if _, err := readOne(b); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("a foreign hash query of %d bytes: %v; want ErrTooLarge", len(b)-HeaderLen, err)
	}
	// A HashQ of this version over its bound is refused by the reader.
	b, _ = AppendHashQuery(nil, goldenHashQuery)
	b = append(b, make([]byte, hashQueryLen+2*MaxName)...)
	setVersion(b, Version)
	if _, err := readOne(b); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("a hash query of %d bytes: %v; want ErrTooLarge", len(b)-HeaderLen, err)
	}
}

// Every single bit flipped in a hash frame is detected.
func TestHashBitFlips(t *testing.T) {
	q, _ := AppendHashQuery(nil, goldenHashQuery)
	r, _ := AppendHashReply(nil, goldenHashReply)
	for _, good := range [][]byte{q, r} {
		for bit := 0; bit < 8*len(good); bit++ {
			b := bytes.Clone(good)
			b[bit/8] ^= 1 << (bit % 8)
			f, err := readOne(b)
			if err == nil {
				t.Fatalf("bit %d flipped: read %v frame", bit, f.Type)
			}
		}
	}
}

func FuzzHashQuery(f *testing.F) {
	for _, q := range []HashQuery{goldenHashQuery, {Group: "g", Disk: "d", BlockSize: MinHashBlock},
		{Group: strings.Repeat("g", MaxName), Disk: "d", BlockSize: MaxHashBlock, Offset: 1 << 62, Count: MaxHashBlocks, After: ^uint64(0)}} {
		b, err := AppendHashQuery(nil, q)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b[HeaderLen:])
	}
	f.Add(rawQuery(HashQuery{Group: "..", Disk: "vda", BlockSize: 4096}))
	f.Add(rawQuery(HashQuery{Group: "g", Disk: "vda", BlockSize: 6144}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		q, err := DecodeHashQuery(Frame{Type: HashQ, Version: Version, Payload: p})
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("untyped error %v", err)
			}
			if q != (HashQuery{}) {
				t.Fatalf("query %+v with error %v", q, err)
			}
			return
		}
		if err := q.check(); err != nil {
			t.Fatalf("decoded %+v: %v", q, err)
		}
		b, err := AppendHashQuery(nil, q)
		if err != nil {
			t.Fatalf("decoded %+v, which does not encode: %v", q, err)
		}
		if !bytes.Equal(b[HeaderLen:], p) {
			t.Fatalf("decoded %+v, re-encoded\n %x\nfrom\n %x", q, b[HeaderLen:], p)
		}
		fr, err := readOne(b)
		if err != nil || !bytes.Equal(fr.Payload, p) {
			t.Fatalf("the re-encoded frame does not read back: %v", err)
		}
	})
}

func FuzzHashReply(f *testing.F) {
	for _, r := range []HashReply{goldenHashReply, {Status: HashNoDisk, Offset: 4096}, {Status: HashBehind, Seq: 9}, {Status: HashOK, Size: 1}} {
		b, err := AppendHashReply(nil, r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b[HeaderLen:])
	}
	f.Add(rawReply(byte(HashNoDisk), 1, 1))
	f.Add(rawReply(3, 0, 0))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		r, err := DecodeHashReply(Frame{Type: Hashes, Version: Version, Payload: p})
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		if r.Status > HashBehind || len(r.Hashes) > MaxHashBlocks || r.Status != HashOK && len(r.Hashes) > 0 {
			t.Fatalf("decoded %v reply with %d hashes", r.Status, len(r.Hashes))
		}
		b, err := AppendHashReply(nil, r)
		if err != nil {
			t.Fatalf("decoded %+v, which does not encode: %v", r, err)
		}
		if !bytes.Equal(b[HeaderLen:], p) {
			t.Fatalf("re-encoded\n %x\nfrom\n %x", b[HeaderLen:], p)
		}
		fr, err := readOne(b)
		if err != nil || !bytes.Equal(fr.Payload, p) {
			t.Fatalf("the re-encoded frame does not read back: %v", err)
		}
	})
}
