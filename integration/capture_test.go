package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/integration/harness"
	"github.com/qcdp/qcdp/nbd"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/shipper"
	"github.com/qcdp/qcdp/shipper/spool"
)

// capture is qcdp's capture side in the test process: one spool, one
// sequencer, one capture export per disk, our NBD server on a unix socket.
type capture struct {
	sock, spoolDir, logPath string
	sp                      *spool.Spool
	seq                     *shipper.Sequencer
	srv                     *nbd.Server
	served                  chan error
	logf                    *os.File
	stopped                 bool
}

// startCapture serves capture exports for disks (name → size) of group.
func startCapture(ctx context.Context, t *testing.T, dir, group string, disks map[string]int64) *capture {
	t.Helper()
	c := &capture{
		sock:     filepath.Join(dir, "capture.sock"),
		spoolDir: filepath.Join(dir, "spool"),
		logPath:  filepath.Join(dir, "capture-server.log"),
		served:   make(chan error, 1),
	}
	var err error
	if c.logf, err = os.Create(c.logPath); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(c.logf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	c.sp, err = spool.Open(ctx, spool.Options{Dir: c.spoolDir, Group: group, Logger: log})
	if err != nil {
		t.Fatalf("open spool %s: %v", c.spoolDir, err)
	}
	c.seq = shipper.NewSequencer(c.sp)
	var cat nbd.Exports
	for name, size := range disks {
		e, err := c.seq.Export(name, size)
		if err != nil {
			t.Fatalf("capture export %s: %v", name, err)
		}
		cat.Add(name, e)
	}
	ln, err := net.Listen("unix", c.sock)
	if err != nil {
		t.Fatal(err)
	}
	c.srv = nbd.NewServer(&cat, nbd.Options{Logger: log})
	go func() { c.served <- c.srv.Serve(ln) }()
	t.Cleanup(func() {
		if err := c.stop(); err != nil {
			t.Errorf("stop capture: %v", err)
		}
		if t.Failed() {
			b, _ := os.ReadFile(c.logPath)
			t.Logf("--- capture server log %s (spool %s):\n%s", c.logPath, c.spoolDir, tailLines(string(b), 40))
		}
	})
	return c
}

// stop shuts the server down and closes the spool; the spool stays on disk.
func (c *capture) stop() error {
	if c.stopped {
		return nil
	}
	c.stopped = true
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var errs []error
	if err := c.srv.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("nbd shutdown: %w", err))
	}
	if err := <-c.served; err != nil && !errors.Is(err, nbd.ErrServerClosed) {
		errs = append(errs, fmt.Errorf("nbd serve: %w", err))
	}
	if err := c.sp.Sync(ctx); err != nil {
		errs = append(errs, fmt.Errorf("spool sync: %w", err))
	}
	if err := c.sp.Close(); err != nil {
		errs = append(errs, fmt.Errorf("spool close: %w", err))
	}
	c.logf.Close()
	return errors.Join(errs...)
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// wantRecord is the record a qemu-io write on disk must become, or, with
// kind record.Marker, a sync-complete marker of disk.
type wantRecord struct {
	disk    string
	kind    record.Kind
	off     uint64
	length  uint64
	pattern byte
}

func (w wantRecord) String() string {
	if w.kind == record.Marker {
		return fmt.Sprintf("marker sync-complete %q", w.disk)
	}
	return fmt.Sprintf("%s %s [%d,+%d) 0x%02x", w.disk, w.kind, w.off, w.length, w.pattern)
}

// markSyncComplete appends the sync-complete marker of disk, as the filter
// will at BLOCK_JOB_READY, and returns the record to expect for it.
func (c *capture) markSyncComplete(t *testing.T, disk string) (uint64, wantRecord) {
	t.Helper()
	seq, err := c.seq.MarkDisk(record.SyncComplete, disk)
	if err != nil {
		t.Fatal(err)
	}
	return seq, wantRecord{disk: disk, kind: record.Marker}
}

// expect parses "write -P 0xNN OFF LEN" or "write -z OFF LEN".
func expect(t *testing.T, disk, cmd string) wantRecord {
	t.Helper()
	f := strings.Fields(cmd)
	num := func(s string) uint64 {
		v, err := strconv.ParseUint(s, 0, 64)
		if err != nil {
			t.Fatalf("bad number in %q: %v", cmd, err)
		}
		return v
	}
	switch {
	case len(f) == 5 && f[0] == "write" && f[1] == "-P":
		return wantRecord{disk, record.Data, num(f[3]), num(f[4]), byte(num(f[2]))}
	case len(f) == 4 && f[0] == "write" && f[1] == "-z":
		return wantRecord{disk, record.Zero, num(f[2]), num(f[3]), 0}
	}
	t.Fatalf("cannot predict the record of %q", cmd)
	return wantRecord{}
}

// checkRecords reads the spool's records after seq base and requires
// exactly want, in that order, with consecutive seqs.
func checkRecords(t *testing.T, sp *spool.Spool, base uint64, want []wantRecord) {
	t.Helper()
	cur := sp.Cursor(base + 1)
	defer cur.Close()
	var got []string
	next := base + 1
	i := 0
	for {
		r, err := cur.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("spool cursor after seq %d: %v", next-1, err)
		}
		if r.Seq != next {
			t.Errorf("record seq %d, want %d: a seq is missing", r.Seq, next)
		}
		next = r.Seq + 1
		desc := fmt.Sprintf("seq %d: %s %s [%d,+%d)", r.Seq, r.Disk, r.Kind, r.Offset, r.Length)
		if r.Kind == record.Marker {
			desc = fmt.Sprintf("seq %d: marker %s %q", r.Seq, r.Marker, r.Disk)
		}
		got = append(got, desc)
		if i >= len(want) {
			t.Errorf("unexpected record after the expected ones: %s", desc)
			continue
		}
		w := want[i]
		i++
		if w.kind == record.Marker || r.Kind == record.Marker {
			if r.Kind != w.kind || r.Marker != record.SyncComplete || r.Disk != w.disk {
				t.Errorf("%s, want %v", desc, w)
			}
			continue
		}
		if r.Disk != w.disk || r.Kind != w.kind || r.Offset != w.off || r.Length != w.length {
			t.Errorf("seq %d is %s %s [%d,+%d), want %v", r.Seq, r.Disk, r.Kind, r.Offset, r.Length, w)
			continue
		}
		if w.kind == record.Data && !bytes.Equal(r.Payload, bytes.Repeat([]byte{w.pattern}, int(w.length))) {
			t.Errorf("seq %d (%v): payload is not the pattern", r.Seq, w)
		}
	}
	if i < len(want) {
		t.Errorf("spool has %d of the %d records expected after seq %d; missing from %v on", i, len(want), base, want[i])
	}
	if t.Failed() {
		t.Logf("records after seq %d:\n%s", base, strings.Join(got, "\n"))
	}
}

// applyAndCompare replays the spool onto fresh raw images and compares
// each with its source.
func applyAndCompare(ctx context.Context, t *testing.T, dir, spoolDir string, sources map[string]string) {
	t.Helper()
	targets := map[string]string{}
	for disk := range sources {
		targets[disk] = filepath.Join(dir, "applied-"+disk+".raw")
	}
	sum, err := spool.Apply(ctx, spoolDir, targets, spool.ApplyOptions{})
	if err != nil {
		t.Fatalf("spool apply %s: %v", spoolDir, err)
	}
	t.Logf("applied seq %d..%d: %d records", sum.FirstSeq, sum.LastSeq, sum.Records)
	for disk, src := range sources {
		info, err := harness.ReadImageInfo(ctx, targets[disk])
		if err != nil {
			t.Fatal(err)
		}
		if info.VirtualSize != diskSize {
			t.Errorf("applied %s is %d bytes, want %d", disk, info.VirtualSize, diskSize)
		}
		if err := harness.Compare(ctx, src, "qcow2", targets[disk], "raw"); err != nil {
			t.Errorf("%s: %v", disk, err)
		}
	}
}

// TestCaptureOneDisk is the acceptance story for one disk: a write-blocking
// mirror into a capture export, writes during the initial copy and after
// READY, cancel; the spool applied onto a fresh image equals the source,
// and the records after READY are exactly the writes, in order.
func TestCaptureOneDisk(t *testing.T) {
	harness.Need(t, "qemu-system-x86_64", "qemu-img", "qemu-io")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := harness.TempDir(t)
	src := newSource(ctx, t, dir, "disk0", 0x10)
	capt := startCapture(ctx, t, dir, "g1", map[string]int64{"disk0": diskSize})

	q := harness.Start(ctx, t, harness.Options{Dir: dir, Disks: []harness.Disk{{Name: "disk0", Path: src, Format: "qcow2"}}})
	m, err := harness.StartMirror(ctx, q, "disk0", capt.sock, "disk0", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	writeDuringSync(ctx, t, q.QMP, m, beforeReady)
	if _, err := m.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	base := capt.sp.LastSeq()
	markSeq, mark := capt.markSyncComplete(t, "disk0")
	want := []wantRecord{mark}

	// The source as it is at READY, for the state at the marker.
	if err := q.Flush(ctx, m.Filter); err != nil {
		t.Fatal(err)
	}
	atReady := filepath.Join(dir, "disk0-at-ready.raw")
	if err := harness.Convert(ctx, src, "qcow2", atReady, "raw"); err != nil {
		t.Fatal(err)
	}

	for _, cmd := range afterReady {
		if err := m.Write(ctx, cmd); err != nil {
			t.Fatal(err)
		}
		want = append(want, expect(t, "disk0", cmd))
	}
	end, err := m.Detach(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("initial copy and %d writes before READY: seq 1..%d; job ended with %s", len(beforeReady), base, end.Name)
	checkRecords(t, capt.sp, base, want)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if err := capt.stop(); err != nil {
		t.Fatal(err)
	}
	applyAndCompare(ctx, t, dir, capt.spoolDir, map[string]string{"disk0": src})

	// The records up to the sync-complete marker rebuild the disk as it was
	// at READY: the first restore point the replica may offer.
	upToMark := filepath.Join(dir, "applied-to-marker.raw")
	if _, err := spool.Apply(ctx, capt.spoolDir, map[string]string{"disk0": upToMark}, spool.ApplyOptions{ToSeq: markSeq}); err != nil {
		t.Fatalf("spool apply up to seq %d: %v", markSeq, err)
	}
	if err := harness.Compare(ctx, atReady, "raw", upToMark, "raw"); err != nil {
		t.Errorf("state at the sync-complete marker (seq %d): %v", markSeq, err)
	}
}

// TestCaptureTwoDisksOneOrder is the acceptance story for a group of two
// disks: one sequencer, two capture exports on one server. After READY on
// both, writes alternate between the disks, and the spool must hold them in
// exactly that one order across both.
func TestCaptureTwoDisksOneOrder(t *testing.T) {
	harness.Need(t, "qemu-system-x86_64", "qemu-img", "qemu-io")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := harness.TempDir(t)
	srcA := newSource(ctx, t, dir, "diskA", 0x20)
	srcB := newSource(ctx, t, dir, "diskB", 0x60)
	capt := startCapture(ctx, t, dir, "g2", map[string]int64{"diskA": diskSize, "diskB": diskSize})

	q := harness.Start(ctx, t, harness.Options{Dir: dir, Disks: []harness.Disk{
		{Name: "diskA", Path: srcA, Format: "qcow2"},
		{Name: "diskB", Path: srcB, Format: "qcow2"},
	}})
	mA, err := harness.StartMirror(ctx, q, "diskA", capt.sock, "diskA", 0)
	if err != nil {
		t.Fatal(err)
	}
	mB, err := harness.StartMirror(ctx, q, "diskB", capt.sock, "diskB", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []*harness.Mirror{mA, mB} {
		if _, err := m.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// Both disks are READY: the markers come after both initial copies and
	// before the interleaved writes.
	base := capt.sp.LastSeq()
	var marks []wantRecord
	for _, m := range []*harness.Mirror{mA, mB} {
		_, w := capt.markSyncComplete(t, m.Disk)
		marks = append(marks, w)
	}
	want := marks
	sizes := []int64{4096, 512, 100, 65536, 1, 1 << 20}
	for i := range 12 {
		m := mA
		if i%2 == 1 {
			m = mB
		}
		size := sizes[(i/2)%len(sizes)]
		off := int64(i)*1234567%(diskSize-size) | 1 // odd offsets
		cmd := fmt.Sprintf("write -P 0x%02x %d %d", 0x80+i, off, size)
		if i == 8 || i == 9 {
			cmd = fmt.Sprintf("write -z %d %d", off, size)
		}
		if err := m.Write(ctx, cmd); err != nil {
			t.Fatal(err)
		}
		want = append(want, expect(t, m.Disk, cmd))
	}
	for _, m := range []*harness.Mirror{mA, mB} {
		if _, err := m.Detach(ctx); err != nil {
			t.Fatal(err)
		}
	}
	checkRecords(t, capt.sp, base, want)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if err := capt.stop(); err != nil {
		t.Fatal(err)
	}
	applyAndCompare(ctx, t, dir, capt.spoolDir, map[string]string{"diskA": srcA, "diskB": srcB})
}
