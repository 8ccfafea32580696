package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qcdp/qcdp/integration/chaos"
	"github.com/qcdp/qcdp/integration/guest"
	"github.com/qcdp/qcdp/integration/guest/workload"
	"github.com/qcdp/qcdp/integration/harness"
	"github.com/qcdp/qcdp/qmp"
	"github.com/qcdp/qcdp/shipper"
)

// The chaos suite (package integration/chaos says what it injects and
// checks). TestChaos is its runner: the short version by default (a fixed
// seed, 30 faults, every kind at least once), the long one under
// `make chaos`, which sets:
//
//	QCDP_CHAOS_SEED     the seed ("random": drawn and printed); default 1
//	QCDP_CHAOS_FAULTS   faults to inject; default 30
//	QCDP_CHAOS_KINDS    only these kinds, comma-separated; default all
//	QCDP_CHAOS_TIME     stop starting rounds after this long (e.g. 10m)
//	QCDP_CHAOS_SUMMARY  also write the summary table to this file
//	QCDP_CHAOS_KEEP     keep the working directory even when it passes
//	QCDP_CHAOS_OPEN     "count": count the open findings of
//	                    chaos.Findings (their narrow signatures only) and
//	                    go on instead of failing; "fail" (the default,
//	                    short and long run alike) fails on them
const (
	chaosWatchdog = 3 * time.Second // WatchdogSec of the fake systemd
	// chaosSlack is what TCG, the console and a loaded 2-core machine
	// add to a guest's measured write or console gap.
	chaosSlack = time.Second
	// chaosHeld is the bound on a guest write when no daemon hangs: a
	// refused or dead capture costs the guest nothing (invariant 1).
	chaosHeld = time.Second
	// chaosConverge bounds how long the replica may take to catch up
	// once every fault has healed.
	chaosConverge = 2 * time.Minute
	// chaosRepair bounds how long the stream may take to resume into a
	// journal a repair made new (the guest paused: only the re-attach's
	// copy to send).
	chaosRepair = 15 * time.Second

	chaosVMDisk0 = 8 << 20  // vda, qcow2
	chaosVMDisk1 = 16 << 20 // vdb, raw; the burst region is its upper half
	burstFrom    = 8 << 20
)

// chaosParams is the guest workload of boot n (a seed of its own).
func chaosParams(seed uint64, n int) workload.Params {
	return workload.Params{Seed: chaos.EpochSeed(seed, n), Blocks: 512, Disks: 2, SyncEvery: 10, Rate: 100, Hold: true}
}

type chaosConfig struct {
	seed    uint64
	faults  int
	only    []chaos.Kind
	budget  time.Duration
	summary string
	keep    bool
	// countOpen: count open chaos.Findings instead of failing on them.
	countOpen bool
}

func chaosConfigFromEnv(t *testing.T) chaosConfig {
	t.Helper()
	c := chaosConfig{seed: 1, faults: 30, summary: os.Getenv("QCDP_CHAOS_SUMMARY"), keep: os.Getenv("QCDP_CHAOS_KEEP") != ""}
	switch s := os.Getenv("QCDP_CHAOS_SEED"); s {
	case "":
	case "random":
		c.seed = rand.Uint64() >> 1
	default:
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("QCDP_CHAOS_SEED=%q: %v", s, err)
		}
		c.seed = n
	}
	if s := os.Getenv("QCDP_CHAOS_FAULTS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("QCDP_CHAOS_FAULTS=%q: want a positive count", s)
		}
		c.faults = n
	}
	switch s := os.Getenv("QCDP_CHAOS_OPEN"); s {
	case "", "fail":
	case "count":
		c.countOpen = true
	default:
		t.Fatalf("QCDP_CHAOS_OPEN=%q: want count or fail", s)
	}
	var err error
	if c.only, err = chaos.ParseKinds(os.Getenv("QCDP_CHAOS_KINDS")); err != nil {
		t.Fatal(err)
	}
	if s := os.Getenv("QCDP_CHAOS_TIME"); s != "" {
		if c.budget, err = time.ParseDuration(s); err != nil {
			t.Fatalf("QCDP_CHAOS_TIME=%q: %v", s, err)
		}
	}
	return c
}

// chaosRun is one run: the world the faults hit and what they did.
type chaosRun struct {
	t     *testing.T
	cfg   chaosConfig
	dir   string
	bin   string
	art   *guest.Artifacts
	tally *chaos.Tally
	rng   *rand.Rand // what the checks sample; seeded from the run's seed
	log   *os.File   // chaos.log: the run's progress
	round chaos.Round

	link     *chaos.Link
	storage  *chaos.Storage
	journals string // storage_root, inside the namespace
	rcfg     string
	rctl     string
	replica  *harness.Proc
	replicas int
	// replicaDown: the suite killed or stopped the replica on purpose.
	replicaDown bool
	// failedStart holds the replicas that ended before they served.
	failedStart map[*harness.Proc]bool

	h        *hostSetup
	sd       *fakeSystemd
	host     *sdRun
	hosts    int
	hostDown bool // the suite killed or stopped the host on purpose

	disks   []guest.Disk
	boots   []*chaosBoot
	mon     *qmp.Client // the suite's own monitor of the guest's QEMU
	monPath string
	paused  []span // when the suite paused the guest
	hangs   []span // when the host daemon was SIGSTOPped
	// guestChecked: the console's events up to here are checked.
	guestChecked time.Time
	asides       int
	// clock is the host daemon's clock-offset file (shipper.ClockOffsetEnv);
	// clockAt when the round's clock step began (zero: none).
	clock   string
	clockAt time.Time
	// lastPoint is the newest point when the replica last converged.
	lastPoint pointJSON
	// clockOffset is the host's clock offset now; lagging is set once a
	// host daemon started while it was more than a minute ahead: its
	// capture times stay ahead (they never go back), the replica lowers
	// them so that a point's time never leads its writes, and from then on
	// a point's time may lag them (README: capture times), so a point may
	// hold a later boot's state than its time says.
	clockOffset time.Duration
	lagging     bool
}

// chaosBoot is one boot of the guest and its model.
type chaosBoot struct {
	epoch *chaos.Epoch
	vm    *guest.VM
}

type span struct{ from, to time.Time }

func (r *chaosRun) vm() *guest.VM { return r.boots[len(r.boots)-1].vm }

// logf writes a progress line to chaos.log and the test log.
func (r *chaosRun) logf(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	fmt.Fprintf(r.log, "%s %s\n", time.Now().Format("15:04:05.000"), line)
	r.t.Log(line)
}

// fatalf ends the run on a finding: it says which fault broke which
// check and where to look.
func (r *chaosRun) fatalf(format string, args ...any) {
	r.t.Helper()
	msg := fmt.Sprintf(format, args...)
	where := fmt.Sprintf("%v: %s", r.round, msg)
	r.tally.Fail(where)
	r.logf("FINDING: %s", where)
	r.unstop()
	r.preserve()
	r.logf("look at: %s (chaos.log; host-N.log and replica-N.log are the daemons' logs in start order; guest-N/ has each boot's console and QEMU log; "+
		"at-failure/ holds the replica's points and journal and the host's status and spool as they were)", r.dir)
	r.t.Fatalf("chaos: %s", where)
}

// preserve keeps the evidence of a finding in the working directory:
// the replica's points and journal (its tmpfs goes away with the run),
// the host's status and spool.
func (r *chaosRun) preserve() {
	at := filepath.Join(r.dir, "at-failure")
	if err := os.MkdirAll(at, 0o755); err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	save := func(name string, argv ...string) {
		out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
		if err != nil {
			out = append(out, []byte("\n"+err.Error())...)
		}
		os.WriteFile(filepath.Join(at, name), out, 0o644)
	}
	if r.bin != "" {
		save("points.json", r.bin, "points", "--socket", r.rctl, "--json", "g1")
		if r.h != nil {
			save("host-status.json", r.bin, "status", "--socket", r.h.Control, "--json")
			save("spool.txt", "cp", "-a", r.h.SpoolDir, filepath.Join(at, "spool"))
		}
	}
	if r.storage != nil {
		save("journal.txt", "cp", "-a", r.journalDir(), filepath.Join(at, "journal"))
	}
}

// finding handles a finding's signature: an open one is counted when the
// run counts them, else it is a finding like any other (kind counts it in
// the tally); a fixed one is a regression.
func (r *chaosRun) finding(id string, kind func(*chaos.Tally), format string, args ...any) {
	r.t.Helper()
	f := chaos.FindingByID(id)
	msg := fmt.Sprintf(format, args...)
	switch {
	case !f.Open():
		r.tally.Update(kind)
		r.fatalf("%s: the signature of finding %s, fixed (%s): a regression: %s", msg, id, f.Fixed, f.What)
	case !r.cfg.countOpen:
		r.tally.Update(kind)
		r.fatalf("%s (open finding %s: %s)", msg, id, f.What)
	}
	r.tally.Update(func(t *chaos.Tally) { t.Open[id]++ })
	r.logf("open finding %s seen (counted): %s", id, msg)
}

// unstop lets a SIGSTOPped daemon go on, so the cleanups can stop it.
func (r *chaosRun) unstop() {
	if r.host != nil {
		r.host.Signal(syscall.SIGCONT)
	}
	if r.replica != nil {
		r.replica.Signal(syscall.SIGCONT)
	}
}

// TestChaos runs a seeded, randomized fault schedule against the real
// components (package integration/chaos) and checks after every round
// that the guest saw no error and no write held past the bound, that the
// replica converges to the source, that the restore points it samples
// are states of the guest holding every write fsync'd before them, and
// that every corruption injected is reported and never served.
func TestChaos(t *testing.T) {
	harness.Need(t, "qemu-system-x86_64", "qemu-img", "nbdcopy")
	if os.Geteuid() != 0 {
		t.Skip("skipping: the chaos suite mounts a tmpfs in a mount namespace of its own (root)")
	}
	cfg := chaosConfigFromEnv(t)
	deadline, ok := t.Deadline()
	if !ok {
		deadline = time.Now().Add(3 * time.Hour)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline.Add(-30*time.Second))
	defer cancel()

	dir, err := os.MkdirTemp("", "qcdp-chaos-")
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "chaos.log"))
	if err != nil {
		t.Fatal(err)
	}
	r := &chaosRun{t: t, cfg: cfg, failedStart: map[*harness.Proc]bool{}, dir: dir, tally: chaos.NewTally(cfg.seed, cfg.faults, cfg.only),
		rng: rand.New(rand.NewPCG(cfg.seed, 0xc4ec5)), log: logf}
	r.tally.Bound = chaosWatchdog + chaosHeld + chaosSlack
	if cfg.countOpen {
		r.tally.Replay = "OPEN=count"
		r.tally.Notes = append(r.tally.Notes, "open findings are counted, not failed on (QCDP_CHAOS_OPEN=count); `make chaos` fails on them")
	}
	// Registered first, so it runs last: the summary is the run's last
	// word, whatever ended it.
	t.Cleanup(func() {
		if t.Failed() && r.tally.Failure == "" {
			r.tally.Fail(fmt.Sprintf("%v: a step failed (see the test log above); look at %s", r.round, dir))
		}
		table := r.tally.Table()
		fmt.Fprint(logf, table)
		logf.Close()
		if cfg.summary != "" {
			os.WriteFile(cfg.summary, []byte(table), 0o644)
		}
		t.Log("\n" + table)
		if t.Failed() || cfg.keep {
			t.Logf("kept %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	r.logf("chaos: seed %d, %d faults%s, working directory %s", cfg.seed, cfg.faults, kindsNote(cfg.only), dir)
	if cfg.countOpen {
		for _, f := range chaos.Findings {
			if f.Open() {
				r.logf("open finding %s is counted, not failed on: %s", f.ID, f.What)
			}
		}
	}

	sched, err := chaos.NewSchedule(cfg.seed, cfg.only)
	if err != nil {
		t.Fatal(err)
	}
	for _, ki := range sched.Skipped {
		if ki.Skip != "" {
			r.logf("fault kind %s skipped: %s", ki.Kind, ki.Skip)
		}
	}
	r.setUp(ctx)
	start := time.Now()
	for r.tally.Injections() < cfg.faults {
		if cfg.budget > 0 && time.Since(start) > cfg.budget {
			n := r.tally.Injections()
			r.logf("time budget %v spent after %d faults: stopping", cfg.budget, n)
			r.tally.Update(func(t *chaos.Tally) {
				t.Faults = n
				t.Notes = append(t.Notes, fmt.Sprintf("stopped by QCDP_CHAOS_TIME=%v after %d of %d faults", cfg.budget, n, cfg.faults))
			})
			break
		}
		r.round = sched.Next()
		r.runRound(ctx)
	}
	r.finish(ctx)
}

func kindsNote(only []chaos.Kind) string {
	if len(only) == 0 {
		return ""
	}
	var ks []string
	for _, k := range only {
		ks = append(ks, string(k))
	}
	return " of kinds " + strings.Join(ks, ",")
}

// setUp builds the guest and qcdp, makes the certificates, the replica's
// storage, the link, and starts the replica, the host under a fake
// systemd and the guest's first boot, then waits for the first converged
// state.
func (r *chaosRun) setUp(ctx context.Context) {
	t := r.t
	var err error
	if r.art, err = guest.Build(ctx, ""); err != nil {
		t.Fatalf("build the test guest: %v", err)
	}
	r.bin = buildQCDP(ctx, t, r.dir)
	tls := filepath.Join(r.dir, "tls")
	run(ctx, t, r.bin, "certs", "--dir", tls, "--ca")
	run(ctx, t, r.bin, "certs", "--dir", tls, "--replica", "dr1", "--san", "127.0.0.1,localhost")
	run(ctx, t, r.bin, "certs", "--dir", tls, "--host", "kvm1", "--tenant", "acme")

	mnt := filepath.Join(r.dir, "storage")
	if r.storage, err = chaos.NewStorage(ctx, r.dir, mnt, 1<<30); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.storage.Close() })
	r.journals = filepath.Join(mnt, "journals")

	port := freePort(t)
	if r.link, err = chaos.NewLink(fmt.Sprintf("127.0.0.1:%d", port)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.link.Close() })
	r.rctl = filepath.Join(r.dir, "replica.sock")
	r.rcfg = filepath.Join(r.dir, "replica.toml")
	writeFile(t, r.rcfg, fmt.Sprintf(`[replica]
listen = "127.0.0.1:%d"
ca = %q
cert = %q
key = %q
storage_root = %q
control_socket = %q
nbd_socket = %q
log_level = "debug"

[defaults]
window = "2m"

[[tenant]]
name = "acme"
hosts = ["kvm1"]
groups = ["g1"]
`, port, filepath.Join(tls, "ca.pem"), filepath.Join(tls, "dr1.pem"), filepath.Join(tls, "dr1-key.pem"),
		r.journals, r.rctl, filepath.Join(r.dir, "views.sock")))
	r.startReplica(ctx)

	r.disks = []guest.Disk{
		{Path: filepath.Join(r.dir, "vda.qcow2"), Format: "qcow2", NodeName: "vda"},
		{Path: filepath.Join(r.dir, "vdb.raw"), Format: "raw", NodeName: "vdb"},
	}
	for i, size := range []int64{chaosVMDisk0, chaosVMDisk1} {
		if err := harness.CreateImage(ctx, r.disks[i].Path, r.disks[i].Format, size); err != nil {
			t.Fatal(err)
		}
	}
	r.h = newHost(t, r.bin, r.dir, fmt.Sprintf("tls_ca = %q\ntls_cert = %q\ntls_key = %q",
		filepath.Join(tls, "ca.pem"), filepath.Join(tls, "kvm1.pem"), filepath.Join(tls, "kvm1-key.pem")),
		fmt.Sprintf("replica = %q\nspool_max = \"64M\"\nspool_segment = \"1M\"", r.link.Addr()))
	r.sd = newFakeSystemd(r.dir, chaosWatchdog)
	r.clock = filepath.Join(r.dir, "clock-offset")
	writeFile(t, r.clock, "0\n")
	r.sd.env = shipper.ClockOffsetEnv + "=" + r.clock
	r.startHost(ctx)
	r.monPath = filepath.Join(r.dir, "monitor.sock")
	r.boot(ctx, nil)
	r.round = chaos.Round{} // "round 0": the set-up
	r.waitAttached(ctx, r.boots[0].epoch.Boot)
	r.converge(ctx, false)
}

// runRound injects a round's faults, heals them, and runs the checks.
func (r *chaosRun) runRound(ctx context.Context) {
	rd := r.round
	r.logf("%v", rd)
	start := time.Now()
	for _, f := range rd.Faults {
		r.tally.Injected(f.Kind)
	}
	if rd.Solo() {
		r.solo(ctx, rd.Faults[0])
	} else {
		r.overlap(ctx, rd.Faults)
	}
	healed := time.Now()
	r.ensureUp(ctx)
	took := r.converge(ctx, false)
	r.checkClockStep(ctx)
	n := r.sample(ctx, rd.Sample)
	r.checkGuest(ctx)
	r.tally.Update(func(t *chaos.Tally) { t.Rounds++ })
	r.logf("round %d: healed after %v, converged in %v, %d points checked; %d/%d faults",
		rd.N, healed.Sub(start).Round(time.Millisecond), took.Round(time.Millisecond), n, r.tally.Injections(), r.cfg.faults)
}

// checkClockStep checks, after a round with a clock step, that the
// any-point window still reaches back before the step: the window is 2
// minutes and the step began seconds ago, so a window that starts after
// it was folded by a stepped capture time.
func (r *chaosRun) checkClockStep(ctx context.Context) {
	at, before := r.clockAt, r.lastPoint // before: from the round before
	r.clockAt = time.Time{}
	if at.IsZero() || before.Seq == 0 || time.Since(before.Time) > 90*time.Second {
		return
	}
	var pts pointsJSON
	if err := r.replicaJSON(ctx, &pts, "points", "g1"); err != nil {
		r.fatalf("points after a clock step: %v", err)
	}
	if pts.Window.FirstSeq > before.Seq {
		r.fatalf("the any-point window starts at seq %d, past seq %d, the newest point %v before the clock step (%v ago): points were folded away by a stepped capture time",
			pts.Window.FirstSeq, before.Seq, at.Sub(before.Time).Round(time.Second), time.Since(at).Round(time.Second))
	}
}

// finish ends the workload and checks the last state.
func (r *chaosRun) finish(ctx context.Context) {
	r.round = chaos.Round{N: r.round.N + 1}
	vm := r.vm()
	if err := vm.Send("stop"); err != nil {
		r.fatalf("guest: %v", err)
	}
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	done, err := vm.Serial.Wait(tctx, guest.Done, 0)
	if err != nil {
		r.tally.Update(func(t *chaos.Tally) { t.GuestErrors++ })
		r.fatalf("the guest's workload did not end cleanly: %v", err)
	}
	r.checkMaxWrite(done)
	r.checkGuest(ctx)
	r.converge(ctx, false)
	r.sample(ctx, 3)
	r.logf("chaos: done")
}
