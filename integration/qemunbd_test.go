package integration

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/qcdp/qcdp/integration/harness"
	"github.com/qcdp/qcdp/qmp"
)

const diskSize = 16 << 20

// beforeReady and afterReady are the guest-like writes of the one-disk
// story: varied sizes, odd offsets, zero writes, the last sector, and
// overwrites of earlier writes.
var (
	beforeReady = []string{
		"write -P 0xa1 0 4096",
		"write -P 0xa2 1048576 65536",
		"write -P 0xa3 12345 100",
		"write -z 2097152 8192",
		"write -P 0xa5 16773120 4096",
		"write -P 0xa6 8388608 1048576",
	}
	afterReady = []string{
		"write -P 0xb1 512 512",
		"write -P 0xb2 4097 100",
		"write -z 5000 3000",
		"write -P 0xb4 3145728 1048576",
		"write -P 0xb5 777 1",
		"write -P 0xb6 12345 100",
		"write -z 8388608 65536",
		"write -P 0xb8 16777215 1",
	}
)

// newSource makes a preallocated qcow2 source disk filled with a pattern
// that differs every 256 KiB.
func newSource(ctx context.Context, t *testing.T, dir, name string, base byte) string {
	t.Helper()
	path := filepath.Join(dir, name+".qcow2")
	if err := harness.CreateImage(ctx, path, "qcow2", diskSize); err != nil {
		t.Fatal(err)
	}
	if err := harness.FillPattern(ctx, path, "qcow2", diskSize, 256<<10, base); err != nil {
		t.Fatal(err)
	}
	return path
}

// writeDuringSync slows the job so the writes land during the initial
// copy, checks that the job is indeed not ready yet, and lifts the limit.
func writeDuringSync(ctx context.Context, t *testing.T, c *qmp.Client, m *harness.Mirror, cmds []string) {
	t.Helper()
	for _, cmd := range cmds {
		if err := m.Write(ctx, cmd); err != nil {
			t.Fatal(err)
		}
	}
	jobs, err := c.QueryBlockJobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, j := range jobs {
		if j.Device == m.Job && j.Ready {
			t.Errorf("job %s was ready before the during-sync writes ended (offset %d of %d): they did not test the initial copy", j.Device, j.Offset, j.Len)
		}
	}
	if err := c.BlockJobSetSpeed(ctx, m.Job, 0); err != nil {
		t.Fatal(err)
	}
}

// TestMirrorIntoQemuNBD proves the harness and QEMU's side of the story
// against qemu-nbd as the target: what the mirror writes into a plain raw
// file must equal the source.
func TestMirrorIntoQemuNBD(t *testing.T) {
	harness.Need(t, "qemu-system-x86_64", "qemu-img", "qemu-io", "qemu-nbd")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := harness.TempDir(t)

	src := newSource(ctx, t, dir, "disk0", 0x10)
	target := filepath.Join(dir, "target.raw")
	if err := harness.CreateImage(ctx, target, "raw", diskSize); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "nbd.sock")
	nbd := harness.StartProcT(t, dir, "qemu-nbd", "qemu-nbd", "-k", sock, "-f", "raw", "-x", "disk0", "-t", target)
	if err := harness.WaitSocket(ctx, sock, nbd); err != nil {
		t.Fatal(err)
	}

	q := harness.Start(ctx, t, harness.Options{Dir: dir, Disks: []harness.Disk{{Name: "disk0", Path: src, Format: "qcow2"}}})
	m, err := harness.StartMirror(ctx, q, "disk0", sock, "disk0", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	writeDuringSync(ctx, t, q.QMP, m, beforeReady)
	if _, err := m.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range afterReady {
		if err := m.Write(ctx, cmd); err != nil {
			t.Fatal(err)
		}
	}
	end, err := m.Detach(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("job ended with %s", end.Name)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if err := harness.Compare(ctx, src, "qcow2", target, "raw"); err != nil {
		t.Fatal(err)
	}
}
