package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
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
// `qcdp detach` (no job left behind), and protected again when the domain
// restarts.
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
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
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
	xml := filepath.Join(dir, "domain.xml")
	if err := os.WriteFile(xml, []byte(fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
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
</domain>`, name, name, vda, vdb)), 0o644); err != nil {
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

[[group]]
name = "gold"
  [[group.vm]]
  label = %q
`, filepath.Join(dir, "state"), control, filepath.Join(dir, "nbd"), lv.URI, label)), 0o644); err != nil {
		t.Fatal(err)
	}
	host := harness.StartProcT(t, dir, "host", bin, "host", "--config", config)
	if err := harness.WaitSocket(ctx, control, host); err != nil {
		t.Fatal(err)
	}
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

	// The domain restarts: the policy protects it again.
	if _, err := lv.Virsh(ctx, "destroy", name); err != nil {
		t.Fatal(err)
	}
	if _, err := lv.Virsh(ctx, "create", xml); err != nil {
		t.Fatal(err)
	}
	waitDisks(ctx, t, bin, control, 2, filter.Syncing, host)
	if j := jobs(); !strings.Contains(j, "qcdp-") {
		t.Fatalf("no capture job after the domain restarted: %s", j)
	}
}
