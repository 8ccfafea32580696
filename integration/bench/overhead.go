package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/qcdp/qcdp/filter"
	"github.com/qcdp/qcdp/integration/harness"
	"github.com/qcdp/qcdp/libnbd"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/shipper/spool"
)

// The overhead goals: protected throughput over unprotected.
const (
	goal4k = 0.75
	goal1m = 0.90
)

// runOverhead is the overhead suite (see the package comment).
func runOverhead(ctx context.Context, b *bench, out io.Writer) error {
	opts := b.opts
	// qemu-storage-daemon comes with qemu-system-x86 (qemu-system-common).
	if err := harness.Install(ctx, "qemu-img", "qemu-io", "qemu-system-x86_64", "nbdkit"); err != nil {
		return err
	}
	if _, err := exec.LookPath("qemu-storage-daemon"); err != nil {
		return fmt.Errorf("qemu-storage-daemon not found (Debian: apt-get install qemu-system-common): %w", err)
	}
	defer b.stopAll()

	aio, err := b.chooseAIO(ctx)
	if err != nil {
		return err
	}
	logf, err := os.Create(b.path("capture-lifecycle.log"))
	if err != nil {
		return fmt.Errorf("capture lifecycle log: %w", err)
	}
	b.stops = append(b.stops, logf.Close)
	log := slog.New(slog.NewTextHandler(logf, nil))

	base, err := b.startStorageDaemon(ctx, "qsd-unprotected", aio)
	if err != nil {
		return err
	}
	prot, err := b.startStorageDaemon(ctx, "qsd-protected", aio)
	if err != nil {
		return err
	}
	nullQ, err := b.startStorageDaemon(ctx, "qsd-mirror-null", aio)
	if err != nil {
		return err
	}
	cs, err := b.startCapture(ctx, "overhead", "capture.sock")
	if err != nil {
		return err
	}
	null, nullProc, err := b.startProc(ctx, "nbdkit-null", b.path("null.sock"),
		[]string{"nbdkit", "-f", "-U", b.path("null.sock"), "-e", "disk0", "null", fmt.Sprintf("size=%d", opts.size)})
	if err != nil {
		return err
	}
	if err := b.protect(ctx, prot, cs.sock, cs.g.Sequencer(), log); err != nil {
		return err
	}
	if err := b.protect(ctx, nullQ, null.sock, noMarks{}, log); err != nil {
		return err
	}

	unprotected := target{name: "unprotected", sock: base.NBDSocket}
	protected := target{name: "protected", sock: prot.NBDSocket}
	mirrorNull := target{name: "mirror->null", sock: nullQ.NBDSocket}
	targets := []target{unprotected, protected, mirrorNull}
	meters := map[target]*cpuMeter{
		unprotected: {qsdPID: base.PID(), targetPID: -1},
		protected:   {qsdPID: prot.PID(), targetPID: 0}, // the capture server runs in this process
		mirrorNull:  {qsdPID: nullQ.PID(), targetPID: nullProc.PID()},
	}

	// checked wraps one run: it writes back the page cache's dirty data
	// first, so no run pays for the one before, measures the CPU time the
	// run takes, and afterwards requires that the capture server received
	// exactly the run's bytes when the protected disk was written and none
	// otherwise.
	var captured int64 // bytes the protected runs wrote
	checked := func(bytes int64, f func(target) (result, error)) func(target) (result, error) {
		return func(t target) (result, error) {
			syscall.Sync()
			before := cs.g.ServerStats().BytesWritten
			m := meters[t]
			if err := m.begin(); err != nil {
				return result{}, err
			}
			r, err := f(t)
			if err != nil {
				return r, err
			}
			if err := m.end(&r.cpu); err != nil {
				return r, err
			}
			got := cs.g.ServerStats().BytesWritten - before
			want := int64(0)
			if t == protected {
				want = bytes
			}
			if got != want {
				return r, fmt.Errorf("the capture server received %d bytes while %s was written with %d: "+
					"the export does not write through the capture filter", got, t.name, bytes)
			}
			captured += got
			return r, nil
		}
	}

	fmt.Fprintf(out, "qcdp bench, overhead suite: %s, disk %d MiB raw, file aio=%s cache.direct=off, %d runs per cell (median), dir %s\n\n",
		runtimeLine(), opts.size>>20, aio, opts.runs, b.dir)

	small, err := b.medians(targets, checked(int64(opts.count4k)*4096, func(t target) (result, error) {
		return b.imgBench(ctx, t, 4096, opts.count4k)
	}))
	if err != nil {
		return err
	}
	large, err := b.medians(targets, checked(int64(opts.count1m)<<20, func(t target) (result, error) {
		return b.imgBench(ctx, t, 1<<20, opts.count1m)
	}))
	if err != nil {
		return err
	}
	sync1, err := b.medians(targets, checked(int64(opts.countLat)*4096, func(t target) (result, error) {
		return b.syncWrites(ctx, t, opts.countLat)
	}))
	if err != nil {
		return err
	}

	// The spool must hold what the capture server acknowledged: every
	// byte of every protected run, after the sync-complete marker.
	inSpool, err := spoolData(cs.g.Spool(), "disk0")
	if err != nil {
		return err
	}
	if inSpool != captured {
		return fmt.Errorf("the spool holds %d bytes of disk0 writes after sync-complete, the protected runs wrote %d", inSpool, captured)
	}

	met := true
	verdict := func(cells []float64, goal float64) string {
		switch {
		case cells[1] >= goal*cells[0]:
			return "met"
		case cells[2] < goal*cells[0]:
			met = false
			return "MISSED, and QEMU's mirror alone (mirror->null) misses it too"
		default:
			met = false
			return "MISSED"
		}
	}
	us := func(f func(result) time.Duration) func([]result) []float64 {
		return func(rs []result) []float64 { return lat(rs, 3, f) }
	}
	mean := us(func(r result) time.Duration { return r.meanLat })
	rows := []row{
		{what: "4 KiB writes, depth 16 (qemu-img bench)", unit: "writes/s", cells: ops(small, 3),
			goal: fmt.Sprintf("protected >= %.2f", goal4k), verdict: verdict(ops(small, 3), goal4k)},
		{what: "  mean latency (elapsed*16/count)", unit: "us", cells: mean(small)},
		{what: "1 MiB writes, depth 16 (qemu-img bench)", unit: "MB/s", cells: mbs(large, 3),
			goal: fmt.Sprintf("protected >= %.2f", goal1m), verdict: verdict(mbs(large, 3), goal1m)},
		{what: "  mean latency (elapsed*16/count)", unit: "us", cells: mean(large)},
		{what: "4 KiB writes, depth 1 (libnbd), p50", unit: "us", cells: us(func(r result) time.Duration { return r.p50 })(sync1)},
		{what: "4 KiB writes, depth 1 (libnbd), p99", unit: "us", cells: us(func(r result) time.Duration { return r.p99 })(sync1)},
		{what: "4 KiB writes, depth 1 (libnbd), mean", unit: "us", cells: mean(sync1)},
	}
	printTable(out, []string{"unprotected", "protected", "mirror->null"},
		[]ratio{{"prot/unprot", 1, 0}, {"null/unprot", 2, 0}}, rows)
	fmt.Fprintln(out)
	fmt.Fprintln(out, "Where the CPU goes: CPU time (user+system) per write of the median qemu-img bench runs above, by process.")
	var cpuRows []row
	for _, c := range []struct {
		size  string
		rs    []result
		count int
	}{{"4 KiB", small, opts.count4k}, {"1 MiB", large, opts.count1m}} {
		for i, t := range targets {
			u := c.rs[i].cpu
			per := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / float64(c.count) }
			tgt := per(u.target)
			if t == unprotected {
				tgt = -1
			}
			cpuRows = append(cpuRows, row{what: c.size + " writes, " + t.name, unit: "us/write",
				cells: []float64{per(u.client), per(u.qsd), tgt, per(u.client + u.qsd + u.target)}})
		}
	}
	printTable(out, []string{"qemu-img", "qsd", "target", "sum"}, nil, cpuRows)
	fmt.Fprintln(out, "(qsd includes its io_uring workers; target: the in-process qcdp capture server, spool included, or nbdkit null)")
	fmt.Fprintln(out)
	fmt.Fprintln(out, "unprotected: qemu-storage-daemon exporting a raw file over NBD; protected: the same with qcdp's capture")
	fmt.Fprintln(out, "(write-blocking mirror into the in-process capture server and spool); mirror->null: the same mirror into nbdkit null.")
	fmt.Fprintf(out, "Capture checked: the capture server and the spool hold all %d MB the protected runs wrote.\n", captured/1e6)
	if met {
		fmt.Fprintln(out, "All goals met.")
	} else {
		fmt.Fprintln(out, "Some goals missed (see MISSED).")
	}
	return nil
}

// chooseAIO returns the aio mode for the file nodes: -aio, or with "auto"
// io_uring when QEMU can open a file with it here, else threads.
func (b *bench) chooseAIO(ctx context.Context) (string, error) {
	if b.opts.aio != "auto" {
		return b.opts.aio, nil
	}
	probe := b.path("aio-probe.raw")
	if err := harness.CreateImage(ctx, probe, "raw", 1<<20); err != nil {
		return "", err
	}
	defer os.Remove(probe)
	out, err := exec.CommandContext(ctx, "qemu-io", "-f", "raw", "-i", "io_uring", "-c", "write 0 4096", probe).CombinedOutput()
	if err != nil || strings.Contains(string(out), "failed") {
		return "threads", nil
	}
	return "io_uring", nil
}

// startStorageDaemon starts qemu-storage-daemon on a new preallocated raw
// disk of opts.size bytes, exported as disk0.
func (b *bench) startStorageDaemon(ctx context.Context, name, aio string) (*harness.StorageDaemon, error) {
	disk := harness.Disk{Name: "disk0", Path: b.path(name + ".raw"), Format: "raw"}
	if err := harness.CreateImage(ctx, disk.Path, disk.Format, b.opts.size); err != nil {
		return nil, err
	}
	q, err := harness.LaunchStorageDaemon(ctx, harness.StorageDaemonOptions{Dir: b.dir, Name: name, Disk: disk, AIO: aio})
	if err != nil {
		return nil, err
	}
	b.stops = append(b.stops, q.Close)
	return q, nil
}

// noMarks is the Marker of a capture whose stream nobody keeps.
type noMarks struct{}

func (noMarks) MarkDisk(record.MarkerKind, string) (uint64, error) { return 0, nil }

// protect runs filter.Capture on q's disk0 into the NBD server on sock and
// waits until the mirror is READY. The bench's stop detaches it.
func (b *bench) protect(ctx context.Context, q *harness.StorageDaemon, sock string, marks filter.Marker, log *slog.Logger) error {
	c, err := filter.New(q.QMP, filter.Config{Disk: "disk0", Node: "disk0", Socket: sock, Logger: log.With("qsd", q.Name)}, marks)
	if err != nil {
		return err
	}
	runCtx, cancelRun := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	var runErr error
	go func() {
		runErr = c.Run(runCtx)
		close(done)
	}()
	b.stops = append(b.stops, func() error {
		dctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var err error
		select {
		case <-done:
		default:
			err = c.Detach(dctx)
		}
		cancelRun()
		<-done
		if errors.Is(runErr, context.Canceled) {
			runErr = nil
		}
		return errors.Join(err, runErr)
	})

	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	go func() {
		select {
		case <-done: // Run gave up: stop waiting for a state
			cancel()
		case <-wctx.Done():
		}
	}()
	st, err := c.WaitState(wctx, filter.Syncing, filter.Error)
	if err != nil {
		<-done
		if runErr != nil {
			return fmt.Errorf("protect %s: %w", q.Name, runErr)
		}
		return fmt.Errorf("protect %s: %w\n%s", q.Name, err, q.Report())
	}
	if st == filter.Error {
		_, why := c.State()
		return fmt.Errorf("protect %s: capture in state %s: %w\n%s", q.Name, st, why, q.Report())
	}
	return nil
}

// syncWrites writes count 4 KiB blocks one after the other with libnbd,
// each waiting for its reply, and times each.
func (b *bench) syncWrites(ctx context.Context, t target, count int) (result, error) {
	h, err := libnbd.New()
	if err != nil {
		return result{}, err
	}
	defer h.Close()
	if err := h.ConnectURI(ctx, t.uri()); err != nil {
		return result{}, fmt.Errorf("connect to %s: %w", t.uri(), err)
	}
	buf := make([]byte, 4096)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	lats := make([]time.Duration, count)
	blocks := uint64(b.opts.size / 4096)
	start := time.Now()
	for i := range count {
		t0 := time.Now()
		if err := h.Pwrite(ctx, buf, uint64(i)%blocks*4096, 0); err != nil {
			return result{}, fmt.Errorf("write %d of %d to %s: %w", i+1, count, t.uri(), err)
		}
		lats[i] = time.Since(t0)
	}
	elapsed := time.Since(start)
	slices.Sort(lats)
	return result{
		opsPerSec: float64(count) / elapsed.Seconds(),
		mbPerSec:  float64(count) * 4096 / elapsed.Seconds() / 1e6,
		meanLat:   elapsed / time.Duration(count),
		p50:       lats[count/2],
		p99:       lats[min(count-1, count*99/100)],
	}, nil
}

// spoolData returns the bytes of disk's Data records after its
// sync-complete marker, reading the spool from its start.
func spoolData(sp *spool.Spool, disk string) (int64, error) {
	cur := sp.Cursor(0)
	defer cur.Close()
	synced := false
	var n int64
	for {
		r, err := cur.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("read spool %s: %w", sp.Group(), err)
		}
		switch {
		case r.Kind == record.Marker && r.Marker == record.SyncComplete && r.Disk == disk:
			synced = true
		case r.Kind == record.Data && r.Disk == disk && synced:
			n += int64(r.Length)
		}
	}
	if !synced {
		return 0, fmt.Errorf("spool %s: no sync-complete marker of %s", sp.Group(), disk)
	}
	return n, nil
}
