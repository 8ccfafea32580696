package journal

import (
	"bytes"
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/nbd"
)

func TestWritableView(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(4, 4))
	recs := genStream(rng, 1, 300, t0)
	fs := newFS()
	j := openT(t, fs)
	defer j.Close()
	appendAll(t, j, rng, recs)
	_, w, _ := j.Points(ctx)
	seq := w.LastSeq - 3
	if w.LastSeq == 0 || len(w.Gaps) > 0 && w.Gaps[len(w.Gaps)-1].ToSeq >= seq {
		t.Fatalf("window %+v: pick another seed; invalid %v", w, j.invalid)
	}
	want := snapsAt(recs, map[uint64]bool{seq: true})[seq]
	v, err := j.View(ctx, Target{Seq: seq})
	if err != nil {
		t.Fatal(err)
	}
	o, err := v.Writable("vda")
	if err != nil {
		t.Fatal(err)
	}
	wd, wa := bytes.Clone(want.data["vda"]), bytes.Clone(want.alloc["vda"])
	size := o.Size()
	for range 200 {
		off := rng.Int64N(size - 1)
		n := 1 + rng.Int64N(min(size-off, 70<<10))
		switch rng.IntN(4) {
		case 0:
			if err := o.Zero(ctx, off, n, nbd.ZeroFlags{}); err != nil {
				t.Fatal(err)
			}
			clear(wd[off : off+n])
			for i := off; i < off+n; i++ {
				wa[i] = mZero
			}
		case 1:
			if err := o.Trim(ctx, off, n); err != nil {
				t.Fatal(err)
			}
			clear(wd[off : off+n])
			for i := off; i < off+n; i++ {
				wa[i] = mTrim
			}
		default:
			p := make([]byte, n)
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			if err := o.WriteAt(ctx, p, off); err != nil {
				t.Fatal(err)
			}
			copy(wd[off:], p)
			for i := off; i < off+n; i++ {
				wa[i] = mData
			}
		}
	}
	if err := o.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	checkExport(t, "overlay", o, wd, wa)
	// The journal is untouched: a second view of the same point is the model.
	checkView(t, j, seq, want)
	v.Close()
	names, _ := fs.ReadDir(dir + "/" + overlayDir)
	if len(names) != 0 {
		t.Fatalf("overlay files left after Close: %v", names)
	}
	if err := o.WriteAt(ctx, []byte("x"), 0); err == nil {
		t.Fatal("write to a closed overlay")
	}
}

// TestConcurrent reads views while records are appended and compacted
// (run with -race).
func TestConcurrent(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(4, 4))
	recs := genStream(rng, 1, 900, t0)
	fs := newFS()
	j := openT(t, fs, func(o *Options) {
		o.Retention = Retention{Window: 100 * time.Second, Schedules: []Schedule{{Every: 30 * time.Second, Keep: time.Hour}}}
	})
	defer j.Close()
	appendAll(t, j, rng, recs[:300])
	_, w, _ := j.Points(ctx)
	seq := w.LastSeq - 3
	if w.LastSeq == 0 || len(w.Gaps) > 0 && w.Gaps[len(w.Gaps)-1].ToSeq >= seq {
		t.Fatalf("window %+v: pick another seed; invalid %v", w, j.invalid)
	}
	want := snapsAt(recs, map[uint64]bool{seq: true})[seq]
	v, err := j.View(ctx, Target{Seq: seq})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 4)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, disk := range modelDisks {
			d, err := v.Disk(disk)
			if err != nil {
				continue
			}
			for {
				select {
				case <-stop:
					return
				default:
				}
				buf := make([]byte, d.Size())
				if err := d.ReadAt(ctx, buf, 0); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(buf, want.data[disk][:len(buf)]) {
					errs <- errorString("pinned view changed under compaction")
					return
				}
				if disk == modelDisks[0] {
					break
				}
			}
		}
	}()
	for k := 300; k < 900; k += 100 {
		appendAll(t, j, rng, recs[k:k+100])
		if err := j.Compact(ctx, at(uint64(k+100))); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatal(err)
	default:
	}
	if j.first <= seq {
		t.Fatalf("window still starts at %d; the pinned view at %d was not passed", j.first, seq)
	}
	checkView(t, j, seq, want) // kept while pinned
}

type errorString string

func (e errorString) Error() string { return string(e) }
