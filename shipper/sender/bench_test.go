package sender_test

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/shipper/sender"
)

// BenchmarkRPOZstd and BenchmarkRPORaw measure the RPO (DESIGN.md) of one group on loopback under
// sustained writes of 4 KiB at 50 MB/s, sampled every millisecond for two
// seconds per iteration, and reports p50, p99 and the worst sample (run it
// with -benchtime 1x). The baseline is the same writes with no sender: the
// writer keeps its pace either way, so the RPO is all shipping.
func BenchmarkRPOZstd(b *testing.B) { benchRPO(b, false) }
func BenchmarkRPORaw(b *testing.B)  { benchRPO(b, true) }

func benchRPO(b *testing.B, raw bool) {
	const rate, size = 50 << 20, 4096
	st := newSite(b, 0)
	sp := openSpool(b, "g1")
	r := startSender(b, st, sp, func(o *sender.Options) { o.BatchBytes = 0; o.NoCompress = raw })
	// Half of each payload from a random pool, half a pattern: about 2:1
	// with zstd, like the ingest benchmark.
	pool := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(3, 3))
	for i := range pool {
		pool[i] = byte(rng.Uint32())
	}
	payload := make([]byte, size)
	for i := size / 2; i < size; i++ {
		payload[i] = byte(i % 7)
	}
	var samples []time.Duration
	b.SetBytes(2 * rate)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		tick := time.NewTicker(time.Millisecond)
		written := 0
		for now := range tick.C {
			el := now.Sub(start)
			if el > 2*time.Second {
				break
			}
			for written < int(el.Seconds()*rate) {
				rec := record.Record{Seq: sp.LastSeq() + 1, Time: time.Now().UnixNano(), Kind: record.Data, Disk: "vda",
					Offset: uint64(written % (1 << 30)), Length: size, Payload: payload}
				copy(payload, pool[(written/size*size/2)%(len(pool)-size):][:size/2])
				if err := sp.Append(&rec); err != nil {
					b.Fatal(err)
				}
				written += size
			}
			samples = append(samples, r.s.RPO(time.Now()))
		}
		tick.Stop()
	}
	b.StopTimer()
	waitAcked(b, sp, 30*time.Second)
	slices.Sort(samples)
	q := func(p float64) float64 { return float64(samples[int(p*float64(len(samples)-1))]) / 1e6 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
	b.ReportMetric(q(1), "max-ms")
	b.ReportMetric(r.s.Stats().Ratio(), "ratio")
}
