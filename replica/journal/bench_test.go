package journal

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
)

// BenchmarkIngest appends records of 4 KiB and 1 MiB to a journal on the
// operating system's filesystem, fsync'ing once per batch of about 1 MiB,
// as the receiver does. MB/s is per core: Append runs on one goroutine.
func BenchmarkIngest(b *testing.B) {
	for _, size := range []int{4 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("record=%dKiB", size>>10), func(b *testing.B) {
			ctx := context.Background()
			j, err := Open(ctx, Options{Dir: b.TempDir(), Group: "bench", Logger: quiet()})
			if err != nil {
				b.Fatal(err)
			}
			defer j.Close()
			per := max(1, (1<<20)/size)
			payload := make([]byte, size)
			for i := range payload {
				payload[i] = byte(i * 7)
			}
			batch := make([]record.Record, per)
			b.SetBytes(int64(size * per))
			b.ResetTimer()
			seq := uint64(1)
			for range b.N {
				for k := range batch {
					batch[k] = record.Record{Seq: seq, Time: time.Now().UnixNano(), Kind: record.Data, Disk: "vda", Offset: uint64(seq%4096) * uint64(size), Length: uint64(size), Payload: payload}
					seq++
				}
				if err := j.Append(ctx, batch); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkViewOpen measures, with a million records retained, how long
// reopening the journal takes (the index is rebuilt from the segments'
// index files) and how long opening a view and reading its first block
// takes (index lookups only).
func BenchmarkViewOpen(b *testing.B) {
	const n = 1_000_000
	ctx := context.Background()
	dir := b.TempDir()
	opts := Options{Dir: dir, Group: "bench", Logger: quiet()}
	j, err := Open(ctx, opts)
	if err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 512)
	batch := make([]record.Record, 0, 10000)
	t := time.Now().Add(-time.Hour).UnixNano()
	for s := uint64(1); s <= n; s++ {
		r := record.Record{Seq: s, Time: t + int64(s), Kind: record.Data, Disk: []string{"vda", "vdb"}[s%2], Offset: (s * 7919 % 262144) * 4096, Length: 512, Payload: payload}
		switch {
		case s == 3:
			r = record.Record{Seq: s, Time: t + int64(s), Kind: record.Marker, Marker: record.SyncComplete}
		case s%1000 == 0:
			r = record.Record{Seq: s, Time: t + int64(s), Kind: record.Marker, Marker: record.CrashConsistent}
		case s%7 == 0:
			r = record.Record{Seq: s, Time: t + int64(s), Kind: record.Zero, Disk: "vda", Offset: (s % 1000) << 20, Length: 1 << 20}
		}
		batch = append(batch, r)
		if len(batch) == cap(batch) {
			if err := j.Append(ctx, batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	j.Close()
	var openTotal, viewTotal time.Duration
	buf := make([]byte, 64<<10)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		j, err := Open(ctx, opts)
		if err != nil {
			b.Fatal(err)
		}
		opened := time.Now()
		v, err := j.View(ctx, Target{Seq: n/2 + uint64(i)%1000})
		if err != nil {
			b.Fatal(err)
		}
		d, err := v.Disk("vda")
		if err != nil {
			b.Fatal(err)
		}
		if err := d.ReadAt(ctx, buf, 0); err != nil {
			b.Fatal(err)
		}
		viewTotal += time.Since(opened)
		openTotal += opened.Sub(start)
		v.Close()
		j.Close()
	}
	b.ReportMetric(float64(openTotal.Milliseconds())/float64(b.N), "ms/journal-open")
	b.ReportMetric(float64(viewTotal.Microseconds())/float64(b.N), "µs/view-open+read")
}
