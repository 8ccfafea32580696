package filter

import (
	"context"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/qcdp/qcdp/libnbd"
	"github.com/qcdp/qcdp/qmp"
	"github.com/qcdp/qcdp/stream"
)

// ReplicaHasher is the replica's side of a hash resync (shipper.Group):
// the hashes of the disk's newest state at the replica once it holds
// every record up to after, and the last seq the group's stream holds.
type ReplicaHasher interface {
	ReplicaHashes(ctx context.Context, disk string, off uint64, bs, count uint32, after uint64) (stream.HashReply, error)
	LastSeq() uint64
}

// Hash resync sizes. A 64 KiB block with a 16-byte hash makes the hash
// traffic 1/4096 of the disk (0.024%); a span is what one query asks for,
// and the next span's hashes are asked for while this one is compared.
const (
	HashBlock = 64 << 10
	hashSpan  = 4096 * HashBlock // 256 MiB
	// hashRead is one read of the source: QEMU 7.2's NBD server serves
	// 1 MiB reads three times as fast as 4 MiB ones (measured with
	// nbdcopy: 256 MiB in 0.38 s against 1.1 s, one connection).
	hashRead = 1 << 20
	// hashReaders is how many connections read the source at once.
	hashReaders = 4
)

// replica says what the replica holds of a disk, as far as the host can
// tell before it starts the job.
type replicaHolds int

const (
	holdsUnknown replicaHolds = iota // not asked, or no answer
	holdsDisk
	holdsNothing
)

// replicaHolds asks the replica, briefly, whether it holds the disk.
func (c *Capture) replicaHolds(ctx context.Context) replicaHolds {
	if c.cfg.Hashes == nil || c.cfg.Resync == nil {
		return holdsUnknown
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r, err := c.cfg.Hashes.ReplicaHashes(ctx, c.cfg.Disk, 0, HashBlock, 0, 0)
	switch {
	case err != nil:
		c.log.Info("the replica cannot say now whether it holds the disk", "err", err)
		return holdsUnknown
	case r.Status == stream.HashNoDisk:
		return holdsNothing
	}
	return holdsDisk
}

// attachHash starts the job without a copy (sync=none) and compares the
// source with the replica on a goroutine (hashResync), the disk's bracket
// held until that is done. Every bitmap but the copying one is dropped:
// none says what the replica lacks. The copying bitmap (kept if an
// earlier copy left it: it tracks more, never less) tracks the writes
// from before the job on and becomes the live generation once the disk
// is whole at the replica again.
func (c *Capture) attachHash(ctx context.Context) (err error) {
	d := c.cfg.Disk
	release := c.hold()
	defer func() {
		if err != nil {
			release()
		}
	}()
	c.dropExport(ctx)
	bms, err := c.bitmaps(ctx) // resumable may have removed some
	if err != nil {
		return err
	}
	for name := range bms {
		if name != c.copying() && name != c.hashing() {
			if err := c.removeBitmap(ctx, name); err != nil {
				c.log.Warn("remove a bitmap a hash resync makes moot", "err", err)
			}
		}
	}
	if _, ok := bms[c.hashing()]; !ok {
		if err := c.q.Execute(ctx, "block-dirty-bitmap-add", c.addBitmap(c.hashing(), true), nil); err != nil {
			return fmt.Errorf("filter: disk %s: add bitmap %s: %w", d, c.hashing(), err)
		}
	}
	if _, ok := bms[c.copying()]; !ok {
		if err := c.q.Execute(ctx, "block-dirty-bitmap-add", c.addBitmap(c.copying(), false), nil); err != nil {
			return fmt.Errorf("filter: disk %s: add bitmap %s: %w", d, c.copying(), err)
		}
	}
	if err := c.startJob(ctx, qmp.SyncNone); err != nil {
		return err
	}
	c.startResync(ctx, release, modeHash)
	return nil
}

// hashResync compares the source, read through the disk's resync export,
// with the replica's newest state, a span at a time, and copies the
// blocks that differ, each under its range lock. The replica hashes only
// once it holds every record up to after (the stream's last record when
// the resync began): records before the bracket are then applied before
// the blocks this copies, and live writes after it are ordered by the
// range lock. A replica that holds nothing of the disk gets every block.
func (c *Capture) hashResync(ctx context.Context, after uint64) error {
	if err := c.withExport(ctx, "", func(h *libnbd.Handle) error { return c.compareCopy(ctx, h, after) }); err != nil {
		return err
	}
	return c.removeBitmap(ctx, c.hashing())
}

// compareCopy is hashResync's work on the disk's export h.
func (c *Capture) compareCopy(ctx context.Context, h *libnbd.Handle, after uint64) error {
	size, err := h.Size()
	if err != nil {
		return err
	}
	c.progress(func(p *Progress) { p.Total = size })
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type fetched struct {
		r   stream.HashReply
		err error
	}
	fetch := func(off int64) <-chan fetched {
		ch := make(chan fetched, 1)
		go func() { // ends with ctx; its one result is buffered
			r, err := c.replicaSpan(ctx, off, size, after)
			ch <- fetched{r, err}
		}()
		return ch
	}
	var lim *rate.Limiter
	if c.cfg.ReadRate > 0 {
		lim = rate.NewLimiter(rate.Limit(c.cfg.ReadRate), hashRead)
	}
	// The readers' connections: h copies, hs[i] read for bufs[i].
	hs := []*libnbd.Handle{h}
	defer func() {
		for _, x := range hs[1:] {
			x.Close()
		}
	}()
	for range hashReaders - 1 {
		x, err := c.openExport(ctx, "")
		if err != nil {
			return err
		}
		hs = append(hs, x)
	}
	bufs := make([][]byte, hashReaders)
	for i := range bufs {
		bufs[i] = make([]byte, hashRead)
	}
	cp := make([]byte, resyncChunk)
	start := c.rs.copied / hashSpan * hashSpan
	next := fetch(start)
	warned := false
	for off := start; off < size; off += hashSpan {
		var f fetched
		waited := time.Now()
		select {
		case f = <-next:
		case <-ctx.Done():
			return ctx.Err()
		}
		spanStart := time.Now()
		var readTime, copyTime time.Duration
		if f.err != nil {
			return f.err
		}
		if off+hashSpan < size {
			next = fetch(off + hashSpan)
		}
		r := f.r
		if r.Status == stream.HashOK && int64(r.Size) != size && !warned {
			warned = true
			c.log.Warn("the replica holds the disk at another size: the blocks past the smaller size are copied", "replica_size", r.Size, "size", size)
		}
		end := min(off+hashSpan, size)
		for at := max(off, c.rs.copied/HashBlock*HashBlock); at < end; {
			// A wave: up to hashReaders chunks read and hashed at once,
			// one connection each (QEMU answers one request at a time
			// per connection, slowly); then their differing blocks are
			// copied in order.
			wave := min(int64(len(bufs))*hashRead, end-at)
			if lim != nil {
				if err := lim.WaitN(ctx, int(min(wave, hashRead*hashReaders))); err != nil {
					return err
				}
			}
			t0 := time.Now()
			runs, err := c.compareWave(ctx, hs, bufs, r, off, at, at+wave)
			if err != nil {
				return err
			}
			readTime += time.Since(t0)
			t0 = time.Now()
			for _, run := range runs {
				c.progress(func(p *Progress) { p.Dirty += run[1] - run[0] })
				for x := run[0]; x < run[1]; {
					m := min(run[1]-x, resyncChunk)
					if err := c.copyRange(ctx, h, cp[:m], x); err != nil {
						return err
					}
					x += m
					c.progress(func(p *Progress) { p.Sent += m })
				}
			}
			copyTime += time.Since(t0)
			at += wave
			c.rs.copied = at
			c.progress(func(p *Progress) { p.Compared = at })
		}
		c.log.Debug("hash resync span", "offset", off, "replica_wait", spanStart.Sub(waited).Round(time.Millisecond),
			"read_hash", readTime.Round(time.Millisecond), "copy", copyTime.Round(time.Millisecond), "took", time.Since(spanStart).Round(time.Millisecond))
	}
	return nil
}

// compareWave reads [at, end) through the connections hs, a chunk of
// hashRead each, hashes its blocks and returns the runs of blocks that
// differ from the replica's r (the span's reply, the span starting at off).
func (c *Capture) compareWave(ctx context.Context, hs []*libnbd.Handle, bufs [][]byte, r stream.HashReply, off, at, end int64) ([][2]int64, error) {
	type part struct {
		differ []bool
		err    error
	}
	parts := make([]part, len(hs))
	var wg sync.WaitGroup
	for i := range hs {
		from := at + int64(i)*hashRead
		if from >= end {
			break
		}
		n := min(hashRead, end-from)
		wg.Add(1)
		go func() { // ends before compareWave returns
			defer wg.Done()
			buf := bufs[i][:n]
			if err := hs[i].Pread(ctx, buf, uint64(from)); err != nil {
				parts[i].err = fmt.Errorf("filter: disk %s: read [%d,+%d) for the hash resync: %w", c.cfg.Disk, from, n, err)
				return
			}
			for b := int64(0); b < n; b += HashBlock {
				blk := buf[b:min(b+HashBlock, n)]
				k := (from + b - off) / HashBlock
				same := r.Status == stream.HashOK && k < int64(len(r.Hashes)) && int64(r.Size) >= from+b+int64(len(blk)) &&
					stream.BlockHash(blk) == r.Hashes[k]
				parts[i].differ = append(parts[i].differ, !same)
			}
		}()
	}
	wg.Wait()
	var runs [][2]int64
	for i, p := range parts {
		if p.err != nil {
			return nil, p.err
		}
		from := at + int64(i)*hashRead
		for j, d := range p.differ {
			if !d {
				continue
			}
			s := from + int64(j)*HashBlock
			e := min(s+HashBlock, end)
			if k := len(runs) - 1; k >= 0 && runs[k][1] == s {
				runs[k][1] = e
			} else {
				runs = append(runs, [2]int64{s, e})
			}
		}
	}
	return runs, nil
}

// replicaSpan asks the replica for the hashes of the span at off, asking
// again while it is behind, and checks the answer's shape.
func (c *Capture) replicaSpan(ctx context.Context, off, size int64, after uint64) (stream.HashReply, error) {
	count := uint32(min(hashSpan, size-off+HashBlock-1) / HashBlock)
	for wait := time.Second; ; wait = min(2*wait, 15*time.Second) {
		r, err := c.cfg.Hashes.ReplicaHashes(ctx, c.cfg.Disk, uint64(off), HashBlock, count, after)
		if err != nil {
			return r, fmt.Errorf("filter: disk %s: replica's hashes at %d: %w", c.cfg.Disk, off, err)
		}
		c.progress(func(p *Progress) { p.HashBytes += int64(len(r.Hashes)) * stream.HashLen })
		switch r.Status {
		case stream.HashNoDisk:
			return r, nil
		case stream.HashOK:
			want := int64(0)
			if rs := int64(r.Size); rs > off {
				want = min(int64(count), (rs-off+HashBlock-1)/HashBlock)
			}
			if int64(len(r.Hashes)) != want {
				return r, fmt.Errorf("filter: disk %s: %w: the replica sent %d hashes at %d for a disk of %d bytes, not %d",
					c.cfg.Disk, stream.ErrProtocol, len(r.Hashes), off, r.Size, want)
			}
			return r, nil
		}
		c.log.Info("the replica does not hold the stream's records up to the resync yet; asking again", "replica_seq", r.Seq, "after", after, "retry_in", wait)
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-time.After(wait):
		}
	}
}
