package filter

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/qcdp/qcdp/qmp"
	"github.com/qcdp/qcdp/record"
)

// State is a disk's capture state as `qcdp status` shows it.
type State string

// States. Never change: they are shown to operators and scripts.
const (
	InitialSync State = "initial-sync"
	Syncing     State = "syncing"
	Tracking    State = "tracking"
	Resync      State = "resync"
	Paused      State = "paused"
	Error       State = "error"
	Detached    State = "detached"
)

// Sentinel errors.
var (
	ErrNotAttached = errors.New("filter: disk is not attached")
	ErrJobVanished = errors.New("filter: capture job ended without a detach")
	// ErrVMShutdown is why a capture ended when its VM shut down (QEMU
	// ends its jobs): a normal end; the disk is protected again at the
	// VM's next start.
	ErrVMShutdown = errors.New("filter: the VM shut down")
	// ErrMonitorGone: the QMP connection closed, as when QEMU exits.
	ErrMonitorGone = errors.New("filter: QMP connection closed")
)

// Marker puts a marker for a disk into the group's stream (the sequencer).
// A resync-begin while the disk's bracket is open must not open another:
// the lifecycle asks for one at every stop (shipper.Sequencer keeps one
// bracket per disk, and owes a refused one).
type Marker interface {
	MarkDisk(kind record.MarkerKind, disk string) (seq uint64, err error)
}

// Config describes one protected disk.
type Config struct {
	Disk        string // the disk's name in its group; also the NBD export name
	Node        string // QEMU node the mirror copies from (the disk's format node)
	Socket      string // unix socket of the host daemon's NBD server
	Persistent  bool   // keep the dirty bitmap in the image (qcow2 v3 only)
	Granularity uint32 // default 4096
	// ResumeBackoff is the first wait before retrying a stopped job,
	// doubling up to MaxResumeBackoff (defaults 100 ms and 5 s).
	ResumeBackoff, MaxResumeBackoff time.Duration
	// ConvergePoll is how often resync asks whether the job has caught up
	// (default 200 ms).
	ConvergePoll time.Duration
	// Recopy, when set, makes Run copy the whole disk anew: a capture job
	// of the disk found in QEMU is cancelled (never completed) and its
	// target node removed rather than adopted; Recopy is called once no
	// job remains, before the new full copy starts, and its error fails
	// the attach. The host engine sets it for a disk owed a full re-copy
	// (shipper.Sequencer.RecopyOwed).
	Recopy func() error
	// Resync, when set, says the replica holds the disk: a new job then
	// starts without a full copy (sync=none) when the disk's bitmaps can
	// say what changed, and their dirty ranges are copied into Resync (a
	// bitmap resync, resync.go); it also enables the bitmap generations
	// that make that possible at the next attach.
	Resync ResyncTarget
	// Fresh says the replica holds nothing of the disk (a disk new to
	// its group, a new spool): a new job copies the whole disk whatever
	// the bitmaps say.
	Fresh bool
	// Hold keeps the disk's resync bracket open until release
	// (shipper.Sequencer.HoldResync): taken for a bitmap resync.
	Hold func() (release func())
	// NBDSocket is where QEMU's NBD server listens for resync exports
	// (one server per QEMU: the same path for every disk of the VM).
	NBDSocket string
	// QEMU is the VM's QEMU's pid: a resync reads only from a socket the
	// kernel says that process listens on (0: not checked).
	QEMU int
	// Hashes, with Resync, lets a disk whose bitmaps cannot say what
	// changed (none, inconsistent, or not this spool's) start without a
	// full copy too: the source is compared block by block with what the
	// replica holds, and only the blocks that differ are copied (a hash
	// resync, hash.go). A full copy is made only when the replica says it
	// holds nothing of the disk.
	Hashes ReplicaHasher
	// ReadRate bounds the bytes per second a hash resync reads from the
	// source, so the guest is not starved; 0 is no bound.
	ReadRate int64
	// Group names the disk's protection group in its bitmap generations
	// (resync.go); "" keeps the names of disks without one.
	Group  string
	Logger *slog.Logger
}

// Names of the QEMU objects of a disk. Never change: a restarted daemon
// finds its jobs and nodes by them. QEMU limits node names to 31 bytes, so a
// node name made from a longer disk name carries a hash of it instead.
func JobID(disk string) string      { return "qcdp-" + disk }
func TargetNode(disk string) string { return nodeName("qcdp-t-", disk) }
func FilterNode(disk string) string { return nodeName("qcdp-f-", disk) }
func BitmapName(disk string) string { return "qcdp-" + disk }

// maxNodeName is QEMU's limit on node names (a 32-byte field with its NUL).
const maxNodeName = 31

func nodeName(prefix, disk string) string {
	if len(prefix)+len(disk) <= maxNodeName {
		return prefix + disk
	}
	h := sha256.Sum256([]byte(disk))
	return prefix + "h" + hex.EncodeToString(h[:8])
}

// Capture drives one disk's mirror job. Run owns its event loop; the other
// methods are safe to call concurrently with it.
type Capture struct {
	q    *qmp.Client
	cfg  Config
	mark Marker
	log  *slog.Logger

	mu      sync.Mutex
	m       machine       // the lifecycle's state (machine.go)
	todo    []action      // actions of the transitions taken, for Run's loop
	changed chan struct{} // closed and replaced at every state change

	wake chan struct{} // an operator's input left actions in todo

	ended     chan struct{} // closed when Run has seen the job end
	endedOnce sync.Once

	rs resyncState // the bitmap resync (resync.go)
	// syncRefusals is Resync.Refusals() when the disk last became
	// syncing; promoted is set once the live bitmap generation exists.
	syncRefusals int64
	promoted     bool
}

// New returns the lifecycle of one disk. Nothing happens in QEMU until Run.
func New(q *qmp.Client, cfg Config, mark Marker) (*Capture, error) {
	if err := record.ValidDiskName(cfg.Disk); err != nil {
		return nil, fmt.Errorf("filter: %w", err)
	}
	if cfg.Node == "" || cfg.Socket == "" {
		return nil, fmt.Errorf("filter: disk %s: node and socket are required", cfg.Disk)
	}
	if cfg.Granularity == 0 {
		cfg.Granularity = 4096
	}
	if cfg.ResumeBackoff <= 0 {
		cfg.ResumeBackoff = 100 * time.Millisecond
	}
	if cfg.MaxResumeBackoff <= 0 {
		cfg.MaxResumeBackoff = 5 * time.Second
	}
	if cfg.ConvergePoll <= 0 {
		cfg.ConvergePoll = 200 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Capture{q: q, cfg: cfg, mark: mark, log: cfg.Logger.With("disk", cfg.Disk),
		m:     newMachine(cfg.ResumeBackoff, cfg.MaxResumeBackoff),
		ended: make(chan struct{}), changed: make(chan struct{}), wake: make(chan struct{}, 1)}, nil
}

// State returns the disk's state and, in Error, why.
func (c *Capture) State() (State, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m.state, c.m.err
}

// WaitState waits until the disk is in one of states and returns it.
func (c *Capture) WaitState(ctx context.Context, states ...State) (State, error) {
	for {
		c.mu.Lock()
		cur, ch := c.m.state, c.changed
		c.mu.Unlock()
		for _, s := range states {
			if cur == s {
				return cur, nil
			}
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return cur, fmt.Errorf("filter: disk %s: waiting for %v, still %s: %w", c.cfg.Disk, states, cur, ctx.Err())
		}
	}
}

// Run attaches the disk (or adopts the job a previous daemon left running)
// and follows the job until ctx ends or the disk is detached. It returns nil
// after a Detach, ctx.Err() when cancelled (the job stays in QEMU, tracking
// or mirroring, for the next daemon to adopt), or why capture failed.
func (c *Capture) Run(ctx context.Context) error {
	err := c.run(ctx)
	if errors.Is(err, qmp.ErrClosed) && !errors.Is(err, ErrMonitorGone) {
		// QEMU went away under a command rather than between events.
		err = fmt.Errorf("%w: %w", ErrMonitorGone, err)
	}
	return err
}

func (c *Capture) run(ctx context.Context) error {
	if c.cfg.Recopy != nil {
		// Before subscribing: the old job's end is not this capture's.
		if err := c.dropJob(ctx); err != nil {
			return err
		}
		if err := c.cfg.Recopy(); err != nil {
			return fmt.Errorf("filter: disk %s: re-copy: %w", c.cfg.Disk, err)
		}
	}
	// The subscription ends with Run: a subscriber nobody reads would hold
	// back every event of the VM's QMP connection.
	ctx, cancel := context.WithCancel(ctx)
	defer c.rs.wg.Wait() // the resync goroutine ends with ctx
	defer cancel()
	events, err := c.q.Subscribe(ctx, qmp.EventBlockJobReady, qmp.EventBlockJobError,
		qmp.EventBlockJobCompleted, qmp.EventBlockJobCancelled, qmp.EventJobStatusChange, qmp.EventShutdown)
	if err != nil {
		return fmt.Errorf("filter: disk %s: subscribe: %w", c.cfg.Disk, err)
	}
	job, err := c.findJob(ctx)
	if err != nil {
		return err
	}
	if job != nil {
		c.log.Info("adopting capture job", "status", job.Status, "ready", job.Ready, "io_status", job.IOStatus)
		// An earlier daemon's resync left its frozen bitmap: copy it,
		// with the bracket held, before the adopted job's bracket closes.
		// It may have died before it froze the generations into it:
		// freeze them now (the job forwards every write already).
		// If QEMU cannot say now, the bracket is held until it can.
		// An earlier daemon's hash resync left its mark: compare again.
		var release func()
		mode := modeAdopt
		if c.cfg.Resync != nil {
			bms, err := c.bitmaps(ctx)
			_, frozen := bms[c.frozen()]
			_, hashing := bms[c.hashing()]
			switch {
			case hashing && c.cfg.Hashes != nil:
				release, mode = c.hold(), modeHash
			case hashing:
				// No replica to compare with now: the bracket stays open
				// (no restore point) until a daemon that has one adopts.
				c.log.Warn("a hash resync of the disk was under way and the group has no replica now: the disk stays in its resync bracket")
				release = c.hold()
				defer release() // never released before Run ends
				release = nil
			case frozen || err != nil:
				release = c.hold()
			}
		}
		c.feed(input{kind: adoptInput(job)})
		if release != nil {
			c.startResync(ctx, release, mode)
		}
	} else if err := c.attach(ctx); err != nil {
		c.feed(input{kind: inAttachFailed, err: err}) // follow returns err
	} else {
		c.feed(input{kind: inAttached})
	}
	return c.follow(ctx, events)
}

func (c *Capture) findJob(ctx context.Context) (*qmp.BlockJobInfo, error) {
	jobs, err := c.q.QueryBlockJobs(ctx)
	if err != nil {
		return nil, fmt.Errorf("filter: disk %s: query jobs: %w", c.cfg.Disk, err)
	}
	for i := range jobs {
		if jobs[i].Device == JobID(c.cfg.Disk) {
			return &jobs[i], nil
		}
	}
	return nil, nil
}

// dropJob cancels the disk's capture job, if there is one, waits until
// QEMU no longer lists it, and removes its target node.
func (c *Capture) dropJob(ctx context.Context) error {
	d := c.cfg.Disk
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for first := true; ; first = false {
		job, err := c.findJob(ctx)
		if err != nil {
			return err
		}
		if job == nil {
			break
		}
		if first {
			c.log.Info("cancelling the capture job to copy the whole disk anew", "status", job.Status)
			if err := c.q.BlockJobCancel(ctx, JobID(d), true); err != nil && !qmp.IsDeviceNotActive(err) {
				return fmt.Errorf("filter: disk %s: cancel job for a re-copy: %w", d, err)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("filter: disk %s: wait for the old job to end: %w", d, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := c.q.BlockdevDel(ctx, TargetNode(d)); err != nil && !qmp.IsClass(err, qmp.ClassGenericError) {
		return fmt.Errorf("filter: disk %s: remove the old target node: %w", d, err)
	}
	return nil
}

// attach starts the disk's capture: without a copy when the replica holds
// the disk and its bitmaps say what changed (attachResync), else with a
// full copy, tracked by the copying bitmap until it converges.
func (c *Capture) attach(ctx context.Context) error {
	d := c.cfg.Disk
	bms, err := c.bitmaps(ctx)
	if err != nil {
		return err
	}
	holds := c.replicaHolds(ctx)
	if holds != holdsNothing && c.resumable(ctx, bms) {
		c.log.Info("resuming capture from the dirty bitmaps: only what changed is copied")
		return c.attachResync(ctx, bms)
	}
	if holds != holdsNothing && c.cfg.Resync != nil && c.cfg.Hashes != nil && !c.cfg.Fresh {
		c.log.Info("no bitmap says what changed: comparing the disk with the replica's copy; only the blocks that differ are copied")
		return c.attachHash(ctx)
	}
	if holds == holdsNothing {
		c.log.Info("the replica holds nothing of the disk: copying it whole")
	}
	if c.cfg.Resync != nil {
		// A full copy makes every older generation moot.
		for name := range bms {
			if name != c.copying() {
				if err := c.removeBitmap(ctx, name); err != nil {
					c.log.Warn("remove a bitmap a full copy makes moot", "err", err)
				}
			}
		}
	}
	tracking := c.live()
	if c.cfg.Resync != nil {
		tracking = c.copying()
	}
	if _, ok := bms[tracking]; !ok {
		if err := c.q.Execute(ctx, "block-dirty-bitmap-add", c.addBitmap(tracking, false), nil); err != nil {
			return fmt.Errorf("filter: disk %s: add bitmap on %s: %w", d, c.cfg.Node, err)
		}
	}
	return c.startJob(ctx, qmp.SyncFull)
}

// startJob adds the target node and starts the mirror with sync.
func (c *Capture) startJob(ctx context.Context, sync string) error {
	d := c.cfg.Disk
	err := c.q.BlockdevAdd(ctx, map[string]any{
		"driver": "nbd", "node-name": TargetNode(d),
		"server":          map[string]string{"type": "unix", "path": c.cfg.Socket},
		"export":          d,
		"reconnect-delay": 0,
	})
	if err != nil {
		return fmt.Errorf("filter: disk %s: add target node for %s: %w", d, c.cfg.Socket, err)
	}
	err = c.q.BlockdevMirror(ctx, qmp.MirrorArgs{
		JobID: JobID(d), Device: c.cfg.Node, Target: TargetNode(d),
		Sync: sync, CopyMode: qmp.CopyModeWriteBlocking,
		Granularity: c.cfg.Granularity, OnTargetError: qmp.ErrorActionStop,
		OnSourceError: qmp.ErrorActionReport, FilterNodeName: FilterNode(d),
	})
	if err != nil {
		if derr := c.q.BlockdevDel(ctx, TargetNode(d)); derr != nil {
			c.log.Warn("remove target node after failed mirror", "err", derr)
		}
		return fmt.Errorf("filter: disk %s: start mirror of %s: %w", d, c.cfg.Node, err)
	}
	return nil
}

// Pause holds capture for the operator: the disk shows paused and the job,
// stopped by the capture export's refusals (see shipper.CaptureExport
// SetPaused), is not resumed until Resume. QEMU tracks what the guest writes
// meanwhile.
func (c *Capture) Pause() { c.feed(input{kind: inPause}) }

// Resume ends an operator pause: the stream is bracketed as a resync and the
// job resumed, re-copying what changed during the pause. Without a pause it
// does nothing.
func (c *Capture) Resume(ctx context.Context) { c.feed(input{kind: inResume}) }

// Detach cancels the capture job (never completes it), waits for its end
// through Run and removes the target node. The dirty bitmap stays and keeps
// tracking writes. Run must be running.
func (c *Capture) Detach(ctx context.Context) error {
	d := c.cfg.Disk
	st, _ := c.State()
	c.feed(input{kind: inDetach})
	job, err := c.findJob(ctx)
	if err != nil {
		return err
	}
	rotated := false
	if job != nil && c.cfg.Resync != nil && st == Syncing {
		rotated = c.rotateBefore(ctx)
	}
	if job != nil {
		// Forced: a soft cancel of a READY mirror drains what is dirty first,
		// which never ends while the capture export refuses writes. Nothing
		// is lost: the bitmap goes on tracking.
		if err := c.q.BlockJobCancel(ctx, JobID(d), true); err != nil && !qmp.IsDeviceNotActive(err) {
			return fmt.Errorf("filter: disk %s: cancel job: %w", d, err)
		}
		if err := c.waitGone(ctx); err != nil {
			return err
		}
	}
	if err := c.q.BlockdevDel(ctx, TargetNode(d)); err != nil && !qmp.IsClass(err, "GenericError") {
		return fmt.Errorf("filter: disk %s: remove target node: %w", d, err)
	}
	if rotated {
		c.rotateAfter(ctx)
	}
	c.feed(input{kind: inDetached})
	return nil
}

// rotateBefore starts the next bitmap generation before a detach cancels
// a syncing job: what the guest writes from now on is in it, whatever the
// cancel does to writes in flight. It reports whether it did.
func (c *Capture) rotateBefore(ctx context.Context) bool {
	bms, err := c.bitmaps(ctx)
	if err != nil {
		c.log.Warn("bitmap generation before detach", "err", err)
		return false
	}
	if _, ok := bms[c.live()]; !ok {
		return false
	}
	if b, ok := bms[c.next()]; ok && !b.Recording {
		// Left disabled by a freeze whose clean-up failed: it tracks
		// nothing, so it must not stand in for the live generation.
		if err := c.removeBitmap(ctx, c.next()); err != nil {
			c.log.Warn("bitmap generation before detach", "err", err)
			return false
		}
		delete(bms, c.next())
	}
	if _, ok := bms[c.next()]; !ok {
		if err := c.q.Execute(ctx, "block-dirty-bitmap-add", c.addBitmap(c.next(), false), nil); err != nil {
			c.log.Warn("bitmap generation before detach", "err", err)
			return false
		}
	}
	return true
}

// rotateAfter drops the live generation once the job is gone, if the
// detach was clean: the disk was syncing, and the capture export refused
// no write since (so every write before the next generation began reached
// the stream). Otherwise both stay, and the next attach copies their union.
func (c *Capture) rotateAfter(ctx context.Context) {
	c.mu.Lock()
	since := c.syncRefusals
	c.mu.Unlock()
	if n := c.cfg.Resync.Refusals(); n != since {
		c.log.Info("writes were refused before the detach: the next attach copies what both bitmap generations tracked", "refused", n-since)
		return
	}
	if err := c.removeBitmap(ctx, c.live()); err != nil {
		c.log.Warn("drop the older bitmap generation after detach", "err", err)
	}
}

// waitGone waits until Run has seen the job end.
func (c *Capture) waitGone(ctx context.Context) error {
	select {
	case <-c.ended:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("filter: disk %s: wait for job end: %w", c.cfg.Disk, ctx.Err())
	}
}
