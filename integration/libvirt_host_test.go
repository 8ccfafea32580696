package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/filter"
	"github.com/qcdp/qcdp/integration/harness"
)

// TestHostDaemonUnderLibvirt: a libvirt domain selected by a label in its
// metadata is discovered and protected by `qcdp host`, detached cleanly by
// `qcdp detach` (no job left behind), attached again with a bitmap resync
// (QEMU, running as libvirt-qemu, serves the resync export on a socket in
// a directory of the VM's own), and protected again when the domain is
// destroyed and started, recognized as the same disks and compared with
// the replica by hashes, not copied whole; the replica's newest point then
// equals the source.
//
// The libvirtd is the test's own (harness.NeedLibvirtd), warmed up before
// the test's budget starts, and the policy selects a label only this test's
// domain carries (qcdp-test=<its name>): even on a shared libvirtd no other
// domain could be selected, nor this one by another test's policy.
func TestHostDaemonUnderLibvirt(t *testing.T) {
	dir := harness.TempDir(t)
	if err := os.Chmod(dir, 0o755); err != nil { // libvirt's QEMU user must reach the images
		t.Fatal(err)
	}
	bctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := buildQCDP(bctx, t, dir)
	lv := harness.NeedLibvirtd(context.Background(), t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rs := newReplica(ctx, t, bin, dir, "")
	replica := rs.start(ctx, t, "replica")
	var rb [4]byte
	rand.Read(rb[:])
	name := "qcdp-it-" + hex.EncodeToString(rb[:])
	label := "qcdp-test=" + name

	vda, vdb := filepath.Join(dir, "vda.qcow2"), filepath.Join(dir, "vdb.raw")
	for _, img := range []struct{ path, format string }{{vda, "qcow2"}, {vdb, "raw"}} {
		if err := harness.CreateImage(ctx, img.path, img.format, 8<<20); err != nil {
			t.Fatal(err)
		}
		if err := harness.FillPattern(ctx, img.path, img.format, 8<<20, 1<<20, 0x30); err != nil {
			t.Fatal(err)
		}
	}
	// A fixed UUID, as a defined domain keeps across restarts: its disks
	// are known by it.
	var ub [16]byte
	rand.Read(ub[:])
	uuid := fmt.Sprintf("%x-%x-%x-%x-%x", ub[:4], ub[4:6], ub[6:8], ub[8:10], ub[10:])
	xml := filepath.Join(dir, "domain.xml")
	if err := os.WriteFile(xml, []byte(fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <uuid>%s</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <metadata>
    <qcdp:labels xmlns:qcdp="https://qcdp.dev/xmlns/1"><qcdp:label key="qcdp-test">%s</qcdp:label></qcdp:labels>
  </metadata>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='%s'/><target dev='vdb' bus='virtio'/></disk>
  </devices>
</domain>`, name, uuid, name, vda, vdb)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := lv.Virsh(ctx, "create", xml); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lv.Virsh(context.Background(), "destroy", name) })

	control := filepath.Join(dir, "host.sock")
	config := filepath.Join(dir, "host.toml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`[host]
state_dir = %q
control_socket = %q
nbd_socket_dir = %q
log_level = "debug"
libvirt_uri = %q
%s

[[group]]
name = "g1"
%s
  [[group.vm]]
  label = %q
`, filepath.Join(dir, "state"), control, filepath.Join(dir, "nbd"), lv.URI, rs.HostKeys(), rs.GroupKeys(), label)), 0o644); err != nil {
		t.Fatal(err)
	}
	host := harness.StartProcT(t, dir, "host", bin, "host", "--config", config)
	if err := harness.WaitSocket(ctx, control, host); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("%s\n%s", host.Report(), replica.Report())
		}
	}()
	waitDisks(ctx, t, bin, control, 2, filter.Syncing, host)
	jobs := func() string {
		out, err := lv.Virsh(ctx, "qemu-monitor-command", name, `{"execute":"query-block-jobs"}`)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if j := jobs(); !strings.Contains(j, "qcdp-") {
		t.Fatalf("no capture job in the domain: %s", j)
	}

	if out, err := exec.CommandContext(ctx, bin, "detach", "--socket", control, name).CombinedOutput(); err != nil {
		t.Fatalf("qcdp detach: %v\n%s\n%s", err, out, host.Report())
	}
	waitDisks(ctx, t, bin, control, 2, filter.Detached, host)
	if j := jobs(); strings.Contains(j, "qcdp-") {
		t.Fatalf("a capture job is left after detach: %s", j)
	}
	// Written while detached, through the disks' devices as the guest
	// writes: 64 KiB on each.
	for i, dev := range []string{"virtio-disk0", "virtio-disk1"} {
		cmd := fmt.Sprintf(`qemu-io -d /machine/peripheral/%s/virtio-backend "write -P 0x%02x %d 65536"`, dev, 0x70+i, (i+1)<<20)
		if out, err := lv.Virsh(ctx, "qemu-monitor-command", "--hmp", name, cmd); err != nil || strings.TrimSpace(out) != "" {
			t.Fatalf("write while detached: %v %q", err, out)
		}
	}
	resynced := func(modes map[string]string, since time.Time, most int64) {
		t.Helper()
		for {
			st, err := qcdpStatus(ctx, bin, control)
			n := 0
			if err == nil && len(st.Groups) == 1 {
				for _, ds := range st.Groups[0].Disks {
					if r := ds.Resync; r != nil && r.Done && r.Started.After(since) && ds.State == string(filter.Syncing) {
						n++
						if r.Mode != modes[ds.Target] || r.Sent > most || r.Compared != r.Total {
							t.Fatalf("disk %s: resync %+v, want a %s resync that sent at most %d bytes", ds.Stream, r, modes[ds.Target], most)
						}
					}
				}
			}
			if n == 2 {
				return
			}
			select {
			case <-ctx.Done():
				t.Fatalf("no %v resync of both disks: %+v %v\n%s", modes, st, err, host.Report())
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	since := time.Now()
	if out, err := exec.CommandContext(ctx, bin, "attach", "--socket", control, name).CombinedOutput(); err != nil {
		t.Fatalf("qcdp attach: %v\n%s\n%s", err, out, host.Report())
	}
	// Dirty ranges are read in chunks of up to 1 MiB.
	resynced(map[string]string{"vda": "bitmap", "vdb": "bitmap"}, since, 2<<20)

	// The domain is destroyed and started: the policy protects it again,
	// as the same disks. libvirt's destroy stops QEMU with SIGTERM, which
	// closes the images cleanly: the qcow2 v3 disk's persistent bitmap
	// says what changed; the raw disk has none and is compared with the
	// replica by hashes.
	waitReplicated(ctx, t, bin, control, host)
	if _, err := lv.Virsh(ctx, "destroy", name); err != nil {
		t.Fatal(err)
	}
	if err := harness.QemuIO(ctx, vdb, "raw", "write -P 0x7e 3145728 65536"); err != nil {
		t.Fatal(err)
	}
	since = time.Now()
	if _, err := lv.Virsh(ctx, "create", xml); err != nil {
		t.Fatal(err)
	}
	resynced(map[string]string{"vda": "bitmap", "vdb": "hash"}, since, 2*filter.HashBlock)
	if j := jobs(); !strings.Contains(j, "qcdp-") {
		t.Fatalf("no capture job after the domain restarted: %s", j)
	}
	waitReplicated(ctx, t, bin, control, host)
	var pts pointsJSON
	if err := json.Unmarshal(run(ctx, t, bin, "points", "--socket", rs.Control, "--json", "g1"), &pts); err != nil {
		t.Fatal(err)
	}
	st, err := qcdpStatus(ctx, bin, control)
	if err != nil {
		t.Fatal(err)
	}
	src := map[string][2]string{"vda": {vda, "qcow2"}, "vdb": {vdb, "raw"}}
	for _, ds := range st.Groups[0].Disks {
		out := filepath.Join(dir, "replica-"+ds.Target+".raw")
		run(ctx, t, bin, "restore", "--socket", rs.Control, "--seq", fmt.Sprint(pts.Window.LastSeq), "--disk", ds.Stream,
			"--format", "raw", "--out", out, "g1")
		if b, err := exec.CommandContext(ctx, "qemu-img", "compare", "-U", "-f", src[ds.Target][1], "-F", "raw", src[ds.Target][0], out).CombinedOutput(); err != nil {
			t.Errorf("disk %s: the replica's newest point differs from the source: %v\n%s", ds.Target, err, b)
		}
	}
}
