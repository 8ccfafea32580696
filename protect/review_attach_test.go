package protect

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/qcdp/qcdp/configs"

	"github.com/qcdp/qcdp/hypervisor"
	"github.com/qcdp/qcdp/qmp/qmptest"
)

// twoDiskSource is fakeSource whose VMs have two disks, vda and vdb.
type twoDiskSource struct{ *fakeSource }

func (s twoDiskSource) Disks(ctx context.Context, vm hypervisor.VM) ([]hypervisor.Disk, error) {
	return []hypervisor.Disk{
		{ID: vm.ID + "/vda", Target: "vda", Node: "node-" + vm.ID, Format: "raw", Size: 1 << 20},
		{ID: vm.ID + "/vdb", Target: "vdb", Node: "nodeb-" + vm.ID, Format: "raw", Size: 1 << 20},
	}, nil
}

// TestReviewAttachAfterDiskDetach: the README's pair
//
//	qcdp detach vm1 --disk vda
//	qcdp attach vm1            # protect it again
//
// Attach finds the VM neither detached (only one disk was) nor ended (vdb
// still runs), answers "protected already" with success, and vda stays
// unprotected until the VM restarts; no scan brings it back either.
func TestReviewAttachAfterDiskDetach(t *testing.T) {
	q := &fakeQEMU{jobs: map[string]string{}, node: "node-vm1"}
	q.srv = qmptest.NewServer(t, func(cmd qmptest.Command) []string {
		if cmd.Name == "query-named-block-nodes" {
			return []string{qmptest.Return([]map[string]any{
				{"node-name": "node-vm1", "drv": "raw", "dirty-bitmaps": []any{}},
				{"node-name": "nodeb-vm1", "drv": "raw", "dirty-bitmaps": []any{}},
			})}
		}
		return q.handle(cmd)
	})
	fs := &fakeSource{
		vms:  []hypervisor.VM{{ID: "vm1", Name: "vm1", Running: true, Source: hypervisor.SourceQMP}},
		qemu: map[string]*fakeQEMU{"vm1": q},
	}
	e := reviewEngine(t, twoDiskSource{fs})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e.scan(ctx)
	waitDisk(t, e, "g1", "vm1", "initial-sync")
	if n := q.jobCount(); n != 2 {
		t.Fatalf("%d jobs after attach, want 2", n)
	}
	if err := e.Detach(ctx, "vm1", "vda"); err != nil {
		t.Fatal(err)
	}
	if n := q.jobCount(); n != 1 {
		t.Fatalf("%d jobs after detaching vda, want 1", n)
	}
	if err := e.Attach(ctx, "vm1"); err != nil {
		t.Fatalf("attach: %v", err)
	}
	e.scan(ctx)
	// The captures start on their own goroutines: wait for the jobs.
	for deadline := time.Now().Add(5 * time.Second); q.jobCount() != 2 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := q.jobCount(); n != 2 {
		var states []string
		for _, d := range groupStatus(t, e, "g1").Disks {
			states = append(states, d.Target+"="+d.State)
		}
		decl, _ := e.groups["g1"].Sequencer().Members()
		t.Fatalf("`qcdp attach vm1` after `qcdp detach vm1 --disk vda` succeeded but left vda unprotected: %d capture jobs, disks %v, declared %d disk(s)",
			n, states, len(decl.Disks))
	}
}

// reviewEngine is newEngine over any Source (group g1 protects VM vm1).
func reviewEngine(t *testing.T, src Source) *Engine {
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
	return e
}

// TestReviewPauseSurvivesReattach: `qcdp pause vm1`, then `qcdp detach
// vm1` and `qcdp attach vm1` (or the VM restarts). The new capture starts
// unpaused (its state machine knows of no pause, status shows
// initial-sync), but the group keeps the disk's capture export (same name
// and size) with its paused flag set, so every write of the new job is
// refused with ErrPaused: the job stops and is resumed with backoff for
// ever, the disk never converges and the status never says paused.
func TestReviewPauseSurvivesReattach(t *testing.T) {
	q := newFakeQEMU(t, "node-vm1")
	src := &fakeSource{
		vms:  []hypervisor.VM{{ID: "vm1", Name: "vm1", Running: true, Source: hypervisor.SourceQMP}},
		qemu: map[string]*fakeQEMU{"vm1": q},
	}
	e := reviewEngine(t, src)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e.scan(ctx)
	waitDisk(t, e, "g1", "vm1", "initial-sync")
	if err := e.Pause(ctx, "vm1", ""); err != nil {
		t.Fatal(err)
	}
	if err := e.Detach(ctx, "vm1", ""); err != nil {
		t.Fatal(err)
	}
	if err := e.Attach(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	waitDisk(t, e, "g1", "vm1", "initial-sync")
	v, _ := e.find("vm1")
	err := v.disks[0].exp.WriteAt(ctx, []byte{1}, 0)
	if err != nil {
		t.Fatalf("after detach and attach the disk shows %q but its capture export still refuses every write: %v",
			groupStatus(t, e, "g1").Disks[0].State, err)
	}
}
