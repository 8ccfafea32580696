package filter

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/nbd"
	"github.com/qcdp/qcdp/qmp/qmptest"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/stream"
)

// review3: the hash resync's source side against an in-memory NBD export
// (QEMU's NBD server stands in for the filter node), a fake replica and a
// fake capture export.

type r3Disk struct {
	mu sync.Mutex
	b  []byte
}

func (d *r3Disk) Size() int64 { return int64(len(d.b)) }

func (d *r3Disk) ReadAt(ctx context.Context, p []byte, off int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	copy(p, d.b[off:])
	return nil
}

// r3Serve serves src as the disk's resync export on a unix socket.
func r3Serve(t *testing.T, disk string, src *r3Disk) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var cat nbd.Exports
	cat.Add(ResyncExport(disk), src)
	srv := nbd.NewServer(&cat, nbd.Options{})
	go srv.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return sock
}

// r3Target is the capture export: resync copies land in replica.
type r3Target struct {
	mu      sync.Mutex
	replica []byte
	copies  [][2]int64
	fail    error // every resync write fails with it (a full spool)
}

type r3Watch struct{}

func (r3Watch) Commit(write func() error) (bool, error) { return false, write() }
func (r3Watch) Cancel()                                 {}

func (x *r3Target) WatchRange(off, n int64) interface {
	Commit(write func() error) (raced bool, err error)
	Cancel()
} {
	return r3Watch{}
}

func (x *r3Target) ResyncWrite(p []byte, off int64) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.fail != nil {
		return x.fail
	}
	copy(x.replica[off:], p)
	x.copies = append(x.copies, [2]int64{off, int64(len(p))})
	return nil
}

func (x *r3Target) ResyncZero(off, n int64) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	clear(x.replica[off : off+n])
	x.copies = append(x.copies, [2]int64{off, n})
	return nil
}

func (x *r3Target) Refusals() int64 { return 0 }

// r3Hasher is the replica: it hashes tgt.replica.
type r3Hasher struct {
	tgt  *r3Target
	last uint64
	err  error // every query fails with it
	mu   sync.Mutex
	qs   []stream.HashQuery
}

func (h *r3Hasher) ReplicaHashes(ctx context.Context, disk string, off uint64, bs, count uint32, after uint64) (stream.HashReply, error) {
	h.mu.Lock()
	h.qs = append(h.qs, stream.HashQuery{Disk: disk, Offset: off, BlockSize: bs, Count: count, After: after})
	h.mu.Unlock()
	if h.err != nil {
		return stream.HashReply{}, h.err
	}
	h.tgt.mu.Lock()
	defer h.tgt.mu.Unlock()
	b := h.tgt.replica
	r := stream.HashReply{Status: stream.HashOK, Offset: off, Size: uint64(len(b)), Seq: h.last}
	for i := uint64(0); i < uint64(count); i++ {
		from := off + i*uint64(bs)
		if from >= uint64(len(b)) {
			break
		}
		r.Hashes = append(r.Hashes, stream.BlockHash(b[from:min(from+uint64(bs), uint64(len(b)))]))
	}
	return r, nil
}

func (h *r3Hasher) LastSeq() uint64 { return h.last }

func r3Pattern(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7 + i>>12 + i>>20 + 1)
	}
	return p
}

// compareCopy with a resync_read_rate: the default policy sets 256M (and
// the integration test 24M). The limiter's burst is one read (1 MiB) but a
// wave asks it for four reads at once: rate.Limiter.WaitN fails for n >
// burst, so every hash resync of a disk over 1 MiB fails at its first wave,
// and is retried for ever (the disk stays in its resync bracket: no restore
// point for the whole group).
func TestReview3HashResyncWithReadRate(t *testing.T) {
	for _, rate := range []int64{0, 256 << 20} {
		t.Run(fmt.Sprintf("rate=%d", rate), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			const size = 8 << 20
			src := &r3Disk{b: r3Pattern(size)}
			tgt := &r3Target{replica: bytes.Clone(src.b)}
			copy(tgt.replica[3*HashBlock:], bytes.Repeat([]byte{0xee}, 100)) // one block differs
			hasher := &r3Hasher{tgt: tgt, last: 42}
			sock := r3Serve(t, "disk0", src)
			c := &Capture{cfg: Config{Disk: "disk0", NBDSocket: sock, Resync: tgt, Hashes: hasher, ReadRate: rate},
				log: slog.Default()}
			h, err := c.openExport(ctx, "")
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			if err := c.compareCopy(ctx, h, hasher.LastSeq()); err != nil {
				t.Fatalf("hash resync with resync_read_rate %d: %v", rate, err)
			}
			if !bytes.Equal(tgt.replica, src.b) {
				t.Fatal("the replica differs from the source after the hash resync")
			}
			if len(tgt.copies) != 1 || tgt.copies[0] != [2]int64{3 * HashBlock, HashBlock} {
				t.Fatalf("copies %v, want the one differing block", tgt.copies)
			}
		})
	}
}

// replicaHolds asks with After 0, so the replica answers from whatever it
// holds now, not from the state that includes this attach's membership
// declaration (protect.Engine.declare writes it before the capture starts).
// A disk that left the group's membership (an operator's detach, a Proxmox
// or plain-QEMU VM that stopped) is no disk of the replica's newest
// membership (journal.View.Disk: size 0, ErrNoDisk -> HashNoDisk) until the
// new declaration arrives, so while the stream is behind, attach concludes
// holdsNothing, removes every bitmap generation and copies the whole disk.
// It must wait for the stream's last seq, as the hash resync itself does.
func TestReview3ReplicaHoldsWaitsForTheDeclaration(t *testing.T) {
	ctx := context.Background()
	tgt := &r3Target{replica: make([]byte, HashBlock)}
	hasher := &r3Hasher{tgt: tgt, last: 42}
	c := &Capture{cfg: Config{Disk: "disk0", Resync: tgt, Hashes: hasher}, log: slog.Default()}
	if got := c.replicaHolds(ctx); got != holdsDisk {
		t.Fatalf("replicaHolds = %v", got)
	}
	if len(hasher.qs) != 1 || hasher.qs[0].After != hasher.LastSeq() {
		t.Fatalf("replicaHolds asked %+v: After should be the stream's last seq %d (it holds this attach's declaration)", hasher.qs, hasher.LastSeq())
	}
}

// holdMarker is the sequencer as far as holds go: ResyncEnd is refused
// while a resync holds the bracket (shipper.Sequencer.HoldResync).
type holdMarker struct {
	*fakeMarker
	mu    sync.Mutex
	holds int
}

func (m *holdMarker) hold() func() {
	m.mu.Lock()
	m.holds++
	m.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			m.mu.Lock()
			m.holds--
			m.mu.Unlock()
		})
	}
}

func (m *holdMarker) MarkDisk(kind record.MarkerKind, disk string) (uint64, error) {
	m.mu.Lock()
	held := m.holds > 0
	m.mu.Unlock()
	if kind == record.ResyncEnd && held {
		return 0, errors.New("held")
	}
	return m.fakeMarker.MarkDisk(kind, disk)
}

// A daemon that adopts a job whose hash resync an earlier daemon left
// unfinished (.hashing present) must compare again before the bracket
// closes. When its first query of the bitmaps fails (a QMP hiccup), run
// takes the "frozen || err != nil" branch, modeAdopt: the resync goroutine
// then reads the bitmaps again, finds no .resync bitmap, says "nothing
// frozen: nothing to copy" and releases the hold. The bracket closes, the
// disk becomes syncing (the replica offers restore points) and .copying is
// promoted to the live generation, though the replica still lacks every
// block the dead daemon had not compared yet.
func TestReview3AdoptedHashResyncAfterABitmapQueryError(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	f := &fakeQEMU{t: t, nodes: map[string]*fakeNode{"disk0": {driver: "qcow2"}}, copyPolls: 2, changed: make(chan struct{})}
	var failMu sync.Mutex
	failed := false
	f.srv = qmptest.NewServer(t, func(c qmptest.Command) []string {
		if c.Name == "query-named-block-nodes" {
			failMu.Lock()
			first := !failed
			failed = true
			failMu.Unlock()
			if first {
				return []string{qmptest.Error("GenericError", "transient")}
			}
		}
		return f.handle(c)
	})
	f.adoptable(fakeJob{ready: true})
	c0 := &Capture{cfg: Config{Disk: "disk0", Group: "g1.0011"}}
	f.mu.Lock()
	f.nodes["disk0"].bitmaps = []fakeBitmap{{Name: c0.copying(), Granularity: 4096}, {Name: c0.hashing(), Granularity: 4096}}
	f.mu.Unlock()

	m := &holdMarker{fakeMarker: &fakeMarker{}}
	tgt := &r3Target{replica: make([]byte, 16<<20)}
	hasher := &r3Hasher{tgt: tgt, last: 7}
	var logs syncBuffer
	cfg := Config{
		Disk: "disk0", Node: "disk0", Socket: testSocket, Persistent: true, Group: "g1.0011",
		Resync: tgt, Hashes: hasher, Hold: m.hold, NBDSocket: filepath.Join(t.TempDir(), "none.sock"),
		ResumeBackoff: 5 * time.Millisecond, MaxResumeBackoff: 20 * time.Millisecond, ConvergePoll: 5 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	c, err := New(f.dial(ctx), cfg, m)
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	defer func() { stop(); <-done }()

	wctx, wcancel := context.WithTimeout(ctx, 3*time.Second)
	defer wcancel()
	st, _ := c.WaitState(wctx, Syncing)
	hasher.mu.Lock()
	asked := len(hasher.qs)
	hasher.mu.Unlock()
	if st == Syncing && asked == 0 {
		var marks []string
		for _, b := range f.bitmaps("disk0") {
			marks = append(marks, b.Name)
		}
		t.Fatalf("the adopted disk became syncing (bracket closed: restore points offered) without comparing with the replica; bitmaps now %v\n%s", marks, logs.String())
	}
}

// r3QEMU is fakeQEMU plus QEMU's NBD server (nbd-server-start serves src
// on NBDSocket: the test starts it beforehand), block exports, bitmap
// removal and transactions, enough for a resync to run.
func r3QEMU(t *testing.T) *fakeQEMU {
	f := &fakeQEMU{t: t, nodes: map[string]*fakeNode{"disk0": {driver: "raw"}}, copyPolls: 2, changed: make(chan struct{})}
	f.srv = qmptest.NewServer(t, func(c qmptest.Command) []string {
		switch c.Name {
		case "nbd-server-start", "nbd-server-stop", "block-export-add", "block-export-del", "transaction":
			f.mu.Lock()
			f.cmds = append(f.cmds, c)
			f.mu.Unlock()
			return []string{qmptest.Return(struct{}{})}
		case "query-block-exports":
			return []string{qmptest.Return([]any{})}
		case "block-dirty-bitmap-remove":
			var args struct{ Node, Name string }
			_ = json.Unmarshal(c.Args, &args)
			f.mu.Lock()
			defer f.mu.Unlock()
			f.cmds = append(f.cmds, c)
			n := f.nodes[args.Node]
			n.bitmaps = slices.DeleteFunc(n.bitmaps, func(b fakeBitmap) bool { return b.Name == args.Name })
			return []string{qmptest.Return(struct{}{})}
		}
		return f.handle(c)
	})
	return f
}

// A replica that answers no hash queries (an older replica; or Hasher nil:
// "this replica answers no hash queries") refuses every query. The sender
// says the caller then copies the disk whole (shipper/sender/hashes.go),
// but filter retries the hash resync for ever with the bracket held: a raw
// disk after its VM restarted never syncs again, and since a restore point
// needs every declared disk in sync, the whole group has none from then on.
func TestReview3ReplicaWithoutHashQueriesNeverSyncs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const size = 16 << 20
	src := &r3Disk{b: r3Pattern(size)}
	sock := r3Serve(t, "disk0", src)
	f := r3QEMU(t)
	m := &holdMarker{fakeMarker: &fakeMarker{}}
	tgt := &r3Target{replica: make([]byte, size)}
	hasher := &r3Hasher{tgt: tgt, last: 7, err: &stream.RefusedError{Code: stream.CodeProtocol, Message: "this replica answers no hash queries"}}
	var logs syncBuffer
	cfg := Config{
		Disk: "disk0", Node: "disk0", Socket: testSocket, Group: "g1.0011",
		Resync: tgt, Hashes: hasher, Hold: m.hold, NBDSocket: sock,
		ResumeBackoff: 5 * time.Millisecond, MaxResumeBackoff: 20 * time.Millisecond, ConvergePoll: 5 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	c, err := New(f.dial(ctx), cfg, m)
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	defer func() { stop(); <-done }()
	f.waitCommands(ctx, "blockdev-mirror", 1)
	f.ready() // sync=none: READY at once
	wctx, wcancel := context.WithTimeout(ctx, 4*time.Second)
	defer wcancel()
	st, _ := c.WaitState(wctx, Syncing)
	if st != Syncing {
		tgt.mu.Lock()
		n := len(tgt.copies)
		tgt.mu.Unlock()
		mirrors := f.commands("blockdev-mirror")
		t.Fatalf("4 s after attach against a replica that answers no hash queries: state %s, %d resync copies, %d mirror jobs (%s): the disk is neither compared nor copied whole\n%s",
			st, n, len(mirrors), mirrors[len(mirrors)-1].Args, logs.String())
	}
}

// The control of the test above: the same rig with a replica that answers
// reaches syncing with the replica equal to the source (so the rig is not
// what keeps the test above from syncing).
func TestReview3HashResyncControl(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const size = 16 << 20
	src := &r3Disk{b: r3Pattern(size)}
	sock := r3Serve(t, "disk0", src)
	f := r3QEMU(t)
	m := &holdMarker{fakeMarker: &fakeMarker{}}
	tgt := &r3Target{replica: bytes.Clone(src.b)}
	copy(tgt.replica[5<<20:], bytes.Repeat([]byte{1}, 3*HashBlock))
	hasher := &r3Hasher{tgt: tgt, last: 7}
	var logs syncBuffer
	cfg := Config{
		Disk: "disk0", Node: "disk0", Socket: testSocket, Group: "g1.0011",
		Resync: tgt, Hashes: hasher, Hold: m.hold, NBDSocket: sock,
		ResumeBackoff: 5 * time.Millisecond, MaxResumeBackoff: 20 * time.Millisecond, ConvergePoll: 5 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	c, err := New(f.dial(ctx), cfg, m)
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	defer func() { stop(); <-done }()
	f.waitCommands(ctx, "blockdev-mirror", 1)
	f.ready()
	wctx, wcancel := context.WithTimeout(ctx, 4*time.Second)
	defer wcancel()
	if st, _ := c.WaitState(wctx, Syncing); st != Syncing {
		t.Fatalf("state %s\n%s", st, logs.String())
	}
	tgt.mu.Lock()
	defer tgt.mu.Unlock()
	if !bytes.Equal(tgt.replica, src.b) {
		t.Fatal("replica differs")
	}
}

// A copy the capture export refuses (the spool is full: the resync is
// meant to fail, back off and go on where it stopped) must end
// compareCopy with the error. (Passes at b7e2375; written against the
// uncommitted rewrite of compareCopy in the working tree, whose
// "defer wg.Wait()" runs before "defer cancel()": the readers and the
// producer, blocked on full channels, wait for a ctx nobody cancels, so
// compareCopy never returns, Run never ends, and Detach/reattach wait on
// it for ever.)
func TestReview3CompareCopyReturnsWhenACopyFails(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const size = 96 << 20
	src := &r3Disk{b: r3Pattern(size)}
	tgt := &r3Target{replica: make([]byte, size), fail: errors.New("spool full")}
	hasher := &r3Hasher{tgt: tgt, last: 42}
	sock := r3Serve(t, "disk0", src)
	c := &Capture{cfg: Config{Disk: "disk0", NBDSocket: sock, Resync: tgt, Hashes: hasher}, log: slog.Default()}
	h, err := c.openExport(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	done := make(chan error, 1)
	go func() { done <- c.compareCopy(ctx, h, hasher.LastSeq()) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("compareCopy succeeded though every copy failed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("compareCopy did not return 10 s after a copy failed (deadlock)")
	}
}
