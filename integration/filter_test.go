package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/qcdp/qcdp/filter"
	"github.com/qcdp/qcdp/integration/harness"
	"github.com/qcdp/qcdp/nbd"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/shipper"
	"github.com/qcdp/qcdp/shipper/spool"
)

// restartable is a capture server whose NBD side can die and come back on
// the same socket while the group's spool and sequencer live on, as when the
// daemon is restarted.
type restartable struct {
	t      *testing.T
	sock   string
	cat    nbd.Exports
	log    *slog.Logger
	srv    *nbd.Server
	served chan error
}

func (r *restartable) start() {
	r.t.Helper()
	os.Remove(r.sock)
	ln, err := net.Listen("unix", r.sock)
	if err != nil {
		r.t.Fatal(err)
	}
	r.srv = nbd.NewServer(&r.cat, nbd.Options{Logger: r.log})
	r.served = make(chan error, 1)
	go func() { r.served <- r.srv.Serve(ln) }()
}

func (r *restartable) stop() {
	if r.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r.srv.Shutdown(ctx)
	<-r.served
	r.srv = nil
}

// TestFilterLifecycle drives one disk through the whole capture lifecycle
// with real QEMU: initial-sync → syncing (sync-complete marker) → the
// capture server dies: the guest's writes go on unharmed and the disk goes
// to tracking → the server comes back: the job is resumed and resynced,
// bracketed by markers → detach by cancel. The spool then rebuilds the
// source byte for byte.
// filterFixture is one disk under a capture lifecycle in real QEMU, with a
// restartable capture server: what the filter tests share.
type filterFixture struct {
	src  string
	dir  string
	seq  *shipper.Sequencer
	cfg  filter.Config
	sp   *spool.Spool
	exp  *shipper.CaptureExport
	srv  *restartable
	q    *harness.QEMU
	c    *filter.Capture
	ran  chan error
	stop context.CancelFunc
}

func newFilterFixture(ctx context.Context, t *testing.T) *filterFixture {
	t.Helper()
	harness.Need(t, "qemu-system-x86_64", "qemu-img")
	f := &filterFixture{dir: harness.TempDir(t)}
	const size = 16 << 20
	f.src = filepath.Join(f.dir, "disk0.qcow2")
	if err := harness.CreateImage(ctx, f.src, "qcow2", size); err != nil {
		t.Fatal(err)
	}
	if err := harness.FillPattern(ctx, f.src, "qcow2", size, 1<<20, 0x10); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(f.dir, "capture.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logf.Close() })
	log := slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if f.sp, err = spool.Open(ctx, spool.Options{Dir: filepath.Join(f.dir, "spool"), Group: "g", Logger: log}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.sp.Close() })
	seq := shipper.NewSequencer(f.sp)
	f.seq = seq
	if f.exp, err = seq.Export("disk0", size); err != nil {
		t.Fatal(err)
	}
	f.srv = &restartable{t: t, sock: filepath.Join(f.dir, "capture.sock"), log: log}
	f.srv.cat.Add("disk0", f.exp)
	f.srv.start()
	t.Cleanup(f.srv.stop)
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("QCDP_TEST_LOGS") != "" {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("--- capture and filter log %s:\n%s", logf.Name(), tailLines(string(b), 60))
		}
	})
	f.q = harness.Start(ctx, t, harness.Options{Dir: f.dir, Disks: []harness.Disk{{Name: "disk0", Path: f.src, Format: "qcow2"}}})
	f.cfg = filter.Config{
		Disk: "disk0", Node: "disk0", Socket: f.srv.sock, Persistent: true,
		ResumeBackoff: 50 * time.Millisecond, ConvergePoll: 50 * time.Millisecond, Logger: log,
	}
	if f.c, err = filter.New(f.q.QMP, f.cfg, seq); err != nil {
		t.Fatal(err)
	}
	return f
}

// newResyncFixture is a filterFixture whose capture keeps bitmap
// generations (named with group, if any) and resyncs from them.
func newResyncFixture(ctx context.Context, t *testing.T, group string) *filterFixture {
	t.Helper()
	f := newFilterFixture(ctx, t)
	f.cfg.Resync = f.exp
	f.cfg.Hold = func() func() { return f.seq.HoldResync("disk0") }
	f.cfg.NBDSocket = filepath.Join(f.dir, "qemu-nbd.sock")
	f.cfg.Group = group
	var err error
	if f.c, err = filter.New(f.q.QMP, f.cfg, f.seq); err != nil {
		t.Fatal(err)
	}
	return f
}

// runSynced starts the lifecycle and waits until the disk's full copy
// converged and its live bitmap generation (live) exists.
func (f *filterFixture) runSynced(ctx context.Context, t *testing.T, live string) {
	t.Helper()
	f.run(ctx, t)
	if st, err := f.c.WaitState(ctx, filter.Syncing, filter.Error); st != filter.Syncing {
		t.Fatalf("first attach: %s %v", st, err)
	}
	waitBitmaps(ctx, t, f.q, live)
}

// run starts the lifecycle; it is stopped when the test ends.
func (f *filterFixture) run(ctx context.Context, t *testing.T) {
	runCtx, stop := context.WithCancel(ctx)
	f.stop, f.ran = stop, make(chan error, 1)
	go func() { f.ran <- f.c.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		<-f.ran
		f.ran <- nil
	})
}

func TestFilterLifecycle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := newFilterFixture(ctx, t)
	src, sp, srv, q, c := f.src, f.sp, f.srv, f.q, f.c
	dir := f.dir
	f.run(ctx, t)
	ran := f.ran
	node := filter.FilterNode("disk0")
	write := func(cmd string) {
		t.Helper()
		start := time.Now()
		if err := q.QemuIO(ctx, node, cmd); err != nil {
			t.Fatalf("guest write %q: %v", cmd, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("guest write %q held %v (invariant 1: never over 1 s)", cmd, d)
		}
	}

	if _, err := c.WaitState(ctx, filter.Syncing, filter.Error); err != nil {
		t.Fatal(err)
	}
	if st, err := c.State(); st != filter.Syncing {
		t.Fatalf("state %s (%v), want syncing after READY", st, err)
	}
	write("write -P 0xc1 0 4096")
	write("write -P 0xc2 8192 512")

	// The daemon's NBD side dies: writes must not fail or stall the guest.
	srv.stop()
	write("write -P 0xd1 65536 4096")
	write("write -P 0xd2 1048576 65536")
	if _, err := c.WaitState(ctx, filter.Tracking, filter.Resync); err != nil {
		t.Fatal(err)
	}
	write("write -P 0xd3 2097152 4096")

	// It comes back: the lifecycle resumes the job until it runs, the
	// refused chunks are re-copied, and the disk converges.
	srv.start()
	if _, err := c.WaitState(ctx, filter.Syncing, filter.Error); err != nil {
		t.Fatal(err)
	}
	if st, err := c.State(); st != filter.Syncing {
		t.Fatalf("state %s (%v) after the server came back, want syncing", st, err)
	}
	write("write -P 0xe1 4096 4096")

	dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
	defer dcancel()
	if err := c.Detach(dctx); err != nil {
		t.Fatal(err)
	}
	if err := <-ran; err != nil {
		t.Fatalf("Run after Detach: %v", err)
	}
	ran <- nil // for the cleanup
	jobs, err := q.QMP.QueryBlockJobs(ctx)
	if err != nil || len(jobs) != 0 {
		t.Fatalf("jobs after detach: %+v %v", jobs, err)
	}

	// The stream: the initial copy bracketed, sync-complete, then a resync
	// bracket around the outage.
	kinds := markers(t, sp)
	want := []record.MarkerKind{record.ResyncBegin, record.ResyncEnd, record.SyncComplete, record.ResyncBegin, record.ResyncEnd}
	if len(kinds) != len(want) {
		t.Fatalf("markers %v, want %v", kinds, want)
	}
	for i := range want {
		if kinds[i] != want[i] {
			t.Fatalf("markers %v, want %v", kinds, want)
		}
	}

	srv.stop()
	if err := sp.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	q.Close()
	applied := filepath.Join(dir, "applied.raw")
	if _, err := spool.Apply(ctx, filepath.Join(dir, "spool"), map[string]string{"disk0": applied}, spool.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := harness.Compare(ctx, src, "qcow2", applied, "raw"); err != nil {
		t.Fatalf("the spool does not rebuild the source after an outage and resync: %v", err)
	}
}

// markers returns the marker kinds in the spool, in order.
func markers(t *testing.T, sp *spool.Spool) []record.MarkerKind {
	t.Helper()
	cur := sp.Cursor(1)
	defer cur.Close()
	var out []record.MarkerKind
	for {
		r, err := cur.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if r.Kind == record.Marker {
			out = append(out, r.Marker)
		}
	}
}

// TestFilterSyncCompleteAfterResync: a disk whose initial copy is refused
// (the capture export paused, as a full spool would) reaches READY only
// through resume and resync; its sync-complete marker must still be
// written once it converges, or the replica would never offer a restore
// point for its group.
func TestFilterSyncCompleteAfterResync(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := newFilterFixture(ctx, t)
	f.exp.SetPaused(true) // every write of the initial copy is refused
	f.run(ctx, t)
	if _, err := f.c.WaitState(ctx, filter.Tracking, filter.Resync, filter.Error); err != nil {
		t.Fatal(err)
	}
	f.exp.SetPaused(false)
	if st, err := f.c.WaitState(ctx, filter.Syncing, filter.Error); err != nil || st != filter.Syncing {
		t.Fatalf("state %s (%v), want syncing once the export takes writes again", st, err)
	}
	kinds := markers(t, f.sp)
	if len(kinds) < 3 || kinds[len(kinds)-2] != record.ResyncEnd || kinds[len(kinds)-1] != record.SyncComplete {
		t.Fatalf("markers %v: want the resync closed and then sync-complete", kinds)
	}
}

// TestFilterBitmapResync: a disk captured with bitmap generations, detached
// cleanly, written while detached (about 1% of it), then attached again:
// the new job copies nothing in full (sync=none); only the bitmap's dirty
// ranges are copied, read through QEMU's NBD export of the filter node,
// bracketed, while the guest writes on into them; the spool then rebuilds
// the source byte for byte, and no sync-complete falls inside the resync.
func TestFilterBitmapResync(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := newResyncFixture(ctx, t, "")
	var err error
	f.runSynced(ctx, t, "qcdp-disk0") // the live generation exists once the full copy converged
	if err := f.q.QemuIO(ctx, filter.FilterNode("disk0"), "write -P 0x31 0 65536"); err != nil {
		t.Fatal(err)
	}
	dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
	defer dcancel()
	if err := f.c.Detach(dctx); err != nil {
		t.Fatal(err)
	}
	if err := <-f.ran; err != nil {
		t.Fatalf("Run after Detach: %v", err)
	}
	f.ran <- nil

	// Detached: the guest writes 160 KiB in ten places (1% of 16 MiB).
	const changed = 10 * 16384
	for i := range 10 {
		if err := f.q.QemuIO(ctx, "disk0", fmt.Sprintf("write -P 0x%02x %d 16384", 0x50+i, int64(i)*1536*1024+4096)); err != nil {
			t.Fatal(err)
		}
	}
	from := f.sp.LastSeq() + 1
	c2, err := filter.New(f.q.QMP, f.cfg, f.seq)
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	rctx, stop := context.WithCancel(ctx)
	defer func() { stop(); <-ran }()
	go func() { ran <- c2.Run(rctx) }()
	if st, err := c2.WaitState(ctx, filter.InitialSync, filter.Syncing, filter.Error); st == filter.Error {
		t.Fatalf("second attach: %s %v", st, err)
	}
	// The guest writes on during the resync, into the dirty ranges too.
	for i := range 10 {
		if err := f.q.QemuIO(ctx, filter.FilterNode("disk0"), fmt.Sprintf("write -P 0x%02x %d 4096", 0x70+i, int64(i)*1536*1024+8192)); err != nil {
			t.Fatal(err)
		}
	}
	if st, err := c2.WaitState(ctx, filter.Syncing, filter.Error); st != filter.Syncing {
		t.Fatalf("second attach: %s %v", st, err)
	}
	p, ok := c2.Progress()
	if !ok || !p.Done || p.Mode != "bitmap" {
		t.Fatalf("no finished bitmap resync: %+v %v", p, ok)
	}
	var data int64
	var kinds []record.MarkerKind
	cur := f.sp.Cursor(from)
	for {
		r, err := cur.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if r.Kind == record.Data {
			data += int64(r.Length)
		}
		if r.Kind == record.Marker {
			kinds = append(kinds, r.Marker)
		}
	}
	cur.Close()
	t.Logf("resync: %+v; %d bytes of data in the stream after the attach for %d bytes changed while detached (+ 40 KiB written during it)", p, data, changed)
	if p.Sent > changed*12/10 || data > changed*12/10+10*4096 {
		t.Errorf("the resync sent %d bytes (%d of data in the stream) for %d changed: not a copy of what changed only", p.Sent, data, changed)
	}
	if len(kinds) < 3 || kinds[0] != record.ResyncBegin || kinds[len(kinds)-2] != record.ResyncEnd || kinds[len(kinds)-1] != record.SyncComplete {
		t.Fatalf("markers after the attach %v: want the resync bracketed, then sync-complete", kinds)
	}
	// Nothing of the old generations is left but the live one.
	waitBitmaps(ctx, t, f.q, "qcdp-disk0")

	if err := c2.Detach(dctx); err != nil {
		t.Fatal(err)
	}
	f.srv.stop()
	if err := f.sp.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	f.q.Close()
	applied := filepath.Join(f.dir, "applied.raw")
	if _, err := spool.Apply(ctx, filepath.Join(f.dir, "spool"), map[string]string{"disk0": applied}, spool.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := harness.Compare(ctx, f.src, "qcow2", applied, "raw"); err != nil {
		t.Fatalf("the spool does not rebuild the source after a bitmap resync: %v", err)
	}
}

// waitBitmaps waits until the disk0 node's bitmaps are exactly want.
func waitBitmaps(ctx context.Context, t *testing.T, q *harness.QEMU, want ...string) {
	t.Helper()
	var got []string
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		var nodes []struct {
			NodeName     string `json:"node-name"`
			DirtyBitmaps []struct {
				Name string `json:"name"`
			} `json:"dirty-bitmaps"`
		}
		if err := q.QMP.Execute(ctx, "query-named-block-nodes", map[string]bool{"flat": true}, &nodes); err != nil {
			t.Fatal(err)
		}
		got = nil
		for _, n := range nodes {
			if n.NodeName == "disk0" {
				for _, b := range n.DirtyBitmaps {
					if b.Name != "" { // the mirror job's own bitmap has none
						got = append(got, b.Name)
					}
				}
			}
		}
		if slices.Equal(got, want) {
			return
		}
	}
	t.Fatalf("bitmaps of disk0: %q, want %q", got, want)
}

// TestFilterBitmapResyncAfterCleanRestart: QEMU quits cleanly while the
// disk is captured (a guest shut down), which stores the qcow2 v3 image's
// persistent bitmaps; a new QEMU writes to the disk before capture starts
// again (a guest booting); the new capture copies only what changed.
func TestFilterBitmapResyncAfterCleanRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := newResyncFixture(ctx, t, "g1")
	var err error
	f.runSynced(ctx, t, "qcdp-g1/disk0")
	f.q.Close() // a clean quit: QEMU ends the job and stores the bitmaps
	if st, _ := f.c.WaitState(ctx, filter.Detached, filter.Error); st != filter.Detached {
		t.Fatalf("after QEMU quit: %s", st)
	}

	q := harness.Start(ctx, t, harness.Options{Dir: f.dir, Disks: []harness.Disk{{Name: "disk0", Path: f.src, Format: "qcow2"}}})
	const changed = 6 * 32768
	for i := range 6 {
		if err := q.QemuIO(ctx, "disk0", fmt.Sprintf("write -P 0x%02x %d 32768", 0x90+i, int64(i)*2<<20+12288)); err != nil {
			t.Fatal(err)
		}
	}
	c2, err := filter.New(q.QMP, f.cfg, f.seq)
	if err != nil {
		t.Fatal(err)
	}
	ran := make(chan error, 1)
	rctx, stop := context.WithCancel(ctx)
	go func() { ran <- c2.Run(rctx) }()
	if st, err := c2.WaitState(ctx, filter.Syncing, filter.Error); st != filter.Syncing {
		t.Fatalf("attach after the restart: %s %v", st, err)
	}
	p, ok := c2.Progress()
	t.Logf("resync after a clean restart: %+v", p)
	if !ok || !p.Done || p.Mode != "bitmap" || p.Sent < changed || p.Sent > changed*12/10 {
		t.Fatalf("resync after a clean restart: %+v %v; want a bitmap resync of about %d bytes", p, ok, changed)
	}
	dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
	defer dcancel()
	if err := c2.Detach(dctx); err != nil {
		t.Fatal(err)
	}
	stop()
	<-ran
	f.srv.stop()
	if err := f.sp.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	q.Close()
	applied := filepath.Join(f.dir, "applied.raw")
	if _, err := spool.Apply(ctx, filepath.Join(f.dir, "spool"), map[string]string{"disk0": applied}, spool.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := harness.Compare(ctx, f.src, "qcow2", applied, "raw"); err != nil {
		t.Fatalf("the spool does not rebuild the source after a clean restart and a bitmap resync: %v", err)
	}
}
