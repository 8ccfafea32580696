package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/qcdp/qcdp/filter"
	"github.com/qcdp/qcdp/integration/guest"
	"github.com/qcdp/qcdp/integration/guest/workload"
	"github.com/qcdp/qcdp/integration/harness"
)

// TestGuestUnderHostDaemon protects a running Linux guest (two disks: qcow2
// v3 and raw) with the real `qcdp host` while the guest's verifiable
// workload runs; kills the daemon with SIGKILL in the middle of it and
// restarts it. The guest must see no I/O error and no write held over 1 s;
// the restarted daemon adopts and resumes the jobs; at the quiesce point the
// spool, replayed, reproduces both disks byte for byte and matches the
// workload's model exactly.
func TestGuestUnderHostDaemon(t *testing.T) {
	harness.Need(t, "qemu-system-x86_64", "qemu-img")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	art, err := guest.Build(ctx, "")
	if err != nil {
		t.Fatalf("build the test guest: %v", err)
	}
	dir := harness.TempDir(t)
	bin := buildQCDP(ctx, t, dir)

	const blocks = 512
	images := []guest.Disk{
		{Path: filepath.Join(dir, "vda.qcow2"), Format: "qcow2", NodeName: "vda"},
		{Path: filepath.Join(dir, "vdb.raw"), Format: "raw", NodeName: "vdb"},
	}
	for _, d := range images {
		if err := harness.CreateImage(ctx, d.Path, d.Format, 4<<20); err != nil {
			t.Fatal(err)
		}
	}
	h := newHost(t, bin, dir, "", "")
	control := h.Control
	startHost := func(name string) *harness.Proc { return h.start(ctx, t, name) }

	params := workload.Params{Seed: 7, Blocks: blocks, Disks: 2, SyncEvery: 10, Rate: 200, Hold: true}
	host := startHost("host-1")
	vm := guest.Boot(ctx, t, art, guest.Options{
		Workload: &params, Disks: images, Dir: filepath.Join(dir, "guest"),
		QMPSocket: h.QMPSocket(),
	})
	if _, err := vm.Serial.Wait(ctx, guest.Ready, 0); err != nil {
		t.Fatalf("guest: %v\n%s", err, vm.Report())
	}
	waitDisks(ctx, t, bin, control, 2, filter.Syncing, host)
	synced := func(min uint64) uint64 {
		t.Helper()
		ev, err := vm.Serial.Wait(ctx, guest.Synced, min)
		if err != nil {
			t.Fatalf("guest at seq ≥ %d: %v\n%s\n%s", min, err, vm.Report(), host.Report())
		}
		return ev.Seq
	}
	s := synced(100)

	host.Kill() // in the middle of the workload
	s = synced(s + 150)
	host = startHost("host-2")
	waitDisks(ctx, t, bin, control, 2, filter.Syncing, host)
	s = synced(s + 150)

	// Quiesce: the guest stops writing and reports its worst latencies.
	if err := vm.Send("stop"); err != nil {
		t.Fatal(err)
	}
	done, err := vm.Serial.Wait(ctx, guest.Done, s)
	if err != nil {
		t.Fatalf("guest: %v\n%s", err, vm.Report())
	}
	if done.MaxWrite > time.Second {
		t.Errorf("a guest write was held %v (invariant 1: never over 1 s)", done.MaxWrite)
	}
	t.Logf("guest wrote %d blocks; worst write %v, worst fdatasync %v", done.Seq, done.MaxWrite, done.MaxSync)

	st, err := qcdpStatus(ctx, bin, control)
	if err != nil {
		t.Fatal(err)
	}
	if err := host.Stop(10 * time.Second); err != nil {
		t.Fatalf("qcdp host: %v\n%s", err, host.Report())
	}
	if err := vm.PowerOff(ctx); err != nil {
		t.Fatalf("guest power-off: %v\n%s", err, vm.Report())
	}

	spoolDir := h.SpoolDir
	hist, err := workload.Replay(params, done.Seq)
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range images {
		stream := ""
		for _, ds := range st.Groups[0].Disks {
			if ds.Target == d.NodeName+"-dev" {
				stream = ds.Stream
			}
		}
		if stream == "" {
			t.Fatalf("no protected disk for %s in %+v", d.NodeName, st)
		}
		applied := filepath.Join(dir, "applied-"+d.NodeName+".raw")
		out, err := exec.CommandContext(ctx, bin, "spool", "apply", "--spool", spoolDir, "--skip-unmapped",
			"--disk", stream+"="+applied).CombinedOutput()
		if err != nil {
			t.Fatalf("qcdp spool apply %s: %v\n%s", stream, err, out)
		}
		if err := harness.Compare(ctx, d.Path, d.Format, applied, "raw"); err != nil {
			t.Errorf("%s: the spool does not reproduce the source across a kill -9: %v", d.NodeName, err)
		}
		f, err := os.Open(applied)
		if err != nil {
			t.Fatal(err)
		}
		if err := hist.Verify(i, f, done.Seq); err != nil {
			t.Errorf("%s: the replayed spool is not the guest's state at seq %d: %v", d.NodeName, done.Seq, err)
		}
		f.Close()
	}
}
