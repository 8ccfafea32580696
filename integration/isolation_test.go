package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/filter"
	"github.com/qcdp/qcdp/integration/harness"
)

// TestHostCaptureIsolation: two plain QEMU VMs protected by a real `qcdp
// host` in one group share the group's capture socket, and each disk's
// export opens to its own VM's QEMU only (invariant 6). While both are
// syncing, the other VM's QEMU (a blockdev-add of an NBD node onto vm1's
// export) and root's own NBD tools (qemu-io, nbdsh) try to write into vm1's
// export: each is refused with the protocol's policy error, the daemon logs
// who was refused, nbdinfo does not even list the exports, the real
// mirrors go on capturing, and the spool rebuilds both disks exactly, with
// none of the intruders' bytes.
func TestHostCaptureIsolation(t *testing.T) {
	harness.Need(t, "qemu-system-x86_64", "qemu-img", "qemu-io", "nbdsh", "nbdinfo")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := harness.TempDir(t)
	bin := buildQCDP(ctx, t, dir)

	const size = 8 << 20
	images := map[string]string{"vm1": filepath.Join(dir, "vm1.qcow2"), "vm2": filepath.Join(dir, "vm2.qcow2")}
	for vm, img := range images {
		base := byte(0x10)
		if vm == "vm2" {
			base = 0x50
		}
		if err := harness.CreateImage(ctx, img, "qcow2", size); err != nil {
			t.Fatal(err)
		}
		if err := harness.FillPattern(ctx, img, "qcow2", size, 1<<20, base); err != nil {
			t.Fatal(err)
		}
	}
	h := newHost(t, bin, dir, "", "  [[group.vm]]\n  name = \"vm2\"\n")
	qemus := map[string]*harness.QEMU{}
	for _, vm := range []string{"vm1", "vm2"} {
		if err := os.MkdirAll(filepath.Join(dir, vm), 0o755); err != nil {
			t.Fatal(err)
		}
		qemus[vm] = harness.Start(ctx, t, harness.Options{
			Dir: filepath.Join(dir, vm), Machine: "pc", Paused: true,
			Disks: []harness.Disk{{Name: "disk0", Path: images[vm], Format: "qcow2"}},
			Extra: []string{
				"-m", "64", "-name", vm,
				"-qmp", "unix:" + filepath.Join(h.VMs, vm+".qmp") + ",server=on,wait=off",
				"-device", "virtio-blk-pci,drive=disk0,id=vda,share-rw=on",
			},
		})
	}
	write := func(vm, cmd string) {
		t.Helper()
		if err := qemus[vm].QemuIO(ctx, filter.FilterNode(vm+".vda"), cmd); err != nil {
			t.Fatalf("guest write %q on %s: %v", cmd, vm, err)
		}
	}

	host := h.start(ctx, t, "host")
	waitDisks(ctx, t, bin, h.Control, 2, filter.Syncing, host)
	write("vm1", "write -P 0xa1 0 4096")
	write("vm2", "write -P 0xb1 4096 4096")
	before, err := qcdpStatus(ctx, bin, h.Control)
	if err != nil {
		t.Fatal(err)
	}

	sock := filepath.Join(dir, "nbd", "g1.sock")
	uri := "nbd+unix:///vm1.vda?socket=" + sock
	const evil = "0xee" // written nowhere by the guests

	// vm2's QEMU, allowed on the socket, reaches for vm1's export.
	err = qemus["vm2"].QMP.BlockdevAdd(ctx, harness.NBDTarget("intruder", sock, "vm1.vda"))
	if err == nil {
		qemus["vm2"].QemuIO(ctx, "intruder", "write -P "+evil+" 6291456 65536")
		t.Errorf("vm2's QEMU opened vm1's capture export")
	} else if !strings.Contains(err.Error(), "Requested export not available") {
		t.Errorf("vm2's QEMU on vm1's export: %v; want the answer a missing export gets (\"Requested export not available\")", err)
	}

	// Root's tools, other processes than vm1's QEMU.
	out, err := exec.CommandContext(ctx, "qemu-io", "-f", "raw", "-c", "write -P "+evil+" 6291456 65536", uri).CombinedOutput()
	if err == nil || !strings.Contains(string(out), `no export "vm1.vda" open to this client`) {
		t.Errorf("qemu-io as root into vm1's export: %v\n%s\nwant the answer a missing export gets", err, out)
	}
	nbdsh := exec.CommandContext(ctx, "nbdsh", "-u", uri, "-c", "h.pwrite(b'\\xee' * 65536, 6291456); h.flush()")
	nbdsh.Env = append(nbdsh.Environ(), "PATH=/usr/bin:/bin") // Debian's python3, which has libnbd's module
	out, err = nbdsh.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "has no export named 'vm1.vda'") {
		t.Errorf("nbdsh as root into vm1's export: %v\n%s\nwant NBD_REP_ERR_UNKNOWN, as for a missing export", err, out)
	}
	out, err = exec.CommandContext(ctx, "nbdinfo", "--list", "nbd+unix:///?socket="+sock).CombinedOutput()
	if bytes.Contains(out, []byte("vm1.vda")) || bytes.Contains(out, []byte("vm2.vda")) {
		t.Errorf("nbdinfo --list shows the exports to a process that may open none:\n%s", out)
	}

	// The real mirrors were not disturbed: both disks still capture.
	write("vm1", "write -P 0xa2 1048576 65536")
	write("vm2", "write -P 0xb2 2097152 512")
	waitDisks(ctx, t, bin, h.Control, 2, filter.Syncing, host)
	after, err := qcdpStatus(ctx, bin, h.Control)
	if err != nil {
		t.Fatal(err)
	}
	if after.Groups[0].LastSeq <= before.Groups[0].LastSeq {
		t.Errorf("the group's last seq went from %d to %d across two guest writes", before.Groups[0].LastSeq, after.Groups[0].LastSeq)
	}
	if err := host.Stop(10 * time.Second); err != nil {
		t.Fatalf("qcdp host did not stop cleanly: %v\n%s", err, host.Report())
	}
	log := host.Log(1000)
	if n := strings.Count(log, "nbd export refused to peer"); n < 3 || !strings.Contains(log, "export=vm1.vda") {
		t.Errorf("the daemon logged %d refusals of vm1.vda, want one per intruder (3 or more):\n%s", n, log)
	}
	for _, q := range qemus {
		q.Close()
	}

	// The spool holds exactly what the guests wrote: it rebuilds both
	// disks, and the intruders' bytes are in neither.
	r1, r2 := filepath.Join(dir, "applied-vm1.raw"), filepath.Join(dir, "applied-vm2.raw")
	out, err = exec.CommandContext(ctx, bin, "spool", "apply", "--spool", h.SpoolDir,
		"--disk", "vm1.vda="+r1, "--disk", "vm2.vda="+r2).CombinedOutput()
	if err != nil {
		t.Fatalf("qcdp spool apply: %v\n%s", err, out)
	}
	if err := harness.Compare(ctx, images["vm1"], "qcow2", r1, "raw"); err != nil {
		t.Errorf("vm1: the spool does not rebuild the source: %v", err)
	}
	if err := harness.Compare(ctx, images["vm2"], "qcow2", r2, "raw"); err != nil {
		t.Errorf("vm2: the spool does not rebuild the source: %v", err)
	}
	if t.Failed() {
		t.Log(host.Report())
	}
}
