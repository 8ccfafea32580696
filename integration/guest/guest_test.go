package guest_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/qcdp/qcdp/integration/guest"
	"github.com/qcdp/qcdp/integration/guest/workload"
	"github.com/qcdp/qcdp/integration/harness"
)

// TestGuestWorkload boots the guest under TCG with a qcow2 and a raw disk,
// lets it run its workload to the end and checks that both images hold
// exactly what the reference model says the guest wrote.
func TestGuestWorkload(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest under TCG")
	}
	harness.Need(t, "qemu-system-x86_64", "qemu-img")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	start := time.Now()
	art, err := guest.Build(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("build: %v (kernel %s, modules %v)", time.Since(start).Round(time.Millisecond), art.Release, art.Modules)

	dir := t.TempDir()
	p := workload.Params{Seed: 20260221, Writes: 3000, Blocks: 512, Disks: 2, SyncEvery: 50}
	qcow2 := filepath.Join(dir, "disk0.qcow2")
	raw := filepath.Join(dir, "disk1.raw")
	qemuImg(ctx, t, "create", "-q", "-f", "qcow2", "-o", "compat=1.1", qcow2, "16M")
	qemuImg(ctx, t, "create", "-q", "-f", "raw", raw, "16M")

	vm := guest.Boot(ctx, t, art, guest.Options{
		Workload: &p,
		Disks:    []guest.Disk{{Path: qcow2, Format: "qcow2"}, {Path: raw, Format: "raw"}},
	})
	ready, err := vm.Serial.Wait(ctx, guest.Ready, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("boot to %s: %v (guest clock %v)", guest.Ready, ready.At.Sub(vm.Started).Round(time.Millisecond), ready.Guest.Round(time.Millisecond))
	done, err := vm.Serial.Wait(ctx, guest.Done, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d writes in %v", done.Seq, done.Guest-ready.Guest)
	if err := vm.Wait(ctx); err != nil {
		t.Fatalf("guest did not power off: %v", err)
	}
	if done.Seq != p.Writes {
		t.Fatalf("%s seq=%d, want %d", guest.Done, done.Seq, p.Writes)
	}
	var last uint64
	synced := 0
	for _, ev := range vm.Serial.Events() {
		switch ev.Kind {
		case guest.Error:
			t.Errorf("guest error: %s", ev.Line)
		case guest.Synced:
			if ev.Seq <= last {
				t.Errorf("%s seq=%d after seq=%d", guest.Synced, ev.Seq, last)
			}
			last = ev.Seq
			synced++
		}
	}
	if want := int(p.Writes / p.SyncEvery); synced != want {
		t.Errorf("%d %s lines, want %d", synced, guest.Synced, want)
	}

	h, err := workload.Replay(p, done.Seq)
	if err != nil {
		t.Fatal(err)
	}
	disk0 := filepath.Join(dir, "disk0.raw")
	qemuImg(ctx, t, "convert", "-f", "qcow2", "-O", "raw", qcow2, disk0)
	images := []*os.File{open(t, disk0), open(t, raw)}
	for d, img := range images {
		if err := h.Verify(d, img, done.Seq); err != nil {
			t.Error(err)
		}
	}
	r, err := h.Locate([]io.ReaderAt{images[0], images[1]})
	if err != nil || !r.Contains(done.Seq) {
		t.Errorf("Locate = %v, %v; want a range with %d", r, err, done.Seq)
	}

	// The same check must catch one flipped bit in a written block.
	w := h.Write(done.Seq)
	b, err := os.ReadFile(images[w.Disk].Name())
	if err != nil {
		t.Fatal(err)
	}
	b[int64(w.Block)*workload.BlockSize+1000] ^= 0x10
	var merr *workload.MismatchError
	err = h.Verify(w.Disk, bytes.NewReader(b), done.Seq)
	if !errors.As(err, &merr) || merr.Count != 1 || merr.Mismatches[0].Kind != workload.Corrupt {
		t.Errorf("Verify(image with a flipped bit) = %v, want one corrupt block", err)
	}
}

// TestGuestPowerOffCommand runs an endless, rate-limited workload, powers
// the guest off from the console mid-run and locates the point the disks
// stopped at: no earlier than the last write the guest reported durable.
func TestGuestPowerOffCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a guest under TCG")
	}
	harness.Need(t, "qemu-system-x86_64", "qemu-img")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	art, err := guest.Build(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	p := workload.Params{Seed: 5, Blocks: 64, Disks: 1, SyncEvery: 10, Rate: 500}
	raw := filepath.Join(dir, "disk0.raw")
	qemuImg(ctx, t, "create", "-q", "-f", "raw", raw, "1M")
	vm := guest.Boot(ctx, t, art, guest.Options{Workload: &p, Disks: []guest.Disk{{Path: raw}}})
	synced, err := vm.Serial.Wait(ctx, guest.Synced, 200)
	if err != nil {
		t.Fatal(err)
	}
	if err := vm.PowerOff(ctx); err != nil {
		t.Fatal(err)
	}
	done, err := vm.Serial.Wait(ctx, guest.Done, synced.Seq)
	if err != nil {
		t.Fatal(err)
	}
	h, err := workload.Replay(p, done.Seq)
	if err != nil {
		t.Fatal(err)
	}
	r, err := h.Locate([]io.ReaderAt{open(t, raw)})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Contains(done.Seq) || r.Hi < synced.Seq {
		t.Errorf("disk holds the writes of %v; the guest said %d were durable and stopped after %d", r, synced.Seq, done.Seq)
	}
	if err := h.Verify(0, open(t, raw), done.Seq); err != nil {
		t.Error(err)
	}
}

func qemuImg(ctx context.Context, t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
	}
}

func open(t *testing.T, path string) *os.File {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}
