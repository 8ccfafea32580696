package filter

import (
	"context"
	"errors"
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

// replicaHolds asks the replica, briefly, whether it holds the disk,
// once it holds the stream as it is now (the disk's declaration by this
// attach included): an answer from an older state could take a disk that
// left the group and came back for one the replica never had.
func (c *Capture) replicaHolds(ctx context.Context) replicaHolds {
	if c.cfg.Hashes == nil || c.cfg.Resync == nil {
		return holdsUnknown
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	r, err := c.cfg.Hashes.ReplicaHashes(ctx, c.cfg.Disk, 0, HashBlock, 0, c.cfg.Hashes.LastSeq())
	switch {
	case noHashQueries(err):
		return holdsNothing // an older replica: it cannot compare
	case err == nil && r.Status == stream.HashBehind:
		c.log.Info("the replica does not hold the stream's newest records yet: it cannot say now whether it holds the disk")
		return holdsUnknown
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

// compareCopy is hashResync's work on the disk's export h. Three kinds
// of goroutine, all ended before it returns: a producer that asks the
// replica for each span's hashes (one span ahead) and hands out chunks of
// hashRead; hashReaders readers, each on a connection of its own (QEMU
// answers one request at a time per connection), that read a chunk, hash
// its blocks and say which differ; and this one, which takes the chunks
// back in order and copies their differing blocks through h, each under
// its range lock.
func (c *Capture) compareCopy(ctx context.Context, h *libnbd.Handle, after uint64) error {
	size, err := h.Size()
	if err != nil {
		return err
	}
	c.progress(func(p *Progress) { p.Total = size })
	ctx, cancel := context.WithCancel(ctx)
	var lim *rate.Limiter
	if c.cfg.ReadRate > 0 {
		lim = rate.NewLimiter(rate.Limit(c.cfg.ReadRate), hashRead)
	}
	readers := make([]*libnbd.Handle, 0, hashReaders)
	defer func() {
		for _, x := range readers {
			x.Close()
		}
	}()
	for range hashReaders {
		x, err := c.openExport(ctx, "")
		if err != nil {
			cancel()
			return err
		}
		readers = append(readers, x)
	}
	type job struct {
		at, n, off int64 // the chunk, and the start of its span
		r          *stream.HashReply
	}
	type result struct {
		at, n int64
		runs  [][2]int64
		err   error
	}
	jobs := make(chan job, 2*hashReaders)
	results := make(chan result, 3*hashReaders)
	var wg sync.WaitGroup
	defer func() {
		cancel() // every goroutine below watches ctx
		wg.Wait()
	}()
	start := c.rs.copied / HashBlock * HashBlock
	wg.Add(1)
	go func() { // the producer
		defer wg.Done()
		defer close(jobs)
		type fetched struct {
			r   stream.HashReply
			err error
		}
		fetch := func(off int64) <-chan fetched {
			ch := make(chan fetched, 1)
			wg.Add(1)
			go func() { // its one result is buffered
				defer wg.Done()
				r, err := c.replicaSpan(ctx, off, size, after)
				ch <- fetched{r, err}
			}()
			return ch
		}
		first := start / hashSpan * hashSpan
		next := fetch(first)
		warned := false
		for off := first; off < size; off += hashSpan {
			var f fetched
			select {
			case f = <-next:
			case <-ctx.Done():
				return
			}
			if f.err != nil {
				select {
				case results <- result{at: -1, err: f.err}:
				case <-ctx.Done():
				}
				return
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
			for at := max(off, start); at < end; at += hashRead {
				select {
				case jobs <- job{at: at, n: min(hashRead, end-at), off: off, r: &r}:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	for _, rd := range readers {
		wg.Add(1)
		go func() { // a reader
			defer wg.Done()
			buf := make([]byte, hashRead)
			for j := range jobs {
				res := result{at: j.at, n: j.n}
				if lim != nil {
					res.err = lim.WaitN(ctx, int(j.n))
				}
				if res.err == nil {
					res.runs, res.err = c.compareChunk(ctx, rd, buf[:j.n], j.at, j.off, j.r)
				}
				select {
				case results <- res:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	// Take the chunks back in order and copy what differs.
	cp := make([]byte, resyncChunk)
	early := map[int64]result{}
	for at := start; at < size; {
		res, ok := early[at]
		if ok {
			delete(early, at)
		} else {
			select {
			case res = <-results:
			case <-ctx.Done():
				return ctx.Err()
			}
			if res.err != nil {
				return res.err
			}
			if res.at != at {
				early[res.at] = res
				continue
			}
		}
		for _, run := range res.runs {
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
		at += res.n
		c.rs.copied = at
		c.progress(func(p *Progress) { p.Compared = at })
	}
	return nil
}

// compareChunk reads the chunk at at into buf through h, hashes its
// blocks and returns the runs of those that differ from the replica's r
// (the reply for the span starting at off).
func (c *Capture) compareChunk(ctx context.Context, h *libnbd.Handle, buf []byte, at, off int64, r *stream.HashReply) ([][2]int64, error) {
	n := int64(len(buf))
	if err := h.Pread(ctx, buf, uint64(at)); err != nil {
		return nil, fmt.Errorf("filter: disk %s: read [%d,+%d) for the hash resync: %w", c.cfg.Disk, at, n, err)
	}
	var runs [][2]int64
	for b := int64(0); b < n; b += HashBlock {
		blk := buf[b:min(b+HashBlock, n)]
		k := (at + b - off) / HashBlock
		if r.Status == stream.HashOK && k < int64(len(r.Hashes)) && int64(r.Size) >= at+b+int64(len(blk)) &&
			stream.BlockHash(blk) == r.Hashes[k] {
			continue
		}
		s, e := at+b, at+b+int64(len(blk))
		if i := len(runs) - 1; i >= 0 && runs[i][1] == s {
			runs[i][1] = e
		} else {
			runs = append(runs, [2]int64{s, e})
		}
	}
	return runs, nil
}

// noHashQueries says whether err is a replica's refusal of hash queries
// as such (a replica older than them, or one that answers none).
func noHashQueries(err error) bool {
	var re *stream.RefusedError
	return errors.As(err, &re) && (re.Code == stream.CodeProtocol || re.Code == stream.CodeVersion)
}

// replicaSpan asks the replica for the hashes of the span at off, asking
// again while it is behind, and checks the answer's shape.
func (c *Capture) replicaSpan(ctx context.Context, off, size int64, after uint64) (stream.HashReply, error) {
	count := uint32(min(hashSpan, size-off+HashBlock-1) / HashBlock)
	for wait := time.Second; ; wait = min(2*wait, 15*time.Second) {
		r, err := c.cfg.Hashes.ReplicaHashes(ctx, c.cfg.Disk, uint64(off), HashBlock, count, after)
		if noHashQueries(err) {
			// An older replica: every block is sent, as by a full copy.
			c.log.Warn("the replica answers no hash queries: copying the disk whole", "err", err)
			return stream.HashReply{Status: stream.HashNoDisk, Offset: uint64(off)}, nil
		}
		if err != nil {
			return r, fmt.Errorf("filter: disk %s: replica's hashes at %d: %w", c.cfg.Disk, off, err)
		}
		if r.Status == stream.HashOK && r.Seq < after {
			return r, fmt.Errorf("filter: disk %s: %w: the replica hashed its state at seq %d, not one holding seq %d",
				c.cfg.Disk, stream.ErrProtocol, r.Seq, after)
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
