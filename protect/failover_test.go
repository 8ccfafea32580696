package protect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/hypervisor"
	"github.com/qcdp/qcdp/qmp"
	"github.com/qcdp/qcdp/qmp/qmptest"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica/journal"
	"github.com/qcdp/qcdp/replica/receiver"
	"github.com/qcdp/qcdp/stream"
	"github.com/qcdp/qcdp/stream/streamtest"
)

// testReplica is a replica daemon's receiver over real journals on
// loopback, with what the recovery site's failover does to it: a fence
// (Hellos refused with stream.CodeFailedOver) and Stop. Its journals can
// be held (hold, release): records then reach them, and are acknowledged,
// only after release.
type testReplica struct {
	addr                      string
	srv                       *receiver.Server
	caFile, certFile, keyFile string // the host's TLS files
	fence                     atomic.Pointer[string]

	mu   sync.Mutex
	held chan struct{} // closed by release; nil: not held
}

func startReplica(t *testing.T) *testReplica {
	t.Helper()
	dir := t.TempDir()
	cfg, err := configs.ParseReplica("replica.toml", []byte(fmt.Sprintf(`
[replica]
storage_root = %q
ca = "/x/ca.pem"
cert = "/x/r.pem"
key = "/x/r-key.pem"
[[tenant]]
name = "acme"
hosts = ["*"]
groups = ["g1"]
`, filepath.Join(dir, "storage"))))
	if err != nil {
		t.Fatal(err)
	}
	pki := streamtest.New(t)
	now := time.Now()
	cert, key, err := stream.Issue(pki.CACert, pki.CAKey, stream.CertRequest{CommonName: "kvm1", Tenant: "acme", NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	r := &testReplica{caFile: filepath.Join(dir, "ca.pem"), certFile: filepath.Join(dir, "host.pem"), keyFile: filepath.Join(dir, "host-key.pem")}
	for path, b := range map[string][]byte{r.caFile: pki.CACert, r.certFile: cert, r.keyFile: key} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	r.srv = &receiver.Server{TLS: pki.Server, Config: cfg, Logger: quiet,
		Fenced: func(tenant, group string) error {
			if why := r.fence.Load(); why != nil {
				return errors.New(*why)
			}
			return nil
		},
		OpenJournal: func(ctx context.Context, tenant, group string) (receiver.Journal, error) {
			jdir, err := cfg.JournalDir(tenant, group)
			if err != nil {
				return nil, err
			}
			j, err := journal.Open(ctx, journal.Options{Dir: jdir, Group: group, Logger: quiet})
			if err != nil {
				return nil, err
			}
			return heldJournal{j, r}, nil
		}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- r.srv.Serve(ln) }()
	t.Cleanup(func() {
		r.release()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.srv.Shutdown(ctx); err != nil {
			t.Errorf("replica shutdown: %v", err)
		}
		<-served
	})
	return r
}

// heldJournal is a journal whose appends wait while its replica is held.
type heldJournal struct {
	*journal.Journal
	r *testReplica
}

func (j heldJournal) Append(ctx context.Context, recs []record.Record) error {
	j.r.mu.Lock()
	held := j.r.held
	j.r.mu.Unlock()
	if held != nil {
		select {
		case <-held:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return j.Journal.Append(ctx, recs)
}

func (r *testReplica) hold() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.held == nil {
		r.held = make(chan struct{})
	}
}

func (r *testReplica) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.held != nil {
		close(r.held)
		r.held = nil
	}
}

// failOver fences group as the recovery site's failover does: its Hellos
// are refused from now on, and its running stream is ended.
func (r *testReplica) failOver(t *testing.T, ctx context.Context, group, why string) {
	t.Helper()
	r.fence.Store(&why)
	if err := r.srv.Stop(ctx, "acme", group, stream.CodeFailedOver, why); err != nil {
		t.Fatal(err)
	}
}

// replicaEngine starts an engine over src whose group g1 (VMs vm1 and vm2)
// streams to r.
func replicaEngine(t *testing.T, r *testReplica, src Source) *Engine {
	t.Helper()
	dir := t.TempDir()
	pol, err := configs.Parse("host.toml", []byte(fmt.Sprintf(`[host]
state_dir = %q
control_socket = %q
nbd_socket_dir = %q
qmp_sockets = ["/nonexistent/*.qmp"]
tls_ca = %q
tls_cert = %q
tls_key = %q

[[group]]
name = "g1"
replica = %q
  [[group.vm]]
  name = "vm1"
  [[group.vm]]
  name = "vm2"
`, filepath.Join(dir, "state"), filepath.Join(dir, "host.sock"), filepath.Join(dir, "nbd"), r.caFile, r.certFile, r.keyFile, r.addr)))
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(context.Background(), pol, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, src)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		e.stopAll()
		if err := e.Close(); err != nil {
			t.Error(err)
		}
	})
	// Welcomed before any attach: a capture then asks the replica whether
	// it holds the disk (it answers no hash queries: a full copy).
	eventually(t, "the replica welcomes the group", e.groups["g1"].Sender().Welcomed)
	return e
}

// eventually waits until cond holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// count is how many times QEMU q was sent command name.
func count(q *fakeQEMU, name string) int {
	n := 0
	for _, c := range q.srv.Commands() {
		if c.Name == name {
			n++
		}
	}
	return n
}

func (s *fakeSource) setRunning(id string, running bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.vms {
		if s.vms[i].ID == id {
			s.vms[i].Running = running
		}
	}
}

func diskOf(t *testing.T, e *Engine, vm string) (DiskStatus, bool) {
	t.Helper()
	for _, d := range groupStatus(t, e, "g1").Disks {
		if d.VM == vm {
			return d, true
		}
	}
	return DiskStatus{}, false
}

// TestEngineFailedOver: the recovery site fails group g1 over. The next
// scan detaches its VMs' captures (the mirror jobs are cancelled, never
// completed) while their disks stay declared, and status and metrics show
// them failed-over with the replica's words. While it lasts nothing
// attaches them again: scans, a VM that restarts, `qcdp attach`. When the
// recovery site undoes the failover, the sender is welcomed again and the
// next scan attaches both VMs again (the one that kept running, and the
// one that restarted meanwhile).
func TestEngineFailedOver(t *testing.T) {
	rep := startReplica(t)
	q1, q2 := newFakeQEMU(t, "node-vm1"), newFakeQEMU(t, "node-vm2")
	src := &fakeSource{
		vms: []hypervisor.VM{
			{ID: "vm1", Name: "vm1", UUID: "u1", Running: true, Source: hypervisor.SourceLibvirt},
			{ID: "vm2", Name: "vm2", UUID: "u2", Running: true, Source: hypervisor.SourceLibvirt},
		},
		qemu: map[string]*fakeQEMU{"vm1": q1, "vm2": q2},
	}
	e := replicaEngine(t, rep, src)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e.scan(ctx)
	waitDisk(t, e, "g1", "vm1", "initial-sync")
	waitDisk(t, e, "g1", "vm2", "initial-sync")
	snd := e.groups["g1"].Sender()
	eventually(t, "the sender streams", func() bool { return snd.Stats().Connected })

	why := "group acme/g1 has failed over at the recovery site: failed over (test)"
	rep.failOver(t, ctx, "g1", why)
	eventually(t, "the sender says the group failed over", func() bool { return snd.Stats().FailedOver != "" })
	e.scan(ctx)
	for _, q := range []*fakeQEMU{q1, q2} {
		if n := q.jobCount(); n != 0 {
			t.Fatalf("%d capture jobs left in a failed-over group's VM", n)
		}
	}
	gs := groupStatus(t, e, "g1")
	if !strings.HasPrefix(gs.State, StateFailedOver+": ") || !strings.Contains(gs.State, why) {
		t.Errorf("group state %q, want failed-over with the replica's words", gs.State)
	}
	for _, vm := range []string{"vm1", "vm2"} {
		if d, ok := diskOf(t, e, vm); !ok || d.State != StateFailedOver || d.Error != why {
			t.Errorf("disk of %s: %+v, want failed-over with the replica's words", vm, d)
		}
	}
	var metrics strings.Builder
	if err := WriteMetrics(&metrics, e.Status()); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`qcdp_disk_state{group="g1",vm="vm1",disk="vda",state="failed-over"} 1`,
		`qcdp_disk_state{group="g1",vm="vm1",disk="vda",state="detached"} 0`, `qcdp_replica_failed_over{group="g1"} 1`} {
		if !strings.Contains(metrics.String(), want) {
			t.Errorf("metrics lack %s:\n%s", want, metrics.String())
		}
	}
	if decl, _ := e.groups["g1"].Sequencer().Members(); len(decl.Disks) != 2 {
		t.Errorf("declared %+v after the failover, want both disks still declared", decl.Disks)
	}

	// Nothing attaches them again: scans, a restart of vm2, the operator.
	e.scan(ctx)
	src.setRunning("vm2", false)
	e.scan(ctx)
	if _, ok := e.find("vm2"); ok {
		t.Fatal("vm2 stopped but is still known")
	}
	src.setRunning("vm2", true)
	e.scan(ctx)
	if err := e.Attach(ctx, "vm1"); !errors.Is(err, ErrFailedOver) {
		t.Errorf("attach of vm1 while failed over: %v, want ErrFailedOver", err)
	}
	if err := e.Attach(ctx, "vm2"); !errors.Is(err, ErrFailedOver) {
		t.Errorf("attach of vm2 while failed over: %v, want ErrFailedOver", err)
	}
	if n1, n2 := count(q1, "blockdev-mirror"), count(q2, "blockdev-mirror"); n1 != 1 || n2 != 1 {
		t.Fatalf("capture jobs started while the group is failed over: %d in vm1, %d in vm2, want 1 each (the first)", n1, n2)
	}

	// The recovery site undoes the failover.
	rep.fence.Store(nil)
	eventually(t, "the sender is welcomed again", func() bool { return snd.Stats().FailedOver == "" })
	e.scan(ctx)
	waitDisk(t, e, "g1", "vm1", "initial-sync")
	waitDisk(t, e, "g1", "vm2", "initial-sync")
	if n1, n2 := q1.jobCount(), q2.jobCount(); n1 != 1 || n2 != 1 {
		t.Fatalf("after the failover was undone: %d jobs in vm1, %d in vm2, want 1 each", n1, n2)
	}
	if gs := groupStatus(t, e, "g1"); gs.State != "ok" {
		t.Errorf("group state %q once welcomed again", gs.State)
	}
	for _, q := range []*fakeQEMU{q1, q2} {
		if count(q, "block-job-complete") != 0 {
			t.Fatal("the engine completed a capture job")
		}
	}
}

func TestFailoverStep(t *testing.T) {
	for _, c := range []struct {
		cur, refused string
		welcomed     bool
		want         string
	}{
		{"", "", false, ""},
		{"", "", true, ""},
		{"", "why", true, "why"},
		{"why", "newer", true, "newer"},
		{"why", "", true, ""},     // welcomed again
		{"why", "", false, "why"}, // a new sender after a heal knows nothing yet
	} {
		if got := failoverStep(c.cur, c.refused, c.welcomed); got != c.want {
			t.Errorf("failoverStep(%q, %q, %v) = %q, want %q", c.cur, c.refused, c.welcomed, got, c.want)
		}
	}
}

// shutdownSource is a fakeSource whose guests shut down when asked (obey)
// as QEMU does: the capture job ends with the VM, and the hypervisor lists
// it stopped.
type shutdownSource struct {
	*fakeSource
	obey  atomic.Bool
	mu    sync.Mutex
	asked []string // "vm1 agent=false"
}

func (s *shutdownSource) ShutdownVM(ctx context.Context, vm hypervisor.VM, agent bool) error {
	s.mu.Lock()
	s.asked = append(s.asked, fmt.Sprintf("%s agent=%v", vm.ID, agent))
	s.mu.Unlock()
	if !s.obey.Load() {
		return nil // the guest ignores the power button
	}
	q := s.qemu[vm.ID]
	q.mu.Lock()
	jobs := q.jobs
	q.jobs = map[string]string{}
	q.mu.Unlock()
	var evs []string
	evs = append(evs, qmptest.Event(qmp.EventShutdown, map[string]any{"guest": true, "reason": "guest-shutdown"}))
	for id := range jobs {
		evs = append(evs, qmptest.Event(qmp.EventBlockJobCancelled, map[string]any{"device": id, "type": "mirror", "len": 1 << 20, "offset": 1 << 20, "speed": 0}))
	}
	q.srv.Send(evs...)
	s.setRunning(vm.ID, false)
	return nil
}

func (s *shutdownSource) askedFor() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.asked...)
}

// ready makes vm's capture job reach READY: its disk is in sync.
func ready(t *testing.T, e *Engine, q *fakeQEMU, vm string) {
	t.Helper()
	q.srv.Send(qmptest.Event(qmp.EventBlockJobReady, map[string]any{"device": "qcdp-" + vm + ".vda", "type": "mirror", "len": 1 << 20, "offset": 1 << 20, "speed": 0}))
	waitDisk(t, e, "g1", vm, "syncing")
}

// lastRecord is the newest record of g1's spool.
func lastRecord(t *testing.T, e *Engine) record.Record {
	t.Helper()
	sp := e.groups["g1"].Spool()
	c := sp.Cursor(sp.LastSeq())
	defer c.Close()
	r, err := c.Next()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func prepareEngine(t *testing.T, source string) (*Engine, *testReplica, *shutdownSource, *fakeQEMU) {
	old := prepareTick
	prepareTick = 10 * time.Millisecond
	t.Cleanup(func() { prepareTick = old })
	rep := startReplica(t)
	q := newFakeQEMU(t, "node-vm1")
	src := &shutdownSource{fakeSource: &fakeSource{
		vms:  []hypervisor.VM{{ID: "vm1", Name: "vm1", UUID: "u1", Running: true, Source: source}},
		qemu: map[string]*fakeQEMU{"vm1": q},
	}}
	return replicaEngine(t, rep, src), rep, src, q
}

// TestPrepareFailover: a planned failover's host half. Refused while a
// disk is not in sync, without asking anything of the guest. A guest that
// ignores the power button fails it at the timeout, naming the VM and what
// to do, with nothing marked. A guest that shuts down: once its capture
// ended the final bookmark is the group's newest record, and the call
// returns only once the replica holds it (a replica that does not within
// the timeout fails it, the point standing; preparing again marks a new
// one). Nothing follows it in the stream afterwards: scans (the stopped
// libvirt domain stays listed, so declared), bookmarks, VM definitions.
func TestPrepareFailover(t *testing.T) {
	e, rep, src, q := prepareEngine(t, hypervisor.SourceLibvirt)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	e.scan(ctx)
	waitDisk(t, e, "g1", "vm1", "initial-sync")
	if _, err := e.PrepareFailover(ctx, "g1", time.Second, false); !errors.Is(err, ErrPrepare) || !strings.Contains(err.Error(), "vm1 vda: initial-sync") {
		t.Fatalf("prepare while the disk copies: %v, want ErrPrepare naming the disk's state", err)
	}
	if _, err := e.PrepareFailover(ctx, "g9", time.Second, false); !errors.Is(err, ErrUnknownGroup) {
		t.Fatalf("prepare of an unknown group: %v", err)
	}
	ready(t, e, q, "vm1")
	if got := src.askedFor(); len(got) != 0 {
		t.Fatalf("refused preparations asked guests to shut down: %q", got)
	}

	// The guest ignores the power button.
	last := e.groups["g1"].Spool().LastSeq()
	_, err := e.PrepareFailover(ctx, "g1", 300*time.Millisecond, false)
	if err == nil || !strings.Contains(err.Error(), "still running") || !strings.Contains(err.Error(), "vm1") || !strings.Contains(err.Error(), "--agent") {
		t.Fatalf("prepare with a guest that does not shut down: %v, want an error naming vm1 and --agent", err)
	}
	if got := e.groups["g1"].Spool().LastSeq(); got != last {
		t.Fatalf("a failed preparation wrote seqs %d..%d", last+1, got)
	}
	if st := groupStatus(t, e, "g1"); st.FinalSeq != 0 || q.jobCount() != 1 {
		t.Fatalf("after a failed preparation: final seq %d, %d jobs", st.FinalSeq, q.jobCount())
	}

	// The guest shuts down; the replica holds nothing for now, then
	// fails to within the timeout.
	src.obey.Store(true)
	rep.hold()
	_, err = e.PrepareFailover(ctx, "g1", time.Second, true)
	if err == nil || !strings.Contains(err.Error(), "does not hold it yet") {
		t.Fatalf("prepare with a replica that holds nothing new: %v", err)
	}
	first := groupStatus(t, e, "g1").FinalSeq
	if r := lastRecord(t, e); first == 0 || r.Seq != first || r.Marker != record.UserBookmark || r.Name != FinalBookmark {
		t.Fatalf("final seq %d, newest record %+v: want the final bookmark", first, r)
	}
	if got := src.askedFor(); len(got) != 2 || got[1] != "vm1 agent=true" {
		t.Fatalf("shutdowns asked: %q", got)
	}

	// Prepared again: the VM is stopped already; a new final point, and
	// the call returns once the replica holds it.
	type result struct {
		res PrepareResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := e.PrepareFailover(ctx, "g1", 20*time.Second, false)
		done <- result{res, err}
	}()
	eventually(t, "a new final point", func() bool { return groupStatus(t, e, "g1").FinalSeq > first })
	select {
	case r := <-done:
		t.Fatalf("prepare returned before the replica held the final point: %+v %v", r.res, r.err)
	case <-time.After(100 * time.Millisecond):
	}
	rep.release()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	snd := e.groups["g1"].Sender()
	if r.res.Seq != groupStatus(t, e, "g1").FinalSeq || snd.Stats().LastAcked < r.res.Seq || r.res.Bookmark != FinalBookmark ||
		strings.Join(r.res.Stopped, ",") != "vm1" {
		t.Fatalf("prepare: %+v, replica holds up to %d", r.res, snd.Stats().LastAcked)
	}
	if len(src.askedFor()) != 2 {
		t.Fatalf("a stopped VM was asked to shut down again: %q", src.askedFor())
	}

	// Nothing follows the final point: scans while the stopped domain is
	// listed, and while it is not (a transient domain).
	for range 2 {
		e.scan(ctx)
	}
	src.mu.Lock()
	listed := src.vms
	src.vms = nil
	src.mu.Unlock()
	e.scan(ctx)
	src.mu.Lock()
	src.vms = listed
	src.mu.Unlock()
	e.redefine(ctx, "vm1")
	if _, err := e.Bookmark(ctx, "g1", "after", false); !errors.Is(err, ErrPrepared) {
		t.Fatalf("bookmark after the final point: %v, want ErrPrepared", err)
	}
	if got := e.groups["g1"].Spool().LastSeq(); got != r.res.Seq {
		t.Fatalf("records after the final point (seq %d): seqs up to %d", r.res.Seq, got)
	}
	if decl, _ := e.groups["g1"].Sequencer().Members(); len(decl.Disks) != 1 || decl.Disks[0].VM != "vm1" {
		t.Fatalf("membership after the VM stopped: %+v, want vm1's disk still declared", decl.Disks)
	}

	// The VM starts again: protected, and the group is no longer prepared.
	src.setRunning("vm1", true)
	e.scan(ctx)
	waitDisk(t, e, "g1", "vm1", "initial-sync")
	if st := groupStatus(t, e, "g1"); st.FinalSeq != 0 {
		t.Fatalf("final seq %d after a VM of the group was attached again", st.FinalSeq)
	}
}

// TestPrepareFailoverQMPRefused: planned failover is for libvirt VMs; a
// group holding a QMP-socket VM is refused, and its guest is not asked.
func TestPrepareFailoverQMPRefused(t *testing.T) {
	e, _, src, q := prepareEngine(t, hypervisor.SourceQMP)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e.scan(ctx)
	waitDisk(t, e, "g1", "vm1", "initial-sync")
	ready(t, e, q, "vm1")
	_, err := e.PrepareFailover(ctx, "g1", time.Second, false)
	if !errors.Is(err, ErrPrepare) || !strings.Contains(err.Error(), "libvirt") || !strings.Contains(err.Error(), "vm1") {
		t.Fatalf("prepare of a group of QMP-socket VMs: %v", err)
	}
	if got := src.askedFor(); len(got) != 0 {
		t.Fatalf("guests asked to shut down: %q", got)
	}
}
