package protect

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/filter"
	"github.com/qcdp/qcdp/hypervisor"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/shipper"
	"github.com/qcdp/qcdp/shipper/sender"
)

// The host's side of a failover at the recovery site (package failover).
//
// Failed over. When a group fails over there, its replica refuses the
// group's stream with stream.CodeFailedOver, and the group's sender says
// so (sender.Stats.FailedOver). Every scan looks (failovers): the captures
// of the group's VMs are then detached as `qcdp detach` does (the mirror
// jobs are cancelled, QEMU's dirty bitmaps go on tracking, nothing is lost)
// but the disks stay declared, and `qcdp status` shows them failed-over
// with the replica's words. While the group is failed over no VM of it is
// attached, neither by a scan nor by a VM's start nor by `qcdp attach`.
// The sender keeps saying Hello; when one is welcomed again (the recovery
// site undid the failover), the VMs are attached again and their bitmap
// resyncs send only what changed meanwhile. A daemon that starts while its
// group is failed over learns it at its sender's first Hello: what the
// first scan attached before is detached at the next.
//
// Planned failover (PrepareFailover, `qcdp failover prepare GROUP`): the
// group's running VMs are shut down cleanly (libvirt: the ACPI power
// button, or the guest agent; see Shutdowner), and once each is stopped and
// its captures have ended, the final bookmark (FinalBookmark) goes into the
// stream; the call returns once the replica holds it (RPO 0). Nothing may
// follow it in the stream until the recovery site fails over (`qcdp
// failover planned GROUP` checks that it is the newest record): until a VM
// of the group is attached again, the engine writes nothing to the group's
// stream on its own (no scheduled bookmark, no definition, no membership
// change) and refuses bookmarks (ErrPrepared). Stopped libvirt domains stay
// listed, so their disks stay declared. A VM found by its QMP socket leaves
// the group's membership when it stops (members.go): planned failover is
// for libvirt VMs, and a group holding QMP-socket VMs is refused.

// FinalBookmark is the user bookmark PrepareFailover puts into a group's
// stream once the group's VMs are stopped: the point a planned failover
// starts the standbys from. It is package failover's FinalBookmark, which
// the recovery site looks for; the host's engine does not import the
// recovery site's (cmd/qcdp's tests check that both agree). Never change.
const FinalBookmark = "qcdp-planned-failover"

// StateFailedOver is the state `qcdp status` shows for the disks of a
// group that failed over at the recovery site (DESIGN.md, "Words").
const StateFailedOver = "failed-over"

// Errors of the failover side.
var (
	// ErrFailedOver: the group failed over at the recovery site; its VMs
	// are attached again when the failover is undone there.
	ErrFailedOver = errors.New("protect: the group has failed over at the recovery site")
	// ErrPrepared: the group was prepared for a planned failover; nothing
	// may follow its final point in the stream.
	ErrPrepared = errors.New("protect: the group is prepared for a planned failover")
	// ErrPrepare: a planned failover cannot be prepared now (why follows).
	ErrPrepare = errors.New("protect: planned failover refused")
)

// DefaultPrepareTimeout bounds each of PrepareFailover's waits (the VMs
// stopping, the replica holding the final point) when none is given.
const DefaultPrepareTimeout = 5 * time.Minute

// Bounds of the failover side's own steps.
const (
	// failedOverDetach bounds detaching one VM's captures when its
	// group failed over.
	failedOverDetach = 30 * time.Second
	// shutdownAsk bounds asking one VM to shut down.
	shutdownAsk = 30 * time.Second
)

// prepareTick is how often PrepareFailover asks the hypervisors whether
// the VMs it shut down are stopped: the listing is the truth (under
// libvirt a stopped domain's monitor may stay open), and it has no event
// for every source.
var prepareTick = time.Second

// Shutdowner is a Source that asks a guest to shut down cleanly
// (hypervisor.Libvirt and hypervisor.Sockets are): through its QEMU guest
// agent when agent is set, else with the ACPI power button. It returns
// once asked; ListVMs says when the VM has stopped.
type Shutdowner interface {
	ShutdownVM(ctx context.Context, vm hypervisor.VM, agent bool) error
}

var (
	_ Shutdowner = (*hypervisor.Libvirt)(nil)
	_ Shutdowner = (*hypervisor.Sockets)(nil)
)

// failoverStep is a group's failover state after its sender's word: cur
// is the replica's message while the group is failed over ("" while it is
// not), refused what the sender reports now (sender.Stats.FailedOver, ""
// when its last Hello was welcomed or it has not been refused so),
// welcomed whether the sender has been welcomed since it started.
//
//	refused  cur  welcomed  next
//	set      any  any       refused  failed over (the newest words)
//	""       ""   any       ""       streaming
//	""       set  true      ""       welcomed again: the failover was undone
//	""       set  false     cur      a new sender (a healed spool's) knows nothing yet
func failoverStep(cur, refused string, welcomed bool) string {
	switch {
	case refused != "":
		return refused
	case cur != "" && !welcomed:
		return cur
	}
	return ""
}

// groupNames returns the groups' names, sorted.
func (d *Engine) groupNames() []string {
	names := make([]string, 0, len(d.groups))
	for n := range d.groups {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// failovers follows each group's failover at the recovery site as its
// sender reports it (failoverStep): when the group fails over its VMs'
// captures are detached, while it is any VM still captured (a detach that
// failed) is detached again, and when its replica welcomes it again its
// VMs are attached again. Callers hold attachMu.
func (d *Engine) failovers(ctx context.Context) {
	for _, name := range d.groupNames() {
		g := d.groups[name]
		snd := g.Sender()
		if snd == nil {
			continue
		}
		refused := snd.Stats().FailedOver
		welcomed := snd.Welcomed()
		d.mu.Lock()
		cur := g.failedOver
		next := failoverStep(cur, refused, welcomed)
		g.failedOver = next
		d.mu.Unlock()
		switch {
		case cur == "" && next != "":
			d.log.Warn("group failed over at the recovery site: its captures are detached (QEMU tracks the writes in dirty bitmaps) and not attached again until the recovery site undoes the failover",
				"group", name, "why", next)
			d.detachFailedOver(ctx, g)
		case next != "":
			d.detachFailedOver(ctx, g)
		case cur != "":
			d.log.Info("group welcomed by its replica again: the recovery site undid the failover; its VMs are attached again and resync what changed",
				"group", name)
			d.welcomedBack(ctx, g)
		}
	}
}

// detachFailedOver detaches the captures of g's VMs that are still
// captured, leaving their disks declared. Callers hold attachMu.
func (d *Engine) detachFailedOver(ctx context.Context, g *group) {
	d.mu.Lock()
	var vms []*vmCapture
	for _, v := range d.vms {
		if v.group == g && !v.detached && !v.failedOver {
			vms = append(vms, v)
		}
	}
	d.mu.Unlock()
	for _, v := range vms {
		if err := d.stopCaptures(ctx, v); err != nil {
			d.log.Warn("failed-over group: a VM's captures could not be detached; tried again at the next scan",
				"group", g.cfg.Name, "vm", v.vm.Name, "id", v.vm.ID, "err", err)
			continue
		}
		d.mu.Lock()
		v.failedOver = true
		d.mu.Unlock()
		d.log.Info("failed-over group: VM's captures detached", "group", g.cfg.Name, "vm", v.vm.Name, "id", v.vm.ID)
	}
}

// stopCaptures detaches each capture of v that still runs, as Detach
// does (the job is cancelled, never completed; the bitmap goes on
// tracking), without taking its disks out of the group's membership.
func (d *Engine) stopCaptures(ctx context.Context, v *vmCapture) error {
	var errs []error
	for _, dc := range v.disks {
		if dc.ended() {
			continue
		}
		dctx, cancel := context.WithTimeout(ctx, failedOverDetach)
		err := dc.cap.Detach(dctx)
		if err == nil {
			select {
			case <-dc.done:
			case <-dctx.Done():
				err = fmt.Errorf("detach %s: wait for its capture to end: %w", dc.name, dctx.Err())
			}
		}
		cancel()
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// welcomedBack attaches again the VMs of g whose captures the failover
// detached (not those the operator detached meanwhile). Callers hold
// attachMu; g.failedOver is "" already.
func (d *Engine) welcomedBack(ctx context.Context, g *group) {
	d.mu.Lock()
	var vms []*vmCapture
	for _, v := range d.vms {
		if v.group == g && v.failedOver && !v.detached {
			vms = append(vms, v)
		}
	}
	d.mu.Unlock()
	for _, v := range vms {
		if err := d.reattach(ctx, v); err != nil {
			d.log.Warn("attach a VM again after its group's failover was undone", "group", g.cfg.Name, "vm", v.vm.Name, "id", v.vm.ID, "err", err)
		}
	}
}

// failedOverErr is ErrFailedOver for g, nil when g is not failed over.
func (d *Engine) failedOverErr(g *group) error {
	d.mu.Lock()
	why := g.failedOver
	d.mu.Unlock()
	if why == "" {
		return nil
	}
	return fmt.Errorf("%w: group %s: %s; its VMs are attached again when the failover is undone there", ErrFailedOver, g.cfg.Name, why)
}

// sealedLocked reports whether the engine must write nothing to g's
// stream on its own: g failed over, or is being (or was) prepared for a
// planned failover. Callers hold d.mu.
func (g *group) sealedLocked() bool {
	return g.failedOver != "" || g.preparing || g.final != 0
}

// sealed is sealedLocked for the group called name.
func (d *Engine) sealed(name string) bool {
	g, ok := d.groups[name]
	if !ok {
		return false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return g.sealedLocked()
}

// PrepareResult says what PrepareFailover did.
type PrepareResult struct {
	Group    string `json:"group"`
	Bookmark string `json:"bookmark"` // FinalBookmark
	// Seq is the final point's seq: the replica holds every record up to
	// it, and nothing follows it.
	Seq uint64 `json:"seq"`
	// Stopped are the VMs of the group stopped for it (asked to shut
	// down, or found shutting down).
	Stopped []string `json:"stopped"`
	// Skipped are running VMs the policy puts in the group that are not
	// in its membership (detached by the operator, or never attached),
	// with why: neither shut down nor failed over.
	Skipped []string      `json:"skipped,omitempty"`
	Took    time.Duration `json:"took_ns"`
}

// prepPlan is what PrepareFailover found before it changed anything.
type prepPlan struct {
	g        *group
	targets  []*vmCapture           // the group's attached VMs
	running  map[string]bool        // targets listed running, by VM id: asked to shut down
	refusals map[*diskCapture]int64 // each target disk's refusals when it was seen in sync
}

// PrepareFailover is a planned failover's host half (`qcdp failover
// prepare GROUP`): every running VM of group (attached, not detached by
// the operator) is asked to shut down cleanly (agent: through its guest
// agent, else the ACPI power button), and once each is stopped and its
// captures have ended, the final bookmark (FinalBookmark) goes into the
// group's stream; it returns once the replica holds it. Each wait is
// bounded by timeout (DefaultPrepareTimeout when 0).
//
// It is refused, with nothing changed, when the group has no replica or
// its stream does not flow now, failed over, holds VMs found by their QMP socket (planned failover is for
// libvirt VMs), has a disk that is not in sync, or a declared VM that runs
// uncaptured. A VM still running at the timeout fails it, naming the VM,
// with nothing marked. Writes refused while the VMs shut down fail it too
// (the stream lacks them). After the mark, a replica that does not hold it
// within timeout fails it, the mark standing (running it again marks a new
// final point). See the file's comment for what the engine then holds
// back.
func (d *Engine) PrepareFailover(ctx context.Context, group string, timeout time.Duration, agent bool) (PrepareResult, error) {
	start := time.Now()
	res := PrepareResult{Group: group, Bookmark: FinalBookmark, Stopped: []string{}}
	g, ok := d.groups[group]
	if !ok {
		return res, fmt.Errorf("%w: %q", ErrUnknownGroup, group)
	}
	if timeout <= 0 {
		timeout = DefaultPrepareTimeout
	}
	snd := g.Sender()
	if snd == nil {
		return res, fmt.Errorf("%w: group %s has no replica to fail over to", ErrPrepare, group)
	}
	// Its VMs are not shut down for a stream that could not drain.
	switch st := snd.Stats(); {
	case st.FailedOver != "":
		return res, fmt.Errorf("%w: group %s: %s", ErrFailedOver, group, st.FailedOver)
	case st.Diverged != "":
		return res, fmt.Errorf("%w: group %s: its replica refuses the stream as diverged: %s", ErrPrepare, group, st.Diverged)
	case !st.Connected:
		why := ""
		if st.LastError != "" {
			why = " (" + st.LastError + ")"
		}
		return res, fmt.Errorf("%w: group %s: its replica is not connected%s; prepare again once it streams (see `qcdp status`)", ErrPrepare, group, why)
	}
	if err := d.beginPrepare(g); err != nil {
		return res, err
	}
	defer func() {
		d.mu.Lock()
		g.preparing = false
		d.mu.Unlock()
	}()
	plan, skipped, err := d.planPrepare(ctx, g)
	if err != nil {
		return res, err
	}
	res.Skipped = skipped
	for _, v := range plan.targets {
		res.Stopped = append(res.Stopped, v.vm.Name)
	}
	sort.Strings(res.Stopped)
	d.log.Info("planned failover: shutting the group's VMs down", "group", group, "vms", res.Stopped, "agent", agent, "timeout", timeout)
	if err := d.shutdownAll(ctx, plan, agent); err != nil {
		return res, err
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	err = d.waitStopped(wctx, plan, timeout, agent)
	cancel()
	if err != nil {
		return res, err
	}
	seq, err := d.markFinal(ctx, plan)
	if err != nil {
		return res, err
	}
	res.Seq = seq
	d.log.Info("planned failover: final point marked; waiting until the replica holds it", "group", group, "seq", seq)
	actx, cancel := context.WithTimeout(ctx, timeout)
	err = d.waitFinalAcked(actx, g, seq, timeout)
	cancel()
	if err != nil {
		return res, err
	}
	res.Took = time.Since(start)
	d.log.Info("planned failover prepared: the replica holds the final point; fail the group over at the recovery site",
		"group", group, "seq", seq, "stopped", res.Stopped, "took", res.Took.Round(time.Millisecond))
	return res, nil
}

// beginPrepare marks g as being prepared, unless it cannot be.
func (d *Engine) beginPrepare(g *group) error {
	if h := g.Health(); h.State != shipper.StateOK {
		return fmt.Errorf("%w: group %s: its spool is %s", ErrPrepare, g.cfg.Name, h)
	}
	if err := d.failedOverErr(g); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if g.preparing {
		return fmt.Errorf("%w: group %s is being prepared already", ErrPrepare, g.cfg.Name)
	}
	g.preparing = true
	return nil
}

// listAll lists the VMs of every source by id. A source that fails makes
// it fail: what it lists is unknown.
func (d *Engine) listAll(ctx context.Context) (map[string]hypervisor.VM, error) {
	out := map[string]hypervisor.VM{}
	for _, src := range d.sources {
		vms, err := src.ListVMs(ctx)
		if err != nil {
			return out, fmt.Errorf("list VMs: %w", err)
		}
		for _, vm := range vms {
			out[vm.ID] = vm
		}
	}
	return out, nil
}

// declaredVMs returns the ids of the VMs declared in g's membership.
func declaredVMs(g *group) map[string]bool {
	out := map[string]bool{}
	decl, _ := g.Sequencer().Members()
	for _, m := range decl.Disks {
		if m.VM != "" {
			out[m.VM] = true
		}
	}
	return out
}

// planPrepare checks that g can be prepared, and returns what to shut
// down and the running VMs of the group's policy left out (skipped).
func (d *Engine) planPrepare(ctx context.Context, g *group) (prepPlan, []string, error) {
	name := g.cfg.Name
	plan := prepPlan{g: g, running: map[string]bool{}, refusals: map[*diskCapture]int64{}}
	listed, err := d.listAll(ctx)
	if err != nil {
		return plan, nil, fmt.Errorf("%w: group %s: cannot tell which of its VMs run: %w", ErrPrepare, name, err)
	}
	declared := declaredVMs(g)
	var qmpVMs, notInSync, uncaptured, skipped []string
	targets, detached := map[string]bool{}, map[string]bool{}
	d.mu.Lock()
	for _, v := range d.vms {
		if v.group != g {
			continue
		}
		if v.detached {
			detached[v.vm.ID] = true
			continue
		}
		targets[v.vm.ID] = true
		plan.targets = append(plan.targets, v)
		if v.vm.Source != hypervisor.SourceLibvirt {
			qmpVMs = append(qmpVMs, v.vm.Name)
		}
		if vm, ok := listed[v.vm.ID]; !ok || !vm.Running {
			continue // stopping already: waited for only
		}
		plan.running[v.vm.ID] = true
		for _, dc := range v.disks {
			st, cause := dc.cap.State()
			switch {
			case dc.ended() && st == filter.Detached:
				why := "detached"
				if dc.err != nil {
					why = dc.err.Error()
				}
				notInSync = append(notInSync, fmt.Sprintf("%s %s: not captured (%s)", v.vm.Name, dc.disk.Target, why))
			case st != filter.Syncing:
				s := fmt.Sprintf("%s %s: %s", v.vm.Name, dc.disk.Target, st)
				if cause != nil {
					s += " (" + cause.Error() + ")"
				}
				notInSync = append(notInSync, s)
			}
			plan.refusals[dc] = dc.exp.Refusals()
		}
	}
	d.mu.Unlock()
	for id, vm := range listed {
		switch {
		case !vm.Running, targets[id]:
		case detached[id]:
			skipped = append(skipped, vm.Name+": detached by the operator")
		case declared[id] && vm.Source != hypervisor.SourceLibvirt:
			qmpVMs = append(qmpVMs, vm.Name)
		case declared[id]:
			uncaptured = append(uncaptured, vm.Name)
		default:
			if gc, _, err := d.pol.GroupFor(configs.VMIdentity{Name: vm.Name, UUID: vm.UUID, Labels: labelsOf(vm)}); err == nil && gc.Name == name {
				skipped = append(skipped, vm.Name+": not protected (see `qcdp status`)")
			}
		}
	}
	sort.Strings(qmpVMs)
	sort.Strings(notInSync)
	sort.Strings(uncaptured)
	sort.Strings(skipped)
	switch {
	case len(qmpVMs) > 0:
		return plan, nil, fmt.Errorf("%w: group %s holds VMs found by their QMP socket (%s): planned failover is for libvirt VMs (a QMP-socket VM leaves the group's membership when it stops, so the final point would hold none of its disks); fail the group over unplanned instead (`qcdp failover start %s` at the recovery site)",
			ErrPrepare, name, strings.Join(qmpVMs, ", "), name)
	case len(uncaptured) > 0:
		return plan, nil, fmt.Errorf("%w: group %s: VMs %s run and are in the group's membership but their disks are not captured: attach them (`qcdp attach VM`) and wait until their disks are syncing, or shut them down, then prepare again",
			ErrPrepare, name, strings.Join(uncaptured, ", "))
	case len(notInSync) > 0:
		return plan, nil, fmt.Errorf("%w: group %s: not every disk is in sync, so the final point would not be a restore point (%s); wait until `qcdp status` shows them syncing, then prepare again",
			ErrPrepare, name, strings.Join(notInSync, "; "))
	}
	if owed := g.Sequencer().RecopyOwed(); len(owed) > 0 {
		return plan, nil, fmt.Errorf("%w: group %s: disks %s are owed a full re-copy (their spool lost writes): wait until it ran, then prepare again",
			ErrPrepare, name, strings.Join(owed, ", "))
	}
	return plan, skipped, nil
}

// shutdownAll asks every running target to shut down. A request that
// fails fails the call (the VMs asked go on shutting down).
func (d *Engine) shutdownAll(ctx context.Context, plan prepPlan, agent bool) error {
	var failed, asked []string
	var errs []error
	for _, v := range plan.targets {
		if !plan.running[v.vm.ID] {
			continue
		}
		sd, ok := v.src.(Shutdowner)
		if !ok {
			failed = append(failed, v.vm.Name)
			errs = append(errs, fmt.Errorf("VM %s: its hypervisor cannot shut it down", v.vm.Name))
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, shutdownAsk)
		err := sd.ShutdownVM(sctx, v.vm, agent)
		cancel()
		if err != nil {
			failed = append(failed, v.vm.Name)
			errs = append(errs, err)
			continue
		}
		asked = append(asked, v.vm.Name)
	}
	if len(errs) == 0 {
		return nil
	}
	advice := "shut them down yourself and run `qcdp failover prepare " + plan.g.cfg.Name + "` again"
	if agent {
		advice = "try without --agent (the ACPI power button), or " + advice
	}
	msg := fmt.Sprintf("protect: group %s: could not ask %s to shut down: %v; nothing was marked; %s",
		plan.g.cfg.Name, strings.Join(failed, ", "), errors.Join(errs...), advice)
	if len(asked) > 0 {
		msg += fmt.Sprintf(" (%s were asked and go on shutting down)", strings.Join(asked, ", "))
	}
	return errors.New(msg)
}

// waitStopped waits until no target is listed running and every target's
// captures have ended. A target its hypervisor lists stopped has no QEMU
// any more: its captures still waiting on its monitor (under libvirt a
// stopped QEMU's monitor may stay open) are ended.
func (d *Engine) waitStopped(ctx context.Context, plan prepPlan, timeout time.Duration, agent bool) error {
	tick := time.NewTicker(prepareTick)
	defer tick.Stop()
	for {
		listed, lerr := d.listAll(ctx)
		var left []string
		for _, v := range plan.targets {
			vm, ok := listed[v.vm.ID]
			if ok && vm.Running || !ok && lerr != nil {
				left = append(left, v.vm.Name)
				continue
			}
			for _, dc := range v.disks {
				if !dc.ended() {
					dc.cancel()
				}
			}
		}
		if len(left) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return d.stillRunning(ctx, plan.g, left, lerr, timeout, agent)
		case <-tick.C:
		}
	}
	for _, v := range plan.targets {
		for _, dc := range v.disks {
			select {
			case <-dc.done:
			case <-ctx.Done():
				return fmt.Errorf("protect: group %s: VM %s stopped but the capture of %s did not end within %v: %w; nothing was marked; run `qcdp failover prepare %s` again",
					plan.g.cfg.Name, v.vm.Name, dc.disk.Target, timeout, ctx.Err(), plan.g.cfg.Name)
			}
		}
	}
	return nil
}

// stillRunning is waitStopped's error when VMs left are still running.
func (d *Engine) stillRunning(ctx context.Context, g *group, left []string, lerr error, timeout time.Duration, agent bool) error {
	sort.Strings(left)
	why := "after " + timeout.String()
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		why = "when the call was cancelled"
	}
	advice := "if their guests ignore the ACPI power button, try --agent (their QEMU guest agent shuts them down), or shut them down yourself"
	if agent {
		advice = "if their guest agents did not shut them down, shut them down yourself"
	}
	err := fmt.Errorf("protect: group %s: VMs still running %s: %s; nothing was marked; %s, and run `qcdp failover prepare %s` again: %w",
		g.cfg.Name, why, strings.Join(left, ", "), advice, g.cfg.Name, ctx.Err())
	if lerr != nil {
		err = fmt.Errorf("%w (and the hypervisors could not all be asked: %v)", err, lerr)
	}
	return err
}

// markFinal checks, with no VM being attached meanwhile, that nothing of
// the group runs and that the stream lacks no write, then puts the final
// bookmark into the stream and holds the engine's own writes back.
func (d *Engine) markFinal(ctx context.Context, plan prepPlan) (uint64, error) {
	d.attachMu.Lock()
	defer d.attachMu.Unlock()
	g, name := plan.g, plan.g.cfg.Name
	listed, err := d.listAll(ctx)
	if err != nil {
		return 0, fmt.Errorf("protect: group %s: cannot tell whether its VMs stay stopped: %w; nothing was marked", name, err)
	}
	declared := declaredVMs(g)
	for _, v := range plan.targets {
		declared[v.vm.ID] = true
	}
	running := map[string]bool{} // by name
	for id, vm := range listed {
		if vm.Running && declared[id] {
			running[vm.Name] = true
		}
	}
	d.mu.Lock()
	for _, v := range d.vms {
		if v.group == g && !v.detached && !v.ended(func(error) bool { return true }) {
			running[v.vm.Name] = true
		}
	}
	d.mu.Unlock()
	if len(running) > 0 {
		started := slices.Sorted(maps.Keys(running))
		return 0, fmt.Errorf("%w: group %s: VMs %s started while it was being prepared; nothing was marked", ErrPrepare, name, strings.Join(started, ", "))
	}
	var lost []string
	for dc, n := range plan.refusals {
		if dc.exp.Refusals() != n {
			lost = append(lost, dc.name)
		}
	}
	if len(lost) > 0 {
		sort.Strings(lost)
		return 0, fmt.Errorf("%w: group %s: writes of %s were refused while their VMs shut down (the spool was full or broken): the stream lacks them (QEMU's bitmaps hold them), so the final point would not be a restore point; start the VMs again, wait until their disks are syncing, and prepare again",
			ErrPrepare, name, strings.Join(lost, ", "))
	}
	if owed := g.Sequencer().RecopyOwed(); len(owed) > 0 {
		return 0, fmt.Errorf("%w: group %s: its spool lost writes while the VMs shut down (%s owed a full re-copy); start the VMs again, wait until their disks are syncing, and prepare again",
			ErrPrepare, name, strings.Join(owed, ", "))
	}
	seq, err := g.Sequencer().Mark(record.UserBookmark, FinalBookmark)
	if err != nil {
		return 0, fmt.Errorf("protect: group %s: final bookmark: %w", name, err)
	}
	d.mu.Lock()
	g.final = seq
	d.mu.Unlock()
	return seq, nil
}

// waitFinalAcked waits until the replica holds seq.
func (d *Engine) waitFinalAcked(ctx context.Context, g *group, seq uint64, timeout time.Duration) error {
	name := g.cfg.Name
	snd := g.Sender()
	if snd == nil {
		return fmt.Errorf("protect: group %s: its sender is gone", name)
	}
	err := snd.WaitAcked(ctx, seq)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, sender.ErrFailedOver):
		return fmt.Errorf("%w: group %s: it failed over at the recovery site before the replica held the final point (seq %d): %w", ErrFailedOver, name, seq, err)
	}
	st := snd.Stats()
	link := "connected"
	if !st.Connected {
		link = "not connected"
		if st.LastError != "" {
			link += ": " + st.LastError
		}
	}
	return fmt.Errorf("protect: group %s: the final point (seq %d) is marked but the replica does not hold it yet (it holds up to seq %d; %s) after %v; the VMs stay stopped and the point stands: when the replica is reachable run `qcdp failover prepare %s` again (it marks a new final point): %w",
		name, seq, st.LastAcked, link, timeout, name, err)
}
