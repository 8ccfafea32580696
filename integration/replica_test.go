package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/filter"
	"github.com/qcdp/qcdp/integration/guest"
	"github.com/qcdp/qcdp/integration/guest/workload"
	"github.com/qcdp/qcdp/integration/harness"
)

// freePort returns a loopback TCP port nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// run runs the qcdp binary and fails the test with its output on error.
func run(ctx context.Context, t *testing.T, bin string, args ...string) []byte {
	t.Helper()
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("qcdp %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

type pointJSON struct {
	Seq  uint64    `json:"seq"`
	Time time.Time `json:"time"`
	Kind string    `json:"kind"` // sync-complete, user-bookmark, ...; none for a plain point
	Name string    `json:"name"`
}

type pointsJSON struct {
	Window struct {
		FirstSeq uint64 `json:"first_seq"`
		LastSeq  uint64 `json:"last_seq"`
		Gaps     []struct {
			FromSeq uint64 `json:"from_seq"`
			ToSeq   uint64 `json:"to_seq"`
		} `json:"gaps"`
	} `json:"window"`
	Points []pointJSON `json:"points"`
}

// TestGuestToReplica runs the whole protection path with real processes: a
// Linux guest's verifiable workload on two disks, `qcdp host` capturing it,
// `qcdp replica` receiving it over mutual TLS into a journal. Both daemons
// are killed with SIGKILL at moments in the middle and restarted. Then, for
// restore points picked at random across the window and for bookmarks, the
// exported views of both disks must be one real state of the guest (every
// block self-consistent, both disks at the same instant), contain every
// write the guest had fsync'd before the point, and move forward with the
// points; at the quiesce point the replica equals the source. A flipped bit
// in the journal is then found by `qcdp verify`.
func TestGuestToReplica(t *testing.T) {
	harness.Need(t, "qemu-system-x86_64", "qemu-img", "nbdcopy")
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	art, err := guest.Build(ctx, "")
	if err != nil {
		t.Fatalf("build the test guest: %v", err)
	}
	dir := harness.TempDir(t)
	bin := buildQCDP(ctx, t, dir)

	rs := newReplica(ctx, t, bin, dir, "\n[defaults]\nwindow = \"24h\"\n")
	rctl := rs.Control
	startReplica := func(name string) *harness.Proc { return rs.start(ctx, t, name) }

	images := []guest.Disk{
		{Path: filepath.Join(dir, "vda.qcow2"), Format: "qcow2", NodeName: "vda"},
		{Path: filepath.Join(dir, "vdb.raw"), Format: "raw", NodeName: "vdb"},
	}
	for _, d := range images {
		if err := harness.CreateImage(ctx, d.Path, d.Format, 4<<20); err != nil {
			t.Fatal(err)
		}
	}
	h := newHost(t, bin, dir, rs.HostKeys(), rs.GroupKeys())
	hctl := h.Control
	startHost := func(name string) *harness.Proc { return h.start(ctx, t, name) }

	replica := startReplica("replica-1")
	host := startHost("host-1")
	params := workload.Params{Seed: 11, Blocks: 512, Disks: 2, SyncEvery: 10, Rate: 200, Hold: true}
	vm := guest.Boot(ctx, t, art, guest.Options{
		Workload: &params, Disks: images, Dir: filepath.Join(dir, "guest"),
		QMPSocket: h.QMPSocket(),
	})
	defer func() {
		if t.Failed() {
			t.Logf("%s\n%s\n%s", vm.Report(), host.Report(), replica.Report())
		}
	}()
	if _, err := vm.Serial.Wait(ctx, guest.Ready, 0); err != nil {
		t.Fatalf("guest: %v", err)
	}
	waitDisks(ctx, t, bin, hctl, 2, filter.Syncing, host)
	synced := func(min uint64) uint64 {
		t.Helper()
		ev, err := vm.Serial.Wait(ctx, guest.Synced, min)
		if err != nil {
			t.Fatalf("guest at seq ≥ %d: %v", min, err)
		}
		return ev.Seq
	}
	s := synced(60)
	run(ctx, t, bin, "bookmark", "--socket", hctl, "g1", "bm1")
	s = synced(s + 100)
	replica.Kill()
	s = synced(s + 100)
	replica = startReplica("replica-2")
	s = synced(s + 100)
	host.Kill()
	s = synced(s + 100)
	host = startHost("host-2")
	waitDisks(ctx, t, bin, hctl, 2, filter.Syncing, host)
	s = synced(s + 100)
	run(ctx, t, bin, "bookmark", "--socket", hctl, "g1", "bm2")
	s = synced(s + 60)

	if err := vm.Send("stop"); err != nil {
		t.Fatal(err)
	}
	done, err := vm.Serial.Wait(ctx, guest.Done, s)
	if err != nil {
		t.Fatalf("guest: %v", err)
	}
	if done.MaxWrite > time.Second {
		t.Errorf("a guest write was held %v (invariant 1)", done.MaxWrite)
	}
	// The replica catches up: everything the host sequenced is durable there.
	waitReplicated(ctx, t, bin, hctl, host)
	metrics := string(run(ctx, t, bin, "status", "--socket", hctl, "--metrics"))
	for _, want := range []string{`qcdp_rpo_seconds{group="g1"} 0` + "\n", `qcdp_replica_connected{group="g1"} 1`,
		`qcdp_disk_state{group="g1",vm="vm1",disk="vda-dev",state="syncing"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics after the replica caught up lack %q:\n%s", want, metrics)
		}
	}

	var pts pointsJSON
	if err := json.Unmarshal(run(ctx, t, bin, "points", "--socket", rctl, "--json", "g1"), &pts); err != nil {
		t.Fatal(err)
	}
	w := pts.Window
	if w.LastSeq == 0 || w.FirstSeq == 0 {
		t.Fatalf("no restore window on the replica: %+v", pts)
	}
	t.Logf("window seq %d..%d, %d gaps, %d named points", w.FirstSeq, w.LastSeq, len(w.Gaps), len(pts.Points))
	inGap := func(seq uint64) bool {
		for _, g := range w.Gaps {
			if seq >= g.FromSeq && seq <= g.ToSeq {
				return true
			}
		}
		return false
	}
	// Targets: random boundaries across the window, both bookmarks, the end.
	type tgt struct {
		flag, value string
	}
	targets := []tgt{{"--bookmark", "bm1"}, {"--bookmark", "bm2"}, {"--seq", fmt.Sprint(w.LastSeq)}}
	rng := rand.New(rand.NewPCG(3, 5))
	for len(targets) < 11 {
		seq := w.FirstSeq + rng.Uint64N(w.LastSeq-w.FirstSeq+1)
		if !inGap(seq) {
			targets = append(targets, tgt{"--seq", fmt.Sprint(seq)})
		}
	}
	hist, err := workload.Replay(params, done.Seq)
	if err != nil {
		t.Fatal(err)
	}
	events := vm.Serial.Events()
	type located struct {
		seq       uint64 // stream seq of the point
		lo, hi    uint64 // the guest's write seqs the views can be
		syncedMin uint64
	}
	var got []located
	for i, tg := range targets {
		var e struct {
			ID    string            `json:"id"`
			Point pointJSON         `json:"point"`
			URIs  map[string]string `json:"uris"`
		}
		if err := json.Unmarshal(run(ctx, t, bin, "export", "--socket", rctl, "--json", tg.flag, tg.value, "g1"), &e); err != nil {
			t.Fatal(err)
		}
		var files []string
		var streams []string
		for s := range e.URIs {
			streams = append(streams, s)
		}
		sort.Strings(streams) // vm1.vda-dev, vm1.vdb-dev: the guest's disk order
		for _, s := range streams {
			f := filepath.Join(dir, fmt.Sprintf("view-%d-%s.raw", i, s))
			if out, err := exec.CommandContext(ctx, "nbdcopy", e.URIs[s], f).CombinedOutput(); err != nil {
				t.Fatalf("nbdcopy %s: %v\n%s", e.URIs[s], err, out)
			}
			files = append(files, f)
		}
		if i == 0 {
			if list := string(run(ctx, t, bin, "exports", "--socket", rctl)); !strings.Contains(list, e.ID) {
				t.Errorf("qcdp exports does not list %s:\n%s", e.ID, list)
			}
		}
		run(ctx, t, bin, "unexport", "--socket", rctl, e.ID)
		fs := openAll(t, files)
		readers := make([]io.ReaderAt, len(fs))
		for i, f := range fs {
			readers[i] = f
		}
		rg, err := hist.Locate(readers)
		closeAll(fs)
		lo, hi := rg.Lo, rg.Hi
		if err != nil {
			t.Errorf("%s %s (seq %d): the views are not one state of the guest: %v", tg.flag, tg.value, e.Point.Seq, err)
			continue
		}
		// Every write the guest had fsync'd before the point is in it.
		var syncedMin uint64
		for _, ev := range events {
			if ev.Kind == guest.Synced && ev.At.Before(e.Point.Time) && ev.Seq > syncedMin {
				syncedMin = ev.Seq
			}
		}
		if hi < syncedMin {
			t.Errorf("%s %s (seq %d, %s): views hold guest seq %d..%d, but seq %d was fsync'd before the point",
				tg.flag, tg.value, e.Point.Seq, e.Point.Time.Format(time.RFC3339Nano), lo, hi, syncedMin)
		}
		got = append(got, located{e.Point.Seq, lo, hi, syncedMin})
		if tg.value == fmt.Sprint(w.LastSeq) {
			for j, d := range images {
				out, err := exec.CommandContext(ctx, "qemu-img", "compare", "-U", "-f", d.Format, "-F", "raw", d.Path, files[j]).CombinedOutput()
				if err != nil {
					t.Errorf("disk %s: the replica's last point differs from the source at the quiesce point: %v\n%s", d.NodeName, err, out)
				}
			}
		}
	}
	sort.Slice(got, func(i, j int) bool { return got[i].seq < got[j].seq })
	for i := 1; i < len(got); i++ {
		if got[i].hi < got[i-1].lo {
			t.Errorf("restore point seq %d (guest %d..%d) is older than seq %d (guest %d..%d)",
				got[i].seq, got[i].lo, got[i].hi, got[i-1].seq, got[i-1].lo, got[i-1].hi)
		}
	}

	// qcdp restore materializes the last point as raw and as qcow2.
	for _, format := range []string{"raw", "qcow2"} {
		dst := filepath.Join(dir, "restored-vda."+format)
		run(ctx, t, bin, "restore", "--socket", rctl, "--seq", fmt.Sprint(w.LastSeq), "--disk", "vm1.vda-dev",
			"--format", format, "--out", dst, "g1")
		out, err := exec.CommandContext(ctx, "qemu-img", "compare", "-U", "-f", "qcow2", "-F", format, images[0].Path, dst).CombinedOutput()
		if err != nil {
			t.Errorf("qcdp restore --format %s differs from the source at the quiesce point: %v\n%s", format, err, out)
		}
	}
	if out, err := exec.CommandContext(ctx, bin, "restore", "--socket", rctl, "--seq", fmt.Sprint(w.LastSeq), "--disk", "vm1.vda-dev",
		"--out", filepath.Join(dir, "restored-vda.raw"), "g1").CombinedOutput(); err == nil {
		t.Errorf("qcdp restore overwrote an existing file: %s", out)
	}

	// A flipped bit in the journal is found and named, never served.
	if err := replica.Stop(10 * time.Second); err != nil {
		t.Fatalf("qcdp replica: %v", err)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "journals", "acme", "g1", "*.seg"))
	if len(segs) == 0 {
		entries, _ := os.ReadDir(filepath.Join(dir, "journals", "acme", "g1"))
		t.Fatalf("no journal segment to corrupt: %v", entries)
	}
	flipBit(t, segs[0], 4096+17)
	replica = startReplica("replica-3")
	out, err := exec.CommandContext(ctx, bin, "verify", "--socket", rctl, "g1").CombinedOutput()
	if err == nil {
		t.Errorf("qcdp verify passed a journal with a flipped bit:\n%s", out)
	} else if !strings.Contains(string(out), filepath.Base(segs[0])) {
		t.Errorf("qcdp verify did not name the corrupt segment %s:\n%s", segs[0], out)
	}
}

// waitReplicated waits until the host's sender reports every sequenced
// record acknowledged by the replica.
func waitReplicated(ctx context.Context, t *testing.T, bin, sock string, daemon *harness.Proc) {
	t.Helper()
	var last []byte
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		out, err := exec.CommandContext(ctx, bin, "status", "--json", "--socket", sock).Output()
		if err == nil {
			last = out
			var st struct {
				Groups []struct {
					LastSeq uint64 `json:"last_seq"`
					Replica *struct {
						LastAcked uint64 `json:"last_acked"`
					} `json:"replica"`
				} `json:"groups"`
			}
			if json.Unmarshal(out, &st) == nil && len(st.Groups) == 1 && st.Groups[0].Replica != nil &&
				st.Groups[0].Replica.LastAcked == st.Groups[0].LastSeq && st.Groups[0].LastSeq > 0 {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the replica never caught up: %s\n%s", last, daemon.Report())
		case <-time.After(wait):
		}
	}
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

func openAll(t *testing.T, paths []string) []*os.File {
	t.Helper()
	var fs []*os.File
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		fs = append(fs, f)
	}
	return fs
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// flipBit flips one bit of the file at off (or of its last byte).
func flipBit(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	if off >= st.Size() {
		off = st.Size() / 2
	}
	b := make([]byte, 1)
	f.ReadAt(b, off)
	b[0] ^= 0x10
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}
