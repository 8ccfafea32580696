package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/qcdp/qcdp/integration/chaos"
	"github.com/qcdp/qcdp/integration/guest"
	"github.com/qcdp/qcdp/integration/harness"
	"github.com/qcdp/qcdp/qmp"
)

// The faults: how each kind of package chaos is injected and healed.

// startReplica starts `qcdp replica` and fails the run if it does not
// serve.
func (r *chaosRun) startReplica(ctx context.Context) {
	if !r.tryStartReplica(ctx) {
		r.fatalf("qcdp replica ended before it served: %v\n%s", r.replica.ExitErr(), r.replica.Report())
	}
}

// tryStartReplica starts `qcdp replica` inside the storage's namespace
// and reports whether it serves. One that ends before (it may not open
// its journals while its storage is full) is left down for ensureUp,
// which plays systemd's Restart=on-failure (RestartSec=2s, configs/systemd)
// once the round's faults have healed.
func (r *chaosRun) tryStartReplica(ctx context.Context) bool {
	r.replicas++
	name := fmt.Sprintf("replica-%d", r.replicas)
	// The last daemon's socket file must not pass for the new one's.
	os.Remove(r.rctl)
	p, err := harness.StartProc(r.dir, name, r.storage.Command(r.bin, "replica", "--config", r.rcfg)...)
	if err != nil {
		r.fatalf("%v", err)
	}
	r.t.Cleanup(func() {
		if err := p.Stop(10 * time.Second); err != nil && !r.failedStart[p] {
			r.t.Errorf("stop %s: %v", name, err)
		}
	})
	r.replica = p
	if err := harness.WaitSocket(ctx, r.rctl, p); err != nil {
		select {
		case <-p.Exited():
		default:
			r.fatalf("qcdp replica does not serve: %v\n%s", err, p.Report())
		}
		r.failedStart[p] = true
		r.replicaDown = true
		r.logf("%s ended before it served (%v): systemd would start it again in 2 s\n%s", name, p.ExitErr(), p.Log(5))
		return false
	}
	r.replicaDown = false
	return true
}

// startHost starts `qcdp host` under the fake systemd, as its
// Restart=on-failure would.
func (r *chaosRun) startHost(ctx context.Context) {
	if r.clockOffset > time.Minute && !r.lagging {
		r.lagging = true
		r.logf("host daemon started with its clock %v ahead: from now on a point's time may lag its writes", r.clockOffset)
	}
	r.hosts++
	r.host = r.sd.startHost(ctx, r.t, r.h, fmt.Sprintf("host-%d", r.hosts))
	r.hostDown = false
}

// killedByWatchdog reports whether the fake systemd killed the host.
func (r *chaosRun) killedByWatchdog() bool {
	select {
	case <-r.host.killed:
		return true
	default:
		return false
	}
}

// ensureUp starts again a daemon the round left down (the watchdog's
// kill) and fails the run on one that ended by itself.
func (r *chaosRun) ensureUp(ctx context.Context) {
	select {
	case <-r.host.Exited():
		if !r.hostDown && !r.killedByWatchdog() {
			r.fatalf("qcdp host ended by itself: %v\n%s", r.host.ExitErr(), r.host.Report())
		}
		if r.killedByWatchdog() && !r.hostDown {
			r.fatalf("the watchdog killed a qcdp host nobody stopped: its write path stalled for %v\n%s", chaosWatchdog, r.host.Report())
		}
		r.startHost(ctx)
	default:
	}
	for tries := 0; ; tries++ {
		select {
		case <-r.replica.Exited():
		default:
			return
		}
		if !r.replicaDown {
			r.fatalf("qcdp replica ended by itself: %v\n%s", r.replica.ExitErr(), r.replica.Report())
		}
		if r.failedStart[r.replica] {
			if tries == 30 {
				r.fatalf("qcdp replica does not start again after its faults healed (%d tries, as systemd would):\n%s", tries, r.replica.Report())
			}
			r.tally.Update(func(t *chaos.Tally) { t.Restarts++ })
			time.Sleep(2 * time.Second) // RestartSec
		}
		r.tryStartReplica(ctx)
	}
}

type step struct {
	at   time.Duration
	f    chaos.Fault
	heal bool
}

// overlap runs a round of faults that share it: each starts at its
// offset and heals after its hold, in time order on one goroutine.
func (r *chaosRun) overlap(ctx context.Context, fs []chaos.Fault) {
	var steps []step
	for _, f := range fs {
		steps = append(steps, step{f.Start, f, false}, step{f.Start + f.Hold, f, true})
	}
	sort.SliceStable(steps, func(i, j int) bool { return steps[i].at < steps[j].at })
	t0 := time.Now()
	for _, s := range steps {
		if d := time.Until(t0.Add(s.at)); d > 0 {
			time.Sleep(d)
		}
		if s.heal {
			r.heal(ctx, s.f)
		} else {
			r.inject(ctx, s.f)
		}
	}
}

func (r *chaosRun) inject(ctx context.Context, f chaos.Fault) {
	switch f.Kind {
	case chaos.LinkCut:
		r.link.Set(chaos.Condition{Cut: true})
	case chaos.LinkPartition:
		r.link.Set(chaos.Condition{Hold: true})
	case chaos.LinkDelay:
		r.link.Set(chaos.Condition{Delay: f.Delay})
	case chaos.LinkSqueeze:
		r.link.Set(chaos.Condition{Rate: f.Rate})
	case chaos.ReplicaKill:
		r.replicaDown = true
		r.replica.Kill()
	case chaos.ReplicaStop:
		r.replicaDown = true
		r.replica.Signal(syscall.SIGSTOP)
	case chaos.HostKill:
		r.hostDown = true
		r.host.Kill()
	case chaos.HostStop:
		r.hostDown = true
		r.hangs = append(r.hangs, span{from: time.Now()})
		r.host.Signal(syscall.SIGSTOP)
	case chaos.ClockStep:
		// Nothing here may wait on a daemon: another fault of the round
		// may have stopped it. The window is checked after the round.
		r.clockAt = time.Now()
		r.stepClock(f.Step)
	case chaos.ReplicaFSFull:
		n, err := r.storage.Fill()
		if err != nil {
			r.fatalf("fill the replica's storage: %v", err)
		}
		r.logf("%v: the replica's storage is full (%d MiB of ballast)", f, n>>20)
	default:
		r.fatalf("fault kind %s cannot share a round", f.Kind)
	}
	r.tally.Effective(f.Kind)
}

func (r *chaosRun) heal(ctx context.Context, f chaos.Fault) {
	switch f.Kind {
	case chaos.LinkCut, chaos.LinkPartition, chaos.LinkDelay, chaos.LinkSqueeze:
		r.link.Set(chaos.Condition{})
	case chaos.ReplicaKill:
		r.tryStartReplica(ctx)
	case chaos.ReplicaStop:
		r.replica.Signal(syscall.SIGCONT)
		r.replicaDown = false
	case chaos.HostKill:
		r.startHost(ctx)
	case chaos.HostStop:
		defer func() { r.hangs[len(r.hangs)-1].to = time.Now() }()
		if r.killedByWatchdog() {
			r.tally.Note(f.Kind, "watchdog kills")
			r.startHost(ctx)
			return
		}
		// The watchdog's deadline may pass before the daemon pets
		// again: it is resumed only once it has petted.
		pets := r.host.Pets()
		r.host.Signal(syscall.SIGCONT)
		for end := time.Now().Add(chaosWatchdog); time.Now().Before(end) && r.host.Pets() == pets && !r.killedByWatchdog(); {
			time.Sleep(20 * time.Millisecond)
		}
		if r.killedByWatchdog() {
			r.tally.Note(f.Kind, "watchdog kills")
			r.startHost(ctx)
			return
		}
		r.tally.Note(f.Kind, "resumed")
		r.hostDown = false
	case chaos.ClockStep:
		r.stepClock(0)
	case chaos.ReplicaFSFull:
		if err := r.storage.Drain(); err != nil {
			r.fatalf("drain the replica's storage: %v", err)
		}
	}
}

// solo runs a fault that takes a round of its own.
func (r *chaosRun) solo(ctx context.Context, f chaos.Fault) {
	switch f.Kind {
	case chaos.SpoolFull:
		r.spoolFull(ctx, f)
	case chaos.VMPoweroff, chaos.VMQuit, chaos.VMKill:
		r.restartVM(ctx, f)
	case chaos.JournalFlip, chaos.JournalCut, chaos.JournalIndex:
		r.journalDamage(ctx, f)
	case chaos.SpoolFlip, chaos.SpoolCut:
		r.spoolDamage(ctx, f)
	default:
		r.fatalf("fault kind %s has no action", f.Kind)
	}
}

// hmpWrite writes through the guest's device dev (its BlockBackend, as
// the guest's own writes go) with HMP qemu-io, and returns how long the
// write took.
func (r *chaosRun) hmpWrite(ctx context.Context, dev string, pattern byte, off, n int64) time.Duration {
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	start := time.Now()
	out, err := r.mon.HumanMonitorCommand(tctx, fmt.Sprintf(`qemu-io -d %s "write -P 0x%02x %d %d"`, dev, pattern, off, n))
	took := time.Since(start)
	if err != nil || strings.TrimSpace(out) != "" {
		r.fatalf("qemu-io write on %s: %q, %v", dev, out, err)
	}
	return took
}

// burst writes total bytes in 1 MiB writes into vdb's burst region and
// returns the longest write and the last pattern written at each MiB.
func (r *chaosRun) burst(ctx context.Context, f chaos.Fault, total int64) (time.Duration, map[int64]byte) {
	var longest time.Duration
	last := map[int64]byte{}
	for i := int64(0); i*1<<20 < total; i++ {
		off := burstFrom + (i%((chaosVMDisk1-burstFrom)>>20))<<20
		pattern := byte(f.N+int(i)) | 1
		longest = max(longest, r.hmpWrite(ctx, "vdb-dev/virtio-backend", pattern, off, 1<<20))
		last[off] = pattern
	}
	return longest, last
}

// checkBurst checks that the source holds what the burst wrote: every
// write completed in the guest's disk.
func (r *chaosRun) checkBurst(last map[int64]byte) {
	img, err := os.Open(r.disks[1].Path)
	if err != nil {
		r.fatalf("%v", err)
	}
	defer img.Close()
	buf := make([]byte, 1<<20)
	for off, p := range last {
		if _, err := img.ReadAt(buf, off); err != nil {
			r.fatalf("read the source at %d: %v", off, err)
		}
		for i, b := range buf {
			if b != p {
				r.tally.Update(func(t *chaos.Tally) { t.GuestErrors++ })
				r.fatalf("the burst's write at %d is not in the source: byte %d is %#x, want %#x", off, off+int64(i), b, p)
			}
		}
	}
}

// spoolFull cuts the link and writes more than the spool holds: the
// capture export must refuse at once (EIO to the mirror, the disk to
// tracking), the guest's writes all complete, and after the link heals
// the disk catches up.
func (r *chaosRun) spoolFull(ctx context.Context, f chaos.Fault) {
	before := r.status(ctx)
	r.link.Set(chaos.Condition{Cut: true})
	longest, last := r.burst(ctx, f, 80<<20)
	r.noteHeld("burst write", longest, chaosHeld+chaosSlack)
	filled := false
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		st := r.status(ctx)
		if st.NBDErrors > before.NBDErrors || st.anyDisk("tracking") {
			filled = true
			break
		}
	}
	if filled {
		r.tally.Effective(f.Kind)
	} else {
		r.tally.Note(f.Kind, "spool never full")
	}
	time.Sleep(f.Hold)
	r.link.Set(chaos.Condition{})
	r.checkBurst(last)
}

// restartVM ends the guest's boot the fault's way and boots it again
// with a new workload seed over the disks it left.
func (r *chaosRun) restartVM(ctx context.Context, f chaos.Fault) {
	r.checkGuest(ctx) // the boot's last events
	old := r.vm()
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	switch f.Kind {
	case chaos.VMPoweroff:
		if err := old.Send("poweroff"); err != nil {
			r.fatalf("%v", err)
		}
		done, err := old.Serial.Wait(tctx, guest.Done, 0)
		if err != nil {
			r.tally.Update(func(t *chaos.Tally) { t.GuestErrors++ })
			r.fatalf("the guest's workload did not end cleanly at poweroff: %v", err)
		}
		r.checkMaxWrite(done)
	case chaos.VMQuit:
		if err := r.mon.Execute(tctx, "quit", nil, nil); err != nil && !errors.Is(err, qmp.ErrClosed) {
			r.fatalf("QMP quit: %v", err)
		}
	case chaos.VMKill:
		old.Kill()
	}
	if err := old.Wait(tctx); err != nil && f.Kind != chaos.VMKill {
		r.fatalf("QEMU did not exit cleanly: %v\n%s", err, old.Report())
	}
	<-old.Exited()
	r.mon.Close()
	r.boot(ctx, r.areas(ctx))
	r.tally.Effective(f.Kind)
	r.waitAttached(ctx, r.boots[len(r.boots)-1].epoch.Boot)
}

// boot starts the guest's next boot over base (nil: blank disks) and
// connects the suite's monitor.
func (r *chaosRun) boot(ctx context.Context, base [][]byte) {
	n := len(r.boots) + 1
	p := chaosParams(r.cfg.seed, n)
	os.Remove(r.monPath)
	gdir := filepath.Join(r.dir, fmt.Sprintf("guest-%d", n))
	if err := os.MkdirAll(gdir, 0o755); err != nil {
		r.fatalf("%v", err)
	}
	vm := guest.Boot(ctx, r.t, r.art, guest.Options{
		Workload: &p, Disks: r.disks, Dir: gdir,
		QMPSocket: r.h.QMPSocket(),
		ExtraArgs: []string{"-qmp", "unix:" + r.monPath + ",server=on,wait=off"},
	})
	ep, err := chaos.NewEpoch(n, p, base, vm.Started)
	if err != nil {
		r.fatalf("%v", err)
	}
	r.boots = append(r.boots, &chaosBoot{epoch: ep, vm: vm})
	r.tally.Update(func(t *chaos.Tally) { t.Boots++ })
	// A boot takes seconds on an idle machine; under TCG on a busy one it
	// can take a minute or more. The monitor then has a budget of its own.
	tctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if _, err := vm.Serial.Wait(tctx, guest.Ready, 0); err != nil {
		r.fatalf("guest boot %d: %v\n%s", n, err, vm.Report())
	}
	mctx, mcancel := context.WithTimeout(ctx, 30*time.Second)
	defer mcancel()
	tctx = mctx
	if err := harness.WaitSocket(tctx, r.monPath, nil); err != nil {
		r.fatalf("%v", err)
	}
	if r.mon, err = qmp.Dial(tctx, r.monPath); err != nil {
		r.fatalf("the suite's monitor of boot %d: %v", n, err)
	}
	r.logf("guest boot %d (workload seed %d) is up", n, p.Seed)
}

// areas reads the workload area of each source disk (QEMU stopped).
func (r *chaosRun) areas(ctx context.Context) [][]byte {
	p := r.boots[0].epoch.Params
	var out [][]byte
	for i := range r.disks {
		b := r.source(ctx, i)
		out = append(out, b[:p.AreaBytes()])
	}
	return out
}

// source reads source disk i whole, as raw bytes (qcow2 through
// qemu-img: QEMU may have it open, its metadata is preallocated).
func (r *chaosRun) source(ctx context.Context, i int) []byte {
	d := r.disks[i]
	path := d.Path
	if d.Format == "qcow2" {
		path = filepath.Join(r.dir, "source-"+d.NodeName+".raw")
		os.Remove(path)
		if err := harness.Convert(ctx, d.Path, d.Format, path, "raw"); err != nil {
			r.fatalf("%v", err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		r.fatalf("%v", err)
	}
	return b
}

// journalDir is the group's journal as the suite reaches it.
func (r *chaosRun) journalDir() string {
	return r.storage.Path(filepath.Join(r.journals, "acme", "g1"))
}

// journalDamage damages the journal at rest and checks that the damage is
// reported and never served; then repairs the group the documented way.
// An index file is a cache: its damage must be healed, not reported.
func (r *chaosRun) journalDamage(ctx context.Context, f chaos.Fault) {
	r.converge(ctx, true) // the guest stays paused: the source is the newest point
	defer r.resume(ctx)
	if f.Graceful {
		if err := r.replica.Stop(10 * time.Second); err != nil {
			r.fatalf("qcdp replica did not stop on SIGTERM: %v", err)
		}
	} else {
		r.replica.Kill()
	}
	r.replicaDown = true
	pattern := []string{"*.seg", "*.lay"}
	if f.Kind == chaos.JournalIndex {
		pattern = []string{"*.idx"}
	}
	var files []string
	for _, p := range pattern {
		m, _ := filepath.Glob(filepath.Join(r.journalDir(), p))
		files = append(files, m...)
	}
	sort.Strings(files)
	if len(files) == 0 {
		r.tally.Note(f.Kind, "nothing to damage")
		r.startReplica(ctx)
		return
	}
	dmg, err := chaos.Corrupt(chaos.Pick(files, f.PickFile), f.PickOffset, f.Bit, f.Kind == chaos.JournalCut)
	if err != nil {
		r.fatalf("damage the journal: %v", err)
	}
	r.logf("%v: %v", f, dmg)
	r.startReplica(ctx)
	out, verr := exec.CommandContext(ctx, r.bin, "verify", "--socket", r.rctl, "g1").CombinedOutput()
	if f.Kind == chaos.JournalIndex {
		if verr != nil {
			r.fatalf("damage to an index file (a cache) was not healed: qcdp verify: %v\n%s", verr, out)
		}
		r.tally.Effective(f.Kind)
		r.servedCheck(ctx, f, dmg, false)
		return
	}
	if verr == nil || !strings.Contains(string(out), dmg.Base()) {
		r.tally.Update(func(t *chaos.Tally) { t.Unreported++ })
		r.fatalf("journal damage not reported: %v; qcdp verify said (%v):\n%s", dmg, verr, out)
	}
	r.tally.Effective(f.Kind)
	r.servedCheck(ctx, f, dmg, true)
	r.repairJournal(ctx, f)
}

// servedCheck reads the newest point and a few others after damage to
// the journal (the guest paused: the source is the newest point). A
// view may be refused or fail to read; what it serves must be right.
func (r *chaosRun) servedCheck(ctx context.Context, f chaos.Fault, dmg chaos.Damage, damaged bool) {
	var pts pointsJSON
	if err := r.replicaJSON(ctx, &pts, "points", "g1"); err != nil {
		if !damaged {
			r.fatalf("after index damage, qcdp points: %v", err)
		}
		r.tally.Note(f.Kind, "quarantined")
		return
	}
	newest := fmt.Sprint(pts.Window.LastSeq)
	views, pt, err := r.views(ctx, "--seq", newest)
	switch {
	case err != nil && damaged:
		r.tally.Note(f.Kind, "newest point refused")
	case err != nil:
		r.fatalf("after index damage, the newest point: %v", err)
	default:
		for i := range r.disks {
			src := r.source(ctx, i)
			if off := firstDiff(src, views[i]); off >= 0 {
				r.tally.Update(func(t *chaos.Tally) { t.CorruptServed++ })
				r.fatalf("after %v, the newest point (seq %d) serves disk %s wrong from byte %d", dmg, pt.Seq, r.disks[i].NodeName, off)
			}
			r.tally.Update(func(t *chaos.Tally) { t.Bytes += int64(len(src)) })
		}
		r.tally.Note(f.Kind, "newest point served right")
	}
	for range 2 {
		seq, ok := r.pickPoint(pts)
		if !ok {
			break
		}
		views, pt, err := r.views(ctx, "--seq", fmt.Sprint(seq))
		if err != nil {
			if !damaged {
				r.fatalf("after index damage, point %d: %v", seq, err)
			}
			r.tally.Note(f.Kind, "older point refused")
			continue
		}
		if err := r.judge(pt, views); err != nil {
			r.tally.Update(func(t *chaos.Tally) { t.CorruptServed++ })
			r.fatalf("after %v, point %d serves what the guest never had: %v", dmg, seq, err)
		}
	}
}

// repairJournal is the documented repair of a corrupt journal
// (replica/receiver/doc.go), in its order: stop the host, move its spool
// aside, stop the replica, move the journal out of the storage root,
// start the replica, then the host; detach and attach the VM so that new
// capture jobs copy the disks whole. The stream must then go on into the
// new journal, bound to the new spool.
func (r *chaosRun) repairJournal(ctx context.Context, f chaos.Fault) {
	r.hostDown = true
	if err := r.host.Stop(10 * time.Second); err != nil {
		r.fatalf("qcdp host did not stop on SIGTERM: %v", err)
	}
	r.moveSpoolAside(f)
	if err := r.replica.Stop(10 * time.Second); err != nil {
		r.fatalf("qcdp replica did not stop on SIGTERM: %v", err)
	}
	r.replicaDown = true
	r.moveJournalAside()
	r.startReplica(ctx)
	r.startHost(ctx)
	r.reattach(ctx)
	st, pts, ok := r.waitQuiet(ctx, chaosRepair)
	if !ok {
		st, pts, ok = r.waitQuiet(ctx, chaosConverge)
	}
	if !ok {
		r.tally.Update(func(t *chaos.Tally) { t.Losses++ })
		r.fatalf("after the documented repair of a corrupt journal the replica did not converge within %v: host status %s\nreplica window %+v",
			chaosConverge, st.raw, pts.Window)
	}
	r.tally.Note(f.Kind, "repaired")
}

// moveSpoolAside moves the group's spool out of the host's state
// directory (the host stopped).
func (r *chaosRun) moveSpoolAside(f chaos.Fault) {
	aside := filepath.Join(r.dir, "aside")
	os.MkdirAll(aside, 0o750)
	if err := os.Rename(r.h.SpoolDir, filepath.Join(aside, fmt.Sprintf("spool-%d", f.N))); err != nil {
		r.fatalf("move the spool aside: %v", err)
	}
}

// moveJournalAside moves the group's journal out of the storage root
// (keeping only the newest one moved before, for a post-mortem).
func (r *chaosRun) moveJournalAside() {
	aside := r.storage.Path(filepath.Join(r.storage.Dir, "aside"))
	if r.asides > 0 {
		os.RemoveAll(filepath.Join(aside, fmt.Sprintf("g1-%d", r.asides-1)))
	}
	if err := os.MkdirAll(aside, 0o750); err != nil {
		r.fatalf("%v", err)
	}
	to := filepath.Join(aside, fmt.Sprintf("g1-%d", r.asides))
	r.asides++
	if err := os.Rename(r.journalDir(), to); err != nil {
		r.fatalf("move the journal aside: %v", err)
	}
	r.logf("journal moved aside to %s", to)
}

// reattach detaches and attaches the guest's disks: a new capture with a
// full copy.
func (r *chaosRun) reattach(ctx context.Context) {
	// A daemon just started finds the VM at its first scan.
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end) && len(r.status(ctx).Disks) != 2; {
		time.Sleep(100 * time.Millisecond)
	}
	run(ctx, r.t, r.bin, "detach", "--socket", r.h.Control, "vm1")
	since := time.Now()
	run(ctx, r.t, r.bin, "attach", "--socket", r.h.Control, "vm1")
	r.waitAttached(ctx, since)
}

// spoolDamage lets the spool hold records the replica has not received,
// stops the host, damages a spool segment that is not the last (so it is
// corruption, not a torn tail), and checks that the damage is named and
// the spool refused; then repairs: spool and journal aside, re-attach.
func (r *chaosRun) spoolDamage(ctx context.Context, f chaos.Fault) {
	r.link.Set(chaos.Condition{Cut: true})
	_, last := r.burst(ctx, f, 4<<20)
	time.Sleep(300 * time.Millisecond)
	r.hostDown = true
	if f.Graceful {
		if err := r.host.Stop(10 * time.Second); err != nil {
			r.fatalf("qcdp host did not stop on SIGTERM: %v", err)
		}
	} else {
		r.host.Kill()
	}
	r.checkBurst(last)
	segs, _ := filepath.Glob(filepath.Join(r.h.SpoolDir, "*.seg"))
	sort.Strings(segs)
	if len(segs) < 2 {
		r.fatalf("the spool has %d segments after a 4 MiB burst into 1 MiB segments", len(segs))
	}
	dmg, err := chaos.Corrupt(chaos.Pick(segs[:len(segs)-1], f.PickFile), f.PickOffset, f.Bit, f.Kind == chaos.SpoolCut)
	if err != nil {
		r.fatalf("damage the spool: %v", err)
	}
	r.logf("%v: %v", f, dmg)
	out, verr := exec.CommandContext(ctx, r.bin, "spool", "verify", "--spool", r.h.SpoolDir).CombinedOutput()
	if verr == nil || !strings.Contains(string(out), dmg.Base()) {
		r.tally.Update(func(t *chaos.Tally) { t.Unreported++ })
		r.fatalf("spool damage not reported: %v; qcdp spool verify said (%v):\n%s", dmg, verr, out)
	}
	// qcdp host must refuse the spool, naming it, rather than ship it.
	r.hosts++
	probe, err := harness.StartProc(r.dir, fmt.Sprintf("host-%d-probe", r.hosts), r.bin, "host", "--config", r.h.Config)
	if err != nil {
		r.fatalf("%v", err)
	}
	select {
	case <-probe.Exited():
		if probe.ExitErr() == nil || !strings.Contains(probe.Log(50), dmg.Base()) {
			r.tally.Update(func(t *chaos.Tally) { t.Unreported++ })
			r.fatalf("qcdp host on a damaged spool (%v) ended with %v without naming it:\n%s", dmg, probe.ExitErr(), probe.Log(30))
		}
	case <-time.After(20 * time.Second):
		probe.Kill()
		r.tally.Update(func(t *chaos.Tally) { t.Unreported++ })
		r.fatalf("qcdp host runs on a damaged spool (%v):\n%s", dmg, probe.Log(30))
	}
	r.tally.Effective(f.Kind)
	r.repairSpool(ctx, f)
}

// repairSpool moves the refused spool aside and starts the host on a new
// one, which the replica must refuse as diverged (never spliced); then
// the journal goes aside too and the disks are re-attached.
func (r *chaosRun) repairSpool(ctx context.Context, f chaos.Fault) {
	r.moveSpoolAside(f)
	r.link.Set(chaos.Condition{})
	r.startHost(ctx)
	diverged := ""
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end) && diverged == ""; time.Sleep(200 * time.Millisecond) {
		if st := r.status(ctx); st.Replica != nil {
			diverged = st.Replica.Diverged
		}
	}
	if diverged == "" {
		r.fatalf("the replica did not refuse a new spool for a journal bound to another: %+v", r.status(ctx))
	}
	r.tally.Note(f.Kind, "new spool refused as diverged")
	if err := r.replica.Stop(10 * time.Second); err != nil {
		r.fatalf("qcdp replica did not stop on SIGTERM: %v", err)
	}
	r.replicaDown = true
	r.moveJournalAside()
	r.startReplica(ctx)
	r.reattach(ctx)
	r.tally.Note(f.Kind, "repaired")
}

// stepClock sets the host daemon's clock offset (0: its clock is right
// again); the daemon reads it within 100 ms.
func (r *chaosRun) stepClock(d time.Duration) {
	if err := os.WriteFile(r.clock, []byte(d.String()+"\n"), 0o644); err != nil {
		r.fatalf("step the host's clock: %v", err)
	}
	r.clockOffset = d
}
