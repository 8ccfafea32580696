package protect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/hypervisor"
	"github.com/qcdp/qcdp/proc"
	"github.com/qcdp/qcdp/qmp"
	"github.com/qcdp/qcdp/qmp/qmptest"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/shipper/spool"
)

// fakeQEMU is the block-job side of one QEMU, enough for the engine's
// wiring: a mirror job exists from blockdev-mirror until block-job-cancel,
// which ends it with BLOCK_JOB_CANCELLED as QEMU does.
type fakeQEMU struct {
	mu   sync.Mutex
	jobs map[string]string // job id → node
	node string            // the disk's format node
	srv  *qmptest.Server
	// threads are the vCPU thread ids query-cpus-fast reports; nil: this
	// process's, for the fake QEMU is this process.
	threads []int
}

func newFakeQEMU(t *testing.T, node string) *fakeQEMU {
	q := &fakeQEMU{jobs: map[string]string{}, node: node}
	q.srv = qmptest.NewServer(t, q.handle)
	return q
}

func (q *fakeQEMU) handle(cmd qmptest.Command) []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	switch cmd.Name {
	case "query-block-jobs":
		var jobs []map[string]any
		for id := range q.jobs {
			jobs = append(jobs, map[string]any{"type": "mirror", "device": id, "len": 1 << 20, "offset": 0,
				"busy": true, "paused": false, "speed": 0, "io-status": "ok", "ready": false, "status": "running"})
		}
		if jobs == nil {
			jobs = []map[string]any{}
		}
		return []string{qmptest.Return(jobs)}
	case "query-named-block-nodes":
		return []string{qmptest.Return([]map[string]any{{"node-name": q.node, "drv": "raw", "dirty-bitmaps": []any{}}})}
	case "query-cpus-fast":
		threads := q.threads
		if threads == nil {
			threads = []int{os.Getpid()}
		}
		cpus := []map[string]any{}
		for i, tid := range threads {
			cpus = append(cpus, map[string]any{"cpu-index": i, "thread-id": tid})
		}
		return []string{qmptest.Return(cpus)}
	case "blockdev-mirror":
		var args struct {
			JobID  string `json:"job-id"`
			Device string `json:"device"`
		}
		cmd.Decode(&args)
		q.jobs[args.JobID] = args.Device
		return []string{qmptest.Return(map[string]any{})}
	case "block-job-cancel":
		var args struct {
			Device string `json:"device"`
		}
		cmd.Decode(&args)
		if _, ok := q.jobs[args.Device]; !ok {
			return []string{qmptest.Error("DeviceNotActive", "Block job '"+args.Device+"' not found")}
		}
		delete(q.jobs, args.Device)
		return []string{qmptest.Return(map[string]any{}),
			qmptest.Event(qmp.EventBlockJobCancelled, map[string]any{"device": args.Device, "type": "mirror", "len": 1 << 20, "offset": 0, "speed": 0})}
	}
	return []string{qmptest.Return(map[string]any{})}
}

func (q *fakeQEMU) jobCount() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.jobs)
}

// fakeSource is a hypervisor with a fixed list of VMs, each of one disk,
// whose QMP is a fakeQEMU.
type fakeSource struct {
	mu   sync.Mutex
	vms  []hypervisor.VM
	qemu map[string]*fakeQEMU // by VM id
}

func (s *fakeSource) ListVMs(ctx context.Context) ([]hypervisor.VM, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]hypervisor.VM(nil), s.vms...), nil
}

func (s *fakeSource) Disks(ctx context.Context, vm hypervisor.VM) ([]hypervisor.Disk, error) {
	return []hypervisor.Disk{{ID: vm.ID + "/vda", Target: "vda", Node: "node-" + vm.ID, Format: "raw", Size: 1 << 20}}, nil
}

func (s *fakeSource) QMP(ctx context.Context, vm hypervisor.VM) (*qmp.Client, error) {
	s.mu.Lock()
	q, ok := s.qemu[vm.ID]
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("no QMP for %s", vm.ID)
	}
	return qmp.Dial(ctx, q.srv.Path())
}

// newEngine writes a policy of groups g1 (VM "vm1" by name, VM "gone" by
// name, label tier=gold) and g2 (VM "vm2"), and starts an engine over src.
func newEngine(t *testing.T, src Source) (*Engine, *configs.Policy) {
	t.Helper()
	dir := t.TempDir()
	pol, err := configs.Parse("host.toml", []byte(fmt.Sprintf(`[host]
state_dir = %q
control_socket = %q
nbd_socket_dir = %q
qmp_sockets = ["/nonexistent/*.qmp"]

[[group]]
name = "g1"
  [[group.vm]]
  name = "vm1"
  [[group.vm]]
  name = "gone"
  [[group.vm]]
  label = "tier=gold"

[[group]]
name = "g2"
  [[group.vm]]
  name = "vm2"
`, filepath.Join(dir, "state"), filepath.Join(dir, "host.sock"), filepath.Join(dir, "nbd"))))
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(context.Background(), pol, slog.New(slog.NewTextHandler(io.Discard, nil)), nil, src)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Close(); err != nil {
			t.Error(err)
		}
	})
	return e, pol
}

func groupStatus(t *testing.T, e *Engine, name string) GroupStatus {
	t.Helper()
	for _, g := range e.Status().Groups {
		if g.Name == name {
			return g
		}
	}
	t.Fatalf("no group %s in the status", name)
	return GroupStatus{}
}

// waitDisk waits until the status shows vm's disk in state.
func waitDisk(t *testing.T, e *Engine, group, vm, state string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, d := range groupStatus(t, e, group).Disks {
			if d.VM == vm && d.State == state {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("disk of %s never reached %s: %+v", vm, state, groupStatus(t, e, group).Disks)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestEngineGroupsAndSockets: every group of the policy has its spool and a
// capture socket only root can reach (no qemu_group), and Close removes the
// sockets.
func TestEngineGroupsAndSockets(t *testing.T) {
	e, pol := newEngine(t, &fakeSource{})
	for _, name := range []string{"g1", "g2"} {
		gs := groupStatus(t, e, name)
		fi, err := os.Stat(gs.Socket)
		if err != nil {
			t.Fatalf("group %s: socket: %v", name, err)
		}
		if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm()&0o077 != 0 {
			t.Fatalf("group %s: socket %s mode %v, want a socket for root only", name, gs.Socket, fi.Mode())
		}
		if _, err := os.Stat(gs.SpoolDir); err != nil {
			t.Fatalf("group %s: spool dir: %v", name, err)
		}
	}
	if fi, err := os.Stat(pol.Host.NBDSocketDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("NBD socket dir %v %v, want 0700 without a QEMU group", fi.Mode(), err)
	}
	sock := groupStatus(t, e, "g1").Socket
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket %s left after Close: %v", sock, err)
	}
}

// TestEngineUnmatchedSelectors: a policy naming a VM that is not on the
// host, one that is stopped and a label nobody carries says so for each,
// instead of showing an empty group.
func TestEngineUnmatchedSelectors(t *testing.T) {
	src := &fakeSource{vms: []hypervisor.VM{{ID: "vm1", Name: "vm1", Running: false, Source: hypervisor.SourceQMP}}}
	e, _ := newEngine(t, src)
	if got := groupStatus(t, e, "g1").Unmatched; got != nil {
		t.Fatalf("unmatched before any scan: %v", got)
	}
	e.scan(context.Background())
	got := strings.Join(groupStatus(t, e, "g1").Unmatched, "\n")
	for _, want := range []string{`VM "vm1" (host.toml:`, "not running", `VM "gone" (host.toml:`, "no such VM on this host", `label "tier=gold"`, "no VM on this host carries it"} {
		if !strings.Contains(got, want) {
			t.Fatalf("unmatched of g1 lacks %q:\n%s", want, got)
		}
	}
}

// TestEngineAttachDetachAttach: a running VM the policy names is attached by
// a scan (its disk captured through a mirror job in its QEMU); a detach
// cancels the job, lasts across scans, and an attach protects it again.
func TestEngineAttachDetachAttach(t *testing.T) {
	q := newFakeQEMU(t, "node-vm1")
	src := &fakeSource{
		vms:  []hypervisor.VM{{ID: "vm1", Name: "vm1", Running: true, Source: hypervisor.SourceQMP}},
		qemu: map[string]*fakeQEMU{"vm1": q},
	}
	e, _ := newEngine(t, src)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e.scan(ctx)
	waitDisk(t, e, "g1", "vm1", "initial-sync")
	if n := q.jobCount(); n != 1 {
		t.Fatalf("%d mirror jobs in QEMU after the attach, want 1", n)
	}
	if err := e.Detach(ctx, "vm1", "vdz"); !errors.Is(err, ErrUnknownDisk) || !strings.Contains(err.Error(), "vda") {
		t.Fatalf("detach of a disk the VM lacks: %v, want ErrUnknownDisk naming vda", err)
	}
	if err := e.Detach(ctx, "vm1", ""); err != nil {
		t.Fatal(err)
	}
	if n := q.jobCount(); n != 0 {
		t.Fatalf("%d mirror jobs left after detach, want 0 (cancelled, never completed)", n)
	}
	e.scan(ctx)
	if n := q.jobCount(); n != 0 {
		t.Fatal("a scan re-attached a VM the operator detached")
	}
	if err := e.Attach(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	waitDisk(t, e, "g1", "vm1", "initial-sync")
	if n := q.jobCount(); n != 1 {
		t.Fatalf("%d mirror jobs after attach, want 1", n)
	}
	if err := e.Detach(ctx, "nosuch", ""); !errors.Is(err, ErrUnknownVM) {
		t.Fatalf("detach of an unknown VM: %v", err)
	}
	for _, c := range q.srv.Commands() {
		if c.Name == "block-job-complete" {
			t.Fatal("the engine completed a capture job: that would switch the guest onto the NBD target")
		}
	}
}

// TestEngineBookmarks: a user bookmark is a marker in the group's spool; an
// app-consistent one of a group with no protected VM is recorded
// crash-consistent, never claimed app-consistent; an unknown group is named.
func TestEngineBookmarks(t *testing.T) {
	e, pol := newEngine(t, &fakeSource{})
	ctx := context.Background()
	res, err := e.Bookmark(ctx, "g2", "before-upgrade", false)
	if err != nil || res.Kind != record.UserBookmark.String() || res.Seq == 0 {
		t.Fatalf("user bookmark: %+v %v", res, err)
	}
	res, err = e.Bookmark(ctx, "g2", "app", true)
	if err != nil {
		t.Fatal(err)
	}
	if res.Kind != record.CrashConsistent.String() {
		t.Fatalf("app bookmark of a group with no VM recorded %s, want crash-consistent", res.Kind)
	}
	if _, err := e.Bookmark(ctx, "nosuch", "x", false); !errors.Is(err, ErrUnknownGroup) {
		t.Fatalf("bookmark of an unknown group: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	sp, err := spool.Open(ctx, spool.Options{Dir: pol.SpoolDir(pol.Groups()[1]), Group: "g2"})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	c := sp.Cursor(1)
	defer c.Close()
	var got []string
	for {
		r, err := c.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, r.Marker.String()+":"+r.Name)
	}
	want := record.UserBookmark.String() + ":before-upgrade," + record.CrashConsistent.String() + ":app"
	if strings.Join(got, ",") != want {
		t.Fatalf("g2's spool holds %v, want %s", got, want)
	}
}

// TestEngineAttachOwnsExports: a VM's capture export opens only to the VM's
// QEMU process, found through its QMP channel; a VM whose QEMU process
// cannot be told is not attached at all, rather than given an export any
// QEMU could open.
func TestEngineAttachOwnsExports(t *testing.T) {
	good := newFakeQEMU(t, "node-vm1")
	bad := newFakeQEMU(t, "node-vm2")
	bad.threads = []int{1 << 30} // a thread no process has
	src := &fakeSource{
		vms: []hypervisor.VM{
			{ID: "vm1", Name: "vm1", Running: true, Source: hypervisor.SourceQMP},
			{ID: "vm2", Name: "vm2", Running: true, Source: hypervisor.SourceQMP},
		},
		qemu: map[string]*fakeQEMU{"vm1": good, "vm2": bad},
	}
	e, _ := newEngine(t, src)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e.scan(ctx)
	waitDisk(t, e, "g1", "vm1", "initial-sync")

	v, ok := e.find("vm1")
	if !ok || len(v.disks) != 1 {
		t.Fatalf("vm1 not attached with its disk: %+v", v)
	}
	self, err := proc.Lookup(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if owner, ok := v.disks[0].exp.Owner(); !ok || owner != self {
		t.Fatalf("vm1's export owner %v (%v), want its QEMU %v", owner, ok, self)
	}

	if _, ok := e.find("vm2"); ok {
		t.Fatal("vm2 attached though its QEMU process is unknown")
	}
	if got := e.groups["g2"].Exports(); len(got) != 0 {
		t.Fatalf("g2 exports %v for a VM whose QEMU is unknown, want none", got)
	}
	if n := bad.jobCount(); n != 0 {
		t.Fatalf("%d mirror jobs in vm2's QEMU, want none", n)
	}
	err = e.Attach(ctx, "vm2")
	if !errors.Is(err, hypervisor.ErrNoProcess) {
		t.Fatalf("attach of vm2: %v, want hypervisor.ErrNoProcess", err)
	}
}

// TestEngineRecopyOwed: when the group's spool lost writes it had answered
// (a heal after a failed fsync: shipper.Sequencer.RecopyOwed), the engine's
// next scan cancels the disk's job and starts a new one, which copies the
// whole disk; the re-copy is no longer owed once the old job is gone, and
// the scan after does not cancel the new job again.
func TestEngineRecopyOwed(t *testing.T) {
	e, q, count := recopyEngine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e.scan(ctx)
	waitDisk(t, e, "g1", "vm1", "initial-sync")
	e.scan(ctx)
	if n := count("block-job-cancel"); n != 0 {
		t.Fatalf("%d cancels with nothing owed", n)
	}
	g := e.groups["g1"]
	g.Sequencer().OweRecopy("vm1.vda")
	e.scan(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for len(g.Sequencer().RecopyOwed()) != 0 || count("blockdev-mirror") != 2 {
		if time.Now().After(deadline) {
			t.Fatalf("re-copy not started: owed %q, %d mirrors, %d cancels", g.Sequencer().RecopyOwed(), count("blockdev-mirror"), count("block-job-cancel"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n := count("block-job-cancel"); n != 1 {
		t.Fatalf("%d cancels for one re-copy, want 1", n)
	}
	if n := q.jobCount(); n != 1 {
		t.Fatalf("%d jobs after the re-copy started, want 1", n)
	}
	waitDisk(t, e, "g1", "vm1", "initial-sync")
	e.scan(ctx)
	if n := count("block-job-cancel"); n != 1 {
		t.Fatalf("the scan after the re-copy cancelled the new job (%d cancels)", n)
	}
	for _, c := range q.srv.Commands() {
		if c.Name == "block-job-complete" {
			t.Fatal("the engine completed a capture job")
		}
	}
}
