package filter

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/qmp"
	"github.com/qcdp/qcdp/record"
)

// rig is one disk's Capture against a fake QEMU and a fake sequencer.
type rig struct {
	t   *testing.T
	ctx context.Context
	f   *fakeQEMU
	m   *fakeMarker
	c   *Capture

	ran     chan error
	once    sync.Once
	err     error
	stopRun context.CancelFunc
}

const testSocket = "/run/qcdp/g1.sock"

// newRig sets up QEMU (setup may change it before the client connects) and
// the Capture; Run is not started. cfg may change the Config.
func newRig(t *testing.T, setup func(*fakeQEMU, *fakeMarker), cfg func(*Config)) *rig {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	var logs syncBuffer
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("capture log:\n%s", logs.String())
		}
	})
	r := &rig{t: t, ctx: ctx, f: newFakeQEMU(t), m: &fakeMarker{}, ran: make(chan error, 1)}
	if setup != nil {
		setup(r.f, r.m)
	}
	c := Config{
		Disk: "disk0", Node: "disk0", Socket: testSocket, Persistent: true,
		ResumeBackoff: 5 * time.Millisecond, MaxResumeBackoff: 20 * time.Millisecond, ConvergePoll: 5 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if cfg != nil {
		cfg(&c)
	}
	var err error
	if r.c, err = New(r.f.dial(ctx), c, r.m); err != nil {
		t.Fatal(err)
	}
	return r
}

// run starts Run; it is stopped when the test ends.
func (r *rig) run() {
	runCtx, stop := context.WithCancel(r.ctx)
	r.stopRun = stop
	go func() { r.ran <- r.c.Run(runCtx) }()
	r.t.Cleanup(func() {
		stop()
		r.result()
	})
}

// result waits for Run's result.
func (r *rig) result() error {
	r.t.Helper()
	r.once.Do(func() {
		select {
		case r.err = <-r.ran:
		case <-time.After(10 * time.Second):
			r.err = errors.New("Run did not return")
			r.t.Error(r.err)
		}
	})
	return r.err
}

// wait waits until the disk is in one of states.
func (r *rig) wait(states ...State) State {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(r.ctx, 10*time.Second)
	defer cancel()
	st, err := r.c.WaitState(ctx, states...)
	if err != nil {
		_, cause := r.c.State()
		r.t.Fatalf("%v (error %v)", err, cause)
	}
	return st
}

// synced runs the rig to syncing through READY.
func (r *rig) synced() {
	r.t.Helper()
	r.run()
	r.wait(InitialSync)
	r.f.ready()
	r.wait(Syncing)
}

func (r *rig) wantMarkers(want ...record.MarkerKind) {
	r.t.Helper()
	if got := r.m.markers(); !slices.Equal(got, want) {
		r.t.Errorf("markers in the stream %v, want %v", got, want)
	}
}

func (r *rig) wantState(want State) {
	r.t.Helper()
	if st, err := r.c.State(); st != want {
		r.t.Errorf("state %s (%v), want %s", st, err, want)
	}
}

// syncBuffer is a bytes.Buffer for a logger used from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A new disk gets the bitmap, the NBD target and a write-blocking mirror
// exactly as documented, and its stream gets sync-complete at READY, not
// before: the replica offers no restore point before the first READY.
func TestCaptureAttachesAndMarksSyncCompleteAtReady(t *testing.T) {
	r := newRig(t, nil, nil)
	r.run()
	r.wait(InitialSync)

	var bm struct {
		Node, Name  string
		Granularity uint32
		Persistent  bool
	}
	if cmds := r.f.commands("block-dirty-bitmap-add"); len(cmds) != 1 || cmds[0].Decode(&bm) != nil ||
		bm != (struct {
			Node, Name  string
			Granularity uint32
			Persistent  bool
		}{"disk0", "qcdp-disk0", 4096, true}) {
		t.Errorf("bitmap: %v, decoded %+v", cmds, bm)
	}
	var target struct {
		Driver         string `json:"driver"`
		NodeName       string `json:"node-name"`
		Export         string `json:"export"`
		ReconnectDelay *int   `json:"reconnect-delay"`
		Server         struct{ Type, Path string }
	}
	if cmds := r.f.commands("blockdev-add"); len(cmds) != 1 || cmds[0].Decode(&target) != nil ||
		target.Driver != "nbd" || target.NodeName != "qcdp-t-disk0" || target.Export != "disk0" ||
		target.ReconnectDelay == nil || *target.ReconnectDelay != 0 ||
		target.Server.Type != "unix" || target.Server.Path != testSocket {
		t.Errorf("target node: %v, decoded %+v", cmds, target)
	}
	var mirror qmp.MirrorArgs
	want := qmp.MirrorArgs{JobID: "qcdp-disk0", Device: "disk0", Target: "qcdp-t-disk0", Sync: "full",
		CopyMode: "write-blocking", Granularity: 4096, OnTargetError: "stop", OnSourceError: "report",
		FilterNodeName: "qcdp-f-disk0"}
	if cmds := r.f.commands("blockdev-mirror"); len(cmds) != 1 || cmds[0].Decode(&mirror) != nil || mirror != want {
		t.Errorf("mirror: %v, decoded %+v, want %+v", cmds, mirror, want)
	}
	// The copy is bracketed: no restore point inside it, even when the
	// replica has points of the disk from an earlier attach. (Run's loop
	// writes the marker just after the state shows.)
	r.m.waitCalls(r.ctx, t, record.ResyncBegin, 1)
	r.wantMarkers(record.ResyncBegin)

	r.f.ready()
	r.wait(Syncing)
	r.wantMarkers(record.ResyncBegin, record.ResyncEnd, record.SyncComplete)
	if n := len(r.f.commands("block-job-resume")); n != 0 {
		t.Errorf("%d resumes of a job that never stopped", n)
	}
}

// A bitmap kept from an earlier attach (or loaded from a qcow2 v3 image)
// goes on tracking: it is not added again, so what it tracked is kept.
func TestCaptureKeepsAnExistingBitmap(t *testing.T) {
	r := newRig(t, func(f *fakeQEMU, _ *fakeMarker) {
		f.nodes["disk0"].bitmaps = []fakeBitmap{{Name: "qcdp-disk0", Granularity: 4096, Persistent: true}}
	}, nil)
	r.run()
	r.wait(InitialSync)
	if cmds := r.f.commands("block-dirty-bitmap-add"); len(cmds) != 0 {
		t.Errorf("bitmap added again over the existing one: %v", cmds)
	}
	if len(r.f.commands("blockdev-mirror")) != 1 {
		t.Error("no mirror started")
	}
}

// The capture server goes away (refused writes stop the job): the disk goes
// to tracking, the job is resumed with a doubling backoff for as long as the
// target refuses, and once it takes writes again the re-copy is bracketed by
// resync markers and the disk is syncing again.
func TestCaptureResumesAfterTargetErrorUntilItRuns(t *testing.T) {
	const minWait, maxWait = 10 * time.Millisecond, 40 * time.Millisecond
	r := newRig(t, nil, func(c *Config) { c.ResumeBackoff, c.MaxResumeBackoff = minWait, maxWait })
	r.synced()

	r.f.setTargetDown(true)
	r.f.refuseWrite()
	if st := r.wait(Tracking, Resync); st != Tracking && st != Resync {
		t.Fatalf("state %s after a refused write", st)
	}
	resumes := r.f.waitCommands(r.ctx, "block-job-resume", 5)
	// Each retry waits at least the backoff, which doubles up to its cap.
	for i, want := range []time.Duration{2 * minWait, 4 * minWait, maxWait, maxWait} {
		if gap := resumes[i+1].At.Sub(resumes[i].At); gap < want {
			t.Errorf("resume %d came %v after the one before, want at least %v", i+2, gap, want)
		}
	}
	r.wantMarkers(record.ResyncBegin, record.ResyncEnd, record.SyncComplete, record.ResyncBegin)
	if st, _ := r.c.State(); st != Tracking && st != Resync {
		t.Errorf("state %s while the target refuses writes, want tracking or resync", st)
	}

	r.f.setTargetDown(false)
	r.wait(Syncing)
	r.wantMarkers(record.ResyncBegin, record.ResyncEnd, record.SyncComplete, record.ResyncBegin, record.ResyncEnd)
	if j := r.f.jobNow(); j == nil || j.paused || j.io != "ok" {
		t.Errorf("job after convergence: %+v, want running", j)
	}
	if n := r.m.callsOf(record.SyncComplete); n != 1 {
		t.Errorf("sync-complete written %d times, want once per job", n)
	}
}

// The sequencer refuses resync-end while refused writes are still owed a
// re-copy: the disk stays in resync and tries again, and is syncing only
// once the bracket is closed.
func TestCaptureResyncEndRetriedUntilWritten(t *testing.T) {
	r := newRig(t, nil, nil)
	r.synced()
	r.m.refuseNext(record.ResyncEnd, 3)
	r.f.refuseWrite() // the target is up again at once: the first resume runs
	r.m.waitCalls(r.ctx, t, record.ResyncEnd, 5)
	r.wait(Syncing)
	if n := r.m.callsOf(record.ResyncEnd); n != 5 {
		t.Errorf("resync-end tried %d times, want 5 (the copy's own, then 4 with 3 refused)", n)
	}
	r.wantMarkers(record.ResyncBegin, record.ResyncEnd, record.SyncComplete, record.ResyncBegin, record.ResyncEnd)
}

// A job that reaches READY only through a resync (its initial copy was
// refused) still gets its sync-complete marker, after the resync is closed:
// without it the replica never offers a restore point for the disk.
func TestCaptureSyncCompleteAfterResync(t *testing.T) {
	r := newRig(t, nil, nil)
	r.run()
	r.wait(InitialSync)
	r.f.setTargetDown(true)
	r.f.refuseWrite()
	r.f.waitCommands(r.ctx, "block-job-resume", 2)
	r.wantMarkers(record.ResyncBegin)
	r.f.setTargetDown(false)
	r.wait(Syncing)
	r.wantMarkers(record.ResyncBegin, record.ResyncEnd, record.SyncComplete)
}

// The sequencer refuses sync-complete at READY (the spool is full): the gap
// is bracketed as a resync, and sync-complete is written once it closes.
func TestCaptureSyncCompleteRefusedAtReady(t *testing.T) {
	r := newRig(t, func(_ *fakeQEMU, m *fakeMarker) { m.refuseNext(record.SyncComplete, 1) }, nil)
	r.run()
	r.wait(InitialSync)
	r.f.ready()
	r.wait(Syncing)
	// The refused sync-complete is written after the next convergence,
	// which closes the bracket once more (a second resync-end is harmless).
	r.wantMarkers(record.ResyncBegin, record.ResyncEnd, record.ResyncEnd, record.SyncComplete)
	if n := r.m.callsOf(record.SyncComplete); n != 2 {
		t.Errorf("sync-complete tried %d times, want 2 (1 refused)", n)
	}
}

// An operator's pause holds: the disk shows paused at once, the job stopped
// by the refusing export is never resumed, not even by a retry armed before
// the pause, until Resume, which brackets the re-copy as a resync.
func TestCaptureOperatorPauseHoldsUntilResume(t *testing.T) {
	r := newRig(t, nil, nil)
	r.synced()

	r.c.Resume(r.ctx) // not paused: nothing happens
	r.wantState(Syncing)
	r.wantMarkers(record.ResyncBegin, record.ResyncEnd, record.SyncComplete)

	r.c.Pause()
	r.wantState(Paused) // at once, as `qcdp pause` then `qcdp status` shows
	r.f.setTargetDown(true)
	r.f.refuseWrite() // the export refuses writes while paused
	// Nothing to wait for: the promise is that nothing happens. Many
	// backoffs and polls long.
	waitFor(r.ctx, 300*time.Millisecond)
	if n := len(r.f.commands("block-job-resume")); n != 0 {
		t.Fatalf("%d resumes during an operator's pause", n)
	}
	r.wantState(Paused)

	r.f.setTargetDown(false)
	r.c.Resume(r.ctx)
	r.wait(Syncing)
	r.wantMarkers(record.ResyncBegin, record.ResyncEnd, record.SyncComplete, record.ResyncBegin, record.ResyncEnd)
}

// A pause that comes while a resume is already scheduled cancels it.
func TestCaptureOperatorPauseBeatsAnArmedRetry(t *testing.T) {
	r := newRig(t, nil, func(c *Config) { c.ResumeBackoff = 100 * time.Millisecond })
	r.synced()
	r.f.setTargetDown(true)
	r.f.refuseWrite()
	r.wait(Tracking) // the retry is armed for 100 ms
	r.c.Pause()
	waitFor(r.ctx, 300*time.Millisecond)
	if n := len(r.f.commands("block-job-resume")); n != 0 {
		t.Fatalf("%d resumes after the operator paused", n)
	}
	r.wantState(Paused)
}

// Detach cancels the job (forced, never block-job-complete, which would
// switch the guest onto the NBD target), removes the target node, keeps the
// bitmap tracking, and Run returns nil.
func TestCaptureDetachCancelsNeverCompletes(t *testing.T) {
	r := newRig(t, nil, nil)
	r.synced()
	if err := r.c.Detach(r.ctx); err != nil {
		t.Fatalf("Detach: %v", err)
	}
	if err := r.result(); err != nil {
		t.Errorf("Run after Detach: %v, want nil", err)
	}
	r.wantState(Detached)
	if n := len(r.f.commands("block-job-complete")); n != 0 {
		t.Errorf("block-job-complete sent %d times", n)
	}
	var cancel struct {
		Device string
		Force  bool
	}
	if cmds := r.f.commands("block-job-cancel"); len(cmds) != 1 || cmds[0].Decode(&cancel) != nil || cancel.Device != "qcdp-disk0" || !cancel.Force {
		t.Errorf("cancel: %v (%+v), want one forced cancel of qcdp-disk0", cmds, cancel)
	}
	if r.f.jobNow() != nil || r.f.hasNode(TargetNode("disk0")) {
		t.Errorf("job %+v or target node left in QEMU", r.f.jobNow())
	}
	if bm := r.f.bitmaps("disk0"); len(bm) != 1 || bm[0].Name != "qcdp-disk0" {
		t.Errorf("bitmaps after detach %+v, want qcdp-disk0 left tracking", bm)
	}
}

// A paused disk's job is stopped and its target refuses writes: Detach must
// still end promptly (a soft cancel would drain forever).
func TestCapturePausedDetachDoesNotHang(t *testing.T) {
	r := newRig(t, nil, nil)
	r.synced()
	r.c.Pause()
	r.f.setTargetDown(true)
	r.f.refuseWrite()
	ctx, cancel := context.WithTimeout(r.ctx, 5*time.Second)
	defer cancel()
	if err := r.c.Detach(ctx); err != nil {
		t.Fatalf("Detach of a paused disk: %v", err)
	}
	if err := r.result(); err != nil {
		t.Errorf("Run after Detach: %v", err)
	}
	r.wantState(Detached)
}

// A job that ends without a Detach (QEMU ended it: a source error, a
// shutdown) fails capture with ErrJobVanished, which the daemon tells apart.
func TestCaptureJobVanished(t *testing.T) {
	r := newRig(t, nil, nil)
	r.synced()
	r.f.vanish("Input/output error")
	err := r.result()
	if !errors.Is(err, ErrJobVanished) {
		t.Fatalf("Run = %v, want ErrJobVanished", err)
	}
	st, cause := r.c.State()
	if st != Error || !errors.Is(cause, ErrJobVanished) {
		t.Errorf("state %s (%v), want error with ErrJobVanished", st, cause)
	}
	// After the end, the operator's words change nothing.
	r.c.Pause()
	r.c.Resume(r.ctx)
	if st, _ := r.c.State(); st != Error {
		t.Errorf("state %s after Pause and Resume of an ended capture, want error", st)
	}
	r.wantMarkers(record.ResyncBegin, record.ResyncEnd, record.SyncComplete)
}

// A guest powers off: QEMU says SHUTDOWN and cancels the job as it exits.
// That is the VM's normal end, not an error: detached, ErrVMShutdown (the
// trust review saw both disks shown in error after a clean poweroff).
func TestCaptureVMShutdownIsNoError(t *testing.T) {
	r := newRig(t, nil, nil)
	r.synced()
	r.f.shutdown()
	err := r.result()
	if !errors.Is(err, ErrVMShutdown) {
		t.Fatalf("Run = %v, want ErrVMShutdown", err)
	}
	if st, cause := r.c.State(); st != Detached || !errors.Is(cause, ErrVMShutdown) {
		t.Errorf("state %s (%v) after a guest poweroff, want detached (the VM shut down)", st, cause)
	}
}

// QEMU goes away between events: ErrMonitorGone.
func TestCaptureMonitorGone(t *testing.T) {
	r := newRig(t, nil, nil)
	r.synced()
	r.f.srv.HangUp()
	err := r.result()
	if !errors.Is(err, ErrMonitorGone) {
		t.Fatalf("Run = %v, want ErrMonitorGone", err)
	}
	if st, cause := r.c.State(); st != Error || !errors.Is(cause, ErrMonitorGone) {
		t.Errorf("state %s (%v), want error with ErrMonitorGone", st, cause)
	}
}

// QEMU goes away under a command: still ErrMonitorGone.
func TestCaptureMonitorGoneUnderACommand(t *testing.T) {
	r := newRig(t, func(f *fakeQEMU, _ *fakeMarker) { f.hangUpAt = "blockdev-mirror" }, nil)
	r.run()
	err := r.result()
	if !errors.Is(err, ErrMonitorGone) || !errors.Is(err, qmp.ErrClosed) {
		t.Fatalf("Run = %v, want ErrMonitorGone", err)
	}
	r.wantState(Error)
}

// A mirror QEMU refuses leaves no target node behind, and the error says
// what QEMU said.
func TestCaptureAttachFailure(t *testing.T) {
	r := newRig(t, func(f *fakeQEMU, _ *fakeMarker) {
		f.failMirror = `{"error": {"class": "GenericError", "desc": "Permission conflict on node 'disk0'"}}`
	}, nil)
	r.run()
	err := r.result()
	var qe *qmp.Error
	if !errors.As(err, &qe) || qe.Command != "blockdev-mirror" || errors.Is(err, ErrMonitorGone) {
		t.Fatalf("Run = %v, want blockdev-mirror's error", err)
	}
	if st, cause := r.c.State(); st != Error || !errors.Is(cause, qe) {
		t.Errorf("state %s (%v), want error with QEMU's", st, cause)
	}
	if r.f.hasNode(TargetNode("disk0")) {
		t.Error("target node left behind after a failed attach")
	}
}

// A restarted daemon adopts the job it finds: it does not start another
// one, and a job that was ready or stopped is resumed and resynced, because
// writes were refused, or in flight, while no daemon listened.
func TestCaptureAdoptsExistingJob(t *testing.T) {
	tests := []struct {
		name        string
		job         fakeJob
		first       State
		wantMarkers []record.MarkerKind
	}{
		// The earlier daemon opened the copy's bracket: READY closes it.
		{"copying", fakeJob{}, InitialSync, []record.MarkerKind{record.ResyncEnd, record.SyncComplete}},
		{"ready", fakeJob{ready: true}, Tracking, []record.MarkerKind{record.ResyncBegin, record.ResyncEnd, record.SyncComplete}},
		{"stopped", fakeJob{paused: true, io: "failed"}, Tracking, []record.MarkerKind{record.ResyncBegin, record.ResyncEnd, record.SyncComplete}},
		{"ready and stopped", fakeJob{ready: true, paused: true, io: "failed"}, Tracking, []record.MarkerKind{record.ResyncBegin, record.ResyncEnd, record.SyncComplete}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// A long first backoff, so the state adoption leads to is seen
			// before the first resume moves it on.
			r := newRig(t, func(f *fakeQEMU, _ *fakeMarker) { f.adoptable(tt.job) },
				func(c *Config) { c.ResumeBackoff = 300 * time.Millisecond })
			r.run()
			r.wait(tt.first)
			if tt.first == InitialSync {
				r.f.ready()
			}
			r.wait(Syncing)
			for _, c := range []string{"blockdev-mirror", "blockdev-add", "block-dirty-bitmap-add"} {
				if n := len(r.f.commands(c)); n != 0 {
					t.Errorf("%s sent %d times while adopting", c, n)
				}
			}
			if n := len(r.f.commands("block-job-resume")); (n > 0) != (tt.first == Tracking) {
				t.Errorf("%d resumes of an adopted %s job", n, tt.name)
			}
			r.wantMarkers(tt.wantMarkers...)
		})
	}
}

// Cancelling Run leaves the job in QEMU for the next daemon to adopt.
func TestCaptureCancelLeavesTheJob(t *testing.T) {
	r := newRig(t, nil, nil)
	r.synced()
	r.stopRun()
	if err := r.result(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want context.Canceled", err)
	}
	if n := len(r.f.commands("block-job-cancel")); n != 0 {
		t.Errorf("cancelling Run cancelled the job (%d cancels)", n)
	}
	if r.f.jobNow() == nil || !r.f.hasNode(TargetNode("disk0")) {
		t.Error("job or target node gone after Run was cancelled")
	}
}
