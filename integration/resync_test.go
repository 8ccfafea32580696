package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/filter"
	"github.com/qcdp/qcdp/integration/harness"
)

// TestResyncPaths restarts a protected VM the ways a host does and checks
// that each brings the replica back to the source sending only what
// changed, never the whole disk (invariant 4):
//   - QEMU killed (kill -9): the qcow2 disk's persistent bitmap comes back
//     inconsistent and the raw disk has none, so both are compared with
//     the replica by block hashes;
//   - QEMU quit cleanly: the qcow2 v3 disk's persistent bitmap says what
//     changed (a bitmap resync), the raw disk is compared by hashes.
//
// Each time the disks are written while no QEMU runs, and the guest keeps
// writing while the resync runs; afterwards the replica's newest point
// must equal the source, and each resync must have sent at most what
// changed, rounded up to the hash block, plus what the live writes
// touched.
func TestResyncPaths(t *testing.T) {
	harness.Need(t, "qemu-system-x86_64", "qemu-img", "qemu-io")
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	dir := harness.TempDir(t)
	bin := buildQCDP(ctx, t, dir)

	rs := newReplica(ctx, t, bin, dir, "")
	replica := rs.start(ctx, t, "replica-1")
	vda, vdb := filepath.Join(dir, "vda.qcow2"), filepath.Join(dir, "vdb.raw")
	sizes := map[string]int64{vda: 64 << 20, vdb: 32 << 20}
	formats := map[string]string{vda: "qcow2", vdb: "raw"}
	for _, p := range []string{vda, vdb} {
		if err := harness.CreateImage(ctx, p, formats[p], sizes[p]); err != nil {
			t.Fatal(err)
		}
		if err := harness.FillPattern(ctx, p, formats[p], sizes[p], 1<<20, byte(len(p))); err != nil {
			t.Fatal(err)
		}
	}
	h := newHost(t, bin, dir, rs.HostKeys(), rs.GroupKeys()+"\nresync_read_rate = \"24M\"")
	host := h.start(ctx, t, "host-1")
	boot := func(n int) *harness.QEMU {
		qdir := filepath.Join(dir, fmt.Sprintf("qemu-%d", n))
		if err := os.MkdirAll(qdir, 0o755); err != nil {
			t.Fatal(err)
		}
		return harness.Start(ctx, t, harness.Options{
			Dir: qdir, Machine: "pc",
			Disks: []harness.Disk{{Name: "disk0", Path: vda, Format: "qcow2"}, {Name: "disk1", Path: vdb, Format: "raw"}},
			Extra: []string{
				"-m", "64",
				"-qmp", "unix:" + h.QMPSocket() + ",server=on,wait=off",
				"-device", "virtio-blk-pci,drive=disk0,id=vda,share-rw=on",
				"-device", "virtio-blk-pci,drive=disk1,id=vdb,share-rw=on",
			},
		})
	}
	q := boot(1)
	defer func() {
		if t.Failed() {
			t.Logf("%s\n%s\n%s", q.Report(), host.Report(), replica.Report())
		}
	}()
	fa := filter.FilterNode("vm1.vda")
	waitDisks(ctx, t, bin, h.Control, 2, filter.Syncing, host)
	// The replica held nothing of the disks: a full copy, no resync.
	if st, err := qcdpStatus(ctx, bin, h.Control); err != nil {
		t.Fatal(err)
	} else {
		for _, ds := range st.Groups[0].Disks {
			if ds.Resync != nil {
				t.Errorf("disk %s: the first attach made a %s resync, want a full copy (the replica held nothing)", ds.Stream, ds.Resync.Mode)
			}
		}
	}
	for i := range 8 {
		if err := q.QemuIO(ctx, fa, fmt.Sprintf("write -P 0x%02x %d 8192", 0x10+i, int64(i)<<22)); err != nil {
			t.Fatal(err)
		}
	}
	waitReplicated(ctx, t, bin, h.Control, host)

	// offline writes 16 blocks of 64 KiB on each disk while no QEMU runs:
	// 1 MiB of each.
	offline := func(round int) int64 {
		for _, p := range []string{vda, vdb} {
			var cmds []string
			for i := range 16 {
				off := (int64(i)*5 + int64(round)) % (sizes[p] >> 16) << 16
				cmds = append(cmds, fmt.Sprintf("write -P 0x%02x %d 65536", 0x40+round*16+i, off))
			}
			if err := harness.QemuIO(ctx, p, formats[p], cmds...); err != nil {
				t.Fatalf("offline write to %s: %v", p, err)
			}
		}
		return 16 << 16
	}
	// live writes a few small writes per disk while the resync runs; they
	// dirty at most 4 hash blocks of each disk.
	live := func(q *harness.QEMU, round int) (stop func()) {
		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				case <-time.After(20 * time.Millisecond):
				}
				// Through the devices, as the guest writes: the capture
				// filter sits between them and the disks once the job runs.
				for _, node := range []string{"-d /machine/peripheral/vda/virtio-backend", "-d /machine/peripheral/vdb/virtio-backend"} {
					off := int64(i%4)<<20 + 4096
					if err := q.QemuIO(ctx, node, fmt.Sprintf("write -P 0x%02x %d 4096", 0xa0+round, off)); err != nil &&
						!strings.Contains(err.Error(), "closed") {
						t.Errorf("live write: %v", err)
						return
					}
				}
			}
		}()
		return func() { close(done); wg.Wait() }
	}
	check := func(round int, changed int64, want map[string]string) {
		t.Helper()
		st, err := qcdpStatus(ctx, bin, h.Control)
		if err != nil {
			t.Fatal(err)
		}
		for _, ds := range st.Groups[0].Disks {
			r := ds.Resync
			if r == nil || !r.Done {
				t.Errorf("round %d, disk %s: resync %+v, want one done", round, ds.Stream, r)
				continue
			}
			t.Logf("round %d, disk %s: %s resync compared %d, sent %d of %d bytes, %d bytes of hashes",
				round, ds.Stream, r.Mode, r.Compared, r.Sent, r.Total, r.HashBytes)
			if r.Mode != want[ds.Target] {
				t.Errorf("round %d, disk %s: a %s resync, want %s", round, ds.Stream, r.Mode, want[ds.Target])
			}
			// What changed, plus the 4 blocks the live writes touch.
			// After a daemon kill the one before may have sent all of it.
			if bound := changed + 4*filter.HashBlock; r.Sent == 0 && round != 3 || r.Sent > bound {
				t.Errorf("round %d, disk %s: resync sent %d bytes; %d changed (bound %d)", round, ds.Stream, r.Sent, changed, bound)
			}
			if r.Mode == "hash" && r.HashBytes*1000 > r.Total {
				t.Errorf("round %d, disk %s: %d bytes of hashes for a disk of %d: over 0.1%%", round, ds.Stream, r.HashBytes, r.Total)
			}
		}
	}
	// The resyncs in the text status and the metrics.
	shown := func(round int) {
		t.Helper()
		text := string(run(ctx, t, bin, "status", "--socket", h.Control))
		metrics := string(run(ctx, t, bin, "status", "--socket", h.Control, "--metrics"))
		for _, want := range []string{"hash resync: ", " compared of ", "of hashes"} {
			if !strings.Contains(text, want) {
				t.Errorf("round %d: qcdp status lacks %q:\n%s", round, want, text)
			}
		}
		for _, want := range []string{`qcdp_resync_done{group="g1",vm="vm1",disk="vdb",mode="hash"} 1`,
			`qcdp_resync_hash_bytes{group="g1",vm="vm1",disk="vdb",mode="hash"} 8192`,
			`qcdp_resync_total_bytes{group="g1",vm="vm1",disk="vda",mode="hash"} 67108864`,
			`qcdp_resync_eta_seconds{group="g1",vm="vm1",disk="vda",mode="hash"} 0`, "qcdp_resync_rate_bytes_per_second{"} {
			if !strings.Contains(metrics, want) {
				t.Errorf("round %d: the metrics lack %q:\n%s", round, want, metrics)
			}
		}
	}
	compare := func(round int) {
		t.Helper()
		waitReplicated(ctx, t, bin, h.Control, host)
		var pts pointsJSON
		if err := json.Unmarshal(run(ctx, t, bin, "points", "--socket", rs.Control, "--json", "g1"), &pts); err != nil {
			t.Fatal(err)
		}
		for _, d := range []struct{ stream, path string }{{"vm1.vda", vda}, {"vm1.vdb", vdb}} {
			out := filepath.Join(dir, fmt.Sprintf("round%d-%s.raw", round, d.stream))
			run(ctx, t, bin, "restore", "--socket", rs.Control, "--seq", fmt.Sprint(pts.Window.LastSeq), "--disk", d.stream,
				"--format", "raw", "--out", out, "g1")
			if b, err := exec.CommandContext(ctx, "qemu-img", "compare", "-U", "-f", formats[d.path], "-F", "raw", d.path, out).CombinedOutput(); err != nil {
				t.Errorf("round %d: the replica's newest point of %s differs from the source: %v\n%s", round, d.stream, err, b)
			}
		}
	}

	// until polls the host's status until done says so.
	until := func(what string, every time.Duration, done func(hostStatus) bool) {
		t.Helper()
		for {
			st, err := qcdpStatus(ctx, bin, h.Control)
			if err == nil && len(st.Groups) == 1 && done(st) {
				return
			}
			select {
			case <-ctx.Done():
				t.Fatalf("%s never came: %+v %v\n%s", what, st, err, host.Report())
			case <-time.After(every):
			}
		}
	}
	// waitResynced waits until both disks' resyncs begun after since are done.
	waitResynced := func(since time.Time) {
		t.Helper()
		until("both resyncs done", 200*time.Millisecond, func(st hostStatus) bool {
			n := 0
			for _, ds := range st.Groups[0].Disks {
				if r := ds.Resync; r != nil && r.Done && r.Started.After(since) && ds.State == string(filter.Syncing) {
					n++
				}
			}
			return n == 2
		})
	}
	// midResync waits until a disk's hash resync begun after since is
	// under way.
	midResync := func(since time.Time) {
		t.Helper()
		until("a resync under way", 20*time.Millisecond, func(st hostStatus) bool {
			for _, ds := range st.Groups[0].Disks {
				if r := ds.Resync; r != nil && !r.Done && r.Started.After(since) && r.Compared > 0 {
					return true
				}
			}
			return false
		})
	}

	// killQEMU ends QEMU with SIGKILL: no image is closed cleanly.
	killQEMU := func() {
		q.Proc.Kill()
		<-q.Proc.Exited()
		q.Close()
	}

	// Round 1: QEMU killed.
	killQEMU()
	changed := offline(1)
	since := time.Now()
	q = boot(2)
	stop := live(q, 1)
	waitResynced(since)
	stop()
	check(1, changed, map[string]string{"vda": "hash", "vdb": "hash"})
	shown(1)
	compare(1)

	// Round 2: QEMU quit cleanly: the qcow2 disk's bitmap is stored.
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	changed = offline(2)
	since = time.Now()
	q = boot(3)
	stop = live(q, 2)
	waitResynced(since)
	stop()
	check(2, changed, map[string]string{"vda": "bitmap", "vdb": "hash"})
	compare(2)

	// Round 3: QEMU killed, then the host daemon killed in the middle of
	// the hash resyncs: the next daemon adopts the jobs and compares again.
	killQEMU()
	changed = offline(3)
	since = time.Now()
	q = boot(4)
	stop = live(q, 3)
	midResync(since)
	host.Kill()
	since = time.Now()
	host = h.start(ctx, t, "host-2")
	waitResynced(since)
	stop()
	check(3, changed, map[string]string{"vda": "hash", "vdb": "hash"})
	compare(3)

	// Round 4: QEMU killed, then the replica killed in the middle of the
	// hash resyncs (the link cut): they go on once it is back.
	killQEMU()
	changed = offline(4)
	since = time.Now()
	q = boot(5)
	stop = live(q, 4)
	midResync(since)
	replica.Kill()
	time.Sleep(2 * time.Second)
	replica = rs.start(ctx, t, "replica-2")
	waitResynced(since)
	stop()
	check(4, changed, map[string]string{"vda": "hash", "vdb": "hash"})
	compare(4)
}
