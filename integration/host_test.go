package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/qcdp/qcdp/filter"
	"github.com/qcdp/qcdp/integration/harness"
)

// buildQCDP builds the qcdp binary into dir.
func buildQCDP(ctx context.Context, t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "qcdp")
	out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/qcdp/qcdp/cmd/qcdp").CombinedOutput()
	if err != nil {
		t.Fatalf("go build qcdp: %v\n%s", err, out)
	}
	return bin
}

// hostStatus is the part of `qcdp status --json` the test reads.
type hostStatus struct {
	Groups []struct {
		Name    string `json:"name"`
		LastSeq uint64 `json:"last_seq"`
		Disks   []struct {
			VM, Target, Stream, State, Error string
			Resync                           *struct {
				Mode      string    `json:"mode"`
				Total     int64     `json:"total_bytes"`
				Compared  int64     `json:"compared_bytes"`
				Dirty     int64     `json:"dirty_bytes"`
				Sent      int64     `json:"sent_bytes"`
				HashBytes int64     `json:"hash_bytes"`
				Started   time.Time `json:"started"`
				Done      bool      `json:"done"`
			} `json:"resync"`
		} `json:"disks"`
	} `json:"groups"`
}

func qcdpStatus(ctx context.Context, bin, sock string) (hostStatus, error) {
	var st hostStatus
	out, err := exec.CommandContext(ctx, bin, "status", "--json", "--socket", sock).Output()
	if err != nil {
		return st, fmt.Errorf("qcdp status: %w", err)
	}
	return st, json.Unmarshal(out, &st)
}

// waitDisks waits until every disk the daemon reports is in state and there
// are want of them. The daemon is another process: its control API is asked
// with a bounded backoff.
func waitDisks(ctx context.Context, t *testing.T, bin, sock string, want int, state filter.State, daemon *harness.Proc) {
	t.Helper()
	var last hostStatus
	var lastErr error
	for wait := 20 * time.Millisecond; ; wait = min(2*wait, 500*time.Millisecond) {
		last, lastErr = qcdpStatus(ctx, bin, sock)
		if lastErr == nil && len(last.Groups) == 1 && len(last.Groups[0].Disks) == want {
			ok := true
			for _, d := range last.Groups[0].Disks {
				ok = ok && d.State == string(state)
			}
			if ok {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("disks never all %s: last status %+v (err %v)\n%s", state, last, lastErr, daemon.Report())
		case <-daemon.Exited():
			t.Fatalf("qcdp host exited: %v\n%s", daemon.ExitErr(), daemon.Report())
		case <-time.After(wait):
		}
	}
}

// TestHostDaemon runs the real `qcdp host` against a plain QEMU found through
// its QMP socket, with two disks (qcow2 v3 and raw): it protects both, is
// killed with SIGKILL while writes go on (the guest must see no error and
// no write held over 1 s), adopts and resumes the jobs after a restart,
// pauses and resumes on the operator's word, detaches cleanly on `qcdp
// detach`, and its spool rebuilds both disks.
func TestHostDaemon(t *testing.T) {
	harness.Need(t, "qemu-system-x86_64", "qemu-img")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := harness.TempDir(t)
	bin := buildQCDP(ctx, t, dir)

	vda := filepath.Join(dir, "vda.qcow2")
	vdb := filepath.Join(dir, "vdb.raw")
	for _, img := range []struct {
		path, format string
		size         int64
		base         byte
	}{{vda, "qcow2", 16 << 20, 0x20}, {vdb, "raw", 8 << 20, 0x60}} {
		if err := harness.CreateImage(ctx, img.path, img.format, img.size); err != nil {
			t.Fatal(err)
		}
		if err := harness.FillPattern(ctx, img.path, img.format, img.size, 1<<20, img.base); err != nil {
			t.Fatal(err)
		}
	}
	h := newHost(t, bin, dir, "", "")
	q := harness.Start(ctx, t, harness.Options{
		Dir: dir, Machine: "pc", Paused: true,
		Disks: []harness.Disk{{Name: "disk0", Path: vda, Format: "qcow2"}, {Name: "disk1", Path: vdb, Format: "raw"}},
		Extra: []string{
			"-m", "64", // share-rw: the test writes beside the device with HMP qemu-io
			"-qmp", "unix:" + h.QMPSocket() + ",server=on,wait=off", // the daemon's monitor
			"-device", "virtio-blk-pci,drive=disk0,id=vda,share-rw=on",
			"-device", "virtio-blk-pci,drive=disk1,id=vdb,share-rw=on",
		},
	})

	control := h.Control
	startHost := func(name string) *harness.Proc { return h.start(ctx, t, name) }
	write := func(node, cmd string) {
		t.Helper()
		start := time.Now()
		if err := q.QemuIO(ctx, node, cmd); err != nil {
			t.Fatalf("guest write %q on %s: %v", cmd, node, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("guest write %q held %v (invariant 1: never over 1 s)", cmd, d)
		}
	}
	fa, fb := filter.FilterNode("vm1.vda"), filter.FilterNode("vm1.vdb")

	host := startHost("host-1")
	waitDisks(ctx, t, bin, control, 2, filter.Syncing, host)
	write(fa, "write -P 0xa1 0 4096")
	write(fb, "write -P 0xb1 4096 512")

	// kill -9 in the middle of the writes: QEMU keeps the guest going.
	host.Kill()
	write(fa, "write -P 0xa2 1048576 65536")
	write(fb, "write -P 0xb2 100 100")
	write(fa, "write -z 2097152 8192")

	host = startHost("host-2")
	waitDisks(ctx, t, bin, control, 2, filter.Syncing, host)
	write(fa, "write -P 0xa3 12345 100")
	write(fb, "write -P 0xb3 7340032 1048576")

	// An operator's pause: the guest goes on, capture holds, then resumes
	// and re-copies what changed.
	qcdp := func(args ...string) {
		t.Helper()
		out, err := exec.CommandContext(ctx, bin, append(args[:1:1], append([]string{"--socket", control}, args[1:]...)...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("qcdp %v: %v\n%s\n%s", args, err, out, host.Report())
		}
	}
	qcdp("pause", "vm1")
	waitDisks(ctx, t, bin, control, 2, filter.Paused, host)
	write(fa, "write -P 0xa4 3145728 4096")
	write(fb, "write -P 0xb4 0 4096")
	if st, err := qcdpStatus(ctx, bin, control); err != nil || st.Groups[0].Disks[0].State != string(filter.Paused) {
		t.Fatalf("a write during a pause resumed capture: %+v %v", st, err)
	}
	qcdp("resume", "vm1")
	waitDisks(ctx, t, bin, control, 2, filter.Syncing, host)
	write(fa, "write -P 0xa5 5000 3000")

	// Bookmarks: a named one, and an app-consistent one on a VM without a
	// guest agent, which must say so and fall back to crash-consistent.
	qcdp("bookmark", "g1", "before-detach")
	out, err := exec.CommandContext(ctx, bin, "bookmark", "--socket", control, "--json", "--app", "g1", "app-1").CombinedOutput()
	if err != nil {
		t.Fatalf("qcdp bookmark --app: %v\n%s", err, out)
	}
	var bm struct {
		Kind    string   `json:"kind"`
		NoAgent []string `json:"no_agent"`
	}
	if err := json.Unmarshal(out, &bm); err != nil || bm.Kind != "crash-consistent" || len(bm.NoAgent) != 1 || bm.NoAgent[0] != "vm1" {
		t.Fatalf("app bookmark without an agent: %s (%v), want crash-consistent naming vm1", out, err)
	}
	if out, err := exec.CommandContext(ctx, bin, "bookmark", "--socket", control, "nogroup", "x").CombinedOutput(); err == nil {
		t.Fatalf("a bookmark in an unknown group succeeded: %s", out)
	}

	out, err = exec.CommandContext(ctx, bin, "detach", "--socket", control, "vm1").CombinedOutput()
	if err != nil {
		t.Fatalf("qcdp detach vm1: %v\n%s\n%s", err, out, host.Report())
	}
	waitDisks(ctx, t, bin, control, 2, filter.Detached, host)
	if jobs, err := q.QMP.QueryBlockJobs(ctx); err != nil || len(jobs) != 0 {
		t.Fatalf("jobs left in QEMU after detach: %+v %v", jobs, err)
	}
	if out, err := exec.CommandContext(ctx, bin, "detach", "--socket", control, "no-such-vm").CombinedOutput(); err == nil {
		t.Fatalf("detach of an unknown VM succeeded: %s", out)
	}

	// Written while detached: 64 KiB on each disk. The attach copies only
	// what QEMU's dirty bitmaps say changed (a bitmap resync, not the 24
	// MiB of both disks), and the spool still rebuilds both sources below.
	for i := range 4 {
		write("disk0", fmt.Sprintf("write -P 0x%02x %d 16384", 0xd0+i, int64(i)*1<<20+65536))
		write("disk1", fmt.Sprintf("write -P 0x%02x %d 16384", 0xe0+i, int64(i)*1<<20+131072))
	}
	qcdp("attach", "vm1")
	waitDisks(ctx, t, bin, control, 2, filter.Syncing, host)
	st, err := qcdpStatus(ctx, bin, control)
	if err != nil {
		t.Fatal(err)
	}
	for _, ds := range st.Groups[0].Disks {
		// A 16 KiB write dirties 16 KiB at 4 KiB granularity; the resync
		// reads whole 1 MiB chunks at most where it is dirty.
		if r := ds.Resync; r == nil || r.Mode != "bitmap" || !r.Done || r.Sent == 0 || r.Sent > 4*16384 {
			t.Errorf("disk %s after detach and attach: resync %+v, want a bitmap resync of at most 64 KiB\n%s", ds.Stream, r, host.Report())
		}
	}
	qcdp("detach", "vm1")
	waitDisks(ctx, t, bin, control, 2, filter.Detached, host)
	if err := host.Stop(10 * time.Second); err != nil {
		t.Fatalf("qcdp host did not stop cleanly on SIGTERM: %v\n%s", err, host.Report())
	}
	q.Close()

	spoolDir := h.SpoolDir
	ra, rb := filepath.Join(dir, "applied-vda.raw"), filepath.Join(dir, "applied-vdb.raw")
	out, err = exec.CommandContext(ctx, bin, "spool", "apply", "--spool", spoolDir,
		"--disk", "vm1.vda="+ra, "--disk", "vm1.vdb="+rb).CombinedOutput()
	if err != nil {
		t.Fatalf("qcdp spool apply: %v\n%s", err, out)
	}
	if err := harness.Compare(ctx, vda, "qcow2", ra, "raw"); err != nil {
		t.Errorf("vda: the spool does not rebuild the source across a kill -9: %v", err)
	}
	if err := harness.Compare(ctx, vdb, "raw", rb, "raw"); err != nil {
		t.Errorf("vdb: the spool does not rebuild the source across a kill -9: %v", err)
	}
	show, _ := exec.CommandContext(ctx, bin, "spool", "show", "--spool", spoolDir).CombinedOutput()
	if !bytes.Contains(show, []byte("resync-begin")) || !bytes.Contains(show, []byte("resync-end")) {
		t.Errorf("the restart is not bracketed by resync markers in the stream:\n%s", show)
	}
	for _, m := range []string{"before-detach", "app-1"} {
		if !bytes.Contains(show, []byte(m)) {
			t.Errorf("bookmark %q is not in the stream:\n%s", m, show)
		}
	}
	if t.Failed() {
		t.Logf("spool:\n%s\n%s", show, host.Report())
	}
}
