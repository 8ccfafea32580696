package filter

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qcdp/qcdp/libnbd"
	"github.com/qcdp/qcdp/qmp"
)

// ResyncTarget is where a resync copies the source's bytes: the disk's
// capture export (shipper.CaptureExport). The resync watches each range
// before it reads it and commits what it read only if no live write the
// mirror forwarded entered the range meanwhile (else it reads again), so
// a live write never lands in the stream before the resync's older bytes.
type ResyncTarget interface {
	WatchRange(off, n int64) interface {
		Commit(write func() error) (raced bool, err error)
		Cancel()
	}
	ResyncWrite(p []byte, off int64) error
	ResyncZero(off, n int64) error
	// Refusals counts the writes the export ever refused.
	Refusals() int64
}

// Bitmap generations of a disk, beside BitmapName (the live one). Never
// change: a restarted daemon, and QEMU's qcow2 images, keep them.
//
//	qcdp-<disk>          live: every write since the replica last held the
//	                     disk whole (created at the first convergence of a
//	                     full copy; cleared when a resync freezes it)
//	qcdp-<disk>.copying  tracks writes during a full copy; merged into the
//	                     live one once the copy converged, never trusted alone
//	qcdp-<disk>.next     made at a detach, before the job is cancelled; the
//	                     live one is removed after it when the detach was
//	                     clean (every write before it was taken)
//	qcdp-<disk>.resync   frozen (disabled): the union of the generations a
//	                     resync copies; removed once the copy is done
//	qcdp-<disk>.hashing  empty and disabled: a hash resync is under way (the
//	                     replica is not whole; no generation may stand for
//	                     what it lacks); removed once it is done, so a
//	                     daemon that adopts the job, or the next attach,
//	                     compares again
//
// With Config.Group set, the names carry the group, "qcdp-<group>/<disk>"
// and so on: a generation proves that this group's replica held the disk
// when it began, so a VM moved to another group is copied in full there.
func (c *Capture) live() string    { return bitmapBase(c.cfg.Group, c.cfg.Disk) }
func (c *Capture) copying() string { return c.live() + ".copying" }
func (c *Capture) next() string    { return c.live() + ".next" }
func (c *Capture) frozen() string  { return c.live() + ".resync" }
func (c *Capture) hashing() string { return c.live() + ".hashing" }

func bitmapBase(group, disk string) string {
	if group == "" {
		return BitmapName(disk)
	}
	return "qcdp-" + group + "/" + disk
}

// othersOf reports whether name is a qcdp bitmap of disk under another
// group (or none), which a full copy removes.
func (c *Capture) othersOf(name string) bool {
	d := c.cfg.Disk
	if strings.HasPrefix(name, c.live()) {
		return false
	}
	trim := name
	for _, s := range []string{".copying", ".next", ".resync", ".hashing"} {
		trim = strings.TrimSuffix(trim, s)
	}
	return trim == BitmapName(d) || strings.HasPrefix(trim, "qcdp-") && strings.HasSuffix(trim, "/"+d)
}

// ResyncExport is the name (and block export id) under which a resync
// reads a disk's filter node from QEMU's NBD server.
func ResyncExport(disk string) string { return nodeName("qcdp-r-", disk) }

// resyncChunk is the most a resync copies under one range lock;
// copyGroup the most a bitmap resync copies in parallel before it notes
// its progress.
const (
	resyncChunk = 1 << 20
	copyGroup   = 16 << 20
)

// Progress is a disk's resync as `qcdp status` shows it.
type Progress struct {
	Mode      string    `json:"mode"`                 // "bitmap" or "hash"
	Total     int64     `json:"total_bytes"`          // the disk's size
	Compared  int64     `json:"compared_bytes"`       // looked at so far
	Dirty     int64     `json:"dirty_bytes"`          // to copy, known so far
	Sent      int64     `json:"sent_bytes"`           // copied into the stream
	HashBytes int64     `json:"hash_bytes,omitempty"` // replica hashes received (hash mode)
	Started   time.Time `json:"started"`              // when it began
	Done      bool      `json:"done,omitempty"`       // finished
	Finished  time.Time `json:"finished,omitzero"`    // when it finished
	Error     string    `json:"last_error,omitempty"` // why the last try failed (it is retried)
}

// Rate is the bytes compared per second so far.
func (p Progress) Rate() float64 {
	end := time.Now()
	if p.Done {
		end = p.Finished
	}
	if d := end.Sub(p.Started).Seconds(); d > 0 {
		return float64(p.Compared) / d
	}
	return 0
}

// ETA is the time left at the rate so far (0: unknown or done).
func (p Progress) ETA() time.Duration {
	r := p.Rate()
	if p.Done || r <= 0 || p.Compared >= p.Total {
		return 0
	}
	return time.Duration(float64(p.Total-p.Compared) / r * float64(time.Second)).Round(time.Second)
}

// resyncState is a Capture's resync, read by Progress.
type resyncState struct {
	mu   sync.Mutex
	p    Progress
	on   bool
	wg   sync.WaitGroup
	live atomic.Bool // a resync goroutine runs
	// copied is the offset below which every dirty range of the frozen
	// bitmap is in the stream, and counted the offset below which its
	// dirty bytes are counted: a retry goes on from there (the frozen
	// bitmap does not change between tries). Owned by the resync goroutine.
	copied, counted int64
}

// Progress returns the disk's resync, ok false when none ran since Run.
func (c *Capture) Progress() (p Progress, ok bool) {
	c.rs.mu.Lock()
	defer c.rs.mu.Unlock()
	return c.rs.p, c.rs.on
}

func (c *Capture) progress(fn func(p *Progress)) {
	c.rs.mu.Lock()
	defer c.rs.mu.Unlock()
	fn(&c.rs.p)
}

// bitmapInfo is one dirty bitmap of the disk's node.
type bitmapInfo struct {
	Name         string `json:"name"`
	Recording    bool   `json:"recording"`
	Inconsistent bool   `json:"inconsistent"`
}

// bitmaps returns the disk node's qcdp bitmaps of this disk, by name: this
// group's generations and those of the disk under another group (or
// none), which a full copy removes.
func (c *Capture) bitmaps(ctx context.Context) (map[string]bitmapInfo, error) {
	var nodes []struct {
		NodeName     string       `json:"node-name"`
		DirtyBitmaps []bitmapInfo `json:"dirty-bitmaps"`
	}
	if err := c.q.Execute(ctx, "query-named-block-nodes", map[string]bool{"flat": true}, &nodes); err != nil {
		return nil, fmt.Errorf("filter: disk %s: query nodes: %w", c.cfg.Disk, err)
	}
	ours := map[string]bool{c.live(): true, c.copying(): true, c.next(): true, c.frozen(): true, c.hashing(): true}
	for _, n := range nodes {
		if n.NodeName != c.cfg.Node {
			continue
		}
		out := map[string]bitmapInfo{}
		for _, b := range n.DirtyBitmaps {
			if ours[b.Name] || c.othersOf(b.Name) {
				out[b.Name] = b
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("filter: disk %s: no node %q in QEMU", c.cfg.Disk, c.cfg.Node)
}

func (c *Capture) removeBitmap(ctx context.Context, name string) error {
	err := c.q.Execute(ctx, "block-dirty-bitmap-remove", map[string]any{"node": c.cfg.Node, "name": name}, nil)
	if err != nil {
		return fmt.Errorf("filter: disk %s: remove bitmap %s: %w", c.cfg.Disk, name, err)
	}
	return nil
}

func (c *Capture) addBitmap(name string, disabled bool) map[string]any {
	return map[string]any{"node": c.cfg.Node, "name": name, "granularity": c.cfg.Granularity,
		"persistent": c.cfg.Persistent, "disabled": disabled}
}

func txAction(typ string, data map[string]any) map[string]any {
	return map[string]any{"type": typ, "data": data}
}

func (c *Capture) transaction(ctx context.Context, actions ...map[string]any) error {
	if err := c.q.Execute(ctx, "transaction", map[string]any{"actions": actions}, nil); err != nil {
		return fmt.Errorf("filter: disk %s: bitmap transaction: %w", c.cfg.Disk, err)
	}
	return nil
}

// resumable says whether the disk's bitmaps can stand for what the
// replica lacks, so that a new job needs no full copy. Inconsistent
// bitmaps (QEMU was killed: a persistent bitmap is stored only at a clean
// close) are removed: they cannot be trusted.
func (c *Capture) resumable(ctx context.Context, bms map[string]bitmapInfo) bool {
	if c.cfg.Resync == nil || c.cfg.Fresh || c.cfg.Recopy != nil {
		return false
	}
	for name, b := range bms {
		if b.Inconsistent {
			c.log.Warn("dirty bitmap inconsistent (QEMU ended without a clean close): it cannot say what changed; the disk is compared with the replica's copy (copied whole if the replica has none)", "bitmap", name)
			c.dropBitmaps(ctx, bms)
			return false
		}
	}
	if _, ok := bms[c.hashing()]; ok {
		c.log.Info("a hash resync of the disk was under way: comparing it with the replica again")
		return false
	}
	_, live := bms[c.live()]
	_, next := bms[c.next()]
	_, frozen := bms[c.frozen()]
	return live || next || frozen
}

// dropBitmaps removes every bitmap of bms (a full copy makes them moot).
func (c *Capture) dropBitmaps(ctx context.Context, bms map[string]bitmapInfo) {
	for name := range bms {
		if err := c.removeBitmap(ctx, name); err != nil {
			c.log.Warn("remove stale bitmap", "bitmap", name, "err", err)
		}
	}
}

// attachResync starts the job without a copy (sync=none) and freezes what
// the bitmaps tracked into the resync bitmap, which a goroutine then
// copies (resync). The disk's bracket is held open from before the job
// starts until the copy is done.
func (c *Capture) attachResync(ctx context.Context, bms map[string]bitmapInfo) (err error) {
	d := c.cfg.Disk
	release := c.hold()
	defer func() {
		if err != nil {
			release()
		}
	}()
	c.dropExport(ctx) // a daemon killed mid-copy may have left it, holding the bitmap
	frozen := c.frozen()
	if _, ok := bms[frozen]; !ok {
		// Before the job: it must exist for the merge below.
		if err := c.q.Execute(ctx, "block-dirty-bitmap-add", c.addBitmap(frozen, true), nil); err != nil {
			return fmt.Errorf("filter: disk %s: add bitmap %s: %w", d, frozen, err)
		}
	}
	if err := c.startJob(ctx, qmp.SyncNone); err != nil {
		return err
	}
	// From here every write reaches the target.
	if err := c.freeze(ctx, bms); err != nil {
		// Nothing was frozen: the job must not run on as if it had.
		if cerr := c.q.BlockJobCancel(ctx, JobID(d), true); cerr != nil {
			c.log.Warn("cancel the job after a failed freeze", "err", cerr)
		}
		return err
	}
	c.startResync(ctx, release, modeBitmap)
	return nil
}

// freeze merges what the generations tracked until now into the frozen
// bitmap while the live one tracks on, in one transaction: no write falls
// between them. The job must already forward every write to the target
// (writes tracked by both are copied twice, which is harmless). The merged
// generations are then removed.
func (c *Capture) freeze(ctx context.Context, bms map[string]bitmapInfo) error {
	var srcs []string
	var acts []map[string]any
	for _, name := range []string{c.live(), c.next()} {
		if _, ok := bms[name]; ok {
			srcs = append(srcs, name)
		}
	}
	if len(srcs) > 0 {
		acts = append(acts, txAction("block-dirty-bitmap-merge", map[string]any{"node": c.cfg.Node, "target": c.frozen(), "bitmaps": srcs}))
	}
	if _, ok := bms[c.live()]; ok {
		acts = append(acts, txAction("block-dirty-bitmap-clear", map[string]any{"node": c.cfg.Node, "name": c.live()}))
	} else {
		acts = append(acts, txAction("block-dirty-bitmap-add", c.addBitmap(c.live(), false)))
	}
	if _, ok := bms[c.next()]; ok {
		acts = append(acts, txAction("block-dirty-bitmap-disable", map[string]any{"node": c.cfg.Node, "name": c.next()}))
	}
	if err := c.transaction(ctx, acts...); err != nil {
		return err
	}
	for _, name := range []string{c.next(), c.copying()} {
		if _, ok := bms[name]; ok {
			if err := c.removeBitmap(ctx, name); err != nil {
				c.log.Warn("remove merged bitmap", "err", err)
			}
		}
	}
	return nil
}

// hold opens the disk's resync hold (Config.Hold), or does nothing.
func (c *Capture) hold() (release func()) {
	if c.cfg.Hold == nil {
		return func() {}
	}
	return c.cfg.Hold()
}

// Resync modes (Progress.Mode).
const (
	modeBitmap = "bitmap" // the frozen bitmap's dirty ranges (resync)
	modeAdopt  = "adopt"  // the same, after freezing the generations (an adopted resync)
	modeHash   = "hash"   // the blocks that differ from the replica's (hashResync)
)

// startResync copies what the replica lacks on a goroutine Run owns (it
// ends with Run's ctx and Run waits for it), retrying with a backoff
// until the copy is done; release ends the disk's hold then. modeAdopt is
// an adopted resync, whose daemon may have died before it froze the
// generations: they are frozen into the resync bitmap first.
func (c *Capture) startResync(ctx context.Context, release func(), mode string) {
	freezeFirst := mode == modeAdopt
	shown := mode
	if mode == modeAdopt {
		shown = modeBitmap
	}
	var after uint64
	if mode == modeHash {
		after = c.cfg.Hashes.LastSeq() // the job forwards every write already
	}
	c.rs.mu.Lock()
	c.rs.on = true
	c.rs.p = Progress{Mode: shown, Started: time.Now()}
	c.rs.copied, c.rs.counted = 0, 0
	c.rs.mu.Unlock()
	c.rs.wg.Add(1)
	c.rs.live.Store(true)
	go func() {
		defer c.rs.wg.Done()
		defer c.rs.live.Store(false)
		defer release()
		backoff := time.Second
		for {
			var err error
			if freezeFirst {
				// A daemon killed mid-copy left its export, which holds the
				// frozen bitmap busy: it goes first.
				c.dropExport(ctx)
				var bms map[string]bitmapInfo
				if bms, err = c.bitmaps(ctx); err == nil {
					if _, ok := bms[c.hashing()]; ok && c.cfg.Hashes != nil {
						// QEMU could not say at adoption: an earlier
						// daemon's hash resync, to do again.
						mode, shown, freezeFirst = modeHash, modeHash, false
						after = c.cfg.Hashes.LastSeq()
						c.progress(func(p *Progress) { p.Mode = modeHash })
						continue
					}
					if _, ok := bms[c.hashing()]; ok {
						c.log.Warn("a hash resync of the disk was under way and the group has no replica now: the disk stays in its resync bracket")
						<-ctx.Done()
						return
					}
					if _, ok := bms[c.frozen()]; !ok {
						c.rs.mu.Lock()
						c.rs.on = false // nothing frozen: nothing to copy
						c.rs.mu.Unlock()
						return
					}
					if err = c.freeze(ctx, bms); err == nil {
						freezeFirst = false
					}
				}
			}
			if err == nil && mode == modeHash {
				err = c.hashResync(ctx, after)
			} else if err == nil {
				err = c.resync(ctx)
			}
			if err == nil {
				c.progress(func(p *Progress) { p.Done, p.Error, p.Finished = true, "", time.Now() })
				p, _ := c.Progress()
				c.log.Info(shown+" resync done", "compared_bytes", p.Compared, "dirty_bytes", p.Dirty, "sent_bytes", p.Sent,
					"hash_bytes", p.HashBytes, "took", time.Since(p.Started).Round(time.Millisecond))
				c.poke()
				return
			}
			if ctx.Err() != nil {
				return
			}
			c.log.Warn(shown+" resync failed; retrying (the disk stays in its resync bracket)", "err", err, "retry_in", backoff)
			c.progress(func(p *Progress) { p.Error = err.Error() })
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
		}
	}()
}

// poke makes Run's loop ask QEMU about the job now, so that a converged
// job closes its bracket without waiting for the next poll.
func (c *Capture) poke() { c.feed(input{kind: inPollDue}) }

// resync exports the filter node with the resync bitmap from QEMU's NBD
// server, reads its dirty extents through libnbd and copies them into the
// stream range by range, then removes the bitmap.
func (c *Capture) resync(ctx context.Context) error {
	frozen := c.frozen()
	err := c.withExport(ctx, frozen, func(h *libnbd.Handle) error {
		return c.copyDirty(ctx, h, frozen)
	})
	if err != nil {
		return err
	}
	// withExport removed the export, which held the bitmap.
	return c.removeBitmap(ctx, frozen)
}

// dropExport removes the disk's resync export if QEMU has one.
func (c *Capture) dropExport(ctx context.Context) {
	if err := c.delExport(ctx); err != nil {
		c.log.Debug("remove a resync export left behind", "err", err)
	}
}

// waitExportGone waits (briefly) until QEMU no longer lists the export.
func (c *Capture) waitExportGone(ctx context.Context, id string) {
	for range 50 {
		var exps []struct {
			ID string `json:"id"`
		}
		if c.q.Execute(ctx, "query-block-exports", nil, &exps) != nil {
			return
		}
		found := false
		for _, e := range exps {
			found = found || e.ID == id
		}
		if !found {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// copyDirty reads the dirty extents of bitmap through h (the disk's
// resync export) and copies them, a chunk at a time, each under its range
// lock.
func (c *Capture) copyDirty(ctx context.Context, h *libnbd.Handle, bitmap string) error {
	meta := "qemu:dirty-bitmap:" + bitmap
	size, err := h.Size()
	if err != nil {
		return err
	}
	c.progress(func(p *Progress) { p.Total = size })
	// The chunks are copied on hashReaders connections at once (QEMU
	// answers one request at a time per connection): h and more.
	conns := []*libnbd.Handle{h}
	defer func() {
		for _, x := range conns[1:] {
			x.Close()
		}
	}()
	for range hashReaders - 1 {
		x, err := c.openExport(ctx, "")
		if err != nil {
			return err
		}
		conns = append(conns, x)
	}
	// A retry goes on where the last try stopped: a resync larger than the
	// spool's room makes progress as the replica drains it.
	for off := min(c.rs.copied, size); off < size; {
		var dirty [][2]int64
		next := off
		err := h.BlockStatus(ctx, uint64(min(size-off, 1<<30)), uint64(off), 0, func(ctxName string, o uint64, ents []libnbd.Extent) error {
			if ctxName != meta {
				return nil
			}
			at := int64(o)
			for _, e := range ents {
				n := min(int64(e.Length), size-at)
				if e.Flags&1 != 0 && n > 0 {
					dirty = append(dirty, [2]int64{at, n})
				}
				at += n
			}
			next = max(next, at)
			return nil
		})
		if err != nil {
			return fmt.Errorf("filter: disk %s: dirty extents at %d: %w", c.cfg.Disk, off, err)
		}
		if next <= off {
			return fmt.Errorf("filter: disk %s: QEMU described no extent at %d", c.cfg.Disk, off)
		}
		var chunks [][2]int64
		for _, e := range dirty {
			if end := e[0] + e[1]; end > c.rs.counted {
				add := end - max(e[0], c.rs.counted)
				c.rs.counted = end
				c.progress(func(p *Progress) { p.Dirty += add })
			}
			for at, end := e[0], e[0]+e[1]; at < end; at += resyncChunk {
				chunks = append(chunks, [2]int64{at, min(end-at, resyncChunk)})
			}
		}
		// The chunks in parallel, copyGroup bytes at a time: a retry goes
		// on after the last group copied whole (copying a few chunks of
		// the failed group twice, which is harmless), so a resync larger
		// than the spool's room still makes progress.
		for len(chunks) > 0 {
			n, bytes := 0, int64(0)
			for n < len(chunks) && (n == 0 || bytes+chunks[n][1] <= copyGroup) {
				bytes += chunks[n][1]
				n++
			}
			if err := c.copyChunks(ctx, conns, chunks[:n]); err != nil {
				return err
			}
			c.rs.copied = max(c.rs.copied, chunks[n-1][0]+chunks[n-1][1])
			chunks = chunks[n:]
		}
		off = next
		c.rs.copied = max(c.rs.copied, off)
		c.progress(func(p *Progress) { p.Compared = off })
	}
	return nil
}

// copyChunks copies chunks ([offset, length], at most resyncChunk each),
// one connection of conns per goroutine, each under its range lock.
func (c *Capture) copyChunks(ctx context.Context, conns []*libnbd.Handle, chunks [][2]int64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	next := make(chan [2]int64)
	errs := make(chan error, len(conns))
	var wg sync.WaitGroup
	for _, h := range conns {
		wg.Add(1)
		go func() { // ends when next closes or ctx ends
			defer wg.Done()
			buf := make([]byte, resyncChunk)
			for ch := range next {
				if err := c.copyRange(ctx, h, buf[:ch[1]], ch[0]); err != nil {
					errs <- err
					cancel()
					return
				}
				c.progress(func(p *Progress) { p.Sent += ch[1] })
			}
		}()
	}
feed:
	for _, ch := range chunks {
		select {
		case next <- ch:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return ctx.Err()
	}
}

// copyRange reads [at, at+len(p)) from the source and appends it, reading
// again while a live write raced the read (see ResyncTarget).
func (c *Capture) copyRange(ctx context.Context, h *libnbd.Handle, p []byte, at int64) error {
	for try := 0; ; try++ {
		w := c.cfg.Resync.WatchRange(at, int64(len(p)))
		if err := h.Pread(ctx, p, uint64(at)); err != nil {
			w.Cancel()
			return fmt.Errorf("filter: disk %s: read [%d,+%d) for the resync: %w", c.cfg.Disk, at, len(p), err)
		}
		raced, err := w.Commit(func() error { return c.appendRange(p, at) })
		if !raced {
			return err
		}
		if try > 0 {
			// The guest keeps writing here: back off a little, so that
			// the read falls between two of its writes.
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(min(try, 20)) * time.Millisecond):
			}
		}
	}
}

// appendRange appends the resync bytes p read at at.
func (c *Capture) appendRange(p []byte, at int64) error {
	if isZero(p) {
		return c.cfg.Resync.ResyncZero(at, int64(len(p)))
	}
	return c.cfg.Resync.ResyncWrite(p, at)
}

var zeroPage = make([]byte, 64<<10)

func isZero(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeroPage))
		if !bytes.Equal(p[:n], zeroPage[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// promote makes the live generation out of a full copy's tracking bitmap
// once the copy converged (the disk is syncing): from then on the replica
// holds the disk whole, and the live bitmap says what it lacks.
func (c *Capture) promote(ctx context.Context) error {
	bms, err := c.bitmaps(ctx)
	if err != nil {
		return err
	}
	copying := c.copying()
	if _, ok := bms[copying]; !ok {
		return nil
	}
	var acts []map[string]any
	if _, ok := bms[c.live()]; !ok {
		acts = append(acts, txAction("block-dirty-bitmap-add", c.addBitmap(c.live(), false)))
	}
	acts = append(acts, txAction("block-dirty-bitmap-merge", map[string]any{"node": c.cfg.Node, "target": c.live(), "bitmaps": []string{copying}}))
	if err := c.transaction(ctx, acts...); err != nil {
		return err
	}
	return c.removeBitmap(ctx, copying)
}
