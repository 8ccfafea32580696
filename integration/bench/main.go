// Command bench measures qcdp's capture export against qemu-nbd and nbdkit
// on this machine, in one run, and prints a table of ratios:
// `go run ./integration/bench`.
//
// Writes come from QEMU's own NBD client (qemu-img bench, 16 requests in
// flight as the mirror keeps) and from nbdcopy; reads from nbdcopy. All
// files, the spool included, live in one directory on one filesystem, and
// nothing is fsynced by either side (the NBD client sends no FLUSH), so the
// comparison is of the servers. Each cell is the median of -runs runs.
//
// Exit status: 0 when the measurements ran (goals missed are reported, not
// failed), 1 when a measurement could not run, 2 on a wrong command line.
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/qcdp/qcdp/integration/harness"
	"github.com/qcdp/qcdp/nbd"
	"github.com/qcdp/qcdp/shipper"
	"github.com/qcdp/qcdp/shipper/spool"
)

type options struct {
	dir       string
	size      int64 // export size
	count4k   int
	count1m   int
	runs      int
	keep      bool
	copyBytes int64
}

func main() {
	opts := options{}
	flag.StringVar(&opts.dir, "dir", "", "working directory on the filesystem to measure (default: a new one under $TMPDIR)")
	flag.Int64Var(&opts.size, "size", 256<<20, "export size in bytes")
	flag.IntVar(&opts.count4k, "count-4k", 40000, "4 KiB writes per qemu-img bench run")
	flag.IntVar(&opts.count1m, "count-1m", 400, "1 MiB writes per qemu-img bench run")
	flag.IntVar(&opts.runs, "runs", 3, "runs per cell; the median is reported")
	flag.BoolVar(&opts.keep, "keep", false, "keep the working directory")
	flag.Parse()
	if flag.NArg() != 0 || opts.runs < 1 || opts.size < 16<<20 {
		flag.Usage()
		os.Exit(2)
	}
	opts.copyBytes = opts.size
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, opts, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// target is one NBD server under test, serving export "disk0" on sock.
type target struct {
	name string
	sock string
}

func (t target) uri() string { return "nbd+unix:///disk0?socket=" + t.sock }

// result of one cell.
type result struct {
	opsPerSec, mbPerSec float64
}

func run(ctx context.Context, opts options, out io.Writer) (err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if err := harness.Install(ctx, "qemu-img", "qemu-nbd", "nbdkit", "nbdcopy"); err != nil {
		return err
	}
	dir := opts.dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "qcdp-bench-"); err != nil {
			return err
		}
	}
	defer func() {
		if !opts.keep {
			os.RemoveAll(dir)
		}
	}()
	b := &bench{opts: opts, dir: dir}
	defer b.stopAll()

	// A data file with no zero runs, so nbdcopy cannot skip any of it.
	data := filepath.Join(dir, "data.raw")
	if err := writeRandom(data, opts.size); err != nil {
		return err
	}

	ours, err := b.startCapture(ctx)
	if err != nil {
		return err
	}
	qnbd, err := b.startQemuNBD(ctx, "qemu-nbd-w", filepath.Join(dir, "qemu-nbd-target.raw"), false)
	if err != nil {
		return err
	}
	mem, err := b.startNbdkitMemory(ctx)
	if err != nil {
		return err
	}
	oursRO, err := b.startFileExport(ctx, data)
	if err != nil {
		return err
	}
	qnbdRO, err := b.startQemuNBD(ctx, "qemu-nbd-r", data, true)
	if err != nil {
		return err
	}

	fmt.Fprintf(out, "qcdp bench: %s, export %d MiB, %d runs per cell (median), dir %s\n\n", runtimeLine(), opts.size>>20, opts.runs, dir)
	type row struct {
		what, unit string
		cells      []float64 // ours, qemu-nbd, nbdkit memory (-1: not measured)
		goal       string
		goalOK     func(ours, base float64) bool
	}
	var rows []row

	img := func(size, count int) func(target) (result, error) {
		return func(t target) (result, error) { return b.imgBench(ctx, t, size, count) }
	}
	small, err := b.medians([]target{ours, qnbd, mem}, img(4096, opts.count4k))
	if err != nil {
		return err
	}
	rows = append(rows, row{"qemu-img bench, 4 KiB writes, depth 16", "writes/s", ops(small, 3), ">= 100000 writes/s",
		func(o, _ float64) bool { return o >= 100000 }})
	large, err := b.medians([]target{ours, qnbd, mem}, img(1<<20, opts.count1m))
	if err != nil {
		return err
	}
	rows = append(rows, row{"qemu-img bench, 1 MiB writes, depth 16", "MB/s", mbs(large, 3), "within 10% of qemu-nbd",
		func(o, base float64) bool { return o >= 0.9*base }})

	copyIn, err := b.medians([]target{ours, qnbd}, func(t target) (result, error) {
		return b.nbdcopy(ctx, data, t.uri(), opts.copyBytes)
	})
	if err != nil {
		return err
	}
	rows = append(rows, row{"nbdcopy file -> export", "MB/s", mbs(copyIn, 3), "within 10% of qemu-nbd",
		func(o, base float64) bool { return o >= 0.9*base }})

	sink := filepath.Join(dir, "sink.raw")
	copyOut, err := b.medians([]target{oursRO, qnbdRO}, func(t target) (result, error) {
		if err := freshFile(sink, opts.copyBytes); err != nil {
			return result{}, err
		}
		return b.nbdcopy(ctx, t.uri(), sink, opts.copyBytes)
	})
	if err != nil {
		return err
	}
	rows = append(rows, row{"nbdcopy export -> file (read-only export)", "MB/s", mbs(copyOut, 3), "within 10% of qemu-nbd",
		func(o, base float64) bool { return o >= 0.9*base }})

	fmt.Fprintf(out, "%-42s %-9s %12s %12s %12s %9s  %s\n", "measurement", "unit", "qcdp", "qemu-nbd", "nbdkit-mem", "qcdp/qnbd", "goal")
	allMet := true
	for _, r := range rows {
		ok := r.goalOK(r.cells[0], r.cells[1])
		allMet = allMet && ok
		verdict := "met"
		switch {
		case ok:
		case r.cells[2] >= 0 && !r.goalOK(r.cells[2], r.cells[1]):
			verdict = "MISSED, and above this machine's ceiling (nbdkit-mem)"
		default:
			verdict = "MISSED"
		}
		fmt.Fprintf(out, "%-42s %-9s %12s %12s %12s %9.2f  %s: %s\n", r.what, r.unit,
			num(r.cells[0]), num(r.cells[1]), num(r.cells[2]), r.cells[0]/r.cells[1], r.goal, verdict)
	}
	fmt.Fprintln(out)
	fmt.Fprintln(out, "qcdp: capture export with the spool on (every write appended to the spool before the reply); read-only rows: nbd.OpenFile.")
	fmt.Fprintln(out, "qemu-nbd: a raw file on the same filesystem; nbdkit-mem: nbdkit memory plugin, the ceiling of an NBD server here.")
	if allMet {
		fmt.Fprintln(out, "All goals met.")
	} else {
		fmt.Fprintln(out, "Some goals missed (see MISSED).")
	}
	return nil
}

func num(v float64) string {
	if v < 0 {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func runtimeLine() string {
	out, _ := exec.Command("qemu-img", "--version").Output()
	line, _, _ := strings.Cut(string(out), "\n")
	return fmt.Sprintf("%d CPUs, %s", runtime.NumCPU(), line)
}

type bench struct {
	opts  options
	dir   string
	stops []func() error
}

func (b *bench) stopAll() {
	for i := len(b.stops) - 1; i >= 0; i-- {
		b.stops[i]()
	}
}

// startCapture serves a capture export with its spool in the bench dir.
func (b *bench) startCapture(ctx context.Context) (target, error) {
	logf, err := os.Create(filepath.Join(b.dir, "capture-server.log"))
	if err != nil {
		return target{}, err
	}
	log := slog.New(slog.NewTextHandler(logf, nil))
	sp, err := spool.Open(ctx, spool.Options{Dir: filepath.Join(b.dir, "spool"), Group: "bench", Logger: log, MaxBytes: 64 << 30})
	if err != nil {
		logf.Close()
		return target{}, fmt.Errorf("open spool: %w", err)
	}
	seq := shipper.NewSequencer(sp)
	e, err := seq.Export("disk0", b.opts.size)
	if err != nil {
		sp.Close()
		logf.Close()
		return target{}, fmt.Errorf("capture export: %w", err)
	}
	var cat nbd.Exports
	cat.Add("disk0", e)
	t, err := b.serve("qcdp capture", "capture.sock", &cat, log)
	if err != nil {
		sp.Close()
		logf.Close()
		return target{}, err
	}
	b.stops = append(b.stops, func() error { sp.Close(); return logf.Close() })
	return t, nil
}

// startFileExport serves path read-only with nbd.OpenFile.
func (b *bench) startFileExport(ctx context.Context, path string) (target, error) {
	e, closer, err := nbd.OpenFile(path, true)
	if err != nil {
		return target{}, fmt.Errorf("open %s: %w", path, err)
	}
	var cat nbd.Exports
	cat.Add("disk0", e)
	t, err := b.serve("qcdp file (ro)", "file.sock", &cat, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		closer.Close()
		return target{}, err
	}
	b.stops = append(b.stops, closer.Close)
	return t, nil
}

// serve runs our NBD server in this process on a unix socket.
func (b *bench) serve(name, sockName string, cat nbd.Catalog, log *slog.Logger) (target, error) {
	sock := filepath.Join(b.dir, sockName)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return target{}, err
	}
	srv := nbd.NewServer(cat, nbd.Options{Logger: log})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	b.stops = append(b.stops, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := srv.Shutdown(ctx)
		<-served
		return err
	})
	return target{name: name, sock: sock}, nil
}

func (b *bench) startQemuNBD(ctx context.Context, name, file string, readOnly bool) (target, error) {
	if !readOnly {
		if err := harness.CreateImage(ctx, file, "raw", b.opts.size); err != nil {
			return target{}, err
		}
	}
	sock := filepath.Join(b.dir, name+".sock")
	// -e 16: several clients, so qemu-nbd advertises multi-conn as ours
	// does and nbdcopy opens as many connections to either.
	argv := []string{"qemu-nbd", "-k", sock, "-f", "raw", "-x", "disk0", "-t", "-e", "16"}
	if readOnly {
		argv = append(argv, "-r")
	}
	return b.startProc(ctx, name, sock, append(argv, file))
}

func (b *bench) startNbdkitMemory(ctx context.Context) (target, error) {
	sock := filepath.Join(b.dir, "nbdkit.sock")
	return b.startProc(ctx, "nbdkit-memory", sock,
		[]string{"nbdkit", "-f", "-U", sock, "-e", "disk0", "memory", fmt.Sprintf("size=%d", b.opts.size)})
}

func (b *bench) startProc(ctx context.Context, name, sock string, argv []string) (target, error) {
	p, err := harness.StartProc(b.dir, name, argv...)
	if err != nil {
		return target{}, err
	}
	b.stops = append(b.stops, func() error { return p.Stop(10 * time.Second) })
	if err := harness.WaitSocket(ctx, sock, p); err != nil {
		return target{}, err
	}
	return target{name: name, sock: sock}, nil
}

var completed = regexp.MustCompile(`Run completed in ([0-9.]+) seconds`)

// imgBench runs `qemu-img bench -w` with QEMU's NBD client against t.
func (b *bench) imgBench(ctx context.Context, t target, size, count int) (result, error) {
	argv := []string{"qemu-img", "bench", "-w", "-t", "none", "-f", "raw", "-s", strconv.Itoa(size),
		"-d", "16", "-c", strconv.Itoa(count), t.uri()}
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("%v against %s: %w\n%s", argv, t.name, err, out)
	}
	m := completed.FindSubmatch(out)
	if m == nil {
		return result{}, fmt.Errorf("%v: no \"Run completed\" in %q", argv, out)
	}
	secs, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil || secs <= 0 {
		return result{}, fmt.Errorf("%v: bad time %q", argv, m[1])
	}
	return result{opsPerSec: float64(count) / secs, mbPerSec: float64(count) * float64(size) / secs / 1e6}, nil
}

// nbdcopy copies src to dst and measures the wall time.
func (b *bench) nbdcopy(ctx context.Context, src, dst string, bytes int64) (result, error) {
	start := time.Now()
	out, err := exec.CommandContext(ctx, "nbdcopy", src, dst).CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("nbdcopy %s %s: %w\n%s", src, dst, err, out)
	}
	secs := time.Since(start).Seconds()
	return result{mbPerSec: float64(bytes) / secs / 1e6}, nil
}

// medians measures every target opts.runs times, the targets taking turns
// so that a change in the machine's load hits them alike, and returns the
// median run of each.
func (b *bench) medians(targets []target, f func(target) (result, error)) ([]result, error) {
	runs := make([][]result, len(targets))
	for range b.opts.runs {
		for i, t := range targets {
			r, err := f(t)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", t.name, err)
			}
			runs[i] = append(runs[i], r)
		}
	}
	med := make([]result, len(targets))
	for i, rs := range runs {
		slices.SortFunc(rs, func(x, y result) int {
			return cmp.Compare(x.opsPerSec+x.mbPerSec, y.opsPerSec+y.mbPerSec)
		})
		med[i] = rs[len(rs)/2]
	}
	return med, nil
}

// ops and mbs pick one figure of each result, padded with -1 (not
// measured) to n cells.
func ops(rs []result, n int) []float64 {
	return pick(rs, n, func(r result) float64 { return r.opsPerSec })
}
func mbs(rs []result, n int) []float64 {
	return pick(rs, n, func(r result) float64 { return r.mbPerSec })
}

func pick(rs []result, n int, f func(result) float64) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = -1
		if i < len(rs) {
			out[i] = f(rs[i])
		}
	}
	return out
}

// freshFile makes path an empty sparse file of size bytes.
func freshFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeRandom fills a new file of size bytes with pseudo-random data.
func writeRandom(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	rng := rand.NewChaCha8([32]byte{'q', 'c', 'd', 'p'})
	buf := make([]byte, 1<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		rng.Read(buf)
		if _, err := f.Write(buf[:min(int64(len(buf)), size-off)]); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	return f.Close()
}
