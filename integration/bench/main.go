// Command bench measures qcdp on this machine against baselines run in the
// same process, and prints a table of ratios per suite:
//
//	go run ./integration/bench                   # both suites
//	go run ./integration/bench -suite capture    # the NBD capture server
//	go run ./integration/bench -suite overhead   # protection overhead in QEMU
//
// Capture suite: our capture export against qemu-nbd and nbdkit. Writes come
// from QEMU's own NBD client (qemu-img bench, 16 requests in flight as the
// mirror keeps) and from nbdcopy; reads from nbdcopy. All files, the spool
// included, live in one directory on one filesystem, and nothing is
// fsynced by either side (the NBD client sends no FLUSH), so the comparison
// is of the servers.
//
// Overhead suite: what protecting a disk costs its writer. Three
// qemu-storage-daemon processes hold the same graph (a raw format node on a
// file node, aio=io_uring when QEMU can, else threads, cache.direct=off
// everywhere) on three preallocated files in the same directory, each
// exporting its disk writable over NBD, written through QEMU's NBD client:
//
//   - unprotected: nothing more.
//   - protected: the real product path. filter.Capture has put its
//     write-blocking mirror from the disk into the capture export of an
//     in-process qcdp server (nbd.Server, shipper.Sequencer, a spool in the
//     same directory), waited to READY. The export's BlockBackend sits above
//     the mirror's filter node, as a guest's device would; the bench checks
//     that every byte of every protected run reached the capture server and
//     that the spool holds them after the sync-complete marker, and fails
//     otherwise.
//   - mirror->null: the same mirror (filter.Capture) into nbdkit's null
//     plugin, a target that costs nothing: the part of the overhead that is
//     QEMU's write-blocking mirror itself (source write, then target write,
//     per request) and not qcdp's server.
//
// Rows: qemu-img bench 4 KiB and 1 MiB writes at depth 16 (throughput; the
// mean latency derived as elapsed*16/count) and synchronous 4 KiB writes at
// depth 1 by a libnbd client that times each (p50, p99, mean). The daemons
// take turns run by run, the page cache's dirty data is written back
// (sync(2)) before each run, and every cell is the median of -runs runs.
// The goals are protected/unprotected >= 0.90 for 1 MiB writes and >= 0.75
// for 4 KiB writes.
//
// Exit status: 0 when the measurements ran (goals missed are reported, not
// failed), 1 when a measurement could not run or the capture check failed,
// 2 on a wrong command line.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"syscall"
	"time"
)

type options struct {
	suite      string
	dir        string
	size       int64 // export / disk size
	count4k    int
	count1m    int
	countLat   int
	runs       int
	aio        string
	keep       bool
	cpuprofile string
}

func main() {
	opts := options{}
	flag.StringVar(&opts.suite, "suite", "all", "what to measure: capture, overhead or all")
	flag.StringVar(&opts.dir, "dir", "", "working directory on the filesystem to measure (default: a new one under $TMPDIR)")
	flag.Int64Var(&opts.size, "size", 256<<20, "export and disk size in bytes, a multiple of 1 MiB")
	flag.IntVar(&opts.count4k, "count-4k", 40000, "4 KiB writes per qemu-img bench run")
	flag.IntVar(&opts.count1m, "count-1m", 400, "1 MiB writes per qemu-img bench run")
	flag.IntVar(&opts.countLat, "count-lat", 5000, "synchronous 4 KiB writes per latency run (overhead suite)")
	flag.IntVar(&opts.runs, "runs", 3, "runs per cell; the median is reported")
	flag.StringVar(&opts.aio, "aio", "auto", "qemu-storage-daemon's aio mode (overhead suite): auto (io_uring if it works, else threads), io_uring, threads")
	flag.BoolVar(&opts.keep, "keep", false, "keep the working directory")
	flag.StringVar(&opts.cpuprofile, "cpuprofile", "", "write a CPU profile of this process (the in-process qcdp server and clients) to this file")
	flag.Parse()
	suites := map[string][]string{"all": {"capture", "overhead"}, "capture": {"capture"}, "overhead": {"overhead"}}[opts.suite]
	if flag.NArg() != 0 || suites == nil || opts.runs < 1 || opts.size < 16<<20 || opts.size%(1<<20) != 0 ||
		opts.count4k < 1 || opts.count1m < 1 || opts.countLat < 1 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, opts, suites, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, opts options, suites []string, out io.Writer) (err error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	if opts.cpuprofile != "" {
		f, err := os.Create(opts.cpuprofile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile %s: %w", opts.cpuprofile, err)
		}
		defer pprof.StopCPUProfile()
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
	for i, s := range suites {
		if i > 0 {
			fmt.Fprintln(out)
		}
		// Each suite in its own directory, removed after it unless -keep.
		b := &bench{opts: opts, dir: filepath.Join(dir, s)}
		if err := os.MkdirAll(b.dir, 0o755); err != nil {
			return err
		}
		switch s {
		case "capture":
			err = runCapture(ctx, b, out)
		case "overhead":
			err = runOverhead(ctx, b, out)
		}
		if err != nil {
			return fmt.Errorf("%s suite: %w", s, err)
		}
		if !opts.keep {
			os.RemoveAll(b.dir)
		}
	}
	return nil
}
