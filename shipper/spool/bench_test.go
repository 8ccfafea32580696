package spool

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/qcdp/qcdp/record"
)

// benchAppend appends records of size bytes to a spool on the real
// filesystem. Compare with benchWrite, the same bytes written to a plain
// file with one write each: the spool's overhead is the ratio.
func benchAppend(b *testing.B, size int) {
	s := mustOpen(b, Options{Dir: b.TempDir(), SegmentBytes: 256 << 20})
	defer s.Close()
	r := record.Record{Kind: record.Data, Disk: "vda", Length: uint64(size), Payload: make([]byte, size)}
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r.Seq = uint64(i + 1)
		r.Offset = uint64(i%4096) * uint64(size)
		if err := s.Append(&r); err != nil {
			b.Fatal(err)
		}
		if s.retained > 1<<30 { // keep the page cache in bounds on long runs
			b.StopTimer()
			if err := s.Ack(r.Seq); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}
}

func benchWrite(b *testing.B, size int) {
	f, err := os.Create(filepath.Join(b.TempDir(), "baseline"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	p := make([]byte, size+record.FrameLen+record.BodyHeaderLen+3)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	var off int64
	for i := 0; i < b.N; i++ {
		if _, err := f.Write(p); err != nil {
			b.Fatal(err)
		}
		if off += int64(len(p)); off > 1<<30 {
			b.StopTimer()
			f.Truncate(0)
			f.Seek(0, 0)
			off = 0
			b.StartTimer()
		}
	}
}

func BenchmarkAppend4K(b *testing.B)        { benchAppend(b, 4<<10) }
func BenchmarkAppend1M(b *testing.B)        { benchAppend(b, 1<<20) }
func BenchmarkBaselineWrite4K(b *testing.B) { benchWrite(b, 4<<10) }
func BenchmarkBaselineWrite1M(b *testing.B) { benchWrite(b, 1<<20) }
