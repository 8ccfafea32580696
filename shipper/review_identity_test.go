package shipper

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/shipper/sender"
	"github.com/qcdp/qcdp/shipper/spool"
	"github.com/qcdp/qcdp/vfs"
)

// reviewGroup opens and serves a group on dir streaming to rep, with one
// export vda; stop shuts it down.
func reviewGroup(t *testing.T, ctx context.Context, dir string, rep *testReplica) (g *Group, exp *CaptureExport, stop func()) {
	t.Helper()
	opts := GroupOptions{
		Spool: spool.Options{Dir: dir, Group: "g1", Logger: quiet},
		Replica: &sender.Options{Addr: rep.addr, TLS: rep.pki.Client("acme", "kvm1"), Host: "kvm1",
			MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond},
		Logger: quiet,
	}
	g, err := OpenGroup(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	exp, err = g.Export("vda", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- g.Serve(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			if err := g.Shutdown(context.Background()); err != nil {
				t.Errorf("Shutdown: %v", err)
			}
			<-served
		})
	}
	t.Cleanup(stop)
	return g, exp, stop
}

func reviewWrite(t *testing.T, ctx context.Context, exp *CaptureExport, n int, b byte) {
	t.Helper()
	for i := range n {
		if err := exp.WriteAt(ctx, bytes.Repeat([]byte{b}, 512), int64(i)*512); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReviewCopiedSpoolSpliced: a spool directory copied while stopped
// (a host image cloned, a backup restored on a second host) keeps the same
// id, and both copies bump the epoch to the same value at their next open.
// The replica refuses only an epoch *lower* than the bound one, and each
// copy's Intact is MaxUint64 once it was welcomed, so the two hosts took
// the group's stream in turns (each replaced the other) and the journal
// got B's seqs 6..13 and then A's 14..17; A's own 6..13, which never
// reached the replica, were acknowledged and deleted from A's spool. Now
// every open after the first raises the epoch by a random step: the copy
// with the lower epoch is refused as diverged and acknowledges nothing.
func TestReviewCopiedSpoolSpliced(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep := startReplica(t)
	dirA, dirB := copiedSpool(t, ctx, rep)

	gA, expA, stopA := reviewGroup(t, ctx, dirA, rep)
	defer stopA()
	waitConnected(t, gA)
	gB, expB, stopB := reviewGroup(t, ctx, dirB, rep)
	defer stopB()
	idA, idB := gA.Spool().Identity(), gB.Spool().Identity()
	t.Logf("spool A %s epoch %d; copy B %s epoch %d", idA.ID, idA.Epoch, idB.ID, idB.Epoch)

	if idA.Epoch == idB.Epoch {
		t.Fatalf("both copies opened at epoch %d", idA.Epoch)
	}
	reviewWrite(t, ctx, expB, 8, 0xBB)  // B: seqs 6..13
	reviewWrite(t, ctx, expA, 12, 0xAA) // A: seqs 6..17, other writes
	// One copy streams; the other is refused as diverged (a lower epoch
	// than the one the replica took, or a spool lacking records the
	// replica holds from the other) and never acknowledges a record the
	// replica does not hold from it.
	t.Cleanup(func() { t.Logf("A: %+v\nB: %+v", gA.Sender().Stats(), gB.Sender().Stats()) })
	var lose *Group
	deadline := time.Now().Add(15 * time.Second)
	for lose == nil {
		a, b := gA.Sender().Stats(), gB.Sender().Stats()
		switch {
		case gA.Spool().Acked() == 17 && b.Diverged != "":
			lose = gB
		case gB.Spool().Acked() == 13 && a.Diverged != "":
			lose = gA
		case time.Now().After(deadline):
			t.Fatalf("neither copy streams with the other refused as diverged: acked A %d, B %d", gA.Spool().Acked(), gB.Spool().Acked())
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	if got := lose.Spool().Acked(); got != 5 {
		t.Fatalf("copied spool spliced: the refused copy acknowledged seq %d though the replica holds the other copy's records past 5", got)
	}
	t.Logf("diverged copy says: %s", lose.Sender().Stats().Diverged)
}

// copiedSpool makes a spool directory whose 5 records rep acknowledged,
// stops it, and copies it (cp -a) as a cloned host image would: two
// copies of one stopped spool.
func copiedSpool(t *testing.T, ctx context.Context, rep *testReplica) (dirA, dirB string) {
	t.Helper()
	root := t.TempDir()
	dirA, dirB = filepath.Join(root, "a"), filepath.Join(root, "b")
	g, exp, stop := reviewGroup(t, ctx, dirA, rep)
	reviewWrite(t, ctx, exp, 5, 0x11)
	waitAcked(t, g, 5, 10*time.Second)
	stop()
	if out, err := exec.Command("cp", "-a", dirA, dirB).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	return dirA, dirB
}

func waitConnected(t *testing.T, g *Group) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !g.Sender().Stats().Connected {
		if time.Now().After(deadline) {
			t.Fatalf("sender never connected: %+v", g.Sender().Stats())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestReviewJournalMovedAsideNamesTheWayOut: the group's journal is moved
// aside at the replica (a second replica with an empty storage root is the
// same), but the host's spool has already let go of every record the old
// journal acknowledged: the new journal can only start at seq 1, so the
// stream cannot go on. The sender must say so as diverged, naming the way
// out (move the spool aside too, as replica/receiver/doc.go says), not
// retry in silence.
func TestReviewJournalMovedAsideNamesTheWayOut(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep := startReplica(t)
	dir := filepath.Join(t.TempDir(), "spool")
	g, exp, stop := reviewGroup(t, ctx, dir, rep)
	reviewWrite(t, ctx, exp, 5, 1)
	waitAcked(t, g, 5, 10*time.Second)
	stop()

	fresh := startReplica(t) // the group's journal moved aside
	g, exp, stop = reviewGroup(t, ctx, dir, fresh)
	defer stop()
	reviewWrite(t, ctx, exp, 3, 2)
	deadline := time.Now().Add(8 * time.Second)
	for {
		st := g.Sender().Stats()
		if strings.Contains(st.Diverged, "move this spool aside") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream cannot go on, but status does not say diverged with the way out: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestReviewHealLosesAckedWrites: a write answered to QEMU as taken (in
// the spool file, not yet fsync'd), then an fsync fails and the kernel
// drops the dirty pages (what Linux does after a writeback error; modelled
// by MemFS.Crash). The group heals: the reopened spool lacks the answered
// writes, and the sequencer only logs it. It reuses their seqs for new
// records and owes the disk nothing: no resync bracket, no full copy, no
// status. QEMU's bitmap no longer tracks those chunks (the mirror saw them
// succeed), so the replica never gets them and every later restore point
// lacks writes the guest saw complete (invariants 3 and 4).
func TestReviewHealLosesAckedWrites(t *testing.T) {
	ctx := context.Background()
	l := lossyHeal(t)
	opts, seq, exp, sp2 := l.opts, l.seq, l.exp, l.sp2
	seq.reopened(sp2)
	if err := exp.WriteAt(ctx, []byte{9}, 9*4096); err != nil {
		t.Fatal(err)
	}
	recs := readAll(t, sp2, 1)
	for _, r := range recs {
		t.Logf("seq %d %v %v disk=%s off=%d", r.Seq, r.Kind, r.Marker, r.Disk, r.Offset)
	}
	begun := false
	for _, r := range recs {
		begun = begun || r.Kind == record.Marker && r.Marker == record.ResyncBegin && r.Disk == "vda"
	}
	if !begun {
		t.Fatalf("3 writes answered as taken were lost by the heal; the stream goes on (seq %d reused) with no resync owed for vda", recs[len(recs)-1].Seq)
	}
	// The bracket stays open until a full re-copy has started, across a
	// restart of the daemon too: QEMU's convergence is not enough.
	if _, err := seq.MarkDisk(record.ResyncEnd, "vda"); !errors.Is(err, ErrResyncPending) {
		t.Fatalf("resync-end before the re-copy: %v, want ErrResyncPending", err)
	}
	sp2.Close()
	sp3, err := spool.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer sp3.Close()
	seq = NewSequencer(sp3)
	if got := seq.RecopyOwed(); !slices.Equal(got, []string{"vda"}) {
		t.Fatalf("after a restart the re-copies owed are %q, want [vda]", got)
	}
	if _, err := seq.MarkDisk(record.ResyncEnd, "vda"); !errors.Is(err, ErrResyncPending) {
		t.Fatalf("resync-end before the re-copy, after a restart: %v, want ErrResyncPending", err)
	}
	if err := seq.RecopyStarted("vda"); err != nil {
		t.Fatal(err)
	}
	if _, err := seq.MarkDisk(record.ResyncEnd, "vda"); err != nil {
		t.Fatalf("resync-end once the re-copy started: %v", err)
	}
	if got := seq.RecopyOwed(); len(got) != 0 {
		t.Fatalf("re-copies still owed: %q", got)
	}
}

// TestReviewShutdownTwiceConcurrently: "a second call returns the first
// one's result", but a second Shutdown racing the first returns nil at
// once, before the spool is synced and closed, and reads closeErr while
// the first writes it (a data race under -race).
func TestReviewShutdownTwiceConcurrently(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMemFS()
	g, err := OpenGroup(ctx, GroupOptions{Spool: spool.Options{Dir: "/s", Group: "g1", FS: fs}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	exp, err := g.Export("vda", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := exp.WriteAt(ctx, []byte{1}, 0); err != nil {
		t.Fatal(err)
	}
	// The final sync is slow (a loaded disk), then fails.
	fs.SetInjector(func(op vfs.Op, _ string) error {
		if op == vfs.OpSync {
			time.Sleep(300 * time.Millisecond)
			return syscall.EIO
		}
		return nil
	})
	first := make(chan error, 1)
	go func() { first <- g.Shutdown(ctx) }()
	time.Sleep(50 * time.Millisecond) // the first call is in its final sync
	second := g.Shutdown(ctx)
	spoolOpen := g.Spool().Stats() // still open: the first call has not closed it
	if err := <-first; err == nil {
		t.Fatal("first Shutdown: want the failed final sync")
	}
	if second == nil {
		t.Fatalf("second Shutdown returned nil while the first was still syncing (spool still open: %+v) and before its failed final sync was known", spoolOpen)
	}
}

// TestReviewCopiedSpoolSplicedAfterReopen (review): two copies of one
// stopped spool, both welcomed at the copy point; one takes the stream and
// ships its records, the other writes its own. With epochs that only
// grew, the loser's daemon restarting until its random epoch passed the
// winner's was taken and acknowledged its records: the journal held the
// winner's 6..13 then the loser's 14..17. Now epochs descend from the one
// last welcomed: the loser's never descend from the winner's, and it is
// refused however often it reopens.
func TestReviewCopiedSpoolSplicedAfterReopen(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	rep := startReplica(t)
	dirA, dirB := copiedSpool(t, ctx, rep)
	gA, expA, stopA := reviewGroup(t, ctx, dirA, rep)
	defer func() { stopA() }()
	waitConnected(t, gA) // A welcomed at 5
	gB, expB, stopB := reviewGroup(t, ctx, dirB, rep)
	defer func() { stopB() }()
	reviewWrite(t, ctx, expA, 8, 0xAA)  // A: 6..13
	reviewWrite(t, ctx, expB, 12, 0xBB) // B: its own 6..17
	waitAcked(t, gA, 13, 10*time.Second)
	for i := range 6 { // B's daemon restarts again and again
		deadline := time.Now().Add(2 * time.Second)
		for gB.Sender().Stats().Diverged == "" && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got := gB.Spool().Acked(); got != 5 {
			t.Fatalf("restart %d of copy B (epoch %#x, A %#x): B acknowledged %d: the replica spliced B's records onto A's",
				i, gB.Spool().Identity().Epoch, gA.Spool().Identity().Epoch, got)
		}
		if d := gB.Sender().Stats().Diverged; d == "" {
			t.Fatalf("restart %d of copy B: not told it diverged: %+v", i, gB.Sender().Stats())
		}
		stopB()
		gB, _, stopB = reviewGroup(t, ctx, dirB, rep)
	}
	// A restarts too: it is taken again, and B still is not.
	stopA()
	gA, _, stopA = reviewGroup(t, ctx, dirA, rep)
	waitConnected(t, gA)
	if got := gA.Spool().Acked(); got != 13 {
		t.Fatalf("A acked %d after its restart, want 13", got)
	}
}

// lossy is a group's capture state right after a heal that lost answered
// writes (lossyHeal).
type lossy struct {
	fs   *vfs.MemFS
	opts spool.Options
	seq  *Sequencer
	exp  *CaptureExport
	sp2  *spool.Spool // the reopened spool, not yet given to seq
}

// lossyHeal plays the writes a heal loses: vda's write at 0 is synced,
// three more are answered to QEMU (the guest saw them complete), then an
// fsync fails and the kernel drops the pages of the failed writeback
// (MemFS.Crash); the spool directory is opened again.
func lossyHeal(t *testing.T) lossy {
	t.Helper()
	ctx := context.Background()
	l := lossy{fs: vfs.NewMemFS()}
	l.opts = spool.Options{Dir: "/spool", Group: "g1", FS: l.fs, Logger: quiet}
	sp, err := spool.Open(ctx, l.opts)
	if err != nil {
		t.Fatal(err)
	}
	l.seq = NewSequencer(sp)
	l.seq.SetLogger(quiet)
	if l.exp, err = l.seq.Export("vda", 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := l.exp.WriteAt(ctx, []byte{1}, 0); err != nil {
		t.Fatal(err)
	}
	if err := l.seq.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		if err := l.exp.WriteAt(ctx, []byte{byte(i)}, int64(i)*4096); err != nil {
			t.Fatal(err)
		}
	}
	l.fs.SetInjector(vfs.FailNth(vfs.OpSync, 1, syscall.EIO))
	if err := l.exp.Flush(ctx); err == nil {
		t.Fatal("flush with a failing fsync succeeded")
	}
	l.fs.SetInjector(nil)
	sp.Close()
	l.fs.Crash()
	if l.sp2, err = spool.Open(ctx, l.opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.sp2.Close() })
	return l
}
