package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/qcdp/qcdp/integration/harness"
)

// Resync suite: what a protected disk costs to bring back after each way
// its capture stops, with the real daemons (`qcdp replica`, `qcdp host`,
// built from this tree) and a plain QEMU VM whose one disk is a qcow2 v3
// image of -resync-size, filled, fully copied to the replica first. For
// each path, -resync-changed of the disk's 64 KiB blocks (random, distinct)
// are written while the capture is stopped, the page cache is dropped
// (as on a host that did not just read the disk), and the capture started
// again:
//
//   - bitmap, detach/attach: `qcdp detach`, writes through the guest's
//     device, `qcdp attach` (QEMU's in-memory bitmap says what changed);
//   - bitmap, clean VM restart: QEMU quits (the persistent bitmap is
//     stored), writes with qemu-io, QEMU starts again;
//   - hash, QEMU kill -9: the persistent bitmap comes back inconsistent;
//     writes with qemu-io; QEMU starts again;
//   - hash, lost spool tail: the replica stops, the writes go through the
//     device into the spool, QEMU and the host daemon are killed and the
//     spool's newest segment loses its last part (as a host crash loses
//     what was not fsynced), everything starts again.
//
// Per path: stream bytes (the records the sender encoded, before zstd:
// what a link without compression carries) ÷ changed bytes, goal ≤ 1.2;
// the replica's hashes received ÷ disk size, goal ≤ 0.1%; resync time
// (its start to its end, as `qcdp status` reports them) ÷ the time to
// read the disk once (the image file read with the page cache dropped, in
// the same run), goal ≤ 0.2 for bitmap paths and ≤ 1.5 for hash paths. At
// the end the replica's newest point must equal the source.
func runResync(ctx context.Context, b *bench, out io.Writer) error {
	size, frac := b.opts.resyncSize, b.opts.resyncChanged
	r, err := newResyncRig(ctx, b)
	if err != nil {
		return err
	}
	defer r.close()
	fmt.Fprintf(out, "resync: one %s qcow2 v3 disk, %.1f%% of its 64 KiB blocks changed per path; %s\n",
		human(size), frac*100, runtimeLine())
	if err := r.fill(ctx); err != nil {
		return err
	}
	// The floor of a hash resync's read: the whole disk through QEMU's own
	// NBD export code (qemu-nbd, as QEMU's NBD server), by nbdcopy on four
	// connections of 1 MiB reads, as the resync reads it; before the VM
	// starts, which locks the image.
	qemuRead, err := timeQEMURead(ctx, r.b.dir, r.img)
	if err != nil {
		return err
	}
	if err := r.startAll(ctx); err != nil {
		return err
	}
	if err := r.waitState(ctx, "syncing", time.Time{}); err != nil {
		return err
	}
	if err := r.waitReplicated(ctx); err != nil {
		return err
	}
	dropped := dropCaches()
	readOnce, err := timeRead(r.img)
	if err != nil {
		return err
	}
	note := "page cache dropped before each read"
	if !dropped {
		note = "page cache NOT dropped (not root?): times are optimistic for both sides"
	}
	fmt.Fprintf(out, "read the disk once: %v (%.0f MB/s); %s\n", readOnce.Round(time.Millisecond), float64(size)/readOnce.Seconds()/1e6, note)
	fmt.Fprintf(out, "read it once through QEMU's NBD export (qemu-nbd, nbdcopy, 4 connections of 1 MiB): %v (%.0f MB/s)\n",
		qemuRead.Round(time.Millisecond), float64(size)/qemuRead.Seconds()/1e6)

	type result struct {
		path, mode     string
		changed, bytes int64
		hashes         int64
		took           time.Duration
		timeGoal       float64
	}
	var res []result
	paths := []struct {
		name, mode string
		timeGoal   float64
		run        func(ctx context.Context, blocks []int64) error
	}{
		{"bitmap, detach/attach", "bitmap", 0.2, r.detachAttach},
		{"bitmap, clean VM restart", "bitmap", 0.2, r.cleanRestart},
		{"hash, QEMU kill -9", "hash", 1.5, r.killRestart},
		{"hash, lost spool tail", "hash", 1.5, r.lostTail},
	}
	rng := rand.New(rand.NewPCG(uint64(size), 8))
	nblocks := size >> 16
	for i, p := range paths {
		blocks := rng.Perm(int(nblocks))[:max(1, int(float64(nblocks)*frac))]
		for k := range blocks {
			blocks[k] <<= 16
		}
		offs := make([]int64, len(blocks))
		for k, v := range blocks {
			offs[k] = int64(v)
		}
		sort.Slice(offs, func(a, b int) bool { return offs[a] < offs[b] })
		r.round = i + 1
		before, err := r.status(ctx)
		if err != nil {
			return err
		}
		r.before, r.carry = before.Groups[0].Replica.BytesRaw, -1
		start := time.Now()
		if err := p.run(ctx, offs); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		if err := r.waitState(ctx, "syncing", start); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		if err := r.waitReplicated(ctx); err != nil {
			return fmt.Errorf("%s: %w", p.name, err)
		}
		after, err := r.status(ctx)
		if err != nil {
			return err
		}
		d := after.Groups[0].Disks[0]
		if d.Resync == nil || !d.Resync.Done {
			return fmt.Errorf("%s: no resync done: %+v", p.name, d)
		}
		res = append(res, result{path: p.name, mode: d.Resync.Mode, changed: int64(len(offs)) << 16,
			bytes: r.streamed(after), hashes: d.Resync.HashBytes,
			took: d.Resync.Finished.Sub(d.Resync.Started), timeGoal: p.timeGoal})
		if d.Resync.Mode != p.mode {
			fmt.Fprintf(out, "NOTE %s: a %s resync, expected %s\n", p.name, d.Resync.Mode, p.mode)
		}
	}
	fmt.Fprintf(out, "%-26s %-7s %10s %12s %8s %10s %9s %8s %9s %8s\n", "path", "resync", "changed", "stream", "÷changed", "hashes", "÷disk", "time", "÷read", "÷qemu")
	for _, x := range res {
		ratio := float64(x.bytes) / float64(x.changed)
		hr := float64(x.hashes) / float64(size)
		tr := x.took.Seconds() / readOnce.Seconds()
		mark := func(ok bool) string {
			if ok {
				return ""
			}
			return "!"
		}
		fmt.Fprintf(out, "%-26s %-7s %10s %12s %7.3f%s %10s %8.4f%%%s %8v %8.3f%s %8.3f\n", x.path, x.mode, human(x.changed), human(x.bytes),
			ratio, mark(ratio <= 1.2), human(x.hashes), hr*100, mark(hr <= 0.001), x.took.Round(10*time.Millisecond), tr, mark(tr <= x.timeGoal),
			x.took.Seconds()/qemuRead.Seconds())
	}
	fmt.Fprintln(out, "goals: stream ÷ changed ≤ 1.2; hashes ÷ disk ≤ 0.1%; time ÷ read ≤ 0.2 (bitmap), ≤ 1.5 (hash); ! marks a goal missed;")
	fmt.Fprintln(out, "÷qemu: time ÷ reading the disk once through QEMU's NBD export (no goal: what any reader of a running VM's disk pays)")
	if err := r.verify(ctx); err != nil {
		return err
	}
	fmt.Fprintln(out, "the replica's newest point equals the source: yes")
	return nil
}

// resyncRig is the suite's daemons, VM and files.
type resyncRig struct {
	b                    *bench
	bin, img, qmp, spool string
	hostCfg, hostCtl     string
	replCfg, replCtl     string
	host, replica        *harness.Proc
	q                    *harness.QEMU
	round, boots, starts int
	size                 int64
	// before is the sender's stream bytes when a path began; carry, when
	// not negative, what the host daemon killed in the path had streamed
	// since (the next one counts from 0).
	before, carry int64
}

// streamed is the stream bytes of the path so far, given the status
// after it.
func (r *resyncRig) streamed(after resyncStatus) int64 {
	if r.carry >= 0 {
		return r.carry + after.Groups[0].Replica.BytesRaw
	}
	return after.Groups[0].Replica.BytesRaw - r.before
}

func newResyncRig(ctx context.Context, b *bench) (*resyncRig, error) {
	r := &resyncRig{b: b, bin: b.path("qcdp"), img: b.path("vda.qcow2"), qmp: b.path("vms/vm1.qmp"),
		spool: b.path("state/spool/g1"), hostCfg: b.path("host.toml"), hostCtl: b.path("host.sock"),
		replCfg: b.path("replica.toml"), replCtl: b.path("replica.sock"), size: b.opts.resyncSize}
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", r.bin, "github.com/qcdp/qcdp/cmd/qcdp").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build qcdp: %w\n%s", err, out)
	}
	tls := b.path("tls")
	for _, args := range [][]string{{"--ca"}, {"--replica", "dr1", "--san", "127.0.0.1"}, {"--host", "kvm1", "--tenant", "acme"}} {
		if out, err := exec.CommandContext(ctx, r.bin, append([]string{"certs", "--dir", tls}, args...)...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("qcdp certs: %w\n%s", err, out)
		}
	}
	port, err := freeTCPPort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(r.qmp), 0o755); err != nil {
		return nil, err
	}
	repl := fmt.Sprintf("[replica]\nlisten = \"127.0.0.1:%d\"\nca = %q\ncert = %q\nkey = %q\nstorage_root = %q\ncontrol_socket = %q\nnbd_socket = %q\nlog_level = \"debug\"\n"+
		"\n[[tenant]]\nname = \"acme\"\nhosts = [\"kvm1\"]\ngroups = [\"g1\"]\n",
		port, filepath.Join(tls, "ca.pem"), filepath.Join(tls, "dr1.pem"), filepath.Join(tls, "dr1-key.pem"),
		b.path("journals"), r.replCtl, b.path("views.sock"))
	host := fmt.Sprintf("[host]\nstate_dir = %q\ncontrol_socket = %q\nnbd_socket_dir = %q\nqmp_sockets = [%q]\nlog_level = \"debug\"\n"+
		"tls_ca = %q\ntls_cert = %q\ntls_key = %q\n\n[[group]]\nname = \"g1\"\nreplica = \"127.0.0.1:%d\"\nresync_read_rate = \"0\"\n"+
		"  [[group.vm]]\n  name = \"vm1\"\n",
		b.path("state"), r.hostCtl, b.path("nbd"), filepath.Join(filepath.Dir(r.qmp), "*.qmp"),
		filepath.Join(tls, "ca.pem"), filepath.Join(tls, "kvm1.pem"), filepath.Join(tls, "kvm1-key.pem"), port)
	if err := os.WriteFile(r.replCfg, []byte(repl), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(r.hostCfg, []byte(host), 0o644); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *resyncRig) close() {
	if r.q != nil {
		r.q.Close()
	}
	for _, p := range []*harness.Proc{r.host, r.replica} {
		if p != nil {
			p.Stop(10 * time.Second)
		}
	}
}

// fill makes the image and writes every MiB of it.
func (r *resyncRig) fill(ctx context.Context) error {
	if err := harness.CreateImage(ctx, r.img, "qcow2", r.size); err != nil {
		return err
	}
	return harness.FillPattern(ctx, r.img, "qcow2", r.size, 1<<20, 0x21)
}

func (r *resyncRig) startAll(ctx context.Context) error {
	if err := r.startReplica(ctx); err != nil {
		return err
	}
	if err := r.startHost(ctx); err != nil {
		return err
	}
	return r.boot(ctx)
}

func (r *resyncRig) startReplica(ctx context.Context) (err error) {
	r.starts++
	r.replica, err = harness.StartProc(r.b.dir, fmt.Sprintf("replica-%d", r.starts), r.bin, "replica", "--config", r.replCfg)
	if err == nil {
		err = harness.WaitSocket(ctx, r.replCtl, r.replica)
	}
	return err
}

func (r *resyncRig) startHost(ctx context.Context) (err error) {
	r.starts++
	r.host, err = harness.StartProc(r.b.dir, fmt.Sprintf("host-%d", r.starts), r.bin, "host", "--config", r.hostCfg)
	if err == nil {
		err = harness.WaitSocket(ctx, r.hostCtl, r.host)
	}
	return err
}

// boot starts the VM: QEMU with the disk on a virtio device, no guest.
func (r *resyncRig) boot(ctx context.Context) (err error) {
	r.boots++
	dir := r.b.path(fmt.Sprintf("qemu-%d", r.boots))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	r.q, err = harness.Launch(ctx, harness.Options{Dir: dir, Machine: "pc",
		Disks: []harness.Disk{{Name: "disk0", Path: r.img, Format: "qcow2"}},
		Extra: []string{"-m", "64", "-qmp", "unix:" + r.qmp + ",server=on,wait=off",
			"-device", "virtio-blk-pci,drive=disk0,id=vda"}})
	return err
}

// device writes the blocks through the guest's device (the capture
// filter's way in), a distinct pattern per round.
func (r *resyncRig) device(ctx context.Context, blocks []int64) error {
	for _, off := range blocks {
		cmd := fmt.Sprintf("write -P 0x%02x %d 65536", 0x80+r.round, off)
		if err := r.q.QemuIO(ctx, "-d /machine/peripheral/vda/virtio-backend", cmd); err != nil {
			return err
		}
	}
	return nil
}

// offline writes the blocks with qemu-io while no QEMU has the image.
func (r *resyncRig) offline(ctx context.Context, blocks []int64) error {
	var cmds []string
	for _, off := range blocks {
		cmds = append(cmds, fmt.Sprintf("write -P 0x%02x %d 65536", 0x80+r.round, off))
	}
	return harness.QemuIO(ctx, r.img, "qcow2", cmds...)
}

func (r *resyncRig) qcdp(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, r.bin, append(args[:1:1], append([]string{"--socket", r.hostCtl}, args[1:]...)...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qcdp %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func (r *resyncRig) detachAttach(ctx context.Context, blocks []int64) error {
	if err := r.qcdp(ctx, "detach", "vm1"); err != nil {
		return err
	}
	if err := r.waitState(ctx, "detached", time.Time{}); err != nil {
		return err
	}
	if err := r.device(ctx, blocks); err != nil {
		return err
	}
	dropCaches()
	return r.qcdp(ctx, "attach", "vm1")
}

func (r *resyncRig) cleanRestart(ctx context.Context, blocks []int64) error {
	if err := r.q.Close(); err != nil {
		return err
	}
	if err := r.offline(ctx, blocks); err != nil {
		return err
	}
	dropCaches()
	return r.boot(ctx)
}

func (r *resyncRig) killRestart(ctx context.Context, blocks []int64) error {
	r.q.Proc.Kill()
	<-r.q.Proc.Exited()
	r.q.Close()
	if err := r.offline(ctx, blocks); err != nil {
		return err
	}
	dropCaches()
	return r.boot(ctx)
}

func (r *resyncRig) lostTail(ctx context.Context, blocks []int64) error {
	if err := r.replica.Stop(10 * time.Second); err != nil {
		return err
	}
	if err := r.device(ctx, blocks); err != nil {
		return err
	}
	st, err := r.status(ctx)
	if err != nil {
		return err
	}
	r.q.Proc.Kill()
	<-r.q.Proc.Exited()
	r.q.Close()
	r.carry = r.streamed(st) // nothing streams meanwhile: the replica is down
	r.host.Kill()
	<-r.host.Exited()
	// The newest segment loses its last part, at most 20 MiB and less
	// than the writes made since the replica stopped: only records the
	// replica never got are lost.
	segs, err := filepath.Glob(filepath.Join(r.spool, "*.seg"))
	if err != nil || len(segs) == 0 {
		return fmt.Errorf("no spool segment in %s: %v", r.spool, err)
	}
	sort.Strings(segs)
	last := segs[len(segs)-1]
	fi, err := os.Stat(last)
	if err != nil {
		return err
	}
	cut := min(20<<20, fi.Size()/2, int64(len(blocks))<<16/2)
	if err := os.Truncate(last, fi.Size()-cut); err != nil {
		return err
	}
	dropCaches()
	if err := r.startReplica(ctx); err != nil {
		return err
	}
	if err := r.startHost(ctx); err != nil {
		return err
	}
	return r.boot(ctx)
}

// resyncStatus is what the suite reads of `qcdp status --json`.
type resyncStatus struct {
	Groups []struct {
		LastSeq uint64 `json:"last_seq"`
		Disks   []struct {
			State  string `json:"state"`
			Resync *struct {
				Mode      string    `json:"mode"`
				HashBytes int64     `json:"hash_bytes"`
				Started   time.Time `json:"started"`
				Finished  time.Time `json:"finished"`
				Done      bool      `json:"done"`
			} `json:"resync"`
		} `json:"disks"`
		Replica *struct {
			LastAcked uint64 `json:"last_acked"`
			BytesRaw  int64  `json:"bytes_raw"`
			BytesSent int64  `json:"bytes_sent"`
		} `json:"replica"`
	} `json:"groups"`
}

func (r *resyncRig) status(ctx context.Context) (resyncStatus, error) {
	var st resyncStatus
	out, err := exec.CommandContext(ctx, r.bin, "status", "--json", "--socket", r.hostCtl).Output()
	if err != nil {
		return st, fmt.Errorf("qcdp status: %w", err)
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, err
	}
	if len(st.Groups) != 1 || st.Groups[0].Replica == nil {
		return st, fmt.Errorf("qcdp status: no group with a replica: %s", out)
	}
	return st, nil
}

// waitState waits until the disk is in state; with since set, also until
// a resync begun after since is done.
func (r *resyncRig) waitState(ctx context.Context, state string, since time.Time) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	for {
		st, err := r.status(ctx)
		if err == nil && len(st.Groups[0].Disks) == 1 {
			d := st.Groups[0].Disks[0]
			if d.State == state && (since.IsZero() || d.Resync != nil && d.Resync.Done && d.Resync.Started.After(since)) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("disk never %s: %+v %v\n%s", state, st, err, r.host.Report())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (r *resyncRig) waitReplicated(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	for {
		st, err := r.status(ctx)
		if err == nil && st.Groups[0].Replica.LastAcked == st.Groups[0].LastSeq {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the replica never caught up: %+v %v", st, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// verify restores the replica's newest point and compares it with the
// source.
func (r *resyncRig) verify(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, r.bin, "points", "--socket", r.replCtl, "--json", "g1").Output()
	if err != nil {
		return fmt.Errorf("qcdp points: %w", err)
	}
	var pts struct {
		Window struct {
			LastSeq uint64 `json:"last_seq"`
		} `json:"window"`
	}
	if err := json.Unmarshal(out, &pts); err != nil {
		return err
	}
	dst := r.b.path("restored.raw")
	if out, err := exec.CommandContext(ctx, r.bin, "restore", "--socket", r.replCtl, "--seq", fmt.Sprint(pts.Window.LastSeq),
		"--disk", "vm1.vda", "--format", "raw", "--out", dst, "g1").CombinedOutput(); err != nil {
		return fmt.Errorf("qcdp restore: %w\n%s", err, out)
	}
	defer os.Remove(dst)
	if err := harness.Compare(ctx, r.img, "qcow2", dst, "raw"); err != nil {
		return fmt.Errorf("the replica's newest point differs from the source: %w", err)
	}
	return nil
}

// dropCaches writes back dirty pages and drops the page cache; false when
// it could not (not root).
func dropCaches() bool {
	exec.Command("sync").Run()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200) == nil
}

// timeQEMURead serves the image with qemu-nbd (read-only) and times
// nbdcopy reading it all to null, the page cache dropped first.
func timeQEMURead(ctx context.Context, dir, img string) (time.Duration, error) {
	sock := filepath.Join(dir, "qemu-nbd.sock")
	p, err := harness.StartProc(dir, "qemu-nbd", "qemu-nbd", "-r", "-f", "qcow2", "-x", "e", "-k", sock, "--cache=writeback", "--aio=threads", "-e", "8", "--persistent", img)
	if err != nil {
		return 0, err
	}
	defer p.Stop(5 * time.Second)
	if err := harness.WaitSocket(ctx, sock, p); err != nil {
		return 0, err
	}
	dropCaches()
	start := time.Now()
	if out, err := exec.CommandContext(ctx, "nbdcopy", "--connections=4", "--requests=1", "--request-size=1048576",
		"nbd+unix:///e?socket="+sock, "null:").CombinedOutput(); err != nil {
		return 0, fmt.Errorf("nbdcopy from qemu-nbd: %w\n%s", err, out)
	}
	return time.Since(start), nil
}

// timeRead reads the file once, 4 MiB at a time.
func timeRead(path string) (time.Duration, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	start := time.Now()
	for {
		_, err := f.Read(buf)
		if errors.Is(err, io.EOF) {
			return time.Since(start), nil
		}
		if err != nil {
			return 0, err
		}
	}
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// freeTCPPort returns a loopback port free now.
func freeTCPPort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
