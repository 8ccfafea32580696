package stream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/klauspost/compress/zstd"
	"github.com/qcdp/qcdp/record"
)

// BatchZstd is the Batch flag saying the data is zstd-compressed. Never
// change.
const BatchZstd = 1

// minRecordLen is the shortest encoded record: it bounds the count a batch
// of a given raw length can declare.
const minRecordLen = record.FrameLen + record.BodyHeaderLen

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
	sealFrame(f, Batch)
	e.frame = f
	return f
}

// BatchDecoder decodes Batch frames. It keeps its buffers and its zstd
// decoder across batches; it is not safe for concurrent use. Close it.
type BatchDecoder struct {
	dec  *zstd.Decoder
	raw  []byte
	recs []record.Record
}

// NewBatchDecoder returns a decoder.
func NewBatchDecoder() *BatchDecoder {
	// DecodeAll is capped at cap(dst), which Decode sets to the declared
	// raw length: a batch cannot decompress to more than it declared.
	dec, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxMemory(MaxBatchRaw), zstd.WithDecoderMaxWindow(MaxBatchRaw))
	return &BatchDecoder{dec: dec}
}

// Close releases the zstd decoder.
func (d *BatchDecoder) Close() { d.dec.Close() }

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
// the next call to Decode or to the Reader's Next.
// Errors wrap ErrCorrupt, ErrTooLarge, ErrVersion or ErrProtocol.
func (d *BatchDecoder) Decode(f Frame) (BatchInfo, []record.Record, error) {
	if f.Type != Batch {
		return BatchInfo{}, nil, fmt.Errorf("%w: %v frame where a batch belongs", ErrProtocol, f.Type)
	}
	if f.Version != Version {
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
		if cap(d.raw) < bi.RawLen {
			d.raw = make([]byte, 0, bi.RawLen) // bounded by MaxBatchRaw above
		}
		out, err := d.dec.DecodeAll(data, d.raw[:0:bi.RawLen])
		if err != nil {
			return bi, nil, fmt.Errorf("%w: batch at seq %d: zstd: %v", ErrCorrupt, bi.First, err)
		}
		if len(out) != bi.RawLen {
			return bi, nil, fmt.Errorf("%w: batch at seq %d: decompressed to %d bytes, raw length %d", ErrCorrupt, bi.First, len(out), bi.RawLen)
		}
		raw = out
	}
	d.recs = d.recs[:0]
	for off := 0; off < len(raw); {
		r, n, err := record.Decode(raw[off:])
		if err != nil {
			if errors.Is(err, record.ErrUnknownType) {
				err = fmt.Errorf("%w: %w (a new record type needs a new stream version)", ErrProtocol, err)
			} else {
				err = fmt.Errorf("%w: %w", ErrCorrupt, err)
			}
			return bi, nil, fmt.Errorf("batch at seq %d, record %d, offset %d: %w", bi.First, len(d.recs), off, err)
		}
		if want := bi.First + uint64(len(d.recs)); r.Seq != want || len(d.recs) == bi.Count {
			return bi, nil, fmt.Errorf("%w: batch at seq %d of %d records: record %d has seq %d", ErrCorrupt, bi.First, bi.Count, len(d.recs), r.Seq)
		}
		d.recs = append(d.recs, r)
		off += n
	}
	if len(d.recs) != bi.Count {
		return bi, nil, fmt.Errorf("%w: batch at seq %d declares %d records, holds %d", ErrCorrupt, bi.First, bi.Count, len(d.recs))
	}
	return bi, d.recs, nil
}
