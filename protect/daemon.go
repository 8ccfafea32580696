package protect

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/filter"
	"github.com/qcdp/qcdp/hypervisor"
	"github.com/qcdp/qcdp/qmp"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/shipper"
	"github.com/qcdp/qcdp/shipper/sender"
	"github.com/qcdp/qcdp/shipper/spool"
	"github.com/qcdp/qcdp/stream"
)

// Source is a hypervisor the daemon finds VMs through.
type Source interface {
	ListVMs(ctx context.Context) ([]hypervisor.VM, error)
	Disks(ctx context.Context, vm hypervisor.VM) ([]hypervisor.Disk, error)
	QMP(ctx context.Context, vm hypervisor.VM) (*qmp.Client, error)
}

// Sentinel errors of the control API.
var (
	ErrUnknownVM   = errors.New("protect: no such VM")
	ErrUnknownDisk = errors.New("protect: no such disk")
	ErrUnprotected = errors.New("protect: VM is not protected by the policy")
)

// rescanEvery is how often QMP socket patterns are looked at again.
const rescanEvery = 5 * time.Second

// Engine is the protected host's engine: what `qcdp host` runs.
type Engine struct {
	pol     *configs.Policy
	log     *slog.Logger
	sources []Source
	lv      *hypervisor.Libvirt // also in sources; nil without libvirt
	ownLV   bool                // Close closes lv (Open made it)

	groups map[string]*group
	gid    int // QEMU's group, owner of the NBD sockets; -1 for root only

	// attachMu serializes attaching (scans, libvirt events, the API), so
	// that one VM never gets two captures.
	attachMu sync.Mutex
	mu       sync.Mutex
	vms      map[string]*vmCapture // by VM id
	seen     []hypervisor.VM       // every VM the last complete scan listed
	scanned  bool                  // a complete scan has run
	stopping bool                  // Run is ending: attach nothing more
	wg       sync.WaitGroup        // capture goroutines
}

// group is one protection group's capture side: a shipper.Group served
// on a goroutine the group owns from New until close.
type group struct {
	cfg *configs.Group
	*shipper.Group
	served   chan error // Serve's result
	once     sync.Once
	closeErr error

	// Under Engine.mu (failover.go): failedOver is the replica's word
	// while the group is failed over at the recovery site ("" while it is
	// not); preparing is set while PrepareFailover runs; final is the seq
	// of the final bookmark it marked (0: none), until a VM of the group
	// is attached again.
	failedOver string
	preparing  bool
	final      uint64
}

// vmCapture is one protected VM: its QMP connection and its disks.
type vmCapture struct {
	vm       hypervisor.VM
	src      Source
	group    *group
	q        *qmp.Client
	disks    []*diskCapture
	detached bool // by the operator: not re-attached until `qcdp attach`
	// failedOver: its captures were detached because its group failed
	// over at the recovery site; it is attached again when the failover
	// is undone (failover.go).
	failedOver bool
}

type diskCapture struct {
	name   string // stream name
	disk   hypervisor.Disk
	exp    *shipper.CaptureExport
	cap    *filter.Capture
	cancel context.CancelFunc
	done   chan struct{}
	err    error // why Run ended; read after done
	since  time.Time
	// recopying: this capture is about to copy the whole disk anew
	// (filter.Config.Recopy) and has not yet told the sequencer so.
	recopying *atomic.Bool
}

// Open connects to the hypervisors the policy names (libvirt_uri,
// qmp_sockets) and returns the engine over them (see New). Close lets go
// of them.
func Open(ctx context.Context, pol *configs.Policy, log *slog.Logger) (*Engine, error) {
	var sources []Source
	var lv *hypervisor.Libvirt
	if pol.Host.LibvirtURI != "" {
		var err error
		if lv, err = hypervisor.Connect(ctx, pol.Host.LibvirtURI); err != nil {
			return nil, fmt.Errorf("libvirt %s: %w", pol.Host.LibvirtURI, err)
		}
		lv.SetLogger(log)
		sources = append(sources, lv)
	}
	if len(pol.Host.QMPSockets) > 0 {
		s := hypervisor.NewSockets(pol.Host.QMPSockets...)
		s.SetLogger(log)
		sources = append(sources, s)
	}
	e, err := New(ctx, pol, log, lv, sources...)
	if err != nil {
		if lv != nil {
			lv.Close()
		}
		return nil, err
	}
	e.ownLV = lv != nil
	return e, nil
}

// New opens every group's spool and starts its capture server. sources are
// the hypervisors to watch; lv, if not nil, is among them and also gives
// lifecycle events.
func New(ctx context.Context, pol *configs.Policy, log *slog.Logger, lv *hypervisor.Libvirt, sources ...Source) (*Engine, error) {
	d := &Engine{pol: pol, log: log, sources: sources, lv: lv, groups: map[string]*group{}, vms: map[string]*vmCapture{}, gid: -1}
	if g := pol.Host.QEMUGroup; g != "" {
		gr, err := user.LookupGroup(g)
		if err != nil {
			return nil, fmt.Errorf("protect: qemu_group %q: %w", g, err)
		}
		if d.gid, err = strconv.Atoi(gr.Gid); err != nil {
			return nil, fmt.Errorf("protect: qemu_group %q: gid %q: %w", g, gr.Gid, err)
		}
	}
	if err := d.restrict(pol.Host.NBDSocketDir, 0o750); err != nil {
		return nil, err
	}
	for _, gc := range pol.Groups() {
		g, err := d.openGroup(ctx, gc)
		if err != nil {
			d.closeGroups()
			return nil, err
		}
		d.groups[gc.Name] = g
	}
	return d, nil
}

func (d *Engine) openGroup(ctx context.Context, gc *configs.Group) (*group, error) {
	opts := shipper.GroupOptions{
		Spool: spool.Options{
			Dir: d.pol.SpoolDir(gc), Group: gc.Name,
			SegmentBytes: gc.SpoolSegment, MaxBytes: gc.SpoolMax,
			SyncInterval: gc.SyncInterval, SyncBytes: gc.SyncBytes,
		},
		// QEMU reconnects to this path after a restart.
		Socket:     filepath.Join(d.pol.Host.NBDSocketDir, gc.Name+".sock"),
		SocketMode: 0o660, SocketGID: d.gid,
		Logger: d.log,
	}
	if gc.Replica != "" {
		host, _, err := net.SplitHostPort(gc.Replica)
		if err != nil {
			return nil, fmt.Errorf("group %s: replica %q: %w", gc.Name, gc.Replica, err)
		}
		h := d.pol.Host
		tlsCfg, err := stream.LoadClientTLS(h.TLSCA, h.TLSCert, h.TLSKey, host)
		if err != nil {
			return nil, fmt.Errorf("group %s: TLS for replica %s: %w", gc.Name, gc.Replica, err)
		}
		name, _ := os.Hostname()
		opts.Replica = &sender.Options{Addr: gc.Replica, TLS: tlsCfg, Host: name, RateLimit: gc.Bandwidth,
			Logger: d.log.With("group", gc.Name, "replica", gc.Replica)}
	}
	sg, err := shipper.OpenGroup(ctx, opts)
	if err != nil {
		return nil, err
	}
	if err := sg.Sequencer().KeepMembers(nil, d.membersPath(gc)); err != nil {
		sg.Shutdown(context.Background())
		return nil, fmt.Errorf("group %s: %w", gc.Name, err)
	}
	g := &group{cfg: gc, Group: sg, served: make(chan error, 1)}
	go func() { g.served <- sg.Serve(context.Background()) }()
	return g, nil
}

// close stops the group's sender and capture server and closes its spool.
// A second call returns the first one's result.
func (g *group) close() error {
	g.once.Do(func() {
		g.closeErr = g.Shutdown(context.Background())
		if serr := <-g.served; serr != nil && !errors.Is(serr, shipper.ErrGroupClosed) {
			g.closeErr = errors.Join(g.closeErr, serr)
		}
	})
	return g.closeErr
}

// restrict gives a directory to root and QEMU's group only.
func (d *Engine) restrict(path string, mode os.FileMode) error {
	if err := os.MkdirAll(path, mode); err != nil {
		return fmt.Errorf("protect: %s: %w", path, err)
	}
	if err := shipper.Restrict(path, mode, d.gid); err != nil {
		return fmt.Errorf("protect: %w", err)
	}
	return nil
}

// Run attaches every protected VM it finds and follows the hypervisors until
// ctx ends. Capture jobs stay in QEMU when it returns (see the package doc).
func (d *Engine) Run(ctx context.Context) error {
	var events <-chan hypervisor.LifecycleEvent
	if d.lv != nil {
		var err error
		if events, err = d.lv.Events(ctx); err != nil {
			return fmt.Errorf("protect: libvirt events: %w", err)
		}
	}
	d.scan(ctx)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.runSchedules(ctx)
	}()
	tick := time.NewTicker(rescanEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			d.stopAll()
			return nil
		case <-tick.C:
			d.scan(ctx)
		case ev, ok := <-events:
			if !ok {
				events = nil
				d.log.Warn("libvirt event stream ended; rescanning only")
				continue
			}
			switch ev.Kind {
			case hypervisor.EventStarted, hypervisor.EventResumed:
				d.scan(ctx)
			case hypervisor.EventDefined:
				d.redefine(ctx, ev.VM.ID) // its definition changed (members.go)
			case hypervisor.EventStopped, hypervisor.EventCrashed:
				// Only stopped means QEMU is gone: a crashed guest's
				// QEMU may stay (on_crash=preserve).
				d.attachMu.Lock()
				d.forgetStopped(func(id string) bool { return id == ev.VM.ID }, ev.Kind == hypervisor.EventStopped)
				d.attachMu.Unlock()
			}
		}
	}
}

// scan attaches protected VMs that run and are not captured yet, and
// forgets captures whose VM went away.
func (d *Engine) scan(ctx context.Context) {
	d.attachMu.Lock()
	defer d.attachMu.Unlock()
	d.reap()
	d.failovers(ctx) // first: no VM of a failed-over group is attached below
	running := map[string]bool{}
	complete := true
	var seen []hypervisor.VM
	for _, src := range d.sources {
		vms, err := src.ListVMs(ctx)
		if err != nil {
			d.log.Warn("list VMs", "err", err)
			complete = false
			continue
		}
		seen = append(seen, vms...)
		for _, vm := range vms {
			if !vm.Running {
				continue
			}
			running[vm.ID] = true
			d.mu.Lock()
			_, known := d.vms[vm.ID]
			d.mu.Unlock()
			if known {
				continue
			}
			if err := d.attach(ctx, src, vm); err != nil && !errors.Is(err, configs.ErrNotProtected) && !errors.Is(err, ErrFailedOver) {
				d.log.Warn("attach VM", "vm", vm.Name, "id", vm.ID, "err", err)
			}
		}
	}
	if complete {
		d.mu.Lock()
		d.seen, d.scanned = seen, true
		d.mu.Unlock()
		d.forgetStopped(func(id string) bool { return !running[id] }, false)
		d.reconcileMembers(seen)
	}
	d.recopies(ctx)
}

// forgetStopped drops VMs that stopped and whose captures all ended, for
// whatever reason: an operator's detach, or a failed attach, lasts until
// the VM's next start, when the policy protects it again.
//
// With stopRunning (libvirt said the VM stopped), a VM whose captures still
// run is stopped too: under libvirt QEMU's end does not close the monitor
// connection (libvirt keeps the domain's event registration), so the
// captures would wait on a QEMU that is gone and the VM's next start would
// go unseen. Their Run ends (the jobs died with QEMU), and the next start
// attaches the VM anew: a resync. Callers hold attachMu.
func (d *Engine) forgetStopped(stopped func(id string) bool, stopRunning bool) {
	d.mu.Lock()
	var gone []*vmCapture
	for id, v := range d.vms {
		if !stopped(id) {
			continue
		}
		if v.failedOver && !v.detached {
			d.log.Info("VM of a failed-over group stopped; it is protected again at its next start after the failover is undone", "vm", v.vm.Name, "id", id)
		} else if v.detached || v.ended(func(error) bool { return true }) {
			d.log.Info("detached VM stopped; it is protected again at its next start", "vm", v.vm.Name, "id", id)
		} else if !stopRunning {
			continue
		} else {
			d.log.Info("VM stopped: its captures end; it is protected again at its next start", "vm", v.vm.Name, "id", id)
			for _, dc := range v.disks {
				if dc.cancel != nil {
					dc.cancel()
				}
			}
		}
		gone = append(gone, v)
		delete(d.vms, id)
	}
	d.mu.Unlock()
	// Their Run loops end with their ctx; at most 30 s for all of them.
	deadline := time.After(30 * time.Second)
	for _, v := range gone {
		for _, dc := range v.disks {
			if dc.done == nil {
				continue
			}
			select {
			case <-dc.done:
			case <-deadline:
				d.log.Warn("a capture of a stopped VM did not end", "vm", v.vm.Name, "disk", dc.name)
			}
		}
		v.close()
	}
}

// reap forgets VMs all of whose captures ended because the VM went away
// (its monitor closed, or QEMU ended the jobs as it shut down), so a
// restarted VM is attached again. A capture that failed for another reason
// stays in the status with its error until the VM restarts or `qcdp attach`.
func (d *Engine) reap() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for id, v := range d.vms {
		if v.detached || v.failedOver {
			continue
		}
		if v.ended(func(err error) bool {
			return errors.Is(err, filter.ErrMonitorGone) || errors.Is(err, filter.ErrJobVanished) || errors.Is(err, filter.ErrVMShutdown)
		}) {
			d.log.Info("VM capture ended", "vm", v.vm.Name, "id", id)
			v.close()
			delete(d.vms, id)
		}
	}
}

// anyEnded reports whether a capture of v has ended (a disk detached by
// the operator, or failed).
func (v *vmCapture) anyEnded() bool {
	for _, dc := range v.disks {
		select {
		case <-dc.done:
			return true
		default:
		}
	}
	return false
}

// close lets go of the VM's QMP connection.
func (v *vmCapture) close() { v.q.Close() }

// ended reports whether every capture of v has ended, each for a reason
// gone accepts.
func (v *vmCapture) ended(gone func(error) bool) bool {
	for _, dc := range v.disks {
		select {
		case <-dc.done:
			if !gone(dc.err) {
				return false
			}
		default:
			return false
		}
	}
	return true
}

func labelsOf(vm hypervisor.VM) []string {
	out := make([]string, 0, len(vm.Labels))
	for k, v := range vm.Labels {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// StreamName is a disk's name in its group's stream and its export name.
func StreamName(disk hypervisor.Disk) string {
	n := strings.ReplaceAll(disk.ID, "/", ".")
	if record.ValidDiskName(n) == nil {
		return n
	}
	h := sha256.Sum256([]byte(disk.ID))
	return "d-" + hex.EncodeToString(h[:12])
}

// attach protects vm's disks under its group's policy.
func (d *Engine) attach(ctx context.Context, src Source, vm hypervisor.VM) error {
	gc, filt, err := d.pol.GroupFor(configs.VMIdentity{Name: vm.Name, UUID: vm.UUID, Labels: labelsOf(vm)})
	if err != nil {
		return err
	}
	g := d.groups[gc.Name]
	if err := d.failedOverErr(g); err != nil {
		return fmt.Errorf("VM %s not attached: %w", vm.Name, err)
	}
	disks, err := src.Disks(ctx, vm)
	if err != nil {
		return fmt.Errorf("disks of %s: %w", vm.Name, err)
	}
	q, err := src.QMP(ctx, vm)
	if err != nil {
		return fmt.Errorf("QMP of %s: %w", vm.Name, err)
	}
	// The group's socket is shared: each export opens to its VM's QEMU only.
	qemu, err := hypervisor.QEMUProcess(ctx, q)
	if err != nil {
		q.Close()
		return fmt.Errorf("VM %s not protected: its capture exports would be open to every QEMU on the host: %w", vm.Name, err)
	}
	v := &vmCapture{vm: vm, src: src, group: g, q: q}
	nbdSock, err := d.resyncSocket(vm, qemu)
	if err != nil {
		// Protection goes on; every re-attach copies the disk whole.
		d.log.Warn("no socket for QEMU's NBD server: resyncs copy whole disks", "vm", vm.Name, "err", err)
	}
	seq := g.Sequencer()
	owed := seq.RecopyOwed()
	for _, dk := range disks {
		if !filt.DiskIncluded(dk.Target) || dk.Node == "" || dk.Size <= 0 {
			continue
		}
		name := StreamName(dk)
		exp, err := g.OwnedExport(name, dk.Size, qemu)
		if err == nil {
			// A kept export may still refuse writes for an operator's
			// pause of the capture before: this capture starts unpaused.
			exp.SetPaused(false)
		}
		if err != nil {
			d.log.Warn("capture export", "vm", vm.Name, "disk", dk.Target, "err", err)
			continue
		}
		var recopy func() error
		recopying := new(atomic.Bool)
		if slices.Contains(owed, name) {
			seq := g.Sequencer()
			recopying.Store(true)
			recopy = func() error {
				if err := seq.RecopyStarted(name); err != nil {
					return err
				}
				recopying.Store(false) // owed again later: a new re-copy
				return nil
			}
		}
		cfg := filter.Config{
			Disk: name, Node: dk.Node, Socket: g.Socket(),
			Persistent:  dk.Format == "qcow2" && dk.Qcow2Version >= 3,
			Granularity: uint32(gc.Granularity),
			Recopy:      recopy,
			Logger:      d.log.With("vm", vm.Name, "target", dk.Target),
		}
		if nbdSock != "" {
			// Resync instead of a full copy: the bitmap generations
			// carry the group and its spool (a new spool, whose replica
			// journal may hold nothing, trusts no older generation), and
			// with a replica a disk without a trusted bitmap is compared
			// with the replica's copy.
			id := g.Spool().Identity().ID
			cfg.Resync, cfg.NBDSocket, cfg.ReadRate, cfg.QEMU = exp, nbdSock, gc.ResyncReadRate, qemu.PID
			cfg.Group = gc.Name + "." + hex.EncodeToString(id[:6])
			cfg.Hold = func() func() { return seq.HoldResync(name) }
			if g.Sender() != nil {
				cfg.Hashes = g.Group
			}
		}
		c, err := filter.New(q, cfg, seq)
		if err != nil {
			d.log.Warn("capture", "vm", vm.Name, "disk", dk.Target, "err", err)
			continue
		}
		v.disks = append(v.disks, &diskCapture{name: name, disk: dk, exp: exp, cap: c, since: time.Now(), recopying: recopying})
	}
	if len(v.disks) == 0 {
		v.close()
		return fmt.Errorf("VM %s (group %s): no disk to protect", vm.Name, gc.Name)
	}
	if err := d.declare(ctx, v, disks); err != nil { // before any capture starts (members.go)
		v.close()
		return fmt.Errorf("VM %s (group %s): %w", vm.Name, gc.Name, err)
	}
	d.mu.Lock()
	if d.stopping {
		d.mu.Unlock()
		v.close()
		return fmt.Errorf("VM %s: the daemon is stopping", vm.Name)
	}
	d.vms[vm.ID] = v
	for _, dc := range v.disks { // under d.mu: stopAll sees every one started
		d.start(dc)
	}
	final := g.final
	g.final = 0 // the stream goes on after the final point
	d.mu.Unlock()
	if final != 0 {
		d.log.Warn("a VM of a group prepared for a planned failover was attached again: its final point is no longer the newest; prepare it again before failing it over",
			"vm", vm.Name, "group", gc.Name, "final_seq", final)
	}
	d.log.Info("protecting VM", "vm", vm.Name, "id", vm.ID, "group", gc.Name, "disks", len(v.disks), "qemu_pid", qemu.PID)
	return nil
}

// start runs one disk's lifecycle on a goroutine the daemon owns. Callers
// hold d.mu.
func (d *Engine) start(dc *diskCapture) {
	ctx, cancel := context.WithCancel(context.Background())
	dc.cancel, dc.done = cancel, make(chan struct{})
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer close(dc.done)
		defer cancel()
		dc.err = dc.cap.Run(ctx)
		if dc.err != nil && !errors.Is(dc.err, context.Canceled) {
			d.log.Warn("capture ended", "disk", dc.name, "err", dc.err)
		}
	}()
}

// stopAll ends every lifecycle loop, leaving the jobs in QEMU.
func (d *Engine) stopAll() {
	d.mu.Lock()
	d.stopping = true
	for _, v := range d.vms {
		for _, dc := range v.disks {
			if dc.cancel != nil {
				dc.cancel()
			}
		}
	}
	d.mu.Unlock()
	d.wg.Wait()
	d.mu.Lock()
	for _, v := range d.vms {
		v.close()
	}
	d.mu.Unlock()
}

// Close stops the capture servers and closes the spools (and, after
// Open, the libvirt connection). Call after Run.
func (d *Engine) Close() error {
	err := d.closeGroups()
	if d.ownLV {
		d.ownLV = false
		err = errors.Join(err, d.lv.Close())
	}
	return err
}

func (d *Engine) closeGroups() error {
	var errs []error
	for _, g := range d.groups {
		errs = append(errs, g.close())
	}
	return errors.Join(errs...)
}

// find returns the captured VM by id or name.
func (d *Engine) find(vm string) (*vmCapture, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if v, ok := d.vms[vm]; ok {
		return v, true
	}
	for _, v := range d.vms {
		if v.vm.Name == vm || (v.vm.UUID != "" && strings.EqualFold(v.vm.UUID, vm)) {
			return v, true
		}
	}
	return nil, false
}

// Detach cleanly ends capture of vm (all its disks, or the one whose target
// is disk): the jobs are cancelled, never completed, and the VM is not
// re-attached until Attach.
func (d *Engine) Detach(ctx context.Context, vm, disk string) error {
	d.attachMu.Lock() // not while a scan attaches the VM anew
	defer d.attachMu.Unlock()
	v, ok := d.find(vm)
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownVM, vm)
	}
	dcs, err := v.disksNamed(disk)
	if err != nil {
		return err
	}
	var errs []error
	var gone []string // detached: they leave the group's membership
	for _, dc := range dcs {
		select {
		case <-dc.done:
			gone = append(gone, dc.name)
			continue
		default:
		}
		if err := dc.cap.Detach(ctx); err != nil {
			errs = append(errs, err)
			continue
		}
		select { // the caller's deadline bounds the wait: scans wait on attachMu
		case <-dc.done:
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("detach %s: wait for its capture to end: %w", dc.name, ctx.Err()))
			continue
		}
		gone = append(gone, dc.name)
	}
	if len(gone) > 0 {
		if _, err := v.group.Sequencer().Undeclare(gone...); err != nil {
			errs = append(errs, err)
		}
	}
	if disk == "" && len(errs) == 0 {
		d.mu.Lock()
		v.detached = true
		d.mu.Unlock()
	}
	return errors.Join(errs...)
}

// Attach protects vm again after a Detach, or at once if the daemon has not
// seen it yet.
func (d *Engine) Attach(ctx context.Context, vm string) error {
	d.attachMu.Lock()
	defer d.attachMu.Unlock()
	if v, ok := d.find(vm); ok {
		if err := d.failedOverErr(v.group); err != nil {
			return err
		}
		d.mu.Lock()
		if !v.detached && !v.anyEnded() {
			d.mu.Unlock()
			return nil // every disk protected already
		}
		// A VM with a disk detached (or ended) is attached anew: the
		// disks still captured are adopted by their running jobs.
		d.mu.Unlock()
		return d.reattach(ctx, v)
	}
	for _, src := range d.sources {
		vms, err := src.ListVMs(ctx)
		if err != nil {
			continue
		}
		for _, cand := range vms {
			if cand.ID == vm || cand.Name == vm || strings.EqualFold(cand.UUID, vm) {
				return d.attach(ctx, src, cand)
			}
		}
	}
	return fmt.Errorf("%w: %q", ErrUnknownVM, vm)
}

// reattach attaches v's VM anew: its disks' captures stop (their jobs stay
// in QEMU) and new ones start, adopting the jobs, or, for a disk owed a
// full re-copy, replacing its job. Callers hold attachMu.
func (d *Engine) reattach(ctx context.Context, v *vmCapture) error {
	d.mu.Lock()
	delete(d.vms, v.vm.ID)
	d.mu.Unlock()
	for _, dc := range v.disks {
		dc.cancel()
		<-dc.done
	}
	v.close()
	return d.attach(ctx, v.src, v.vm)
}

// recopies attaches anew the VMs with a disk owed a full re-copy (the
// group's spool lost writes it had answered: shipper.Sequencer.RecopyOwed)
// whose capture is not already copying it anew, unless the operator
// detached one of its disks. Callers hold attachMu.
func (d *Engine) recopies(ctx context.Context) {
	d.mu.Lock()
	var redo []*vmCapture
	for _, v := range d.vms {
		// An operator's detach or pause stands: the re-copy waits for
		// the attach or the resume.
		if v.detached || v.failedOver || v.hasState(filter.Detached) || v.hasState(filter.Paused) {
			continue
		}
		owed := v.group.Sequencer().RecopyOwed()
		for _, dc := range v.disks {
			if slices.Contains(owed, dc.name) && !(dc.recopying.Load() && !dc.ended()) {
				redo = append(redo, v)
				break
			}
		}
	}
	d.mu.Unlock()
	for _, v := range redo {
		d.log.Warn("re-copying the disks of a VM in full: its group's spool lost writes it had answered", "vm", v.vm.Name, "owed", v.group.Sequencer().RecopyOwed())
		if err := d.reattach(ctx, v); err != nil {
			d.log.Warn("attach VM for a re-copy", "vm", v.vm.Name, "err", err)
		}
	}
}

// hasState reports whether one of v's disks is in state.
func (v *vmCapture) hasState(state filter.State) bool {
	for _, dc := range v.disks {
		if st, _ := dc.cap.State(); st == state {
			return true
		}
	}
	return false
}

// ended reports whether the capture's Run has returned.
func (dc *diskCapture) ended() bool {
	select {
	case <-dc.done:
		return true
	default:
		return false
	}
}

// Pause holds capture of vm's disks (or one): writes are refused by the
// capture export, the jobs stop, QEMU tracks what changes, and nothing is
// resumed until Resume.
func (d *Engine) Pause(ctx context.Context, vm, disk string) error {
	return d.eachDisk(vm, disk, func(dc *diskCapture) {
		dc.exp.SetPaused(true)
		dc.cap.Pause()
	})
}

// Resume ends a Pause: the jobs resume and re-copy what changed, bracketed
// as a resync in the stream.
func (d *Engine) Resume(ctx context.Context, vm, disk string) error {
	return d.eachDisk(vm, disk, func(dc *diskCapture) {
		dc.exp.SetPaused(false)
		dc.cap.Resume(ctx)
	})
}

func (d *Engine) eachDisk(vm, disk string, fn func(*diskCapture)) error {
	d.attachMu.Lock() // not while a scan attaches the VM anew
	defer d.attachMu.Unlock()
	v, ok := d.find(vm)
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownVM, vm)
	}
	dcs, err := v.disksNamed(disk)
	if err != nil {
		return err
	}
	for _, dc := range dcs {
		fn(dc)
	}
	return nil
}

// disksNamed returns the VM's protected disks disk names: all of them for
// "", else the one whose target ("vda"), stream name ("<vm id>.vda") or
// "<vm name>.vda" it is. A name that is none of them is refused with the
// VM's protected disks.
func (v *vmCapture) disksNamed(disk string) ([]*diskCapture, error) {
	if disk == "" {
		return v.disks, nil
	}
	var targets []string
	for _, dc := range v.disks {
		if dc.disk.Target == disk || dc.name == disk || v.vm.Name+"."+dc.disk.Target == disk {
			return []*diskCapture{dc}, nil
		}
		targets = append(targets, dc.disk.Target)
	}
	sort.Strings(targets)
	return nil, fmt.Errorf("%w %q on VM %s; its protected disks are %s", ErrUnknownDisk, disk, v.vm.Name, strings.Join(targets, ", "))
}
