package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qcdp/qcdp/filter"
	"github.com/qcdp/qcdp/integration/harness"
)

// readmeCommands returns the command lines of README.md's "### Commands"
// block: comments dropped, continuation lines joined.
func readmeCommands(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	section, block := false, false
	var cont string
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "### "):
			section = line == "### Commands"
			continue
		case !section:
			continue
		case strings.HasPrefix(line, "```"):
			if block {
				return out
			}
			block = true
			continue
		case !block:
			continue
		}
		if i := strings.Index(line, " #"); i >= 0 {
			line = line[:i]
		}
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		line = strings.TrimSpace(line)
		if strings.HasSuffix(line, `\`) {
			cont += strings.TrimSpace(strings.TrimSuffix(line, `\`)) + " "
			continue
		}
		line, cont = cont+line, ""
		if line != "" {
			out = append(out, strings.Join(strings.Fields(line), " "))
		}
	}
	t.Fatalf("%s: no ```sh block under ### Commands", path)
	return nil
}

// mountNS is a mount namespace of the test's own in which some system
// directories (/etc/qcdp, /run/qcdp, ...) are the test's directories, so
// the README's command lines run exactly as written without touching the
// machine's. A holder process keeps it alive; commands join it by nsenter.
type mountNS struct {
	holder *exec.Cmd
	env    []string
	cwd    string
}

// bind is a directory or file mounted over a target in the namespace.
type bind struct{ src, target string }

// newMountNS makes the namespace with each of binds mounted over its
// target, in order.
func newMountNS(t *testing.T, binds []bind, env []string, cwd string) *mountNS {
	t.Helper()
	args := []string{"-c", `set -e
while [ "$1" != -- ]; do
	[ -e "$2" ] || mkdir -p "$2"
	mount --bind "$1" "$2"
	shift 2
done
echo ready
exec sleep 3600`, "sh"}
	for _, b := range binds {
		args = append(args, b.src, b.target)
	}
	args = append(args, "--")
	cmd := exec.Command("/bin/sh", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Skipf("skipping: cannot make a mount namespace: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "ready\n" {
		cmd.Wait()
		t.Fatalf("mount namespace: %q %v: %s", line, err, stderr.String())
	}
	return &mountNS{holder: cmd, env: env, cwd: cwd}
}

// command returns line run by sh inside the namespace.
func (ns *mountNS) command(ctx context.Context, line string) *exec.Cmd {
	c := exec.CommandContext(ctx, "nsenter", "--mount=/proc/"+strconv.Itoa(ns.holder.Process.Pid)+"/ns/mnt", "--wd="+ns.cwd, "--",
		"/bin/sh", "-c", line)
	c.Env, c.Dir = ns.env, ns.cwd
	return c
}

// argv is line as the argv of a process inside the namespace (for
// harness.StartProcT).
func (ns *mountNS) argv(line string) []string {
	argv := []string{"nsenter", "--mount=/proc/" + strconv.Itoa(ns.holder.Process.Pid) + "/ns/mnt", "--wd=" + ns.cwd, "--", "/usr/bin/env"}
	for _, kv := range ns.env {
		if strings.HasPrefix(kv, "PATH=") {
			argv = append(argv, kv)
		}
	}
	return append(argv, "/bin/sh", "-c", "exec "+line)
}

// TestREADMECommands runs every command line of README.md's "Commands"
// block, as written but for the values only a running system knows (a
// seq, an export id), against real daemons: `qcdp replica`, and `qcdp
// host` protecting a QEMU VM "vm1", streaming to it over mutual TLS. The
// README cannot drift from the binary: a line the README shows that this
// test does not run, or one it runs that the README no longer shows,
// fails it. It runs in a mount namespace of its own in which /etc/qcdp,
// /run/qcdp, /var/lib/qcdp, /etc/bash_completion.d and /tmp are the
// test's, and dr1.example.com is 127.0.0.1.
func TestREADMECommands(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root for a mount namespace and QEMU's sockets")
	}
	harness.Need(t, "qemu-system-x86_64", "qemu-img", "qemu-io", "nsenter", "make")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	lines := readmeCommands(t, filepath.Join(repo, "README.md"))

	// Outside /tmp, which the namespace replaces.
	dir, err := os.MkdirTemp("/var/tmp", "qcdp-readme-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("kept %s (daemon logs in it)", dir)
			return
		}
		os.RemoveAll(dir)
	})
	binDir := filepath.Join(dir, "bin")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(binDir, "qcdp"), "github.com/qcdp/qcdp/cmd/qcdp").CombinedOutput(); err != nil {
		t.Fatalf("go build qcdp: %v\n%s", err, out)
	}
	port := freePort(t)
	ns := filepath.Join(dir, "ns")
	paths := map[string]string{} // target → the test's directory
	var binds []bind
	// Failover: the test's own libvirtd runs outside the namespace, so the
	// views' socket and the standbys' directory are where it sees them, and
	// its directory (under /tmp, its socket in it) is kept visible inside.
	lv := harness.NeedLibvirtd(context.Background(), t)
	if err := os.Chmod(dir, 0o755); err != nil { // libvirt's QEMU user reaches the standbys
		t.Fatal(err)
	}
	lvKeep := filepath.Join(ns, "libvirtd")
	if err := os.MkdirAll(lvKeep, 0o755); err != nil {
		t.Fatal(err)
	}
	binds = append(binds, bind{lv.Dir, lvKeep})
	if strings.HasPrefix(repo, "/tmp/") { // kept visible under the namespace's own /tmp
		keep := filepath.Join(ns, "repo")
		if err := os.MkdirAll(keep, 0o755); err != nil {
			t.Fatal(err)
		}
		binds = append(binds, bind{repo, keep})
	}
	for _, m := range []struct{ target, sub string }{{"/etc/qcdp", "etc-qcdp"}, {"/run/qcdp", "run-qcdp"},
		{"/var/lib/qcdp", "var-lib-qcdp"}, {"/etc/bash_completion.d", "bash-completion"}, {"/tmp", "tmp"}} {
		paths[m.target] = filepath.Join(ns, m.sub)
		if err := os.MkdirAll(paths[m.target], 0o755); err != nil {
			t.Fatal(err)
		}
		binds = append(binds, bind{paths[m.target], m.target})
	}
	hosts := filepath.Join(ns, "hosts")
	writeFile(t, hosts, "127.0.0.1 localhost dr1.example.com\n::1 localhost\n")
	binds = append(binds, bind{hosts, "/etc/hosts"})
	if strings.HasPrefix(repo, "/tmp/") {
		binds = append(binds, bind{filepath.Join(ns, "repo"), repo})
	}
	binds = append(binds, bind{lvKeep, lv.Dir})
	inNS := func(p string) string { // a path in the namespace, seen from outside
		for target, src := range paths {
			if rel, ok := strings.CutPrefix(p, target+"/"); ok {
				return filepath.Join(src, rel)
			}
		}
		t.Fatalf("%s is not in a directory of the namespace", p)
		return ""
	}
	env := append(os.Environ(), "PATH="+binDir+":/usr/local/go/bin:"+os.Getenv("PATH"))
	space := newMountNS(t, binds, env, repo)

	// Each README line run, with what was run for it; the daemons are run
	// in the background and counted as run when they answer.
	ran := map[string][]string{}
	run := func(readme, line string) string {
		t.Helper()
		out, err := space.command(ctx, line).CombinedOutput()
		if err != nil {
			t.Fatalf("README line %q, run as %q: %v\n%s", readme, line, err, out)
		}
		ran[readme] = append(ran[readme], line)
		return string(out)
	}
	daemon := func(readme, name, control string) *harness.Proc {
		t.Helper()
		p := harness.StartProcT(t, dir, name, space.argv(readme)...)
		if err := harness.WaitSocket(ctx, inNS(control), p); err != nil {
			t.Fatalf("README line %q: %v", readme, err)
		}
		ran[readme] = append(ran[readme], readme)
		return p
	}

	// The recovery site.
	run("qcdp certs --dir /etc/qcdp/tls --ca", "qcdp certs --dir /etc/qcdp/tls --ca")
	run("qcdp certs --dir /etc/qcdp/tls --host kvm1 --tenant acme", "qcdp certs --dir /etc/qcdp/tls --host kvm1 --tenant acme")
	run("qcdp certs --dir /etc/qcdp/tls --replica dr1 --san dr1.example.com,192.0.2.10", "qcdp certs --dir /etc/qcdp/tls --replica dr1 --san dr1.example.com,192.0.2.10")
	writeFile(t, inNS("/etc/qcdp/replica.toml"), fmt.Sprintf(`[replica]
listen = "127.0.0.1:%d"
ca = "/etc/qcdp/tls/ca.pem"
cert = "/etc/qcdp/tls/dr1.pem"
key = "/etc/qcdp/tls/dr1-key.pem"
nbd_socket = %q

[[tenant]]
name = "acme"
hosts = ["kvm1"]
groups = ["g1"]

[[recovery]]
group = "g1"
libvirt_uri = %q
standby_dir = %q
domain_type = "qemu"
`, port, filepath.Join(dir, "views.sock"), lv.URI, filepath.Join(dir, "standby")))
	run("qcdp replica --config /etc/qcdp/replica.toml --check", "qcdp replica --config /etc/qcdp/replica.toml --check")
	replica := daemon("qcdp replica --config /etc/qcdp/replica.toml", "replica", "/run/qcdp/replica.sock")

	// The protected host: a plain QEMU VM found through its QMP socket.
	vda := filepath.Join(dir, "vda.qcow2")
	if err := harness.CreateImage(ctx, vda, "qcow2", 4<<20); err != nil {
		t.Fatal(err)
	}
	if err := harness.FillPattern(ctx, vda, "qcow2", 4<<20, 1<<20, 0x31); err != nil {
		t.Fatal(err)
	}
	vms := filepath.Join(dir, "vms")
	if err := os.MkdirAll(vms, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, inNS("/etc/qcdp/host.toml"), fmt.Sprintf(`[host]
state_dir = %q
nbd_socket_dir = %q
qmp_sockets = [%q]
tls_ca = "/etc/qcdp/tls/ca.pem"
tls_cert = "/etc/qcdp/tls/kvm1.pem"
tls_key = "/etc/qcdp/tls/kvm1-key.pem"

[[group]]
name = "g1"
replica = "dr1.example.com:%d"
  [[group.vm]]
  name = "vm1"
`, filepath.Join(dir, "state"), filepath.Join(dir, "nbd"), filepath.Join(vms, "*.qmp"), port))
	q := harness.Start(ctx, t, harness.Options{
		Dir: dir, Machine: "pc", Paused: true,
		Disks: []harness.Disk{{Name: "disk0", Path: vda, Format: "qcow2"}},
		Extra: []string{"-m", "64", "-name", "vm1",
			"-qmp", "unix:" + filepath.Join(vms, "vm1.qmp") + ",server=on,wait=off",
			"-device", "virtio-blk-pci,drive=disk0,id=vda,share-rw=on"},
	})
	host := daemon("qcdp host --config /etc/qcdp/host.toml", "host", "/run/qcdp/host.sock")
	hostCtl := inNS("/run/qcdp/host.sock")
	bin := filepath.Join(binDir, "qcdp")
	waitDisks(ctx, t, bin, hostCtl, 1, filter.Syncing, host)
	write := func(cmd string) {
		t.Helper()
		if err := q.QemuIO(ctx, filter.FilterNode("vm1.vda"), cmd); err != nil {
			t.Fatalf("guest write %q: %v", cmd, err)
		}
	}
	write("write -P 0xa1 0 4096")

	run("qcdp status", "qcdp status")
	run("qcdp status --json", "qcdp status --json")
	run("qcdp bookmark g1 before-upgrade", "qcdp bookmark g1 before-upgrade")
	write("write -P 0xa2 65536 4096")
	out := run("qcdp bookmark --app g1 nightly", "qcdp bookmark --app g1 nightly")
	if !strings.Contains(out, "crash-consistent") || !strings.Contains(out, "vm1") {
		t.Errorf("an app bookmark of a VM without a guest agent must say it fell back to crash-consistent naming vm1:\n%s", out)
	}

	// The replica's window: wait until the bookmarks are points there.
	var pts struct {
		Points []struct {
			Seq  uint64    `json:"seq"`
			Time time.Time `json:"time"`
			Kind string    `json:"kind"`
			Name string    `json:"name"`
		} `json:"points"`
	}
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		out, err := space.command(ctx, "qcdp points g1 --json").CombinedOutput()
		if err == nil && json.Unmarshal(out, &pts) == nil && slices.ContainsFunc(pts.Points, func(p struct {
			Seq  uint64    `json:"seq"`
			Time time.Time `json:"time"`
			Kind string    `json:"kind"`
			Name string    `json:"name"`
		}) bool {
			return p.Name == "nightly"
		}) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the replica never offered the bookmarks as points: %s\n%s\n%s", out, replica.Report(), host.Report())
		case <-time.After(wait):
		}
	}
	out = run("qcdp points g1 --json", "qcdp points g1 --json")
	if !strings.Contains(out, `"kind": "user-bookmark"`) && !strings.Contains(out, `"kind":"user-bookmark"`) {
		t.Errorf("points JSON does not name kinds: %s", out)
	}
	seq := pts.Points[len(pts.Points)-1].Seq
	oldest := pts.Points[0].Time
	fill := strings.NewReplacer("--seq 5", fmt.Sprintf("--seq %d", seq),
		"--ago 5m", fmt.Sprintf("--ago %ds", int(time.Since(oldest).Seconds())/2))
	for _, l := range []string{"qcdp export g1 --seq 5", "qcdp export g1 --ago 5m --writable"} {
		out := run(l, fill.Replace(l))
		if !strings.Contains(out, "nbd+unix://") {
			t.Errorf("%s printed no NBD URI:\n%s", l, out)
		}
	}
	out = run("qcdp exports --json", "qcdp exports --json")
	var exps []struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(out), &exps); err != nil || len(exps) != 2 {
		t.Fatalf("qcdp exports --json: %v, want the two exports:\n%s", err, out)
	}
	run("qcdp unexport x1", "qcdp unexport "+exps[0].ID)
	run("qcdp restore g1 --seq 5 --disk vm1.vda --out /tmp/x.raw", fill.Replace("qcdp restore g1 --seq 5 --disk vm1.vda --out /tmp/x.raw"))
	run("qcdp restore g1 --bookmark nightly --disk vda --out /tmp/x.qcow2 --format qcow2", "qcdp restore g1 --bookmark nightly --disk vda --out /tmp/x.qcow2 --format qcow2")
	if err := harness.Compare(ctx, inNS("/tmp/x.raw"), "raw", inNS("/tmp/x.qcow2"), "qcow2"); err != nil {
		t.Errorf("the raw restore at the last point and the qcow2 restore at the bookmark differ, though nothing was written between: %v", err)
	}
	run("qcdp verify g1", "qcdp verify g1")

	// Failover of g1 (vm1's definition came with the stream): a test that
	// leaves nothing, an unplanned one undone; the host stops its capture
	// while g1 is failed over and takes it up again after the undo.
	out = run("qcdp failover test g1", "qcdp failover test g1")
	if !strings.Contains(out, "vm1-qcdp-test  running") {
		t.Errorf("qcdp failover test g1 shows no running standby:\n%s", out)
	}
	out = run("qcdp failover status g1 --json", "qcdp failover status g1 --json")
	if !strings.Contains(out, `"domain": "vm1-qcdp-test"`) {
		t.Errorf("qcdp failover status --json:\n%s", out)
	}
	run("qcdp failover cleanup g1", "qcdp failover cleanup g1")
	run("qcdp failover start g1", "qcdp failover start g1")
	run("qcdp failover undo g1", "qcdp failover undo g1")
	waitDisks(ctx, t, bin, hostCtl, 1, filter.Syncing, host)

	// The operator's words on the host.
	for _, l := range []string{"qcdp detach vm1 --disk vda", "qcdp attach vm1", "qcdp pause vm1 --disk vda",
		"qcdp resume vm1 --disk vda", "qcdp detach vm1 --disk vm1.vda --json"} {
		run(l, l)
		want := map[string]filter.State{"detach": filter.Detached, "attach": filter.Syncing, "pause": filter.Paused, "resume": filter.Syncing}[strings.Fields(l)[1]]
		waitDisks(ctx, t, bin, hostCtl, 1, want, host)
	}
	// A failover from a bookmark, committed.
	t.Cleanup(func() {
		lv.Virsh(context.Background(), "destroy", "vm1")
		lv.Virsh(context.Background(), "undefine", "vm1")
	})
	run("qcdp failover start g1 --bookmark nightly", "qcdp failover start g1 --bookmark nightly")
	out = run("qcdp failover commit g1 --wait", "qcdp failover commit g1 --wait")
	if !strings.Contains(out, "committed") {
		t.Errorf("qcdp failover commit g1 --wait:\n%s", out)
	}
	if err := host.Stop(10 * time.Second); err != nil {
		t.Fatalf("qcdp host did not stop on SIGTERM: %v\n%s", err, host.Report())
	}
	if err := replica.Stop(10 * time.Second); err != nil {
		t.Fatalf("qcdp replica did not stop on SIGTERM: %v\n%s", err, replica.Report())
	}

	// Capture without a daemon, and the spool.
	captureLine := "qcdp capture --socket /run/qcdp/g1.sock --spool /var/lib/qcdp/spool/g1 --group g1 --disk vda=20G --disk vdb=100G --max-spool 8G --sync-interval 1s --sync-bytes 64M"
	capt := daemon(captureLine, "capture", "/run/qcdp/g1.sock")
	if out, err := space.command(ctx, `qemu-io -f raw -c "write -P 0x5a 0 64k" -c "write -P 0x5b 1m 4k" "nbd+unix:///vda?socket=/run/qcdp/g1.sock"`).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io into qcdp capture: %v\n%s", err, out)
	}
	if err := capt.Stop(10 * time.Second); err != nil {
		t.Fatalf("qcdp capture did not stop on SIGTERM: %v\n%s", err, capt.Report())
	}
	run("qcdp spool show --spool /var/lib/qcdp/spool/g1 --json", "qcdp spool show   --spool /var/lib/qcdp/spool/g1 --json")
	run("qcdp spool verify --spool /var/lib/qcdp/spool/g1", "qcdp spool verify --spool /var/lib/qcdp/spool/g1")
	run("qcdp spool apply --spool /var/lib/qcdp/spool/g1 --disk vda=/tmp/vda.raw --to-seq 1000 --json",
		"qcdp spool apply  --spool /var/lib/qcdp/spool/g1 --disk vda=/tmp/vda.raw --to-seq 1000 --json")
	if out, err := exec.CommandContext(ctx, "qemu-io", "-f", "raw", "-c", "read -P 0x5b 1m 4k", inNS("/tmp/vda.raw")).CombinedOutput(); err != nil || strings.Contains(string(out), "Pattern verification failed") {
		t.Errorf("the applied spool does not hold what was written through qcdp capture: %v\n%s", err, out)
	}

	// The binary itself.
	out = run("qcdp --version", "qcdp --version")
	if !strings.HasPrefix(out, "qcdp ") {
		t.Errorf("qcdp --version printed %q", out)
	}
	run("qcdp completion bash > /etc/bash_completion.d/qcdp", "qcdp completion bash > /etc/bash_completion.d/qcdp")
	if b, err := os.ReadFile(inNS("/etc/bash_completion.d/qcdp")); err != nil || !strings.Contains(string(b), "qcdp") {
		t.Errorf("no bash completion written: %v", err)
	}
	man := filepath.Join(dir, "man")
	run("make man", "make man MANDIR="+man)
	if _, err := os.Stat(filepath.Join(man, "qcdp-export.1")); err != nil {
		t.Errorf("make man wrote no page for qcdp export: %v", err)
	}

	for _, l := range lines {
		if _, ok := ran[l]; !ok {
			t.Errorf("README shows %q, which this test does not run: run it here", l)
		}
	}
	for l := range ran {
		if !slices.Contains(lines, l) {
			t.Errorf("this test runs %q, which README.md no longer shows", l)
		}
	}
}
