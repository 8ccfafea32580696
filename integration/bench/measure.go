package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/qcdp/qcdp/integration/harness"
	"github.com/qcdp/qcdp/nbd"
)

// What both suites share: the processes and servers they start, the
// qemu-img bench and median plumbing, and the table.

// target is one NBD server under test, serving export "disk0" on sock.
type target struct {
	name string
	sock string
}

func (t target) uri() string { return "nbd+unix:///disk0?socket=" + t.sock }

// result of one run of one cell.
type result struct {
	opsPerSec, mbPerSec float64
	// meanLat is the mean time a request took; p50 and p99 are set only
	// by runs that time each request.
	meanLat, p50, p99 time.Duration
	cpu               cpuUse // CPU time the run took, where measured
}

type bench struct {
	opts  options
	dir   string
	stops []func() error
}

func (b *bench) path(name string) string { return filepath.Join(b.dir, name) }

func (b *bench) stopAll() {
	for i := len(b.stops) - 1; i >= 0; i-- {
		b.stops[i]()
	}
	b.stops = nil
}

// serve runs our NBD server in this process on a unix socket.
func (b *bench) serve(name, sockName string, cat nbd.Catalog, log *slog.Logger) (target, *nbd.Server, error) {
	sock := b.path(sockName)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return target{}, nil, fmt.Errorf("%s: listen on %s: %w", name, sock, err)
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
	return target{name: name, sock: sock}, srv, nil
}

// startProc starts an NBD server process serving on sock; the bench's stop
// stops it by PID.
func (b *bench) startProc(ctx context.Context, name, sock string, argv []string) (target, *harness.Proc, error) {
	p, err := harness.StartProc(b.dir, name, argv...)
	if err != nil {
		return target{}, nil, err
	}
	b.stops = append(b.stops, func() error { return p.Stop(10 * time.Second) })
	if err := harness.WaitSocket(ctx, sock, p); err != nil {
		return target{}, nil, err
	}
	return target{name: name, sock: sock}, p, nil
}

var completed = regexp.MustCompile(`Run completed in ([0-9.]+) seconds`)

// imgBenchDepth is qemu-img bench's queue depth: what QEMU's NBD client
// keeps in flight at most, as the mirror and a busy guest do.
const imgBenchDepth = 16

// imgBench runs `qemu-img bench -w` with QEMU's NBD client against t. The
// mean latency is derived: elapsed * depth / count.
func (b *bench) imgBench(ctx context.Context, t target, size, count int) (result, error) {
	argv := []string{"qemu-img", "bench", "-w", "-t", "none", "-f", "raw", "-s", strconv.Itoa(size),
		"-d", strconv.Itoa(imgBenchDepth), "-c", strconv.Itoa(count), t.uri()}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return result{}, fmt.Errorf("%v against %s: %w\n%s", argv, t.name, err, out)
	}
	client := cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	m := completed.FindSubmatch(out)
	if m == nil {
		return result{}, fmt.Errorf("%v: no \"Run completed\" in %q", argv, out)
	}
	secs, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil || secs <= 0 {
		return result{}, fmt.Errorf("%v: bad time %q", argv, m[1])
	}
	return result{
		opsPerSec: float64(count) / secs,
		mbPerSec:  float64(count) * float64(size) / secs / 1e6,
		meanLat:   time.Duration(secs * imgBenchDepth / float64(count) * float64(time.Second)),
		cpu:       cpuUse{client: client},
	}, nil
}

// medians measures every target opts.runs times, the targets taking turns
// so that a change in the machine's load hits them alike, and returns the
// median run (by throughput) of each.
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

// ops, mbs and lat pick one figure of each result, padded with -1 (not
// measured) to n cells.
func ops(rs []result, n int) []float64 {
	return pick(rs, n, func(r result) float64 { return r.opsPerSec })
}
func mbs(rs []result, n int) []float64 {
	return pick(rs, n, func(r result) float64 { return r.mbPerSec })
}
func lat(rs []result, n int, f func(result) time.Duration) []float64 {
	return pick(rs, n, func(r result) float64 { return float64(f(r)) / float64(time.Microsecond) })
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

// row is one line of a table: cells in the table's column order, -1 for
// not measured; goal and verdict may be empty.
type row struct {
	what, unit    string
	cells         []float64
	goal, verdict string
}

// ratio is a table column showing cells[num]/cells[den].
type ratio struct {
	name     string
	num, den int
}

// printTable prints rows under a header naming the cell columns and the
// ratio columns.
func printTable(out io.Writer, cols []string, ratios []ratio, rows []row) {
	fmt.Fprintf(out, "%-42s %-9s", "measurement", "unit")
	for _, c := range cols {
		fmt.Fprintf(out, " %12s", c)
	}
	for _, r := range ratios {
		fmt.Fprintf(out, " %11s", r.name)
	}
	if slices.ContainsFunc(rows, func(r row) bool { return r.goal != "" }) {
		fmt.Fprint(out, "  goal")
	}
	fmt.Fprintln(out)
	for _, r := range rows {
		fmt.Fprintf(out, "%-42s %-9s", r.what, r.unit)
		for _, v := range r.cells {
			fmt.Fprintf(out, " %12s", num(v))
		}
		for _, q := range ratios {
			if r.cells[q.num] < 0 || r.cells[q.den] <= 0 {
				fmt.Fprintf(out, " %11s", "-")
				continue
			}
			fmt.Fprintf(out, " %11.2f", r.cells[q.num]/r.cells[q.den])
		}
		switch {
		case r.goal != "" && r.verdict != "":
			fmt.Fprintf(out, "  %s: %s", r.goal, r.verdict)
		case r.goal != "":
			fmt.Fprintf(out, "  %s", r.goal)
		}
		fmt.Fprintln(out)
	}
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
