package stream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"github.com/klauspost/compress/zstd"
	"github.com/qcdp/qcdp/record"
)

// BatchZstd is the Batch flag saying the data is zstd-compressed. Never
// change.
const BatchZstd = 1

// minRecordLen is the shortest encoded record: it bounds the count a batch
// of a given raw length can declare.
const minRecordLen = record.FrameLen + record.BodyHeaderLen

// definitionsSince is the first protocol version whose batches may carry
// Definition records. Never change.
const definitionsSince = 3

// ErrBatchFull is returned by BatchEncoder.Add when the record does not fit
// in the batch: send the batch and add the record to the next one.
var ErrBatchFull = errors.New("stream: batch full")

// BatchEncoder builds Batch frames. It keeps its buffers and its zstd
// encoder across batches; it is not safe for concurrent use.
type BatchEncoder struct {
	enc   *zstd.Encoder // nil: no compression
	raw   []byte
	frame []byte
	first uint64
	count int
	zero  int // Data records sent as Zero records (all-zero payload)
}

// NewBatchEncoder returns an encoder; compress selects zstd.
func NewBatchEncoder(compress bool) *BatchEncoder {
	e := &BatchEncoder{}
	if compress {
		// Errors only come from invalid options.
		e.enc, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest),
			zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(false))
	}
	return e
}

// Reset empties the batch.
func (e *BatchEncoder) Reset() { e.raw, e.first, e.count, e.zero = e.raw[:0], 0, 0, 0 }

// Len returns the raw (uncompressed) bytes in the batch.
func (e *BatchEncoder) Len() int { return len(e.raw) }

// Count returns the records in the batch, First and Last their first and
// last seqs, ZeroPayloads how many Data records became Zero records.
func (e *BatchEncoder) Count() int        { return e.count }
func (e *BatchEncoder) First() uint64     { return e.first }
func (e *BatchEncoder) Last() uint64      { return e.first + uint64(e.count) - 1 }
func (e *BatchEncoder) ZeroPayloads() int { return e.zero }

// Add appends r to the batch; r.Seq must follow the batch's last seq. A
// Data record whose payload is all zeroes is added as a Zero record. If r
// does not fit in MaxBatchRaw, Add returns ErrBatchFull and leaves the
// batch as it was (a batch always takes its first record).
func (e *BatchEncoder) Add(r *record.Record) error {
	if e.count > 0 && r.Seq != e.first+uint64(e.count) {
		return fmt.Errorf("%w: seq %d added after %d", ErrProtocol, r.Seq, e.Last())
	}
	if err := r.Validate(); err != nil {
		return fmt.Errorf("stream: batch: seq %d: %w", r.Seq, err)
	}
	rec := r
	if r.Kind == record.Data && allZero(r.Payload) {
		z := *r
		z.Kind, z.Payload = record.Zero, nil
		rec = &z
		e.zero++
	}
	if len(e.raw)+record.EncodedLen(rec) > MaxBatchRaw {
		return ErrBatchFull
	}
	if e.count == 0 {
		e.first = r.Seq
	}
	e.raw = record.AppendEncode(e.raw, rec)
	e.count++
	return nil
}

var zeroes = make([]byte, 64<<10)

func allZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeroes))
		if !bytes.Equal(p[:n], zeroes[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// Frame returns the Batch frame of the records added, compressed when the
// encoder compresses and that makes it smaller. The frame aliases the
// encoder's buffer and is valid until the next call to Frame.
func (e *BatchEncoder) Frame() []byte {
	f := beginFrame(e.frame[:0])
	f = binary.LittleEndian.AppendUint64(f, e.first)
	f = binary.LittleEndian.AppendUint32(f, uint32(e.count))
	flagsAt := len(f)
	f = binary.LittleEndian.AppendUint16(f, 0)
	f = binary.LittleEndian.AppendUint16(f, 0)
	f = binary.LittleEndian.AppendUint32(f, uint32(len(e.raw)))
	data := len(f)
	if e.enc != nil {
		f = e.enc.EncodeAll(e.raw, f)
		if len(f)-data < len(e.raw) {
			binary.LittleEndian.PutUint16(f[flagsAt:], BatchZstd)
		} else {
			f = append(f[:data], e.raw...)
		}
	} else {
		f = append(f, e.raw...)
	}
	sealFrame(f, Batch, Version)
	e.frame = f
	return f
}

// BatchDecoder decodes Batch frames. It keeps its buffers and its zstd
// decoder across batches; it is not safe for concurrent use. Close it.
type BatchDecoder struct {
	// Fresh makes Decode allocate the decompressed data and the records of
	// every batch anew instead of reusing its buffers: the records of one
	// batch stay valid after the next Decode, and the decoder keeps no
	// reference to them, so their memory is freed once the caller drops
	// them (and the frame's payload). FrameCost bounds what Decode then
	// allocates for a batch. A Fresh decoder keeps no zstd decoder either:
	// it borrows one, for each compressed batch, from a few shared by the
	// process (their block buffers are a fixed cost of the process, not of
	// each stream).
	Fresh bool

	dec  *zstd.Decoder // made at the first compressed batch unless Fresh
	raw  []byte
	recs []record.Record
}

// newZstdDecoder returns a decoder for batch data. DecodeAll is capped at
// cap(dst), which Decode sets to the declared raw length: a batch cannot
// decompress to more than it declared.
func newZstdDecoder() *zstd.Decoder {
	dec, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxMemory(MaxBatchRaw), zstd.WithDecoderMaxWindow(MaxBatchRaw))
	return dec
}

// sharedDecoders are the zstd decoders Fresh decoders borrow: as many as
// the process runs goroutines at once; more are made when they are all
// borrowed, and closed when given back to a full set.
var sharedDecoders = make(chan *zstd.Decoder, runtime.GOMAXPROCS(0))

// scrubFrame is a small zstd frame (literals and a match) that a shared
// decoder decodes before it is given back: a zstd decoder keeps pointers
// into the last input and output it decoded, which would keep a batch's
// frame and decompressed data alive as long as the decoder; decoding this
// frame moves them onto it.
var scrubFrame = func() []byte {
	enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	defer enc.Close()
	return enc.EncodeAll(bytes.Repeat([]byte("qcdp scrub "), 8), nil)
}()

func borrowDecoder() *zstd.Decoder {
	select {
	case dec := <-sharedDecoders:
		return dec
	default:
		return newZstdDecoder()
	}
}

func giveBack(dec *zstd.Decoder) {
	dec.DecodeAll(scrubFrame, make([]byte, 0, 128)) // cannot fail
	select {
	case sharedDecoders <- dec:
	default:
		dec.Close()
	}
}

// NewBatchDecoder returns a decoder.
func NewBatchDecoder() *BatchDecoder { return &BatchDecoder{} }

// Close releases the zstd decoder.
func (d *BatchDecoder) Close() {
	if d.dec != nil {
		d.dec.Close()
		d.dec = nil
	}
}

// BatchInfo is what a Batch header declares.
type BatchInfo struct {
	First  uint64
	Count  int
	Flags  uint16
	RawLen int // uncompressed bytes
	Wire   int // bytes of the frame payload
}

// Decode checks and decodes a Batch frame: the header, the decompressed
// length, every record's checksums and fields, and that the records carry
// consecutive seqs from the declared first seq. The records (and their
// payloads) alias the decoder's buffers or f.Payload: they are valid until
// the next call to Decode or to the Reader's Next. A batch of version 2
// holding a Definition record, which only version 3 carries, is
// ErrProtocol.
// Errors wrap ErrCorrupt, ErrTooLarge, ErrVersion or ErrProtocol.
func (d *BatchDecoder) Decode(f Frame) (BatchInfo, []record.Record, error) {
	if f.Type != Batch {
		return BatchInfo{}, nil, fmt.Errorf("%w: %v frame where a batch belongs", ErrProtocol, f.Type)
	}
	if !Speaks(f.Version) {
		return BatchInfo{}, nil, &VersionError{Local: Version, Peer: f.Version, What: "batch"}
	}
	p := f.Payload
	if len(p) < BatchHeaderLen {
		return BatchInfo{}, nil, fmt.Errorf("%w: batch of %d bytes", ErrCorrupt, len(p))
	}
	bi := BatchInfo{
		First:  binary.LittleEndian.Uint64(p),
		Count:  int(binary.LittleEndian.Uint32(p[8:])),
		Flags:  binary.LittleEndian.Uint16(p[12:]),
		RawLen: int(binary.LittleEndian.Uint32(p[16:])),
		Wire:   len(p),
	}
	data := p[BatchHeaderLen:]
	switch {
	case bi.Flags&^BatchZstd != 0 || binary.LittleEndian.Uint16(p[14:]) != 0:
		return bi, nil, fmt.Errorf("%w: batch at seq %d: flags %#x", ErrCorrupt, bi.First, bi.Flags)
	case bi.RawLen > MaxBatchRaw:
		return bi, nil, fmt.Errorf("%w: batch at seq %d: raw length %d, at most %d", ErrTooLarge, bi.First, bi.RawLen, MaxBatchRaw)
	case bi.Count == 0 || bi.Count > bi.RawLen/minRecordLen:
		return bi, nil, fmt.Errorf("%w: batch at seq %d: %d records in %d bytes", ErrCorrupt, bi.First, bi.Count, bi.RawLen)
	case bi.First == 0 || bi.First+uint64(bi.Count) < bi.First:
		return bi, nil, fmt.Errorf("%w: batch at seq %d of %d records", ErrCorrupt, bi.First, bi.Count)
	case bi.Flags&BatchZstd == 0 && len(data) != bi.RawLen:
		return bi, nil, fmt.Errorf("%w: batch at seq %d: %d data bytes, raw length %d", ErrCorrupt, bi.First, len(data), bi.RawLen)
	case len(data) > bi.RawLen:
		return bi, nil, fmt.Errorf("%w: batch at seq %d: %d compressed bytes for %d raw", ErrCorrupt, bi.First, len(data), bi.RawLen)
	}
	raw := data
	if bi.Flags&BatchZstd != 0 {
		dst := d.raw
		if d.Fresh || cap(dst) < bi.RawLen {
			dst = make([]byte, 0, bi.RawLen) // bounded by MaxBatchRaw above
		}
		if !d.Fresh {
			d.raw = dst
		}
		var out []byte
		var err error
		if d.Fresh {
			dec := borrowDecoder()
			out, err = dec.DecodeAll(data, dst[:0:bi.RawLen])
			giveBack(dec)
		} else {
			if d.dec == nil {
				d.dec = newZstdDecoder()
			}
			out, err = d.dec.DecodeAll(data, dst[:0:bi.RawLen])
		}
		if err != nil {
			return bi, nil, fmt.Errorf("%w: batch at seq %d: zstd: %v", ErrCorrupt, bi.First, err)
		}
		if len(out) != bi.RawLen {
			return bi, nil, fmt.Errorf("%w: batch at seq %d: decompressed to %d bytes, raw length %d", ErrCorrupt, bi.First, len(out), bi.RawLen)
		}
		raw = out
	}
	recs := d.recs[:0]
	if d.Fresh {
		recs = make([]record.Record, 0, bi.Count) // bounded by RawLen/minRecordLen above
	} else {
		defer func() { d.recs = recs[:0] }()
	}
	for off := 0; off < len(raw); {
		r, n, err := record.Decode(raw[off:])
		if err != nil {
			if errors.Is(err, record.ErrUnknownType) {
				err = fmt.Errorf("%w: %w (a new record type needs a new stream version)", ErrProtocol, err)
			} else {
				err = fmt.Errorf("%w: %w", ErrCorrupt, err)
			}
			return bi, nil, fmt.Errorf("batch at seq %d, record %d, offset %d: %w", bi.First, len(recs), off, err)
		}
		if want := bi.First + uint64(len(recs)); r.Seq != want || len(recs) == bi.Count {
			return bi, nil, fmt.Errorf("%w: batch at seq %d of %d records: record %d has seq %d", ErrCorrupt, bi.First, bi.Count, len(recs), r.Seq)
		}
		if r.Kind == record.Definition && f.Version < definitionsSince {
			return bi, nil, fmt.Errorf("%w: a stream v%d batch holds a definition record (seq %d): the host must speak stream v%d for definitions",
				ErrProtocol, f.Version, r.Seq, definitionsSince)
		}
		recs = append(recs, r)
		off += n
	}
	if len(recs) != bi.Count {
		return bi, nil, fmt.Errorf("%w: batch at seq %d declares %d records, holds %d", ErrCorrupt, bi.First, bi.Count, len(recs))
	}
	return bi, recs, nil
}

// Memory accounting of FrameCost.
const (
	// recordSize is what a decoded record takes in a records slice.
	recordSize = int64(unsafe.Sizeof(record.Record{}))
	// nameSlack is what the allocation of a disk or marker name may take
	// beyond its length (Go's size classes up to 256 bytes are 16 apart).
	nameSlack = 16
	// allocSlack is what a large allocation may take beyond its length
	// (Go rounds it up to whole 8 KiB pages).
	allocSlack = 8 << 10
)

// FrameCost returns at most how many bytes of memory a frame of type t
// with a payload of n bytes takes once read by a Reader with Reserve set
// and, for a Batch, decoded by a BatchDecoder with Fresh set: the payload,
// and what Decode allocates as the batch header head declares (the first
// BatchHeaderLen bytes of the payload, which the frame checksum has not
// verified yet): the decompressed data of a compressed batch, the records,
// and their disk and marker names. A header that Decode refuses is
// refused before anything is allocated for it; FrameCost counts what it
// declares within the bounds Decode enforces.
func FrameCost(t Type, n int, head []byte) int64 {
	if n == 0 {
		return 0
	}
	cost := int64(n) + allocSlack
	if t != Batch || len(head) < BatchHeaderLen {
		return cost
	}
	raw := min(int64(binary.LittleEndian.Uint32(head[16:])), MaxBatchRaw)
	count := min(int64(binary.LittleEndian.Uint32(head[8:])), raw/minRecordLen)
	if binary.LittleEndian.Uint16(head[12:])&BatchZstd != 0 {
		cost += raw + allocSlack
	}
	// Each record's names take at most their lengths (which the rest of
	// its encoding, beyond the fixed part, holds) plus the slack of two
	// allocations.
	names := min(raw-count*minRecordLen, count*(record.MaxDisk+record.MaxName))
	return cost + count*(recordSize+2*nameSlack) + names + allocSlack
}
