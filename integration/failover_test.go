package integration

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qcdp/qcdp/filter"
	"github.com/qcdp/qcdp/integration/guest"
	"github.com/qcdp/qcdp/integration/guest/workload"
	"github.com/qcdp/qcdp/integration/harness"
)

// consoleLog follows a guest's serial console log file (libvirt's <log>),
// stamping each line with the time the test first saw it: a line seen
// before time T was written before T.
type consoleLog struct {
	path string
	mu   sync.Mutex
	off  int64
	part string
	seen []stampedLine
}

type stampedLine struct {
	at   time.Time
	text string
}

// poll reads what was added to the file since the last poll.
func (c *consoleLog) poll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, err := os.Open(c.path)
	if err != nil {
		return
	}
	defer f.Close()
	f.Seek(c.off, 0)
	now := time.Now()
	r := bufio.NewReader(f)
	for {
		s, err := r.ReadString('\n')
		c.off += int64(len(s))
		if err != nil {
			c.part += s
			return
		}
		c.seen = append(c.seen, stampedLine{now, strings.TrimRight(c.part+s, "\r\n")})
		c.part = ""
	}
}

// follow polls every 20 ms until ctx ends.
func (c *consoleLog) follow(ctx context.Context) {
	go func() {
		for {
			c.poll()
			select {
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
}

// syncedBefore is the highest seq the guest reported durable before t.
func (c *consoleLog) syncedBefore(t time.Time) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var s uint64
	for _, l := range c.seen {
		if !l.at.Before(t) {
			break
		}
		if v, ok := strings.CutPrefix(l.text, "QCDP-SYNCED seq="); ok {
			n, _ := strconv.ParseUint(strings.Fields(v)[0], 10, 64)
			s = max(s, n)
		}
	}
	return s
}

// next is wait that reports a QCDP-ERROR line instead of failing on it.
func (c *consoleLog) next(ctx context.Context, t *testing.T, from int, re *regexp.Regexp, what string) (int, []string, bool) {
	t.Helper()
	for {
		c.poll()
		c.mu.Lock()
		for i := from; i < len(c.seen); i++ {
			if strings.Contains(c.seen[i].text, "QCDP-ERROR") {
				c.mu.Unlock()
				return i + 1, []string{c.seen[i].text}, true
			}
			if m := re.FindStringSubmatch(c.seen[i].text); m != nil {
				c.mu.Unlock()
				return i + 1, m, false
			}
		}
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			t.Fatalf("%s: no %v in %s", what, re, c.path)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// wait returns the first line after line index from matching re.
func (c *consoleLog) wait(ctx context.Context, t *testing.T, from int, re *regexp.Regexp, what string) (int, []string) {
	t.Helper()
	for {
		c.poll()
		c.mu.Lock()
		for i := from; i < len(c.seen); i++ {
			if strings.Contains(c.seen[i].text, "QCDP-ERROR") {
				c.mu.Unlock()
				t.Fatalf("%s: the guest reports %q (console %s)", what, c.seen[i].text, c.path)
			}
			if m := re.FindStringSubmatch(c.seen[i].text); m != nil {
				c.mu.Unlock()
				return i + 1, m
			}
		}
		n := len(c.seen)
		c.mu.Unlock()
		select {
		case <-ctx.Done():
			b, _ := os.ReadFile(c.path)
			t.Fatalf("%s: no %v in the console after line %d of %d:\n%s", what, re, from, n, tailLines(string(b), 30))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// typeOn types a command on a guest's console socket.
func typeOn(t *testing.T, sock, cmd string) {
	t.Helper()
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		t.Fatalf("console socket %s: %v", sock, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(cmd + "\n")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let QEMU take it before the close
}

var verifiedRe = regexp.MustCompile(`QCDP-VERIFIED lo=(\d+) hi=(\d+)`)

type failoverStateJSON struct {
	Mode   string `json:"mode"`
	Phase  string `json:"phase"`
	Fenced bool   `json:"fenced"`
	Export string `json:"export"`
	Point  struct {
		Seq  uint64    `json:"seq"`
		Time time.Time `json:"time"`
	} `json:"point"`
	VMs []struct {
		Domain      string  `json:"domain"`
		UUID        string  `json:"uuid"`
		Running     bool    `json:"running"`
		BootSeconds float64 `json:"boot_seconds"`
		Networks    []string
		Disks       []struct {
			Target    string `json:"target"`
			Overlay   string `json:"overlay"`
			Committed bool   `json:"committed"`
		} `json:"disks"`
	} `json:"vms"`
}

// TestFailover runs the recovery half of the product with a real libvirtd,
// the project's test guest and both daemons: a test failover whose standby
// verifies its disk while the source keeps replicating, then cleanup
// leaving nothing; bad input refused with nothing destroyed; an unplanned
// failover after the source QEMU is killed (the standby verifies, the old
// host's stream is refused saying why), undone, replication resumed and
// the next points valid; and a failover committed onto local storage that
// keeps running and verifying with the replica daemon stopped.
func TestFailover(t *testing.T) {
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
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	var rb [3]byte
	rand.Read(rb[:])
	sfx := hex.EncodeToString(rb[:])
	name, srcNet, drNet, testNet := "qcdp-fo-"+sfx, "qcdp-src-"+sfx, "qcdp-dr-"+sfx, "qcdp-test-"+sfx
	virsh := func(args ...string) string {
		t.Helper()
		out, err := lv.Virsh(ctx, args...)
		if err != nil {
			t.Fatalf("virsh %v: %v\n%s", args, err, out)
		}
		return out
	}
	// The source's network and the recovery network: isolated, no
	// addresses (no dnsmasq), made by the test and removed after it.
	for _, n := range []string{srcNet, drNet} {
		p := filepath.Join(dir, n+".xml")
		writeFile(t, p, fmt.Sprintf("<network><name>%s</name></network>\n", n))
		virsh("net-define", p)
		virsh("net-start", n)
		t.Cleanup(func() {
			lv.Virsh(context.Background(), "net-destroy", n)
			lv.Virsh(context.Background(), "net-undefine", n)
		})
	}
	// A directory QEMU (libvirt-qemu) may make its console socket in.
	vmdir := qemuDir(t, filepath.Join(dir, "vm"))
	standby := filepath.Join(dir, "standby")
	rs := newReplica(ctx, t, bin, dir, "")
	// The guest's kernel where libvirt's QEMU user may read it, and the
	// only directory the plan lets a standby boot a kernel from.
	kdir, kernel, initrd := guestKernel(t, dir, art)
	kj, _ := json.Marshal([]string{kdir})
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
networks = { %q = %q }
test_network = %q
kernel_dirs = %s
boot_timeout = "2m"

[[recovery.vm]]
name = %q
memory = "256M"
cmdline_append = "qcdp.verify=1"
`, lv.URI, standby, srcNet, drNet, testNet, kj, name)
	f.Close()
	run(ctx, t, bin, "replica", "--config", rs.Config, "--check")
	replica := rs.start(ctx, t, "replica")

	disk := filepath.Join(dir, "vda.qcow2")
	if err := harness.CreateImage(ctx, disk, "qcow2", 8<<20); err != nil {
		t.Fatal(err)
	}
	srcConsole := filepath.Join(vmdir, "console.log")
	srcSock := filepath.Join(vmdir, "console.sock")
	wl := workload.Params{Seed: 7, Blocks: 256, Disks: 1, SyncEvery: 4, Rate: 40}
	var uuid string // kept: the domain is defined again with another seed
	domXML := func(seed uint64) string {
		p := wl
		p.Seed = seed
		x := filepath.Join(dir, fmt.Sprintf("domain-%d.xml", seed))
		var xml string
		xml, uuid = guestDomain{Name: name, UUID: uuid, Label: name, Kernel: kernel, Initrd: initrd, Params: p, Disk: disk,
			Network: srcNet, MAC: fmt.Sprintf("52:54:00:%02x:%02x:%02x", rb[0], rb[1], rb[2]),
			ConsoleSock: srcSock, ConsoleLog: srcConsole}.XML()
		writeFile(t, x, xml)
		return x
	}
	// Persistent, as protected VMs are: a stopped domain stays listed,
	// and its disk stays in the group.
	virsh("define", domXML(wl.Seed))
	virsh("start", name)
	t.Cleanup(func() {
		lv.Virsh(context.Background(), "destroy", name)
		lv.Virsh(context.Background(), "undefine", name)
	})
	src := &consoleLog{path: srcConsole}
	src.follow(ctx)

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
`, filepath.Join(dir, "state"), control, filepath.Join(dir, "nbd"), lv.URI, rs.HostKeys(), rs.GroupKeys(), "qcdp-test="+name))
	host := harness.StartProcT(t, dir, "host", bin, "host", "--config", config)
	if err := harness.WaitSocket(ctx, control, host); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if t.Failed() {
			t.Logf("look at: %s (standbys, consoles), %s (libvirtd logs)\n%s\n%s", standby, lv.Dir, host.Report(), replica.Report())
		}
	}()
	waitDisks(ctx, t, bin, control, 1, filter.Syncing, host)
	src.wait(ctx, t, 0, regexp.MustCompile(`QCDP-SYNCED seq=(\d*[02468]0) `), "source writing")
	waitPoints := func() pointsJSON {
		t.Helper()
		for {
			var pts pointsJSON
			out, err := exec.CommandContext(ctx, bin, "points", "--socket", rs.Control, "--json", "g1").Output()
			if err == nil && json.Unmarshal(out, &pts) == nil && pts.Window.LastSeq > 0 {
				return pts
			}
			select {
			case <-ctx.Done():
				t.Fatalf("no restore point: %v %s", err, out)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	waitPoints()
	failover := func(args ...string) failoverStateJSON {
		t.Helper()
		var st failoverStateJSON
		out := run(ctx, t, bin, append([]string{"failover", "--socket", rs.Control, "--json"}, args...)...)
		if err := json.Unmarshal(out, &st); err != nil {
			t.Fatalf("qcdp failover %v: %v\n%s", args, err, out)
		}
		return st
	}
	refused := func(want string, args ...string) {
		t.Helper()
		out, err := exec.CommandContext(ctx, bin, append([]string{"failover", "--socket", rs.Control}, args...)...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), want) {
			t.Fatalf("qcdp failover %v: %v, want a refusal naming %q:\n%s", args, err, want, out)
		}
	}
	// The standby's guest verifies its disk: one state of the workload,
	// holding every write the source had fsync'd before the point.
	verifyStandby := func(st failoverStateJSON, source *consoleLog, seed uint64) (*consoleLog, int, string) {
		t.Helper()
		if len(st.VMs) != 1 || !st.VMs[0].Running {
			t.Fatalf("standby not running: %+v", st)
		}
		vdir := filepath.Dir(st.VMs[0].Disks[0].Overlay)
		c := &consoleLog{path: filepath.Join(vdir, "console.log")}
		next, m := c.wait(ctx, t, 0, verifiedRe, "standby "+st.VMs[0].Domain)
		hi, _ := strconv.ParseUint(m[2], 10, 64)
		if want := source.syncedBefore(st.Point.Time); hi < want {
			t.Fatalf("standby %s holds the workload up to seq %s..%d, but seq %d was fsync'd before the point (%s)",
				st.VMs[0].Domain, m[1], hi, want, st.Point.Time)
		}
		next, _ = c.wait(ctx, t, next, regexp.MustCompile(`QCDP-MARKED`), "standby write")
		t.Logf("standby %s from seq %d verified: workload state %s..%s (seed %d), running after %.2fs",
			st.VMs[0].Domain, st.Point.Seq, m[1], m[2], seed, st.VMs[0].BootSeconds)
		return c, next, m[0]
	}

	// 1. Test failover: the standby boots on the isolated network and
	// verifies while the source keeps replicating.
	st := failover("test", "g1")
	if st.Mode != "test" || st.Fenced || len(st.VMs) != 1 || st.VMs[0].Domain != name+"-qcdp-test" ||
		len(st.VMs[0].Networks) != 1 || st.VMs[0].Networks[0] != testNet {
		t.Fatalf("test failover: %+v", st)
	}
	tc, tnext, tverified := verifyStandby(st, src, wl.Seed)
	// The replica daemon is killed and started again while the standby
	// runs: its view is served again under the same name on the same
	// socket, and the standby reads it again (QEMU's NBD client
	// reconnects at its next read; reads while the daemon was down may
	// fail, so the guest is asked again).
	replica.Kill()
	replica = rs.start(ctx, t, "replica-restarted")
	tsock := filepath.Join(filepath.Dir(st.VMs[0].Disks[0].Overlay), "qemu", "console.sock")
	for attempt := 1; ; attempt++ {
		typeOn(t, tsock, "verify")
		n, m, failed := tc.next(ctx, t, tnext, verifiedRe, "standby after the replica restarted")
		tnext = n
		if !failed {
			if m[0] != tverified {
				t.Fatalf("after the replica restarted the standby verifies as %q, it was %q", m[0], tverified)
			}
			break
		}
		if attempt == 3 {
			t.Fatalf("the standby cannot read its view after the replica restarted: %v", m)
		}
	}
	before := waitPoints().Window.LastSeq
	time.Sleep(2 * time.Second)
	if after := waitPoints().Window.LastSeq; after <= before || after <= st.Point.Seq {
		t.Fatalf("replication stalled during the test failover: last seq %d, then %d (point %d)", before, after, st.Point.Seq)
	}
	waitReplicated(ctx, t, bin, control, host) // RPO bounded: the replica catches up
	out := run(ctx, t, bin, "failover", "--socket", rs.Control, "status", "g1")
	if !strings.Contains(string(out), "running") {
		t.Fatalf("status: %s", out)
	}
	run(ctx, t, bin, "failover", "--socket", rs.Control, "cleanup", "g1")
	if _, err := lv.Virsh(ctx, "dominfo", name+"-qcdp-test"); err == nil {
		t.Fatal("the test standby is still defined after cleanup")
	}
	if _, err := lv.Virsh(ctx, "net-info", testNet); err == nil {
		t.Fatal("the test network qcdp defined is still there after cleanup")
	}
	if ents, _ := os.ReadDir(filepath.Join(standby, "acme", "g1")); len(ents) != 0 {
		t.Fatalf("cleanup left files: %v", ents)
	}
	if out := run(ctx, t, bin, "exports", "--socket", rs.Control, "--json"); strings.Contains(string(out), "ft.") {
		t.Fatalf("cleanup left the export: %s", out)
	}

	// 2. Bad input, each refused with nothing destroyed.
	refused("newest restore point", "test", "g1", "--seq", "999999999")
	refused("no such group", "test", "nope")
	dummy := filepath.Join(dir, "dummy.xml")
	writeFile(t, dummy, fmt.Sprintf("<domain type='qemu'><name>%s-dr</name><memory unit='MiB'>32</memory><os><type arch='x86_64'>hvm</type></os></domain>", name))
	virsh("define", dummy)
	refused("never overwrites", "start", "g1")
	if _, err := lv.Virsh(ctx, "dominfo", name+"-dr"); err != nil {
		t.Fatalf("a domain qcdp did not make is gone: %v", err)
	}
	virsh("undefine", name+"-dr")
	refused("not failed over", "undo", "g1")
	waitReplicated(ctx, t, bin, control, host) // not fenced: the stream goes on

	// 3. Unplanned: the source QEMU is killed; the standby starts from the
	// newest point and verifies; the host's stream is refused.
	pid := qemuPID(t, lv, name)
	killed := time.Now()
	syscall.Kill(pid, syscall.SIGKILL)
	st = failover("start", "g1")
	if st.Mode != "start" || !st.Fenced || st.VMs[0].Domain != name+"-dr" || st.VMs[0].Networks[0] != drNet {
		t.Fatalf("unplanned failover: %+v", st)
	}
	if syncedAtKill := src.syncedBefore(killed); syncedAtKill > 0 {
		verifyStandby(st, src, wl.Seed)
	}
	refused("is in a start failover", "test", "g1")
	refused("not a test", "cleanup", "g1")
	waitLog(ctx, t, host, "has failed over at the recovery site")

	// 4. Undo: the standby and its writes are gone, the group is taken
	// again; the source starts over (its disk's workload area zeroed, a
	// new seed) and the next points are valid: the replica converges to
	// the source byte for byte.
	run(ctx, t, bin, "failover", "--socket", rs.Control, "undo", "g1")
	if _, err := lv.Virsh(ctx, "dominfo", name+"-dr"); err == nil {
		t.Fatal("the standby is still defined after undo")
	}
	if err := harness.QemuIO(ctx, disk, "qcow2", fmt.Sprintf("write -z 0 %d", (wl.Blocks+1)*workload.BlockSize)); err != nil {
		t.Fatal(err)
	}
	os.Remove(srcConsole)
	src = &consoleLog{path: srcConsole}
	src.follow(ctx)
	virsh("define", domXML(wl.Seed+1))
	virsh("start", name)
	src.wait(ctx, t, 0, regexp.MustCompile(`QCDP-SYNCED seq=40 `), "source writing again")
	typeOn(t, srcSock, "poweroff")
	waitDomainGone(ctx, t, lv, name)
	waitReplicated(ctx, t, bin, control, host)
	pts := waitPoints()
	cmp := exec.CommandContext(ctx, "qemu-img", "compare", "-f", "qcow2", "-F", "raw", disk,
		fmt.Sprintf("nbd+unix:///%s?socket=%s", exportNewest(ctx, t, bin, rs.Control), filepath.Join(dir, "views.sock")))
	if out, err := cmp.CombinedOutput(); err != nil {
		t.Fatalf("after undo the replica's newest point (seq %d) differs from the source: %v\n%s", pts.Window.LastSeq, err, out)
	}

	// 5. Commit: an unplanned failover made permanent; with the replica
	// daemon stopped, the standby runs on and verifies its disk again.
	st = failover("start", "g1")
	c, next, verified := verifyStandby(st, src, wl.Seed+1)
	out = run(ctx, t, bin, "failover", "--socket", rs.Control, "commit", "g1", "--wait", "--json")
	var cs struct {
		Phase string `json:"phase"`
		VMs   []struct {
			Disks []struct {
				Committed bool   `json:"committed"`
				Overlay   string `json:"overlay"`
			} `json:"disks"`
		} `json:"vms"`
	}
	if err := json.Unmarshal(out, &cs); err != nil || cs.Phase != "committed" || !cs.VMs[0].Disks[0].Committed {
		t.Fatalf("commit: %v %s", err, out)
	}
	refused("committed", "undo", "g1")
	info, err := harness.ReadImageInfo(ctx, cs.VMs[0].Disks[0].Overlay)
	if err != nil || info.BackingFilename != "" {
		t.Fatalf("the committed disk still has a backing file: %+v %v", info, err)
	}
	if err := replica.Stop(30 * time.Second); err != nil {
		t.Logf("replica stop: %v", err)
	}
	sock := filepath.Join(filepath.Dir(cs.VMs[0].Disks[0].Overlay), "qemu", "console.sock")
	typeOn(t, sock, "verify")
	_, m := c.wait(ctx, t, next, verifiedRe, "standby after commit, replica stopped")
	if m[0] != verified {
		t.Fatalf("the committed standby verifies as %q, it was %q", m[0], verified)
	}
	t.Cleanup(func() {
		lv.Virsh(context.Background(), "destroy", st.VMs[0].Domain)
		lv.Virsh(context.Background(), "undefine", st.VMs[0].Domain)
	})
}

// qemuPID is the PID of a running domain's QEMU, from libvirt's pid file.
func qemuPID(t *testing.T, lv *harness.Libvirtd, name string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(lv.Dir, "run", "qemu", name+".pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func waitDomainGone(ctx context.Context, t *testing.T, lv *harness.Libvirtd, name string) {
	t.Helper()
	for {
		if out, err := lv.Virsh(ctx, "domstate", name); err != nil || !strings.Contains(out, "running") {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("domain %s never stopped", name)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitLog waits until a daemon's log holds text.
func waitLog(ctx context.Context, t *testing.T, p *harness.Proc, text string) {
	t.Helper()
	for !strings.Contains(p.Log(10000), text) {
		select {
		case <-ctx.Done():
			t.Fatalf("%q never logged:\n%s", text, p.Report())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// exportNewest exports g1's newest point and returns the export name of
// its only disk.
func exportNewest(ctx context.Context, t *testing.T, bin, control string) string {
	t.Helper()
	var e struct {
		Exports map[string]string `json:"exports"`
	}
	out := run(ctx, t, bin, "export", "--socket", control, "--json", "g1", "--ago", "0s")
	if err := json.Unmarshal(out, &e); err != nil || len(e.Exports) != 1 {
		t.Fatalf("export: %v %s", err, out)
	}
	for _, n := range e.Exports {
		return n
	}
	return ""
}
