// Command demo tells qcdp's capture story end to end with real components,
// for a newcomer: `go run ./integration/demo` from the repository.
//
// It builds the qcdp binary, starts `qcdp capture` (the NBD server that
// turns QEMU's mirror writes into an ordered spool), starts QEMU (TCG, no
// guest) with a small disk, attaches a write-blocking mirror into the
// capture export, writes through the mirror before and after it is READY,
// detaches, stops the daemon, shows the spool, applies it onto a fresh image
// and compares that image with the source.
//
// Part 2 runs the whole product: a Linux guest (Debian's cloud kernel and
// our verifiable write workload) protected by `qcdp host`, streaming over
// mutual TLS to `qcdp replica`; a bookmark is taken while the guest writes,
// and the view the replica exports at it is checked to be exactly one state
// the guest went through, holding everything it had fsync'd before.
//
// It exits 1 on any mismatch or failure, 2 on a wrong command line.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/qcdp/qcdp/integration/harness"
)

const diskSize = 16 << 20

type options struct {
	keep bool
	dir  string
}

func main() {
	var opts options
	flag.BoolVar(&opts.keep, "keep", false, "keep the working directory (images, spool, logs)")
	flag.StringVar(&opts.dir, "dir", "", "working directory (default: a new temporary directory)")
	flag.Parse()
	if flag.NArg() != 0 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, opts, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stdout, "\nVERDICT: FAILED: %v\n", err)
		os.Exit(1)
	}
}

// story prints numbered sentences.
type story struct {
	out  io.Writer
	step int
}

func (s *story) say(format string, args ...any) {
	s.step++
	fmt.Fprintf(s.out, "%2d. %s\n", s.step, fmt.Sprintf(format, args...))
}

func (s *story) detail(format string, args ...any) {
	fmt.Fprintf(s.out, "    %s\n", strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", "\n    "))
}

func run(ctx context.Context, opts options, out io.Writer) (err error) {
	ctx, cancel := context.WithTimeout(ctx, 8*time.Minute)
	defer cancel()
	s := &story{out: out}
	fmt.Fprintln(out, "qcdp demo: capture every write of a QEMU disk, in order, and rebuild the disk from the capture.")
	fmt.Fprintln(out, "This demo drives QEMU itself to show capture alone; `qcdp host` does it for every VM a policy names, and `qcdp replica`")
	fmt.Fprintln(out, "keeps the journal and restore points on the recovery site (see README.md). Failover is not built yet.")
	fmt.Fprintln(out)

	if err := harness.Install(ctx, "qemu-system-x86_64", "qemu-img", "qemu-io"); err != nil {
		return err
	}
	dir := opts.dir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "qcdp-demo-"); err != nil {
			return err
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	defer func() {
		if opts.keep || err != nil {
			fmt.Fprintf(out, "\nEverything is kept in %s (logs: qcdp-capture.log, qemu.log, qmp-trace.log).\n", dir)
			return
		}
		os.RemoveAll(dir)
	}()

	qcdp := filepath.Join(dir, "qcdp")
	s.say("Building the qcdp binary into %s.", qcdp)
	if b, err := exec.CommandContext(ctx, "go", "build", "-o", qcdp, "github.com/qcdp/qcdp/cmd/qcdp").CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/qcdp: %w\n%s", err, b)
	}

	src := filepath.Join(dir, "disk0.qcow2")
	s.say("Creating a %d MiB qcow2 source disk %s and filling every 256 KiB with its own byte pattern.", diskSize>>20, src)
	if err := harness.CreateImage(ctx, src, "qcow2", diskSize); err != nil {
		return err
	}
	if err := harness.FillPattern(ctx, src, "qcow2", diskSize, 256<<10, 0x10); err != nil {
		return err
	}

	sock, spoolDir := filepath.Join(dir, "capture.sock"), filepath.Join(dir, "spool")
	s.say("Starting the capture daemon: qcdp capture --socket %s --spool %s --group demo --disk disk0=%d", sock, spoolDir, diskSize)
	daemon, err := harness.StartProc(dir, "qcdp-capture", qcdp, "capture", "--socket", sock, "--spool", spoolDir,
		"--group", "demo", "--disk", fmt.Sprintf("disk0=%d", diskSize))
	if err != nil {
		return err
	}
	defer daemon.Stop(10 * time.Second) // a no-op once stopped below
	if err := harness.WaitSocket(ctx, sock, daemon); err != nil {
		return err
	}
	s.detail("It serves one NBD export per disk on the unix socket (pid %d).", daemon.PID())

	s.say("Starting QEMU with TCG and no guest, the source disk as block node \"disk0\"; QMP on %s.", filepath.Join(dir, "qmp.sock"))
	q, err := harness.Launch(ctx, harness.Options{Dir: dir, Disks: []harness.Disk{{Name: "disk0", Path: src, Format: "qcow2"}}})
	if err != nil {
		return err
	}
	defer q.Close()
	v, err := q.QMP.QueryVersion(ctx)
	if err != nil {
		return err
	}
	s.detail("QEMU %s says hello.", v)

	s.say("Attaching the capture: an NBD client node to the daemon, then a write-blocking mirror from disk0 into it (initial copy slowed to 1 MiB/s so we can write during it).")
	m, err := harness.StartMirror(ctx, q, "disk0", sock, "disk0", 1<<20)
	if err != nil {
		return err
	}
	s.detail("Job %s copies %s into %s; writes must go through the mirror's filter node %s to be captured.", m.Job, m.Disk, m.Target, m.Filter)

	during := []string{"write -P 0xa1 0 4096", "write -P 0xa2 1048576 65536", "write -P 0xa3 12345 100", "write -z 2097152 8192"}
	s.say("Writing %d times during the initial copy (HMP qemu-io on %s): %s.", len(during), m.Filter, strings.Join(during, "; "))
	for _, cmd := range during {
		if err := m.Write(ctx, cmd); err != nil {
			return err
		}
	}
	if err := q.QMP.BlockJobSetSpeed(ctx, m.Job, 0); err != nil {
		return err
	}
	s.say("Lifting the speed limit and waiting for the BLOCK_JOB_READY event.")
	start := time.Now()
	ready, err := m.WaitReady(ctx)
	if err != nil {
		return err
	}
	s.detail("READY after %v: the daemon holds a full copy, and from now on every write reaches it in the guest's order.", time.Since(start).Round(time.Millisecond))
	_ = ready

	after := []string{"write -P 0xb1 512 512", "write -P 0xb2 4097 100", "write -z 5000 3000", "write -P 0xb4 3145728 1048576", "write -P 0xb5 16777215 1"}
	s.say("Writing %d more times while READY: %s.", len(after), strings.Join(after, "; "))
	for _, cmd := range after {
		if err := m.Write(ctx, cmd); err != nil {
			return err
		}
	}

	s.say("Detaching: block-job-cancel (never block-job-complete, which would move the disk onto the capture), then deleting the NBD node.")
	end, err := m.Detach(ctx)
	if err != nil {
		return err
	}
	s.detail("The job ended with %s; the guest disk never left its source.", end.Name)

	s.say("Stopping QEMU and then the capture daemon with SIGTERM.")
	if err := q.Close(); err != nil {
		return err
	}
	if err := daemon.Stop(10 * time.Second); err != nil {
		return fmt.Errorf("capture daemon: %w\n%s", err, daemon.Log(20))
	}
	s.detail("The daemon said: %s", strings.TrimSpace(daemon.Log(5)))

	s.say("Showing the spool: qcdp spool show --spool %s", spoolDir)
	show, err := exec.CommandContext(ctx, qcdp, "spool", "show", "--spool", spoolDir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qcdp spool show: %w\n%s", err, show)
	}
	s.detail("%s", strings.TrimSpace(string(show)))

	applied := filepath.Join(dir, "applied-disk0.raw")
	s.say("Replaying the spool onto a fresh raw image: qcdp spool apply --spool %s --disk disk0=%s", spoolDir, applied)
	ap, err := exec.CommandContext(ctx, qcdp, "spool", "apply", "--spool", spoolDir, "--disk", "disk0="+applied).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qcdp spool apply: %w\n%s", err, ap)
	}
	s.detail("%s", strings.TrimSpace(string(ap)))

	s.say("Comparing source and rebuilt image: qemu-img compare %s %s", src, applied)
	err = harness.Compare(ctx, src, "qcow2", applied, "raw")
	if errors.Is(err, harness.ErrDiffer) {
		return fmt.Errorf("the rebuilt image differs from the source: %w", err)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nPart 1 OK: the image rebuilt from the spool is identical to the source disk, including the %d writes made through the mirror.\n", len(during)+len(after))

	if err := runProduct(ctx, s, dir, qcdp); err != nil {
		return err
	}
	fmt.Fprintln(out, "\nVERDICT: OK: capture is exact, and the replica's point-in-time view is the guest's own state at the bookmark.")
	return nil
}
