package stream

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"weak"

	"github.com/qcdp/qcdp/record"
)

var memStats runtime.MemStats // not on the stack: reading it allocates nothing

func totalAlloc() int64 {
	runtime.ReadMemStats(&memStats)
	return int64(memStats.TotalAlloc)
}

// reserveCases are frames whose memory differs in kind: large payloads
// raw or compressed, many tiny records, long names.
func reserveCases(t *testing.T) map[string][]byte {
	rng := rand.NewChaCha8([32]byte{7})
	var big, half, tiny, named []record.Record
	for i := range 4 {
		p := make([]byte, 1<<20)
		rng.Read(p)
		big = append(big, record.Record{Seq: uint64(i + 1), Kind: record.Data, Disk: "vda", Length: 1 << 20, Payload: p})
		h := make([]byte, 1<<20)
		rng.Read(h[:1<<19])
		half = append(half, record.Record{Seq: uint64(i + 1), Kind: record.Data, Disk: "vda", Length: 1 << 20, Payload: h})
	}
	for i := range 100000 {
		tiny = append(tiny, record.Record{Seq: uint64(i + 1), Kind: record.Zero, Disk: "d", Offset: uint64(i) * 512, Length: 512})
	}
	for i := range 5000 {
		disk := strings.Repeat(string(rune('a'+i%26)), record.MaxDisk)
		named = append(named, record.Record{Seq: uint64(i + 1), Kind: record.Marker, Marker: record.UserBookmark,
			Disk: disk, Name: strings.Repeat("n", record.MaxName)})
	}
	return map[string][]byte{
		"raw large":    encodeBatch(t, false, big),
		"zstd large":   encodeBatch(t, true, half),
		"raw tiny":     encodeBatch(t, false, tiny),
		"zstd tiny":    encodeBatch(t, true, tiny),
		"zstd names":   encodeBatch(t, true, named),
		"zstd mixed":   encodeBatch(t, true, genRecords(1, 3000, 5)),
		"ack":          AppendAck(nil, 9),
		"ping":         AppendPing(nil),
		"short refuse": AppendRefuse(nil, CodeProtocol, "x"),
	}
}

// With Reserve set, FrameCost covers every byte that Next and a Fresh
// decoder's Decode allocate for a frame, and it is asked for before any
// of it is allocated.
func TestReserveCoversAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("counts the allocations of the build the daemon runs")
	}
	for name, b := range reserveCases(t) {
		d := NewBatchDecoder()
		d.Fresh = true
		// The zstd decoder allocates its own block buffers once and keeps
		// them (a fixed cost per decoder): warm it up.
		if f, err := readOne(b); err == nil && f.Type == Batch {
			if _, _, err := d.Decode(f); err != nil {
				t.Fatal(err)
			}
		}
		var reserved int64
		calls := 0
		r := NewReader(bytes.NewReader(b))
		r.Reserve = func(cost int64) error { reserved += cost; calls++; return nil }
		// The zstd decoder also takes scratch buffers from sync.Pools,
		// shared by all decoders (a fixed cost too): no collection may
		// empty them meanwhile.
		gc := debug.SetGCPercent(-1)
		before := totalAlloc()
		f, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		var wire, raw int
		if f.Type == Batch {
			bi, recs, err := d.Decode(f)
			if err != nil || len(recs) != bi.Count {
				t.Fatalf("%s: %v", name, err)
			}
			wire, raw = bi.Wire, bi.RawLen
		}
		allocated := totalAlloc() - before
		debug.SetGCPercent(gc)
		runtime.KeepAlive(f)
		d.Close()
		t.Logf("%s: reserved %d bytes, allocated %d", name, reserved, allocated)
		switch {
		case allocated > reserved:
			t.Errorf("%s: allocated %d bytes, reserved only %d", name, allocated, reserved)
		case len(f.Payload) == 0 && calls != 0:
			t.Errorf("%s: Reserve called for an empty payload", name)
		case len(f.Payload) > 0 && calls != 1:
			t.Errorf("%s: Reserve called %d times", name, calls)
		case strings.HasSuffix(name, "large") && reserved > int64(wire+raw)+64<<10:
			// Large payloads are counted as they are, not by a bound that
			// would make a budget admit fewer of them than it holds.
			t.Errorf("%s: reserved %d bytes for %d on the wire and %d raw", name, reserved, wire, raw)
		}
	}
}

// A frame whose cost Reserve refuses is not read further and nothing is
// allocated for its payload; payloads read with Reserve set are the
// caller's and survive the next frame.
func TestReserveRefusedAndOwned(t *testing.T) {
	frame := encodeBatch(t, false, genRecords(1, 400, 3))
	stop := errors.New("no room")
	// The least of a few tries: TotalAlloc counts every goroutine's
	// allocations (the runtime's and zstd's own too), a refused frame's
	// are in every try.
	least := int64(1 << 62)
	for range 5 {
		r := NewReader(bytes.NewReader(frame))
		r.Reserve = func(int64) error { return stop }
		before := totalAlloc()
		if _, err := r.Next(); err != stop {
			t.Fatalf("Next: %v, want Reserve's error as it is", err)
		}
		least = min(least, totalAlloc()-before)
	}
	if least > 1<<10 {
		t.Fatalf("%d bytes allocated for a refused frame of %d", least, len(frame))
	}

	two := append(bytes.Clone(frame), encodeBatch(t, true, genRecords(401, 50, 4))...)
	r := NewReader(bytes.NewReader(two))
	r.Reserve = func(int64) error { return nil }
	first, err := r.Next()
	if err != nil {
		t.Fatal(err)
	}
	keep := bytes.Clone(first.Payload)
	if _, err := r.Next(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.Payload, keep) {
		t.Fatal("the next frame overwrote a payload read with Reserve set")
	}
	d := NewBatchDecoder()
	defer d.Close()
	d.Fresh = true
	_, recs, err := d.Decode(first)
	if err != nil {
		t.Fatal(err)
	}
	seq := recs[0].Seq
	if _, _, err := d.Decode(first); err != nil || recs[0].Seq != seq {
		t.Fatalf("a Fresh decoder reused the records of the previous batch: %v", err)
	}
}

// A Fresh decoder keeps no reference to a batch once it has decoded it:
// neither to the frame's payload nor to the decompressed data, which are
// freed once the caller drops them (a stream that goes idle after a large
// batch must not keep it).
func TestFreshDecoderLetsGo(t *testing.T) {
	for _, compress := range []bool{true, false} {
		d := NewBatchDecoder()
		d.Fresh = true
		frame := encodeBatch(t, compress, genRecords(1, 3000, 11))
		r := NewReader(bytes.NewReader(frame))
		r.Reserve = func(int64) error { return nil }
		f, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		_, recs, err := d.Decode(f)
		if err != nil {
			t.Fatal(err)
		}
		var data *byte
		for _, rec := range recs {
			if len(rec.Payload) > 0 {
				data = &rec.Payload[0]
				break
			}
		}
		wire, raw := weak.Make(&f.Payload[0]), weak.Make(data)
		f, recs, data = Frame{}, nil, nil
		runtime.GC()
		runtime.GC()
		if wire.Value() != nil || raw.Value() != nil {
			t.Errorf("compress %v: after Decode, the decoder still holds the frame's payload (%v) or its records' data (%v)",
				compress, wire.Value() != nil, raw.Value() != nil)
		}
		d.Close()
	}
}
