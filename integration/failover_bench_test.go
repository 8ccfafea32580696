package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qcdp/qcdp/integration/guest"
	"github.com/qcdp/qcdp/integration/guest/workload"
	"github.com/qcdp/qcdp/integration/harness"
)

// The protected disks of the benchmark: sparse qcow2 images holding
// fillBytes of data at fillOffset, and the guest's workload area below it.
const (
	fillOffset = 128 << 20
	fillBytes  = 256 << 20
)

// rtoWorkload is what each source guest writes while protected: 32768
// random 4 KiB blocks over a 64 MiB area (about 86% of it), fsync every
// 512; then it waits for "poweroff". A standby in verify mode reads the
// whole area with O_DIRECT.
var rtoWorkload = workload.Params{Seed: 11, Writes: 32768, Blocks: 16384, Disks: 1, SyncEvery: 512, Hold: true}

// rtoDisk is one protected VM of the benchmark, alone in its group.
type rtoDisk struct {
	size        int64
	group, name string // protection group, source domain
	image       string
	console     string // the source's console log and socket
	consoleSock string
}

// BenchmarkFailoverRTO measures recovery with the real daemons, a real
// libvirtd and the project's test guest under TCG, and prints a table:
//
//   - RTO: `qcdp failover test GROUP` (from the command to its return,
//     which is when the standby runs; libvirt's own running state; QEMU
//     opening the view over NBD, from the replica's debug log; the first
//     guest read of the disk done, from libvirt's block stats; the guest
//     in verify mode reporting QCDP-VERIFIED) for a 1 GiB and a 100 GiB
//     sparse disk holding the same data, against `virsh start` of the same
//     domain on a local disk. Goals: the command ≤ 5 s, 100 GiB ÷ 1 GiB ≤ 1.1.
//   - Boot to workload: domain running to QCDP-VERIFIED (the guest reads
//     its 64 MiB area with O_DIRECT) from the view, against the same domain
//     on a local qcow2 converted from the same view.
//   - Commit: `qcdp failover commit GROUP --wait` of a `qcdp failover
//     start` of the 1 GiB disk, against `qemu-img convert` of the same
//     view to a local qcow2 and nbdcopy of it to a local raw file; of the
//     100 GiB disk its first minute, and the time it would take at that
//     rate (QCDP_RTO_COMMIT_ALL=1: all of it, about 15 min more here:
//     give go test a -timeout of 90m).
//   - Then the replica daemon is stopped with SIGTERM, the 100 GiB commit
//     under way: how long it takes, or that it had to be killed.
//
// Each measured run begins with the page cache dropped (a recovery site
// did not just read its journals); runs alternate between the sizes and
// the local baseline. QCDP_RTO_RUNS sets the runs per cell (default 5).
// Root only (a libvirtd of its own); about 12 minutes here.
//
//	go test -run '^$' -bench FailoverRTO -benchtime 1x -timeout 45m ./integration
func BenchmarkFailoverRTO(b *testing.B) {
	harness.Need(b, "qemu-system-x86_64", "qemu-img", "nbdcopy")
	runs := 5
	if v, err := strconv.Atoi(os.Getenv("QCDP_RTO_RUNS")); err == nil && v > 0 {
		runs = v
	}
	dir := harness.TempDir(b)
	if err := os.Chmod(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	bctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin := filepath.Join(dir, "qcdp")
	if out, err := exec.CommandContext(bctx, "go", "build", "-o", bin, "github.com/qcdp/qcdp/cmd/qcdp").CombinedOutput(); err != nil {
		b.Fatalf("go build qcdp: %v\n%s", err, out)
	}
	art, err := guest.Build(bctx, "")
	if err != nil {
		b.Fatal(err)
	}
	lv := harness.NeedLibvirtd(context.Background(), b)
	budget, limit := 40*time.Minute, time.Minute
	if os.Getenv("QCDP_RTO_COMMIT_ALL") != "" {
		budget, limit = 85*time.Minute, 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	r := &foRig{tb: b, dir: dir, bin: bin, lv: lv, lc: dialLibvirt(b, lv.Socket)}
	disks := r.setUp(ctx, art)
	dropped := rtoDropCaches()
	b.ResetTimer()

	// 1. RTO and boot from the view. Each run takes the 1 GiB failover,
	// the 100 GiB one and the local baseline in turn, starting one later
	// than the run before (the local domain is made from the first run's
	// 1 GiB standby).
	res := make([]rtoCell, len(disks))
	var local rtoCell
	var localName, localConsole string
	var convertCopy time.Duration
	for i := 0; i < runs; i++ {
		for j := range 3 {
			switch k := (i + j) % 3; k {
			case 0, 1:
				x, xmlDoc, dirs := r.testFailover(ctx, disks[k], i == 0 && k == 0)
				res[k].add(x)
				if xmlDoc != "" {
					localName, localConsole, convertCopy = r.localCopy(ctx, disks[k], x, xmlDoc, dirs)
				}
			case 2:
				local.add(r.localBoot(ctx, localName, localConsole))
			}
		}
	}

	// 2. Commit of an unplanned failover of the 1 GiB disk, against
	// copying the same view; of the 100 GiB disk, the first minute of it
	// (all of it with QCDP_RTO_COMMIT_ALL set).
	c1 := r.commitRun(ctx, disks[0], 0)
	c100 := r.commitRun(ctx, disks[1], limit)
	stopped, stopNote := r.stopReplica(15 * time.Second)
	b.StopTimer()

	// The table.
	out := os.Stdout
	cache := "page cache dropped before each run"
	if !dropped {
		cache = "page cache NOT dropped (not root?)"
	}
	fmt.Fprintf(out, "\nfailover RTO: the project's test guest under TCG (1 vCPU, 256 MiB) in verify mode; each disk a sparse qcow2 holding\n"+
		"%s of data and the workload's %s area (%d 4 KiB writes through protection); median of %d runs, %s\n",
		rtoMiB(fillBytes), rtoMiB(rtoWorkload.AreaBytes()), rtoWorkload.Writes, runs, cache)
	fmt.Fprintf(out, "%-58s %8s %8s %6s\n", "from `qcdp failover test GROUP` to ...", rtoMiB(disks[0].size), rtoMiB(disks[1].size), "100÷1")
	row := func(what string, a, c []time.Duration) {
		fmt.Fprintf(out, "%-58s %8s %8s %6s\n", what, rtoSecs(rtoMedian(a)), rtoSecs(rtoMedian(c)), rtoRatio(rtoMedian(c), rtoMedian(a)))
	}
	row("  the view exported (replica log: exported view)", res[0].exported, res[1].exported)
	row("  QEMU started (libvirt's QEMU log: starting up)", res[0].spawned, res[1].spawned)
	row("  QEMU connects to the view (replica log: nbd transmission)", res[0].nbd, res[1].nbd)
	row("  libvirt reports the standby running", res[0].running, res[1].running)
	row("the command returns: standby running", res[0].cmd, res[1].cmd)
	row("  first read of vda done (block stats: SeaBIOS's probe)", res[0].firstRead, res[1].firstRead)
	row("  QCDP-READY (its kernel has read vda: partition scan)", res[0].ready, res[1].ready)
	row("  QCDP-VERIFIED (it has read its 64 MiB area)", res[0].verified, res[1].verified)
	for k, d := range disks {
		fmt.Fprintf(out, "  runs, %s: command %s; running %s; first read %s\n", rtoMiB(d.size), rtoList(res[k].cmd), rtoList(res[k].running), rtoList(res[k].firstRead))
	}
	fmt.Fprintf(out, "baseline: `virsh start` of the same domain on a local qcow2: running %s, first read %s, QCDP-READY %s;\n"+
		"  command ÷ baseline running: %s (1 GiB), %s (100 GiB)\n",
		rtoSecs(rtoMedian(local.cmd)), rtoSecs(rtoMedian(local.firstRead)), rtoSecs(rtoMedian(local.ready)),
		rtoRatio(rtoMedian(res[0].cmd), rtoMedian(local.cmd)), rtoRatio(rtoMedian(res[1].cmd), rtoMedian(local.cmd)))
	mark := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	worst := max(rtoMedian(res[0].cmd), rtoMedian(res[1].cmd))
	sz := rtoMedian(res[1].cmd).Seconds() / rtoMedian(res[0].cmd).Seconds()
	fmt.Fprintf(out, "goals: running ≤ 5 s: %s (%s); 100 GiB ÷ 1 GiB ≤ 1.1: %s (%.2f)\n\n", mark(worst <= 5*time.Second), rtoSecs(worst), mark(sz <= 1.1), sz)

	fmt.Fprintf(out, "%-58s %8s %8s %10s\n", "boot to workload, 1 GiB disk", "view", "local", "view÷local")
	row2 := func(what string, a, c []time.Duration) {
		fmt.Fprintf(out, "%-58s %8s %8s %10s\n", what, rtoSecs(rtoMedian(a)), rtoSecs(rtoMedian(c)), rtoRatio(rtoMedian(a), rtoMedian(c)))
	}
	row2("domain running to QCDP-VERIFIED (host clock)", res[0].bootVerified, local.bootVerified)
	row2("  kernel start to QCDP-READY (guest clock: the boot)", res[0].guestBoot, local.guestBoot)
	row2("  QCDP-READY to QCDP-VERIFIED (guest clock: the read)", res[0].guestRead, local.guestRead)
	fmt.Fprintf(out, "the verify: %d O_DIRECT reads of 4 KiB; both disks hold the workload up to write %d of %d;\n"+
		"the local copy is `qemu-img convert` of the view at the same point (%s)\n\n",
		rtoWorkload.Blocks, res[0].hi, rtoWorkload.Writes, rtoSecs(convertCopy))

	fmt.Fprintf(out, "%-58s %8s %10s %9s\n", fmt.Sprintf("commit, %s disk (%s of data)", rtoMiB(disks[0].size), rtoMiB(fillBytes+rtoWorkload.AreaBytes())), "time", "disk÷time", "commit÷")
	fmt.Fprintf(out, "%-58s %8s %10s %9s\n", "`qcdp failover commit --wait` (block pull, standby idle)", rtoSecs(c1.commit), rtoMBps(disks[0].size, c1.commit), "")
	fmt.Fprintf(out, "%-58s %8s %10s %9s\n", "qemu-img convert of the same view to a local qcow2", rtoSecs(c1.convert), rtoMBps(disks[0].size, c1.convert), rtoRatio(c1.commit, c1.convert))
	fmt.Fprintf(out, "%-58s %8s %10s %9s\n", "nbdcopy of the same view to a local raw file", rtoSecs(c1.nbdcopy), rtoMBps(disks[0].size, c1.nbdcopy), rtoRatio(c1.commit, c1.nbdcopy))
	fmt.Fprintf(out, "on disk after: committed overlay %s, converted copy %s; `qcdp failover start` returned in %s%s\n",
		rtoMiB(c1.overlay), rtoMiB(c1.copy), rtoSecs(c1.start), c1.note)
	if c100.done {
		fmt.Fprintf(out, "commit, %s disk: %s (%s), nbdcopy of its view %s, qemu-img convert %s%s\n", rtoMiB(disks[1].size),
			rtoSecs(c100.commit), rtoMBps(disks[1].size, c100.commit), rtoSecs(c100.nbdcopy), rtoSecs(c100.convert), c100.note)
	} else {
		rate := float64(c100.pulled) / c100.commit.Seconds()
		fmt.Fprintf(out, "commit, %s disk: %s pulled in the first %s (%.0f MB/s): all of it would take about %.0f min;\n"+
			"  nbdcopy of its view %s, qemu-img convert %s (QCDP_RTO_COMMIT_ALL=1 runs the whole commit)\n", rtoMiB(disks[1].size),
			rtoMiB(int64(c100.pulled)), rtoSecs(c100.commit), rate/1e6, float64(disks[1].size)/rate/60, rtoSecs(c100.nbdcopy), rtoSecs(c100.convert))
	}
	if stopNote != "" {
		fmt.Fprintf(out, "NOTE %s\n", stopNote)
	} else {
		fmt.Fprintf(out, "the replica daemon stopped on SIGTERM in %s with the 100 GiB commit under way\n", rtoSecs(stopped))
	}
	fmt.Fprintln(out, "times are upper bounds by one sample: libvirt state and block stats every 5 ms, console every 10 ms, the replica's")
	fmt.Fprintln(out, "log to 1 ms; `commit --wait` polls every 1 s (the engine every 0.5 s). Machines here are noisy: read the ratios.")

	b.ReportMetric(rtoMedian(res[0].cmd).Seconds(), "s-running-1GiB")
	b.ReportMetric(rtoMedian(res[1].cmd).Seconds(), "s-running-100GiB")
	b.ReportMetric(sz, "100GiB/1GiB")
	b.ReportMetric(rtoMedian(res[0].bootVerified).Seconds()/rtoMedian(local.bootVerified).Seconds(), "view/local-boot")
	b.ReportMetric(c1.commit.Seconds()/c1.convert.Seconds(), "commit/convert")
}

// rtoCell is the samples of one column of the table.
type rtoCell struct {
	exported, spawned, nbd, running, cmd, firstRead, ready, verified []time.Duration
	bootVerified, guestBoot, guestRead                               []time.Duration
	hi                                                               uint64
}

func (c *rtoCell) add(x rtoSample) {
	c.exported = append(c.exported, x.exported)
	c.spawned = append(c.spawned, x.spawned)
	c.nbd = append(c.nbd, x.nbd)
	c.running = append(c.running, x.running)
	c.cmd = append(c.cmd, x.cmd)
	c.firstRead = append(c.firstRead, x.firstRead)
	c.ready = append(c.ready, x.guest.readyAt.Sub(x.t0))
	c.verified = append(c.verified, x.guest.verifiedAt.Sub(x.t0))
	c.bootVerified = append(c.bootVerified, x.guest.verifiedAt.Sub(x.t0.Add(x.running)))
	c.guestBoot = append(c.guestBoot, x.guest.sinceBoot-x.guest.verify)
	c.guestRead = append(c.guestRead, x.guest.verify)
	c.hi = x.guest.hi
}

func rtoList(ds []time.Duration) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = fmt.Sprintf("%.2f", d.Seconds())
	}
	return strings.Join(s, " ")
}

// setUp makes the networks, the kernel directory, both daemons and the
// two protected domains, and returns once each guest's workload is
// written, replicated, and the guest powered off.
func (r *foRig) setUp(ctx context.Context, art *guest.Artifacts) []*rtoDisk {
	tb := r.tb
	var rb [3]byte
	rand.Read(rb[:])
	sfx := hex.EncodeToString(rb[:])
	r.srcNet = "qcdp-src-" + sfx
	drNet, testNet := "qcdp-dr-"+sfx, "qcdp-test-"+sfx
	for _, n := range []string{r.srcNet, drNet} {
		p := filepath.Join(r.dir, n+".xml")
		r.write(p, fmt.Sprintf("<network><name>%s</name></network>\n", n))
		r.virsh(ctx, "net-define", p)
		r.virsh(ctx, "net-start", n)
		tb.Cleanup(func() {
			r.lv.Virsh(context.Background(), "net-destroy", n)
			r.lv.Virsh(context.Background(), "net-undefine", n)
		})
	}
	vmdir := qemuDir(tb, filepath.Join(r.dir, "vm"))
	var kdir string
	kdir, r.kernel, r.initrd = guestKernel(tb, r.dir, art)
	disks := []*rtoDisk{{size: 1 << 30, group: "g1", name: "qcdp-rto1-" + sfx}, {size: 100 << 30, group: "g2", name: "qcdp-rto100-" + sfx}}
	for i, d := range disks {
		d.image = filepath.Join(r.dir, fmt.Sprintf("src%d.qcow2", i))
		d.console = filepath.Join(vmdir, fmt.Sprintf("console%d.log", i))
		d.consoleSock = filepath.Join(vmdir, fmt.Sprintf("console%d.sock", i))
		r.sourceImage(ctx, d.image, d.size)
	}

	// The replica: certificates, a policy for both groups, a plan each.
	tls := filepath.Join(r.dir, "tls")
	r.qcdp(ctx, "certs", "--dir", tls, "--ca")
	r.qcdp(ctx, "certs", "--dir", tls, "--replica", "dr1", "--san", "127.0.0.1,localhost")
	r.qcdp(ctx, "certs", "--dir", tls, "--host", "kvm1", "--tenant", "acme")
	port := freePortTB(tb)
	r.replicaCtl, r.replicaSock = filepath.Join(r.dir, "replica.sock"), filepath.Join(r.dir, "views.sock")
	r.standby = filepath.Join(r.dir, "standby")
	var plans strings.Builder
	for _, d := range disks {
		fmt.Fprintf(&plans, `
[[recovery]]
group = %q
libvirt_uri = %q
standby_dir = %q
domain_type = "qemu"
domain_suffix = "-dr"
networks = { %q = %q }
test_network = %q
kernel_dirs = [%q]
boot_timeout = "2m"

[[recovery.vm]]
name = %q
memory = "256M"
cmdline_append = "qcdp.verify=1"
`, d.group, r.lv.URI, r.standby, r.srcNet, drNet, testNet, kdir, d.name)
	}
	replicaCfg := filepath.Join(r.dir, "replica.toml")
	r.write(replicaCfg, fmt.Sprintf(`[replica]
listen = "127.0.0.1:%d"
ca = %q
cert = %q
key = %q
storage_root = %q
control_socket = %q
nbd_socket = %q
log_level = "debug"

[[tenant]]
name = "acme"
hosts = ["kvm1"]
groups = ["g1", "g2"]
%s`, port, filepath.Join(tls, "ca.pem"), filepath.Join(tls, "dr1.pem"), filepath.Join(tls, "dr1-key.pem"),
		filepath.Join(r.dir, "journals"), r.replicaCtl, r.replicaSock, plans.String()))
	r.qcdp(ctx, "replica", "--config", replicaCfg, "--check")
	r.replica = harness.StartProcT(tb, r.dir, "replica", r.bin, "replica", "--config", replicaCfg)
	if err := harness.WaitSocket(ctx, r.replicaCtl, r.replica); err != nil {
		tb.Fatal(err)
	}

	// The host daemon protects each domain, found by its label, in its
	// own group.
	r.hostCtl = filepath.Join(r.dir, "host.sock")
	var groups strings.Builder
	for _, d := range disks {
		fmt.Fprintf(&groups, "\n[[group]]\nname = %q\nreplica = \"127.0.0.1:%d\"\n  [[group.vm]]\n  label = %q\n", d.group, port, "qcdp-test="+d.name)
	}
	hostCfg := filepath.Join(r.dir, "host.toml")
	r.write(hostCfg, fmt.Sprintf(`[host]
state_dir = %q
control_socket = %q
nbd_socket_dir = %q
log_level = "debug"
libvirt_uri = %q
tls_ca = %q
tls_cert = %q
tls_key = %q
%s`, filepath.Join(r.dir, "state"), r.hostCtl, filepath.Join(r.dir, "nbd"), r.lv.URI,
		filepath.Join(tls, "ca.pem"), filepath.Join(tls, "kvm1.pem"), filepath.Join(tls, "kvm1-key.pem"), groups.String()))
	r.host = harness.StartProcT(tb, r.dir, "host", r.bin, "host", "--config", hostCfg)
	if err := harness.WaitSocket(ctx, r.hostCtl, r.host); err != nil {
		tb.Fatal(err)
	}

	// The sources: persistent domains (a stopped one stays in its group),
	// started one after the other (two CPUs here), each writing its
	// workload while protected, then powered off once in sync.
	for i, d := range disks {
		x := filepath.Join(r.dir, fmt.Sprintf("domain%d.xml", i))
		xml, _ := guestDomain{Name: d.name, Label: d.name, Kernel: r.kernel, Initrd: r.initrd, Params: rtoWorkload,
			Disk: d.image, Network: r.srcNet, MAC: fmt.Sprintf("52:54:00:%02x:%02x:%02x", rb[0], rb[1], byte(i)),
			ConsoleSock: d.consoleSock, ConsoleLog: d.console}.XML()
		r.write(x, xml)
		r.virsh(ctx, "define", x)
		tb.Cleanup(func() {
			r.lv.Virsh(context.Background(), "destroy", d.name)
			r.lv.Virsh(context.Background(), "undefine", d.name)
		})
		t0 := time.Now()
		r.virsh(ctx, "start", d.name)
		r.waitConsole(ctx, d.console, regexp.MustCompile(`QCDP-DONE seq=(\d+)`))
		r.waitSyncing(ctx, d.group)
		r.waitReplicated(ctx, d.group)
		r.typeOn(d.consoleSock, "poweroff")
		r.waitShutOff(ctx, d.name)
		tb.Logf("%s (%s): protected, workload written and replicated in %v", d.name, rtoMiB(d.size), time.Since(t0).Round(time.Second))
	}
	r.waitReplicated(ctx, "g1", "g2")
	return disks
}

// waitConsole waits for a line matching re on a console log.
func (r *foRig) waitConsole(ctx context.Context, path string, re *regexp.Regexp) []string {
	r.tb.Helper()
	c := &consoleLog{path: path}
	for {
		c.poll()
		c.mu.Lock()
		for _, l := range c.seen {
			if strings.Contains(l.text, "QCDP-ERROR") {
				c.mu.Unlock()
				r.tb.Fatalf("guest %s: %s", path, l.text)
			}
			if m := re.FindStringSubmatch(l.text); m != nil {
				c.mu.Unlock()
				return m
			}
		}
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			bs, _ := os.ReadFile(path)
			r.tb.Fatalf("no %v on %s:\n%s", re, path, tailLines(string(bs), 30))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// typeOn types a command on a guest's console socket.
func (r *foRig) typeOn(sock, cmd string) {
	r.tb.Helper()
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		r.tb.Fatalf("console socket %s: %v", sock, err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, cmd+"\n"); err != nil {
		r.tb.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let QEMU take it before the close
}

// rtoSample is one start of a domain: times from t0, the command's start.
type rtoSample struct {
	t0                                              time.Time
	cmd, exported, spawned, nbd, running, firstRead time.Duration
	guest                                           guestRun
	seq                                             uint64
	standbyDir                                      string
}

// testFailover runs `qcdp failover test` of d's group, follows the
// standby until it verified its disk, and cleans up. With keep it also
// returns the standby's inactive domain XML and its directories.
func (r *foRig) testFailover(ctx context.Context, d *rtoDisk, keep bool) (rtoSample, string, []rtoDir) {
	r.tb.Helper()
	rtoSettle()
	rtoDropCaches()
	w := watchDomain(ctx, r.lc, d.name+"-qcdp-test")
	s := rtoSample{t0: time.Now()}
	out := r.qcdp(ctx, "failover", "--socket", r.replicaCtl, "--json", "test", d.group)
	s.cmd = time.Since(s.t0)
	var st failoverStateJSON
	if err := json.Unmarshal(out, &st); err != nil || len(st.VMs) != 1 || len(st.VMs[0].Disks) != 1 || !st.VMs[0].Running {
		w.end()
		r.tb.Fatalf("qcdp failover test %s: %v\n%s", d.group, err, out)
	}
	s.seq, s.standbyDir = st.Point.Seq, filepath.Dir(st.VMs[0].Disks[0].Overlay)
	s.guest = r.waitVerified(ctx, filepath.Join(s.standbyDir, "console.log"))
	w.end()
	s.running, s.firstRead = rtoSince(s.t0, w.running), rtoSince(s.t0, w.firstRead)
	if at, ok := r.replicaLogAfter(s.t0, `msg="exported view"`, "id="+st.Export+" "); ok {
		s.exported = at.Sub(s.t0)
	}
	if at, ok := r.replicaLogAfter(s.t0, `msg="nbd transmission"`, "export="+st.Export+"/"); ok {
		s.nbd = at.Sub(s.t0)
	}
	if at, ok := r.qemuStarted(st.VMs[0].Domain, s.t0); ok {
		s.spawned = at.Sub(s.t0)
	}
	if s.guest.hi != rtoWorkload.Writes {
		r.tb.Fatalf("the standby of %s verifies the workload up to write %d, the source wrote %d", d.group, s.guest.hi, rtoWorkload.Writes)
	}
	var xmlDoc string
	var dirs []rtoDir
	if keep {
		xmlDoc = r.virsh(ctx, "dumpxml", "--inactive", st.VMs[0].Domain)
		dirs = rtoDirsOf(s.standbyDir)
	}
	r.qcdp(ctx, "failover", "--socket", r.replicaCtl, "cleanup", d.group)
	return s, xmlDoc, dirs
}

// rtoSince is t - t0, or 0 when t was never seen.
func rtoSince(t0, t time.Time) time.Duration {
	if t.IsZero() {
		return 0
	}
	return t.Sub(t0)
}

// exportView exports a group's point on the site's NBD socket and
// returns its URI.
func (r *foRig) exportView(ctx context.Context, group string, seq uint64) string {
	r.tb.Helper()
	var e struct {
		Exports map[string]string `json:"exports"`
	}
	out := r.qcdp(ctx, "export", "--socket", r.replicaCtl, "--json", group, "--seq", strconv.FormatUint(seq, 10))
	if err := json.Unmarshal(out, &e); err != nil || len(e.Exports) != 1 {
		r.tb.Fatalf("export: %v %s", err, out)
	}
	for _, n := range e.Exports {
		return "nbd+unix:///" + n + "?socket=" + r.replicaSock
	}
	return ""
}

// timeCopy times a copy of a view, the page cache dropped first.
func (r *foRig) timeCopy(ctx context.Context, argv ...string) time.Duration {
	r.tb.Helper()
	rtoDropCaches()
	t0 := time.Now()
	if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
		r.tb.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
	return time.Since(t0)
}

// convert times `qemu-img convert` of a view to a local qcow2.
func (r *foRig) convert(ctx context.Context, uri, dst string) time.Duration {
	return r.timeCopy(ctx, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", uri, dst)
}

// nbdcopy times nbdcopy of a view to a local (sparse) raw file.
func (r *foRig) nbdcopy(ctx context.Context, uri, dst string) time.Duration {
	return r.timeCopy(ctx, "nbdcopy", uri, dst)
}

// localCopy converts the view a test failover booted from into a local
// qcow2 and defines the same domain on it, in a directory made as the
// standby's was; it returns the domain's name, its console log and how
// long the copy took.
func (r *foRig) localCopy(ctx context.Context, d *rtoDisk, s rtoSample, standbyXML string, dirs []rtoDir) (name, console string, took time.Duration) {
	r.tb.Helper()
	dir := filepath.Join(r.dir, "local")
	rtoMakeDirs(r.tb, dir, dirs)
	took = r.convert(ctx, r.exportView(ctx, d.group, s.seq), filepath.Join(dir, "vda.qcow2"))
	name = d.name + "-local"
	x := filepath.Join(r.dir, "local.xml")
	r.write(x, localDomainXML(standbyXML, name, s.standbyDir, dir, r.srcNet))
	r.virsh(ctx, "define", x)
	r.tb.Cleanup(func() {
		r.lv.Virsh(context.Background(), "destroy", name)
		r.lv.Virsh(context.Background(), "undefine", name)
	})
	return name, filepath.Join(dir, "console.log"), took
}

// localBoot starts the local domain, follows it until it verified its
// disk and destroys it.
func (r *foRig) localBoot(ctx context.Context, name, console string) rtoSample {
	r.tb.Helper()
	rtoSettle()
	rtoDropCaches()
	os.Remove(console)
	w := watchDomain(ctx, r.lc, name)
	s := rtoSample{t0: time.Now()}
	r.virsh(ctx, "start", name)
	s.cmd = time.Since(s.t0)
	s.guest = r.waitVerified(ctx, console)
	w.end()
	r.virsh(ctx, "destroy", name)
	s.running, s.firstRead = rtoSince(s.t0, w.running), rtoSince(s.t0, w.firstRead)
	if s.guest.hi != rtoWorkload.Writes {
		r.tb.Fatalf("the local copy verifies the workload up to write %d, the source wrote %d", s.guest.hi, rtoWorkload.Writes)
	}
	return s
}

// commitSample is one committed failover.
type commitSample struct {
	start, convert, nbdcopy, commit time.Duration
	done                            bool   // the commit ended
	pulled                          uint64 // bytes pulled when it did not
	overlay, copy                   int64
	note                            string
}

// commitRun fails d's group over for real (`qcdp failover start`), waits
// until the standby verified its disk (it is idle afterwards), times
// copies of the same view by qemu-img convert and nbdcopy, then `qcdp
// failover commit --wait`; with a limit, only that long of the commit
// (the progress is then in pulled).
func (r *foRig) commitRun(ctx context.Context, d *rtoDisk, limit time.Duration) commitSample {
	r.tb.Helper()
	var c commitSample
	rtoDropCaches()
	t0 := time.Now()
	out := r.qcdp(ctx, "failover", "--socket", r.replicaCtl, "--json", "start", d.group)
	c.start = time.Since(t0)
	var st failoverStateJSON
	if err := json.Unmarshal(out, &st); err != nil || len(st.VMs) != 1 || len(st.VMs[0].Disks) != 1 {
		r.tb.Fatalf("qcdp failover start %s: %v\n%s", d.group, err, out)
	}
	r.tb.Cleanup(func() {
		r.lv.Virsh(context.Background(), "destroy", st.VMs[0].Domain)
		r.lv.Virsh(context.Background(), "undefine", st.VMs[0].Domain)
	})
	overlay := st.VMs[0].Disks[0].Overlay
	r.waitVerified(ctx, filepath.Join(filepath.Dir(overlay), "console.log"))
	uri := r.exportView(ctx, d.group, st.Point.Seq)
	cp := filepath.Join(r.dir, "copy-"+d.group)
	c.convert = r.convert(ctx, uri, cp+".qcow2")
	c.copy = rtoFileSize(cp + ".qcow2")
	c.nbdcopy = r.nbdcopy(ctx, uri, cp+".raw")
	os.Remove(cp + ".qcow2")
	os.Remove(cp + ".raw")
	rtoDropCaches()
	if limit > 0 {
		t0 = time.Now()
		r.qcdp(ctx, "failover", "--socket", r.replicaCtl, "commit", d.group)
		select {
		case <-ctx.Done():
			r.tb.Fatal(ctx.Err())
		case <-time.After(limit):
		}
		c.commit = time.Since(t0)
		out = r.qcdp(ctx, "failover", "--socket", r.replicaCtl, "--json", "status", d.group)
		var s struct {
			Phase string `json:"phase"`
			VMs   []struct {
				Disks []struct {
					Pulled uint64 `json:"pulled"`
				} `json:"disks"`
			} `json:"vms"`
		}
		if err := json.Unmarshal(out, &s); err != nil || len(s.VMs) != 1 || len(s.VMs[0].Disks) != 1 {
			r.tb.Fatalf("status %s: %v\n%s", d.group, err, out)
		}
		c.done, c.pulled = s.Phase == "committed", s.VMs[0].Disks[0].Pulled
		if !c.done {
			return c
		}
	} else {
		t0 = time.Now()
		out = r.qcdp(ctx, "failover", "--socket", r.replicaCtl, "--json", "commit", d.group, "--wait")
		c.commit, c.done = time.Since(t0), true
		var cs failoverStateJSON
		if err := json.Unmarshal(out, &cs); err != nil || cs.Phase != "committed" || !cs.VMs[0].Disks[0].Committed {
			r.tb.Fatalf("commit %s: %v\n%s", d.group, err, out)
		}
	}
	c.overlay = rtoFileSize(overlay)
	if info, err := harness.ReadImageInfo(ctx, overlay); err != nil || info.BackingFilename != "" {
		c.note = fmt.Sprintf("; NOTE the committed overlay still has a backing file (%+v, %v)", info, err)
	}
	return c
}

// stopReplica stops the replica daemon with SIGTERM, as its service
// manager would, and kills it if it has not stopped within grace: how
// long it took, or what went wrong.
func (r *foRig) stopReplica(grace time.Duration) (time.Duration, string) {
	t0 := time.Now()
	if err := r.replica.Signal(syscall.SIGTERM); err != nil {
		return 0, err.Error()
	}
	select {
	case <-r.replica.Exited():
		return time.Since(t0), ""
	case <-time.After(grace):
	}
	r.replica.Kill()
	return 0, fmt.Sprintf("the replica daemon did not stop within %v of SIGTERM with a failover's view served: killed", grace)
}
