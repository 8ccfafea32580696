package receiver_test

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica/receiver"
	"github.com/qcdp/qcdp/stream"
)

// memBudget is the in-flight budget of TestMemoryBounded.
const memBudget = 128 << 20

// bigBatch is one Batch frame of 60 MiB of records of size bytes from
// seq 1: random payloads sent raw, or half-random ones compressed about
// 2:1.
func bigBatch(t *testing.T, compress bool, size int) (frame []byte, last uint64) {
	t.Helper()
	rng := rand.NewChaCha8([32]byte{1})
	e := stream.NewBatchEncoder(compress)
	n := uint64(60 << 20 / size)
	for seq := uint64(1); seq <= n; seq++ {
		p := make([]byte, size)
		if compress {
			rng.Read(p[:len(p)/2])
		} else {
			rng.Read(p)
		}
		r := record.Record{Seq: seq, Time: 1, Kind: record.Data, Disk: "vda", Offset: (seq - 1) * uint64(size), Length: uint64(size), Payload: p}
		if err := e.Add(&r); err != nil {
			t.Fatal(err)
		}
	}
	return append([]byte(nil), e.Frame()...), n
}

// liveHeap is the heap in use after a collection: what is reachable, plus
// what was allocated while the collection ran.
func liveHeap() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// TestMemoryBounded is the review's attack: six hosts each send a 60 MiB
// batch to a new group at once (of large records raw, compressed, and of
// small records, which the journal copies). The receiver's heap must stay
// within its in-flight budget plus a fixed overhead, and once every batch
// is acknowledged, streams that stay connected but idle must hold none of
// it, nor their journals.
//
// The heap is measured after forced collections, so garbage does not
// count; a collection may still count a buffer a stream has just dropped
// together with the one the next stream allocated meanwhile, hence the
// allowance of one batch on top of the budget.
func TestMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 360 MiB")
	}
	const streams = 6
	r := startWith(t, func(srv *receiver.Server) { srv.MaxInflight = memBudget })
	type batch struct {
		frame []byte
		last  uint64
	}
	var batches [3]batch
	batches[0].frame, batches[0].last = bigBatch(t, false, 1<<20)
	batches[1].frame, batches[1].last = bigBatch(t, true, 1<<20)
	batches[2].frame, batches[2].last = bigBatch(t, false, 16<<10)
	zst := batches[1].frame
	t.Logf("batches: raw %d MiB on the wire, zstd %d MiB on the wire", len(batches[0].frame)>>20, len(zst)>>20)
	// What one batch can take at once: its frame, its decompressed data.
	oneBatch := int64(len(zst) + 60<<20)
	overhead := int64(16<<20 + streams*(2<<20))

	base := liveHeap()
	var peak int64
	stop, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				peak = max(peak, liveHeap()-base)
			}
		}
	}()
	clients := make([]*client, streams)
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range clients {
		c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
		if err != nil {
			t.Fatal(err)
		}
		c.c.SetDeadline(time.Now().Add(2 * time.Minute))
		clients[i] = c
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- func() error {
				b := batches[i%len(batches)]
				if _, err := c.hello(fmt.Sprintf("db-%d", i), b.last); err != nil {
					return err
				}
				if _, err := c.c.Write(b.frame); err != nil {
					return err
				}
				if a, err := c.answer(); err != nil || a != b.last {
					return fmt.Errorf("stream %d: ack %d, %v", i, a, err)
				}
				return nil
			}()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// Every batch is acknowledged; the streams are still connected.
	idle := liveHeap() - base
	runtime.KeepAlive(&batches) // counted in base
	close(stop)
	<-sampled
	t.Logf("heap above the start: peak %d MiB (budget %d MiB), idle %d MiB", peak>>20, memBudget>>20, idle>>20)
	if limit := memBudget + oneBatch + overhead; peak > limit {
		t.Errorf("peak heap %d MiB over the start, more than the budget %d MiB + one batch %d MiB + overhead %d MiB",
			peak>>20, memBudget>>20, oneBatch>>20, overhead>>20)
	}
	if idle > overhead {
		t.Errorf("%d idle streams hold %d MiB, more than the fixed overhead %d MiB", streams, idle>>20, overhead>>20)
	}
	if held, size := r.srv.Inflight(); held != 0 || size != memBudget {
		t.Errorf("idle streams hold %d bytes of the in-flight budget of %d", held, size)
	}
	for _, c := range clients {
		c.c.Close()
	}
}
