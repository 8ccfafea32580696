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
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/filter"
	"github.com/qcdp/qcdp/integration/guest"
	"github.com/qcdp/qcdp/integration/guest/workload"
	"github.com/qcdp/qcdp/integration/harness"
)

// TestPlannedFailover: two libvirt VMs of one group, writing. `qcdp
// failover prepare` on the host shuts both down cleanly (ACPI power
// button), marks the final point and returns once the replica holds it;
// `qcdp failover planned` at the recovery site fences the group and starts
// both standbys from exactly that point, in the plan's boot order (the
// second VM's name first) with its delay. Zero loss: each source disk
// equals the view the standby's overlay reads, byte for byte (qemu-img
// compare), and each standby's guest finds its disk in the state right
// after the last write its source made (QCDP-DONE). Writing after the
// final point makes planned refuse.
func TestPlannedFailover(t *testing.T) {
	harness.Need(t, "qemu-system-x86_64", "qemu-img")
	dir := harness.TempDir(t)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := buildQCDP(bctx, t, dir)
	art, err := guest.Build(bctx, "")
	if err != nil {
		t.Fatal(err)
	}
	lv := harness.NeedLibvirtd(context.Background(), t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	var rb [3]byte
	rand.Read(rb[:])
	base := "qcdp-pl-" + hex.EncodeToString(rb[:])
	label := "qcdp-test=" + base
	names := []string{base + "-a", base + "-b"}
	virsh := func(args ...string) string {
		t.Helper()
		out, err := lv.Virsh(ctx, args...)
		if err != nil {
			t.Fatalf("virsh %v: %v\n%s", args, err, out)
		}
		return out
	}
	kdir, kernel, initrd := guestKernel(t, dir, art)
	standby := filepath.Join(dir, "standby")
	rs := newReplica(ctx, t, bin, dir, "")
	f, err := os.OpenFile(rs.Config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, `
[[recovery]]
group = "g1"
libvirt_uri = %q
standby_dir = %q
domain_type = "qemu"
domain_suffix = "-dr"
kernel_dirs = [%q]
boot_order = [%q]
boot_delay = "2s"

[[recovery.vm]]
name = %q
cmdline_append = "qcdp.verify=1"

[[recovery.vm]]
name = %q
cmdline_append = "qcdp.verify=1"
`, lv.URI, standby, kdir, names[1], names[0], names[1])
	f.Close()
	replica := rs.start(ctx, t, "replica")

	type vm struct {
		name, disk, vmdir, uuid string
		p                       workload.Params
		con                     *consoleLog
	}
	var vms []*vm
	for i, n := range names {
		v := &vm{name: n, disk: filepath.Join(dir, n+".qcow2"), vmdir: filepath.Join(dir, "vm-"+n),
			p: workload.Params{Seed: uint64(11 + i), Blocks: 256, Disks: 1, SyncEvery: 4, Rate: 30}}
		if err := harness.CreateImage(ctx, v.disk, "qcow2", 8<<20); err != nil {
			t.Fatal(err)
		}
		qemuDir(t, v.vmdir)
		x := filepath.Join(dir, n+".xml")
		var xml string
		xml, v.uuid = guestDomain{Name: n, Label: base, Kernel: kernel, Initrd: initrd, Params: v.p, Disk: v.disk,
			ConsoleSock: filepath.Join(v.vmdir, "console.sock"), ConsoleLog: filepath.Join(v.vmdir, "console.log")}.XML()
		writeFile(t, x, xml)
		virsh("define", x)
		virsh("start", n)
		t.Cleanup(func() {
			for _, d := range []string{n, n + "-dr"} {
				lv.Virsh(context.Background(), "destroy", d)
				lv.Virsh(context.Background(), "undefine", d)
			}
		})
		v.con = &consoleLog{path: filepath.Join(v.vmdir, "console.log")}
		v.con.follow(ctx)
		vms = append(vms, v)
	}
	control := filepath.Join(dir, "host.sock")
	config := filepath.Join(dir, "host.toml")
	writeFile(t, config, fmt.Sprintf(`[host]
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
`, filepath.Join(dir, "state"), control, filepath.Join(dir, "nbd"), lv.URI, rs.HostKeys(), rs.GroupKeys(), label))
	host := harness.StartProcT(t, dir, "host", bin, "host", "--config", config)
	if err := harness.WaitSocket(ctx, control, host); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("look at: %s (standbys, consoles), %s (libvirtd logs)\n%s\n%s", standby, lv.Dir, host.Report(), replica.Report())
		}
	}()
	waitDisks(ctx, t, bin, control, 2, filter.Syncing, host)
	for _, v := range vms {
		v.con.wait(ctx, t, 0, regexp.MustCompile(`QCDP-SYNCED seq=20 `), v.name+" writing")
	}

	// Planned failover refused before the host marked a final point.
	if out, err := exec.CommandContext(ctx, bin, "failover", "planned", "g1", "--socket", rs.Control).CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "failover prepare") {
		t.Fatalf("planned without prepare: %v\n%s", err, out)
	}

	// The host half: clean shutdown, final point, drained.
	var prep struct {
		Seq uint64 `json:"seq"`
	}
	out := run(ctx, t, bin, "failover", "prepare", "g1", "--socket", control, "--timeout", "2m", "--json")
	if err := json.Unmarshal(out, &prep); err != nil || prep.Seq == 0 {
		t.Fatalf("qcdp failover prepare: %v\n%s", err, out)
	}
	done := map[string]uint64{}
	for _, v := range vms {
		_, m := v.con.wait(ctx, t, 0, regexp.MustCompile(`QCDP-DONE seq=(\d+) `), v.name+" shutting down")
		done[v.name], _ = strconv.ParseUint(m[1], 10, 64)
		if st := virsh("domstate", v.name); !strings.Contains(st, "shut off") {
			t.Fatalf("%s is %q after prepare", v.name, st)
		}
	}

	// The recovery site's half.
	var st failoverStateJSON
	out = run(ctx, t, bin, "failover", "planned", "g1", "--socket", rs.Control, "--json")
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if st.Mode != "planned" || !st.Fenced || st.Point.Seq != prep.Seq || len(st.VMs) != 2 {
		t.Fatalf("planned failover: %+v, want mode planned, fenced, from the final point seq %d", st, prep.Seq)
	}
	if st.VMs[0].Domain != names[1]+"-dr" || st.VMs[1].Domain != names[0]+"-dr" {
		t.Fatalf("boot order: %s then %s, want %s first (boot_order)", st.VMs[0].Domain, st.VMs[1].Domain, names[1])
	}
	if d := st.VMs[1].BootSeconds - st.VMs[0].BootSeconds; d < 2 {
		t.Fatalf("the second standby ran %.2fs after the first, boot_delay is 2s", d)
	}
	// Zero loss: every source disk equals the view its standby reads.
	views := filepath.Join(dir, "views.sock")
	for _, v := range vms {
		var e struct {
			Exports map[string]string `json:"exports"`
		}
		ex := run(ctx, t, bin, "export", "--socket", rs.Control, "--json", "g1", "--seq", strconv.FormatUint(prep.Seq, 10))
		if err := json.Unmarshal(ex, &e); err != nil {
			t.Fatal(err)
		}
		disk := e.Exports[v.uuid+".vda"]
		if disk == "" {
			t.Fatalf("no view of %s's disk in %v", v.name, e.Exports)
		}
		cmp := exec.CommandContext(ctx, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", v.disk,
			fmt.Sprintf("nbd+unix:///%s?socket=%s", disk, views))
		if out, err := cmp.CombinedOutput(); err != nil {
			t.Fatalf("%s: the final point differs from the source disk: %v\n%s", v.name, err, out)
		}
	}
	for i, sv := range st.VMs {
		c := &consoleLog{path: filepath.Join(filepath.Dir(sv.Disks[0].Overlay), "console.log")}
		_, m := c.wait(ctx, t, 0, verifiedRe, "standby "+sv.Domain)
		lo, _ := strconv.ParseUint(m[1], 10, 64)
		hi, _ := strconv.ParseUint(m[2], 10, 64)
		src := names[1-i]
		if d := done[src]; lo > d || hi < d {
			t.Fatalf("standby %s holds the state after writes %d..%d, its source's last write was %d: lost or extra writes", sv.Domain, lo, hi, d)
		}
	}
	if out, err := exec.CommandContext(ctx, bin, "failover", "planned", "g1", "--socket", rs.Control).CombinedOutput(); err == nil ||
		!strings.Contains(string(out), "failed over") {
		t.Fatalf("a second planned failover: %v\n%s", err, out)
	}
	run(ctx, t, bin, "failover", "undo", "g1", "--socket", rs.Control)
}
