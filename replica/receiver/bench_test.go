package receiver_test

import (
	"fmt"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/stream"
)

// benchIngest streams pre-built 4 MiB batches of 4 KiB writes (half of
// each payload random, half repeated: about 2:1 with zstd) over loopback
// TLS into a real journal on a temp dir. It reports MB/s of records (raw)
// and MB per CPU-second of the whole process (client included, so a lower
// bound per core).
func benchIngest(b *testing.B, compress bool) {
	r := start(b)
	frames, raw := buildBatches(b, compress, 16)
	var wire int64
	for _, f := range frames {
		wire += int64(len(f))
	}
	last := uint64(raw / int64(record.FrameLen+record.BodyHeaderLen+3+4096))
	b.SetBytes(raw)
	b.ResetTimer()
	cpu0, t0 := cpuTime(), time.Now()
	for i := 0; i < b.N; i++ {
		c, err := dial(b, r, r.pki.Client("alpha", "kvm-a1"))
		if err != nil {
			b.Fatal(err)
		}
		c.c.SetDeadline(time.Time{})
		if _, err := c.hello(fmt.Sprintf("db-%d", i), last); err != nil {
			b.Fatal(err)
		}
		for _, f := range frames {
			if _, err := c.c.Write(f); err != nil {
				b.Fatal(err)
			}
		}
		for {
			a, err := c.answer()
			if err != nil {
				b.Fatal(err)
			}
			if a == last {
				break
			}
		}
		c.c.Close()
	}
	wall, cpu := time.Since(t0), cpuTime()-cpu0
	b.StopTimer()
	mb := float64(raw) * float64(b.N) / 1e6
	b.ReportMetric(mb/wall.Seconds(), "MB/s")
	b.ReportMetric(mb/cpu.Seconds(), "MB/cpu-s")
	b.ReportMetric(float64(raw)/float64(wire), "ratio")
}

func BenchmarkIngestZstd(b *testing.B) { benchIngest(b, true) }
func BenchmarkIngestRaw(b *testing.B)  { benchIngest(b, false) }

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func buildBatches(b *testing.B, compress bool, n int) ([][]byte, int64) {
	rng := rand.New(rand.NewPCG(1, 1))
	var frames [][]byte
	var raw int64
	seq := uint64(1)
	for i := 0; i < n; i++ {
		e := stream.NewBatchEncoder(compress)
		for e.Len() < 4<<20 {
			p := make([]byte, 4096)
			for j := 0; j < 2048; j++ {
				p[j] = byte(rng.Uint32())
			}
			for j := 2048; j < 4096; j++ {
				p[j] = byte(j % 7)
			}
			rec := record.Record{Seq: seq, Time: 1, Kind: record.Data, Disk: "vda", Offset: uint64(rng.IntN(1<<18)) * 4096, Length: 4096, Payload: p}
			if err := e.Add(&rec); err != nil {
				b.Fatal(err)
			}
			seq++
		}
		raw += int64(e.Len())
		frames = append(frames, append([]byte(nil), e.Frame()...))
	}
	return frames, raw
}
