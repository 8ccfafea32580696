// Command bench measures qcdp on this machine against baselines run in the
// same process, and prints a table of ratios per suite:
//
//	go run ./integration/bench                   # every suite
//	go run ./integration/bench -suite capture    # the NBD capture server
//	go run ./integration/bench -suite overhead   # protection overhead in QEMU
//	go run ./integration/bench -suite replica    # stream, replica ingest, RPO, views
//	go run ./integration/bench -suite resync     # bringing a disk back after its capture stopped
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
// Replica suite: the stream and the recovery site with the daemons' own
// parts (shipper.Sequencer, spool, sender; the receiver.Server over real
// journals; mTLS from an in-process CA):
//
//   - ingest: a spool pre-filled with -ingest-mb MB of 4 KiB writes (each
//     half random, half a repeating pattern: about 2:1 with zstd) shipped
//     into a new replica on loopback, zstd and raw taking turns. The sender
//     runs in a child process (this binary, re-executed with a hidden
//     -role), the replica in this one: MB/s wall, MB per CPU-second of this
//     process (the replica's alone) and, for information, of the child.
//     Goal: >= 300 MB/s per core for the replica.
//   - RPO (both ends in this process): a writer appends 4 KiB writes at 50 MB/s for -rpo-time while
//     sender.Stats().RPO is sampled every 10 ms; p50, p99 and max, on
//     loopback and with a 20 ms one-way delay (netem in a network namespace
//     when the kernel has it, else a userspace delaying proxy: said in the
//     output). Goal: p99 <= 1 s on loopback.
//   - views: one journal grown through -view-records sizes (1 KiB records,
//     one fsync per 4096); at each, the time to open a view of a random seq
//     and read one 4 KiB block, and to reopen the journal. Goal: <= 1 s with
//     a million records. The appends get -view-budget in all; a size not
//     reached in it is reported as not measured.
//
// Resync suite (resync.go): a 4 GiB disk (-resync-size) with 1% of its
// blocks (-resync-changed) changed while its capture was stopped, brought
// back by each path (bitmap after detach/attach and after a clean VM
// restart, hash after QEMU kill -9 and after a lost spool tail): stream
// bytes ÷ changed bytes (goal ≤ 1.2), hash bytes ÷ disk (≤ 0.1%), and the
// resync time ÷ the time to read the disk once (≤ 0.2 bitmap, ≤ 1.5 hash).
// It is not in "all" (it needs root to drop the page cache, and 12 GiB).
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
	"slices"
	"strconv"
	"strings"
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
	// replica suite
	ingestMB   float64
	rpoTime    time.Duration
	viewSizes  []int
	viewBudget time.Duration
	// resync suite
	resyncSize    int64
	resyncChanged float64
}

func main() {
	if len(os.Args) > 2 && os.Args[1] == "-role" { // the bench's own child (ingest_sender.go)
		os.Exit(runRole(os.Args[2], os.Args[3:]))
	}
	opts := options{}
	flag.StringVar(&opts.suite, "suite", "all", "what to measure: capture, overhead, replica, resync or all (all but resync)")
	flag.StringVar(&opts.dir, "dir", "", "working directory on the filesystem to measure (default: a new one under $TMPDIR)")
	flag.Int64Var(&opts.size, "size", 256<<20, "export and disk size in bytes, a multiple of 1 MiB")
	flag.IntVar(&opts.count4k, "count-4k", 40000, "4 KiB writes per qemu-img bench run")
	flag.IntVar(&opts.count1m, "count-1m", 400, "1 MiB writes per qemu-img bench run")
	flag.IntVar(&opts.countLat, "count-lat", 5000, "synchronous 4 KiB writes per latency run (overhead suite)")
	flag.IntVar(&opts.runs, "runs", 3, "runs per cell; the median is reported")
	flag.StringVar(&opts.aio, "aio", "auto", "qemu-storage-daemon's aio mode (overhead suite): auto (io_uring if it works, else threads), io_uring, threads")
	flag.BoolVar(&opts.keep, "keep", false, "keep the working directory")
	flag.Float64Var(&opts.ingestMB, "ingest-mb", 256, "MB of 4 KiB writes per ingest run (replica suite)")
	flag.DurationVar(&opts.rpoTime, "rpo-time", 10*time.Second, "how long the writer runs per RPO run (replica suite)")
	viewSizes := flag.String("view-records", "10000,100000,1000000", "journal sizes, in records, at which views are opened (replica suite)")
	flag.DurationVar(&opts.viewBudget, "view-budget", 2*time.Minute, "time the journal appends of the view rows may take in all (replica suite)")
	flag.Int64Var(&opts.resyncSize, "resync-size", 4<<30, "disk size in bytes (resync suite), a multiple of 1 MiB")
	flag.Float64Var(&opts.resyncChanged, "resync-changed", 0.01, "fraction of the disk's 64 KiB blocks changed per path (resync suite)")
	flag.StringVar(&opts.cpuprofile, "cpuprofile", "", "write a CPU profile of this process (the in-process qcdp server and clients) to this file")
	flag.Parse()
	suites := map[string][]string{"all": {"capture", "overhead", "replica"}, "capture": {"capture"}, "overhead": {"overhead"},
		"replica": {"replica"}, "resync": {"resync"}}[opts.suite]
	badSizes := false
	for _, f := range strings.Split(*viewSizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		badSizes = badSizes || err != nil || n < 2
		opts.viewSizes = append(opts.viewSizes, n)
	}
	if flag.NArg() != 0 || suites == nil || badSizes || opts.ingestMB <= 0 || opts.rpoTime <= 0 ||
		!slices.IsSorted(opts.viewSizes) || opts.runs < 1 || opts.size < 16<<20 || opts.size%(1<<20) != 0 ||
		opts.count4k < 1 || opts.count1m < 1 || opts.countLat < 1 ||
		opts.resyncSize < 64<<20 || opts.resyncSize%(1<<20) != 0 || opts.resyncChanged <= 0 || opts.resyncChanged > 0.5 {
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
	limit := 15 * time.Minute
	if slices.Contains(suites, "resync") {
		limit = 45 * time.Minute // filling and copying 4 GiB first
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
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
		case "replica":
			err = runReplica(ctx, b, out)
		case "resync":
			err = runResync(ctx, b, out)
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
