package shipper

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica/journal"
	"github.com/qcdp/qcdp/replica/receiver"
	"github.com/qcdp/qcdp/shipper/sender"
	"github.com/qcdp/qcdp/shipper/spool"
	"github.com/qcdp/qcdp/stream/streamtest"
	"github.com/qcdp/qcdp/vfs"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// testReplica is a real receiver over real journals in a temp dir.
type testReplica struct {
	addr string
	pki  *streamtest.PKI
	cfg  *configs.Replica
	srv  *receiver.Server
}

func startReplica(t *testing.T) *testReplica {
	t.Helper()
	root := t.TempDir()
	cfg, err := configs.ParseReplica("replica.toml", []byte(`
[replica]
storage_root = "`+root+`"
ca = "/x/ca.pem"
cert = "/x/r.pem"
key = "/x/r-key.pem"
[[tenant]]
name = "acme"
hosts = ["*"]
groups = ["g1"]
`))
	if err != nil {
		t.Fatal(err)
	}
	r := &testReplica{pki: streamtest.New(t), cfg: cfg}
	r.srv = &receiver.Server{TLS: r.pki.Server, Config: cfg, Logger: quiet,
		OpenJournal: func(ctx context.Context, tenant, group string) (receiver.Journal, error) {
			dir, err := cfg.JournalDir(tenant, group)
			if err != nil {
				return nil, err
			}
			return journal.Open(ctx, journal.Options{Dir: dir, Group: group, Logger: quiet})
		}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- r.srv.Serve(ln) }()
	t.Cleanup(func() {
		if err := r.srv.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
		if err := <-done; !errors.Is(err, receiver.ErrServerClosed) {
			t.Error(err)
		}
	})
	return r
}

// waitAcked waits until the group's spool is acknowledged up to seq: the
// replica holds it durably.
func waitAcked(t *testing.T, g *Group, seq uint64, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for g.Spool().Acked() < seq {
		if time.Now().After(deadline) {
			t.Fatalf("acked %d after %v, want %d", g.Spool().Acked(), timeout, seq)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestGroupHealsAfterFsyncError is trust issue 8: an fsync error breaks the
// spool under a served group with a sender. While the fault lasts, writes
// are answered EIO at once (QEMU tracks them) and the group says it is
// healing; once the fault is gone the group reopens its spool by itself,
// restarts the stream, and writes taken afterwards reach the replica.
func TestGroupHealsAfterFsyncError(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rep := startReplica(t)
	fs := vfs.NewMemFS()
	opts := GroupOptions{
		Spool: spool.Options{Dir: "/state/spool/g1", Group: "g1", FS: fs},
		Replica: &sender.Options{Addr: rep.addr, TLS: rep.pki.Client("acme", "kvm1"), Host: "kvm1",
			MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond},
		Logger: quiet,
	}
	setHealBackoff(&opts)
	g, err := OpenGroup(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	exp, err := g.Export("vda", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- g.Serve(ctx) }()
	defer func() {
		if err := g.Shutdown(context.Background()); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, ErrGroupClosed) {
			t.Errorf("Serve: %v", err)
		}
	}()
	n := 0
	write := func() error {
		n++
		return exp.WriteAt(ctx, bytes.Repeat([]byte{byte(n)}, 512), int64(n%64)*512)
	}
	for range 10 {
		if err := write(); err != nil {
			t.Fatal(err)
		}
	}
	waitAcked(t, g, 10, 10*time.Second)

	fs.SetInjector(vfs.FailFrom(vfs.OpSync, 1, syscall.EIO)) // the disk fails every fsync
	// A flush finds something to fsync unless the replica acknowledged the
	// write first (a spool wholly acknowledged holds no segment).
	for i := 0; ; i++ {
		if err := write(); err != nil {
			t.Fatal(err)
		}
		if err := exp.Flush(ctx); err != nil {
			break
		}
		if i == 100 {
			t.Fatal("flushes whose fsync failed succeeded")
		}
	}
	if err := write(); err == nil {
		t.Fatal("a write into a broken spool was taken")
	}
	checkHealing(t, g)
	fs.SetInjector(nil) // the fault is gone

	deadline := time.Now().Add(10 * time.Second)
	for write() != nil {
		if time.Now().After(deadline) {
			t.Fatalf("writes still refused %v after the fault healed", 10*time.Second)
		}
		time.Sleep(5 * time.Millisecond)
	}
	for range 10 {
		if err := write(); err != nil {
			t.Fatalf("write after the group healed: %v", err)
		}
	}
	waitAcked(t, g, g.Spool().LastSeq(), 10*time.Second)
	checkHealed(t, g)
}

func setHealBackoff(o *GroupOptions) {
	o.HealMinBackoff, o.HealMaxBackoff = 50*time.Millisecond, 200*time.Millisecond
}

// checkHealing waits until the group's status says it is healing because
// reopening the spool failed, and when it tries next.
func checkHealing(t *testing.T, g *Group) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		h := g.Health()
		s := h.String()
		if h.State == StateHealing && strings.Contains(s, "spool reopen failed") && strings.Contains(s, "input/output error") &&
			strings.Contains(s, "next try in") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("health while the fault lasts: %q (%+v)", s, h)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// checkHealed checks that the group says it healed once, and streams.
func checkHealed(t *testing.T, g *Group) {
	t.Helper()
	if h := g.Health(); h.State != StateOK || h.String() != "ok" || h.Heals != 1 {
		t.Errorf("health after healing: %+v", h)
	}
	if st := g.Sender().Stats(); !st.Connected || st.Spool.Epoch < 2 || record.EpochParent(st.Spool.Epoch) != 1 {
		t.Errorf("sender after healing: %+v", st)
	}
}

// TestSequencerReopened: while the spool is broken every write is refused
// (and owes its disk a resync bracket); after the sequencer is given the
// reopened spool, writes are taken again, in one order after what the
// spool kept, the owed resync-begin marker first.
func TestSequencerReopened(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewMemFS()
	opts := spool.Options{Dir: "/spool", Group: "g1", FS: fs, Logger: quiet}
	sp, err := spool.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	seq := NewSequencer(sp)
	seq.SetLogger(quiet)
	exp, err := seq.Export("vda", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := exp.WriteAt(ctx, []byte{byte(i)}, int64(i)); err != nil {
			t.Fatal(err)
		}
	}
	fs.SetInjector(vfs.FailNth(vfs.OpSync, 1, syscall.EIO))
	if err := exp.Flush(ctx); err == nil {
		t.Fatal("flush with a failing fsync succeeded")
	}
	fs.SetInjector(nil)
	if err := exp.WriteAt(ctx, []byte{9}, 9); err == nil {
		t.Fatal("a write into a broken spool was taken")
	}
	sp.Close()
	if err := exp.WriteAt(ctx, []byte{9}, 9); err == nil {
		t.Fatal("a write into a closed spool was taken")
	}
	sp2, err := spool.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer sp2.Close()
	seq.reopened(sp2)
	if err := exp.WriteAt(ctx, []byte{7}, 7); err != nil {
		t.Fatalf("write after the reopen: %v", err)
	}
	recs := readAll(t, sp2, 1)
	if len(recs) != 5 || recs[3].Seq != 4 || recs[3].Kind != record.Marker || recs[3].Marker != record.ResyncBegin || recs[3].Disk != "vda" ||
		recs[4].Seq != 5 || recs[4].Kind != record.Data || recs[4].Offset != 7 {
		t.Fatalf("reopened spool holds %+v; want the 3 writes, vda's resync-begin, then the new write", recs)
	}
	if err := seq.Sync(ctx); err != nil {
		t.Fatalf("Sync of the reopened spool: %v", err)
	}
}
