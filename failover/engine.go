package failover

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/hypervisor"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica"
	"github.com/qcdp/qcdp/replica/journal"
)

// Errors. Each is wrapped with what and where.
var (
	ErrPlan      = errors.New("failover: recovery plan")             // no plan, or it cannot place a VM
	ErrState     = errors.New("failover: damaged state file")        // a state file that does not check
	ErrActive    = errors.New("failover: the group has failed over") // a second failover of a group
	ErrNone      = errors.New("failover: the group has not failed over")
	ErrCommitted = errors.New("failover: the failover is committed")    // undo after commit
	ErrMode      = errors.New("failover: not that kind of failover")    // cleanup of a real one, undo of a test
	ErrExists    = errors.New("failover: a domain of that name exists") // never overwritten
	ErrLibvirt   = errors.New("failover: libvirt")                      // unreachable or refusing
	ErrBusy      = errors.New("failover: another operation on the group is running")
)

// Site is what failover needs of the recovery site (*replica.Site).
type Site interface {
	PointAt(ctx context.Context, tenant, group string, at journal.Target) (journal.Point, record.Declaration, []journal.DefinitionAt, error)
	ExportAs(ctx context.Context, id, tenant, group string, at journal.Target, writable bool) (replica.ExportInfo, error)
	Withdraw(id string) error
	ListenNBD(path string, uid, gid int, id string) (func() error, error)
	Fence(ctx context.Context, tenant, group, why string) error
	Unfence(tenant, group string)
}

// Libvirt is what failover does with libvirt (*hypervisor.Libvirt).
type Libvirt interface {
	LookupDomain(ctx context.Context, name string) (hypervisor.DomainInfo, error)
	DefineDomain(ctx context.Context, xml string) (string, error)
	StartDomain(ctx context.Context, name string) error
	DestroyDomain(ctx context.Context, name string) error
	UndefineDomain(ctx context.Context, name string) error
	BlockPull(ctx context.Context, name, target string) error
	BlockJobInfo(ctx context.Context, name, target string) (hypervisor.BlockJob, error)
	NetworkActive(ctx context.Context, name string) (bool, error)
	DefineNetwork(ctx context.Context, xml string) error
	StartNetwork(ctx context.Context, name string) error
	RemoveNetwork(ctx context.Context, name string) error
	Close() error
}

// Engine runs the failovers of a recovery site's groups. Operations on one
// group are serialised (a second one at the same time gets ErrBusy);
// groups are independent.
type Engine struct {
	site Site
	cfg  *configs.Replica
	log  *slog.Logger
	// Dial connects to libvirt (default hypervisor.Connect).
	Dial func(ctx context.Context, uri string) (Libvirt, error)

	mu       sync.Mutex
	busy     map[string]bool
	watching map[string]bool         // groups whose commit is watched
	ixMu     sync.Mutex              // the index file
	sockets  map[string]func() error // NBD sockets served, by tenant/group
	bg       context.Context         // background work (commit) ends with it
	stop     context.CancelFunc
	wg       sync.WaitGroup
}

// New returns an engine over site for the plans of cfg.
func New(site Site, cfg *configs.Replica, log *slog.Logger) *Engine {
	bg, stop := context.WithCancel(context.Background())
	return &Engine{site: site, cfg: cfg, log: log.With("part", "failover"), busy: map[string]bool{}, watching: map[string]bool{},
		sockets: map[string]func() error{}, bg: bg, stop: stop,
		Dial: func(ctx context.Context, uri string) (Libvirt, error) {
			l, err := hypervisor.Connect(ctx, uri)
			if err != nil {
				return nil, err
			}
			return l, nil
		}}
}

// Close stops the engine's background work (a commit's watch: the pull
// itself goes on in QEMU and is watched again at the next Resume) and
// closes the NBD sockets it serves.
func (e *Engine) Close() error {
	e.stop()
	e.wg.Wait()
	e.mu.Lock()
	defer e.mu.Unlock()
	var errs []error
	for k, c := range e.sockets {
		errs = append(errs, c())
		delete(e.sockets, k)
	}
	return errors.Join(errs...)
}

func (e *Engine) lock(tenant, group string) (func(), error) {
	k := tenant + "/" + group
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.busy[k] {
		return nil, fmt.Errorf("%w: %s", ErrBusy, k)
	}
	e.busy[k] = true
	return func() {
		e.mu.Lock()
		delete(e.busy, k)
		e.mu.Unlock()
	}, nil
}

func (e *Engine) plan(tenant, group string) (*configs.Recovery, error) {
	p, ok := e.cfg.RecoveryFor(tenant, group)
	if !ok {
		return nil, fmt.Errorf("%w: group %s/%s has no [[recovery]] plan in %s", ErrPlan, tenant, group, e.cfg.File)
	}
	return p, nil
}

// groupDir is where a group's standbys live.
func groupDir(p *configs.Recovery, tenant, group string) string {
	return filepath.Join(p.StandbyDir, tenant, group)
}

func statePath(p *configs.Recovery, tenant, group string) string {
	return filepath.Join(groupDir(p, tenant, group), "state")
}

// socketPath is the NBD socket of a group's standbys: beside the site's
// own, short enough for a unix socket whatever the names.
func (e *Engine) socketPath(tenant, group string) string {
	h := sha256.Sum256([]byte(tenant + "/" + group))
	return filepath.Join(filepath.Dir(e.cfg.NBDSocket), "standby-"+hex.EncodeToString(h[:6])+".sock")
}

// exportID is the id of a failover's view: unique per tenant and group
// (names may both hold dots: "a.b"/"c" and "a"/"b.c" are two groups).
func exportID(tenant, group string, mode Mode) string {
	kind := "fo-"
	if mode == ModeTest {
		kind = "ft-"
	}
	h := sha256.Sum256([]byte(tenant + "/" + group))
	return kind + hex.EncodeToString(h[:8])
}

// qemuUser is the user QEMU runs as under libvirt, who must be able to
// open the standbys' NBD socket.
func qemuUser() (uid, gid int) {
	for _, name := range []string{"libvirt-qemu", "qemu"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.Atoi(u.Uid)
		gid, err2 := strconv.Atoi(u.Gid)
		if err1 == nil && err2 == nil {
			return uid, gid
		}
	}
	return os.Getuid(), os.Getgid()
}

// Status is a group's failover as `qcdp failover status` shows it.
type Status struct {
	*State
	Active bool   `json:"active"` // a failover exists
	Error  string `json:"error,omitempty"`
}

// Status reports a group's failover, with each standby's state asked of
// libvirt now.
func (e *Engine) Status(ctx context.Context, tenant, group string) (Status, error) {
	p, err := e.plan(tenant, group)
	if err != nil {
		return Status{}, err
	}
	st, err := loadState(statePath(p, tenant, group))
	if err != nil || st == nil {
		return Status{State: &State{Tenant: tenant, Group: group}}, err
	}
	out := Status{State: st, Active: true}
	lv, err := e.Dial(ctx, p.LibvirtURI)
	if err != nil {
		out.Error = fmt.Sprintf("libvirt %s unreachable: %v", p.LibvirtURI, err)
		return out, nil
	}
	defer lv.Close()
	for i := range st.VMs {
		vm := &st.VMs[i]
		info, err := lv.LookupDomain(ctx, vm.Domain)
		vm.Running = err == nil && info.Running && info.UUID == vm.UUID
		if st.Phase == PhaseCommitting {
			for k := range vm.Disks {
				if j, err := lv.BlockJobInfo(ctx, vm.Domain, vm.Disks[k].Target); err == nil && j.Active {
					vm.Disks[k].Pulled, vm.Disks[k].Total = j.Cur, j.End
				}
			}
		}
	}
	return out, nil
}

// Failover starts a standby domain of every VM of a group from a restore
// point (the newest when at is zero): on the test networks with the
// group's replication undisturbed (ModeTest), or after fencing the group
// (ModeStart). Nothing is copied first: each disk is a qcow2 overlay over
// the replica's read-only view of the point, served over NBD. A failure
// undoes what the call did and reports what failed; a domain it did not
// create is never touched.
func (e *Engine) Failover(ctx context.Context, tenant, group string, mode Mode, at journal.Target) (*State, error) {
	unlock, err := e.lock(tenant, group)
	if err != nil {
		return nil, err
	}
	defer unlock()
	return e.failover(ctx, tenant, group, mode, at, nil)
}

// prepared is the work of a failover worked out before anything is made.
type prepared struct {
	plan  *configs.Recovery
	point journal.Point
	vms   []vmPlan
}

type vmPlan struct {
	def   record.VMDefinition
	name  string
	o     configs.VMOverride
	nics  []nicSpec
	disks []record.VMDisk // protected disks, in the definition's order
}

// prepare checks everything a failover needs before it changes anything:
// the plan, the point, a definition of every VM, a network for every NIC.
func (e *Engine) prepare(ctx context.Context, tenant, group string, mode Mode, at journal.Target) (*prepared, error) {
	p, err := e.plan(tenant, group)
	if err != nil {
		return nil, err
	}
	if at == (journal.Target{}) {
		var err error
		if at, err = e.newest(ctx, tenant, group); err != nil {
			return nil, err
		}
	}
	point, decl, defs, err := e.site.PointAt(ctx, tenant, group, at)
	if err != nil {
		return nil, fmt.Errorf("failover of %s/%s: %w", tenant, group, err)
	}
	byVM := map[string][]record.Member{}
	for _, m := range decl.Disks {
		byVM[m.VM] = append(byVM[m.VM], m)
	}
	defOf := map[string]record.VMDefinition{}
	for _, d := range defs {
		defOf[d.Def.ID] = d.Def
	}
	pr := &prepared{plan: p, point: point}
	ids := make([]string, 0, len(byVM))
	for id := range byVM {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		def, ok := defOf[id]
		if !ok || id == "" {
			return nil, fmt.Errorf("%w: VM %q of group %s/%s has no definition in the stream at seq %d (its host sends none: upgrade it), so no standby can be made of it",
				ErrPlan, id, tenant, group, point.Seq)
		}
		vp := vmPlan{def: def, name: domainName(def, mode, p.DomainSuffix), o: p.Override(def.Name, def.ID)}
		for _, k := range def.Disks {
			if k.Disk == "" {
				continue // not protected: the standby goes without it
			}
			if !slices.ContainsFunc(byVM[id], func(m record.Member) bool { return m.Disk == k.Disk }) {
				continue
			}
			m, _ := decl.Find(k.Disk)
			k.Size = m.Size // the declared size at the point is the view's
			vp.disks = append(vp.disks, k)
		}
		for _, m := range byVM[id] {
			if !slices.ContainsFunc(vp.disks, func(k record.VMDisk) bool { return k.Disk == m.Disk }) {
				return nil, fmt.Errorf("%w: VM %s's disk %s (%s) is declared at seq %d but not in its definition there: its standby would boot without it",
					ErrPlan, def.Name, m.Disk, m.Target, point.Seq)
			}
		}
		if len(vp.disks) == 0 {
			return nil, fmt.Errorf("%w: VM %s has no protected disk at seq %d", ErrPlan, def.Name, point.Seq)
		}
		for _, other := range pr.vms {
			if other.name == vp.name {
				return nil, fmt.Errorf("%w: VMs %q and %q would both have a standby named %s: rename one, or set domain_suffix", ErrPlan, other.def.Name, def.Name, vp.name)
			}
		}
		if vp.nics, err = nicsFor(def, p, mode, vp.o); err != nil {
			return nil, err
		}
		pr.vms = append(pr.vms, vp)
	}
	if len(pr.vms) == 0 {
		return nil, fmt.Errorf("%w: group %s/%s declares no VM at seq %d", ErrPlan, tenant, group, point.Seq)
	}
	sortBoot(pr.vms, p.BootOrder)
	return pr, nil
}

// newest is the group's newest valid restore point: the window's last
// record boundary, or the last one before the resync bracket or initial
// sync it falls in, or else the newest long-term point.
func (e *Engine) newest(ctx context.Context, tenant, group string) (journal.Target, error) {
	ps, ok := e.site.(PointsSite)
	if !ok {
		return journal.Target{Time: time.Now().Add(time.Hour)}, nil
	}
	points, w, err := ps.Points(ctx, tenant, group)
	if err != nil {
		return journal.Target{}, fmt.Errorf("failover of %s/%s: %w", tenant, group, err)
	}
	if s, ok := newestValid(w); ok {
		return journal.Target{Seq: s}, nil
	}
	if n := len(points); n > 0 {
		return journal.Target{Seq: points[n-1].Seq}, nil
	}
	return journal.Target{}, fmt.Errorf("%w: group %s/%s has no restore point yet: it was never in sync", journal.ErrNoPoint, tenant, group)
}

// newestValid is the last boundary of the window outside its gaps.
func newestValid(w journal.Window) (uint64, bool) {
	if w.LastSeq == 0 {
		return 0, false
	}
	s := w.LastSeq
	for i := len(w.Gaps) - 1; i >= 0; i-- {
		if g := w.Gaps[i]; s >= g.FromSeq && s <= g.ToSeq {
			if g.FromSeq == 0 {
				return 0, false
			}
			s = g.FromSeq - 1
		}
	}
	return s, s >= w.FirstSeq
}

// sortBoot puts the VMs in the plan's boot order, the rest by name.
func sortBoot(vms []vmPlan, order []string) {
	rank := func(v vmPlan) int {
		for i, n := range order {
			if n == v.def.Name || n == v.def.ID {
				return i
			}
		}
		return len(order)
	}
	sort.SliceStable(vms, func(i, j int) bool {
		ri, rj := rank(vms[i]), rank(vms[j])
		if ri != rj {
			return ri < rj
		}
		return vms[i].def.Name < vms[j].def.Name
	})
}

// fenceFn is how a failover fences its group (a planned one has done it).
type fenceFn func(ctx context.Context) error

func (e *Engine) failover(ctx context.Context, tenant, group string, mode Mode, at journal.Target, fenced fenceFn) (st *State, err error) {
	start := time.Now()
	p, err := e.plan(tenant, group)
	if err != nil {
		return nil, err
	}
	path := statePath(p, tenant, group)
	if old, err := loadState(path); err != nil {
		return nil, err
	} else if old != nil {
		return nil, fmt.Errorf("%w: %s/%s is in a %s failover since %s (phase %s): `qcdp failover %s %s` first",
			ErrActive, tenant, group, old.Mode, old.Started.UTC().Format(time.RFC3339), old.Phase, map[bool]string{true: "cleanup", false: "undo"}[old.Mode == ModeTest], group)
	}
	if mode == ModeStart && at == (journal.Target{}) && fenced == nil {
		// Unplanned, from the newest point: fence first, so that the
		// newest point is the last thing the replica took.
		if err := e.site.Fence(ctx, tenant, group, "failing over (start)"); err != nil {
			return nil, fmt.Errorf("failover: fence %s/%s: %w", tenant, group, err)
		}
		fenced = func(context.Context) error { return nil } // done
		defer func() {
			if err != nil && st == nil { // nothing of it is left: the group streams again
				e.site.Unfence(tenant, group)
			}
		}()
	}
	pr, err := e.prepare(ctx, tenant, group, mode, at)
	if err != nil {
		return nil, err
	}
	lv, err := e.Dial(ctx, p.LibvirtURI)
	if err != nil {
		return nil, fmt.Errorf("%w: %s unreachable: %v", ErrLibvirt, p.LibvirtURI, err)
	}
	defer lv.Close()
	for _, vp := range pr.vms {
		if _, err := lv.LookupDomain(ctx, vp.name); err == nil {
			return nil, fmt.Errorf("%w: %q, at %s: qcdp never overwrites a domain; rename or remove it, or fail over to another name", ErrExists, vp.name, p.LibvirtURI)
		} else if !hypervisor.IsNoDomain(err) {
			return nil, fmt.Errorf("%w: %v", ErrLibvirt, err)
		}
	}
	st = &State{Tenant: tenant, Group: group, Mode: mode, Phase: PhaseStarting, Point: pr.point,
		Export: exportID(tenant, group, mode), Socket: e.socketPath(tenant, group), Started: start.UTC()}
	if err := saveState(path, st); err != nil {
		return nil, err
	}
	if err := e.indexSet(tenant, group, path); err != nil {
		removeState(path)
		return nil, err
	}
	// From here on a failure undoes what was made, the state file last.
	defer func() {
		if err == nil {
			return
		}
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if uerr := e.teardown(uctx, lv, p, st); uerr != nil {
			err = fmt.Errorf("%w; undoing it failed too, run `qcdp failover %s %s` again: %v", err, map[bool]string{true: "cleanup", false: "undo"}[mode == ModeTest], group, uerr)
			return
		}
		st = nil
	}()
	if mode == ModeTest {
		if err := e.testNetworks(ctx, lv, pr, st); err != nil {
			return st, err
		}
	} else {
		st.Fenced = true
		if err := saveState(path, st); err != nil {
			return st, err
		}
		if fenced == nil {
			fenced = func(ctx context.Context) error {
				return e.site.Fence(ctx, tenant, group, fmt.Sprintf("failed over (%s) at seq %d", mode, pr.point.Seq))
			}
		}
		if err := fenced(ctx); err != nil {
			return st, fmt.Errorf("failover: fence %s/%s: %w", tenant, group, err)
		}
	}
	if err := e.serve(ctx, st, pr); err != nil {
		return st, err
	}
	dir := groupDir(p, tenant, group)
	for i, vp := range pr.vms {
		if i > 0 && p.BootDelay > 0 {
			select {
			case <-time.After(p.BootDelay):
			case <-ctx.Done():
				return st, ctx.Err()
			}
		}
		if err := e.startVM(ctx, lv, p, st, dir, vp, mode, start); err != nil {
			return st, err
		}
		if err := saveState(path, st); err != nil {
			return st, err
		}
	}
	st.Phase = PhaseRunning
	if err := saveState(path, st); err != nil {
		return st, err
	}
	e.log.Info("failover: standbys running", "tenant", tenant, "group", group, "mode", mode, "seq", st.Point.Seq,
		"vms", len(st.VMs), "took", time.Since(start).Round(time.Millisecond))
	return st, nil
}

// testNetworks makes sure every network a test failover puts NICs on
// exists and runs; the plan's test_network is defined (isolated) when
// missing, and removed again at cleanup.
func (e *Engine) testNetworks(ctx context.Context, lv Libvirt, pr *prepared, st *State) error {
	need := map[configs.Network]bool{}
	for _, vp := range pr.vms {
		for _, n := range vp.nics {
			need[n.Net] = true
		}
	}
	for n := range need {
		if n.Bridge {
			continue // a bridge is the host's: nothing to define
		}
		active, err := lv.NetworkActive(ctx, n.Name)
		switch {
		case err == nil && active:
		case err == nil:
			if err := lv.StartNetwork(ctx, n.Name); err != nil {
				return fmt.Errorf("%w: %v", ErrLibvirt, err)
			}
		case hypervisor.IsNoNetwork(err) && n == pr.plan.TestNetwork:
			if err := lv.DefineNetwork(ctx, testNetworkXML(n.Name)); err != nil {
				return fmt.Errorf("%w: define the isolated test network %s: %v", ErrLibvirt, n.Name, err)
			}
			st.CreatedNetwork = n.Name
		case hypervisor.IsNoNetwork(err):
			return fmt.Errorf("%w: test network %s (test_networks) does not exist at %s", ErrPlan, n.Name, pr.plan.LibvirtURI)
		default:
			return fmt.Errorf("%w: %v", ErrLibvirt, err)
		}
	}
	return nil
}

// serve exports the point's view under the failover's id and serves it
// on the group's standby socket.
func (e *Engine) serve(ctx context.Context, st *State, pr *prepared) error {
	if err := e.exportView(ctx, st); err != nil {
		return err
	}
	st.Exported = true
	if err := saveState(statePath(pr.plan, st.Tenant, st.Group), st); err != nil {
		return err
	}
	return e.listen(st)
}

// exportView exports the failover's view, and refuses one that is not
// exactly its point: a standby's overlay over another state is a corrupt
// disk.
func (e *Engine) exportView(ctx context.Context, st *State) error {
	info, err := e.site.ExportAs(ctx, st.Export, st.Tenant, st.Group, journal.Target{Seq: st.Point.Seq}, false)
	if err != nil {
		return fmt.Errorf("failover: export the view at seq %d: %w", st.Point.Seq, err)
	}
	if info.Point.Seq != st.Point.Seq {
		e.site.Withdraw(st.Export)
		return fmt.Errorf("failover: the view of seq %d resolves to seq %d now (the point is no longer retained): not served, its standbys' overlays need exactly it",
			st.Point.Seq, info.Point.Seq)
	}
	return nil
}

func (e *Engine) listen(st *State) error {
	k := st.Tenant + "/" + st.Group
	e.mu.Lock()
	_, ok := e.sockets[k]
	e.mu.Unlock()
	if ok {
		return nil
	}
	uid, gid := qemuUser()
	c, err := e.site.ListenNBD(st.Socket, uid, gid, st.Export)
	if err != nil {
		return fmt.Errorf("failover: %w", err)
	}
	e.mu.Lock()
	e.sockets[k] = c
	e.mu.Unlock()
	return nil
}

func (e *Engine) unlisten(st *State) error {
	k := st.Tenant + "/" + st.Group
	e.mu.Lock()
	c, ok := e.sockets[k]
	delete(e.sockets, k)
	e.mu.Unlock()
	if !ok {
		return nil
	}
	return c()
}

// startVM makes one standby: overlays, domain, start, post_boot.
func (e *Engine) startVM(ctx context.Context, lv Libvirt, p *configs.Recovery, st *State, dir string, vp vmPlan, mode Mode, start time.Time) error {
	vdir := vmDir(dir, vp.name)
	if filepath.Dir(vdir) != dir {
		return fmt.Errorf("%w: standby name %q", ErrPlan, vp.name)
	}
	// The directory is root's (virtlogd writes the console log in it as
	// root); QEMU makes its console socket in a directory of its own.
	qdir := filepath.Join(vdir, "qemu")
	if err := os.MkdirAll(qdir, 0o711); err != nil {
		return fmt.Errorf("failover: standby dir: %w", err)
	}
	uid, gid := qemuUser()
	if err := os.Chown(qdir, uid, gid); err != nil {
		return fmt.Errorf("failover: standby dir: %w", err)
	}
	if err := checkKernel(vp.def, p.KernelDirs); err != nil {
		return err
	}
	uuid, err := newUUID()
	if err != nil {
		return err
	}
	vm := VMState{ID: vp.def.ID, Name: vp.def.Name, Domain: vp.name, UUID: uuid}
	for _, n := range vp.nics {
		vm.Networks = append(vm.Networks, n.Net.String())
	}
	spec := domainSpec{Name: vp.name, Type: p.DomainType, Def: vp.def, Override: vp.o, NICs: vp.nics,
		Console: filepath.Join(vdir, "console.log"), ConsoleSocket: consoleSocket(qdir), UUID: uuid, Tenant: st.Tenant, Group: st.Group, Mode: mode,
		PointSeq: st.Point.Seq, Machine: vp.def.Machine, KernelDirs: p.KernelDirs}
	for _, k := range vp.disks {
		ov := filepath.Join(vdir, k.Target+".qcow2")
		exp := st.Export + "/" + k.Disk
		vm.Disks = append(vm.Disks, DiskState{Disk: k.Disk, Target: k.Target, Size: k.Size, Overlay: ov})
		spec.Disks = append(spec.Disks, standbyDisk{Def: k, Overlay: ov, Export: exp, Socket: st.Socket})
	}
	// The VM, with the UUID its domain will have, is kept in the state
	// before anything of it exists: a failure or a crash from here on
	// leaves what undo needs to remove it.
	st.VMs = append(st.VMs, vm)
	if err := saveState(statePath(p, st.Tenant, st.Group), st); err != nil {
		return err
	}
	for _, k := range spec.Disks {
		if err := createOverlay(ctx, k.Overlay, k.Export, k.Socket, k.Def.Size); err != nil {
			return err
		}
	}
	xmlDoc, err := domainXML(spec)
	if err != nil {
		return err
	}
	got, err := lv.DefineDomain(ctx, xmlDoc)
	if err != nil && spec.Machine != "" && machineAlias(spec.Machine) != "" && machineAlias(spec.Machine) != spec.Machine {
		// The recovery site's QEMU may lack the versioned machine type.
		e.log.Warn("failover: machine type refused, trying its generic alias", "vm", vp.name, "machine", spec.Machine, "err", err)
		spec.Machine = machineAlias(spec.Machine)
		if xmlDoc, err = domainXML(spec); err == nil {
			got, err = lv.DefineDomain(ctx, xmlDoc)
		}
	}
	if err != nil {
		return fmt.Errorf("%w: define standby %s: %v", ErrLibvirt, vp.name, err)
	}
	cur := &st.VMs[len(st.VMs)-1]
	if got != uuid {
		cur.UUID = got // libvirt's word: teardown checks it
		if err := saveState(statePath(p, st.Tenant, st.Group), st); err != nil {
			return err
		}
	}
	sctx, cancel := context.WithTimeout(ctx, p.BootTimeout)
	err = lv.StartDomain(sctx, vp.name)
	cancel()
	if err != nil {
		return fmt.Errorf("%w: start standby %s: %v (its console: %s)", ErrLibvirt, vp.name, err, spec.Console)
	}
	cur.Running = true
	cur.BootSeconds = time.Since(start).Seconds()
	e.log.Info("failover: standby running", "domain", vp.name, "uuid", uuid, "seq", st.Point.Seq, "after", time.Since(start).Round(time.Millisecond))
	if len(p.PostBoot) > 0 {
		cur.PostBoot = postBoot(ctx, p, st, vp.def.Name, vp.name, mode)
	}
	return nil
}

// vmDir is the directory of a standby's files in its group's directory:
// vm-<domain>, never the group directory itself, its parent or its state
// file (a name from the protected host cannot leave it).
func vmDir(groupDir, domain string) string {
	return filepath.Join(groupDir, "vm-"+strings.TrimLeft(domain, "."))
}

// newUUID makes a random (version 4) UUID for a standby domain.
func newUUID() (string, error) {
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		return "", fmt.Errorf("failover: UUID: %w", err)
	}
	u[6], u[8] = u[6]&0x0f|0x40, u[8]&0x3f|0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[:4], u[4:6], u[6:8], u[8:10], u[10:]), nil
}

// checkKernel confines a directly booted kernel and initrd: regular files
// whose real path (symbolic links resolved) lies inside kernel_dirs.
func checkKernel(def record.VMDefinition, dirs []string) error {
	for _, p := range []string{def.Kernel, def.Initrd} {
		if p == "" || def.Kernel == "" {
			continue
		}
		real, err := filepath.EvalSymlinks(p)
		if err == nil && !inDirs(real, dirs) {
			err = fmt.Errorf("it is really %s", real)
		}
		if err == nil {
			var fi os.FileInfo
			if fi, err = os.Stat(real); err == nil && !fi.Mode().IsRegular() {
				err = fmt.Errorf("not a regular file")
			}
		}
		if err != nil {
			return fmt.Errorf("%w: VM %s boots %s directly, which is not a file inside kernel_dirs %v: %v", ErrPlan, def.Name, p, dirs, err)
		}
	}
	return nil
}

// consoleSocket is the standby's console socket in QEMU's directory, or
// "" when the path is too long for a unix socket.
func consoleSocket(qdir string) string {
	p := filepath.Join(qdir, "console.sock")
	if len(p) > 100 {
		return ""
	}
	return p
}

// createOverlay makes a qcow2 overlay of size bytes whose backing file is
// the view served at export on socket. Nothing is read from the view.
func createOverlay(ctx context.Context, path, export, socket string, size uint64) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("failover: overlay %s exists already: not overwritten", path)
	}
	backing := "nbd+unix:///" + export + "?socket=" + socket
	cmd := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", backing, "-u",
		"-o", "cluster_size=65536", path, strconv.FormatUint(size, 10))
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(path)
		return fmt.Errorf("failover: create overlay %s: %v: %s", path, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// postBoot runs the plan's post_boot command for one standby and returns
// its outcome in a line.
func postBoot(ctx context.Context, p *configs.Recovery, st *State, vm, domain string, mode Mode) string {
	cctx, cancel := context.WithTimeout(ctx, p.PostBootTimeout)
	defer cancel()
	cmd := exec.CommandContext(cctx, p.PostBoot[0], p.PostBoot[1:]...)
	cmd.Env = append(os.Environ(), "QCDP_GROUP="+st.Group, "QCDP_TENANT="+st.Tenant, "QCDP_VM="+vm,
		"QCDP_DOMAIN="+domain, "QCDP_MODE="+string(mode), "QCDP_SEQ="+strconv.FormatUint(st.Point.Seq, 10))
	out, err := cmd.CombinedOutput()
	tail := strings.TrimSpace(string(out))
	if len(tail) > 512 {
		tail = "…" + tail[len(tail)-512:]
	}
	if err != nil {
		return fmt.Sprintf("failed: %v: %s", err, tail)
	}
	return "ok: " + tail
}

// teardown removes what a failover made: its standby domains (only those
// whose UUID it recorded and that carry its metadata), their overlays,
// the export and socket, a test network it defined, the fence, and last
// the state file.
func (e *Engine) teardown(ctx context.Context, lv Libvirt, p *configs.Recovery, st *State) error {
	var errs []error
	path := statePath(p, st.Tenant, st.Group)
	for i := len(st.VMs) - 1; i >= 0; i-- {
		vm := st.VMs[i]
		if vm.UUID != "" {
			info, err := lv.LookupDomain(ctx, vm.Domain)
			switch {
			case err != nil && hypervisor.IsNoDomain(err):
			case err != nil:
				errs = append(errs, fmt.Errorf("%w: %v", ErrLibvirt, err))
				continue
			case info.UUID != vm.UUID || !ours(info.XML, st.Tenant, st.Group):
				errs = append(errs, fmt.Errorf("%w: domain %q is not the standby qcdp made (UUID %s, want %s): left alone", ErrExists, vm.Domain, info.UUID, vm.UUID))
				continue
			default:
				if err := lv.DestroyDomain(ctx, vm.Domain); err != nil {
					errs = append(errs, fmt.Errorf("%w: %v", ErrLibvirt, err))
					continue
				}
				if err := lv.UndefineDomain(ctx, vm.Domain); err != nil {
					errs = append(errs, fmt.Errorf("%w: %v", ErrLibvirt, err))
					continue
				}
			}
		}
		vdir := vmDir(groupDir(p, st.Tenant, st.Group), vm.Domain)
		if err := os.RemoveAll(vdir); err != nil {
			errs = append(errs, fmt.Errorf("failover: remove %s: %w", vdir, err))
			continue
		}
		st.VMs = st.VMs[:i]
	}
	if len(errs) > 0 {
		saveState(path, st) // what is left, for the next try
		return errors.Join(errs...)
	}
	if st.Exported {
		if err := e.site.Withdraw(st.Export); err != nil && !errors.Is(err, replica.ErrUnknownExport) {
			errs = append(errs, err)
		} else {
			st.Exported = false
		}
	}
	if err := e.unlisten(st); err != nil {
		errs = append(errs, err)
	}
	if st.CreatedNetwork != "" && e.networkInUse(st) != "" {
		e.log.Warn("failover: the test network this failover defined is left: another group's standbys use it",
			"network", st.CreatedNetwork, "group", e.networkInUse(st))
		st.CreatedNetwork = ""
	}
	if st.CreatedNetwork != "" {
		if err := lv.RemoveNetwork(ctx, st.CreatedNetwork); err != nil && !hypervisor.IsNoNetwork(err) {
			errs = append(errs, fmt.Errorf("%w: %v", ErrLibvirt, err))
		} else {
			st.CreatedNetwork = ""
		}
	}
	if len(errs) > 0 {
		saveState(path, st)
		return errors.Join(errs...)
	}
	if err := removeState(path); err != nil {
		return err
	}
	if err := e.indexSet(st.Tenant, st.Group, ""); err != nil {
		return err
	}
	if st.Fenced {
		e.site.Unfence(st.Tenant, st.Group)
	}
	return nil
}

// networkInUse names another group whose failover puts NICs on the test
// network st defined ("" for none).
func (e *Engine) networkInUse(st *State) string {
	ix, _ := e.loadIndex()
	for k, path := range ix.States {
		if k == st.Tenant+"/"+st.Group {
			continue
		}
		other, err := loadState(path)
		if err != nil || other == nil {
			continue
		}
		for _, vm := range other.VMs {
			if slices.Contains(vm.Networks, st.CreatedNetwork) {
				return k
			}
		}
	}
	return ""
}

// Undo ends a failover that is not committed: its standbys are destroyed
// and their writes discarded, and the group takes its stream again from
// where it was.
func (e *Engine) Undo(ctx context.Context, tenant, group string) error {
	return e.end(ctx, tenant, group, false)
}

// Cleanup ends a test failover: its standbys are destroyed and their
// writes discarded; nothing of it is left (domains, overlays, export,
// socket, a test network it defined).
func (e *Engine) Cleanup(ctx context.Context, tenant, group string) error {
	return e.end(ctx, tenant, group, true)
}

func (e *Engine) end(ctx context.Context, tenant, group string, test bool) error {
	unlock, err := e.lock(tenant, group)
	if err != nil {
		return err
	}
	defer unlock()
	p, err := e.plan(tenant, group)
	if err != nil {
		return err
	}
	st, err := loadState(statePath(p, tenant, group))
	switch {
	case err != nil:
		return err
	case st == nil:
		return fmt.Errorf("%w: %s/%s", ErrNone, tenant, group)
	case test && st.Mode != ModeTest:
		return fmt.Errorf("%w: %s/%s is in a %s failover, not a test: `qcdp failover undo %s` ends it", ErrMode, tenant, group, st.Mode, group)
	case !test && st.Mode == ModeTest:
		return fmt.Errorf("%w: %s/%s is in a test failover: `qcdp failover cleanup %s` ends it", ErrMode, tenant, group, group)
	case st.Phase == PhaseCommitted || st.Phase == PhaseCommitting:
		return fmt.Errorf("%w: %s/%s was committed at %s: its standbys are the VMs now; fail back instead", ErrCommitted, tenant, group, st.Committed.UTC().Format(time.RFC3339))
	}
	lv, err := e.Dial(ctx, p.LibvirtURI)
	if err != nil {
		return fmt.Errorf("%w: %s unreachable: %v", ErrLibvirt, p.LibvirtURI, err)
	}
	defer lv.Close()
	if err := e.teardown(ctx, lv, p, st); err != nil {
		return fmt.Errorf("failover %s of %s/%s: %w", map[bool]string{true: "cleanup", false: "undo"}[test], tenant, group, err)
	}
	e.log.Info("failover ended: standbys destroyed, their writes discarded", "tenant", tenant, "group", group, "mode", st.Mode)
	return nil
}

// Resume takes up the failovers kept on disk, before the site serves:
// fences again the groups that failed over, serves again the views their
// standbys read from (under the same names, on the same sockets), and
// watches again a commit under way.
func (e *Engine) Resume(ctx context.Context) error {
	var errs []error
	ix, err := e.loadIndex()
	if err != nil {
		errs = append(errs, err)
	}
	for k, path := range ix.States {
		tenant, group, _ := strings.Cut(k, "/")
		if p, ok := e.cfg.RecoveryFor(tenant, group); ok && statePath(p, tenant, group) == path {
			continue // taken up below
		}
		why := fmt.Sprintf("failed over, but its [[recovery]] plan is gone or its standby_dir moved (its state: %s)", path)
		if err := e.site.Fence(ctx, tenant, group, why); err != nil {
			errs = append(errs, err)
		}
		errs = append(errs, fmt.Errorf("failover of %s/%s: %s: fenced; put the plan back as it was to undo or commit it", tenant, group, why))
	}
	for _, p := range e.cfg.Recoveries {
		st, err := loadState(statePath(p, p.Tenant, p.Group))
		if err != nil {
			// Fail closed: a group whose failover cannot be read may
			// have standbys running; its host must not stream again.
			if ferr := e.site.Fence(ctx, p.Tenant, p.Group, "its failover state cannot be read: "+err.Error()); ferr != nil {
				err = errors.Join(err, ferr)
			}
			errs = append(errs, fmt.Errorf("failover of %s/%s: fenced, its state is damaged (repair or remove it, then restart): %w", p.Tenant, p.Group, err))
			continue
		}
		if st == nil {
			continue
		}
		if st.Fenced {
			if err := e.site.Fence(ctx, st.Tenant, st.Group, fmt.Sprintf("failed over (%s) at seq %d", st.Mode, st.Point.Seq)); err != nil {
				errs = append(errs, err)
			}
		}
		if st.Phase == PhaseCommitted {
			continue
		}
		if err := e.exportView(ctx, st); err != nil {
			errs = append(errs, fmt.Errorf("failover of %s/%s: serve its view again: %w", st.Tenant, st.Group, err))
			continue
		}
		if err := e.listen(st); err != nil {
			errs = append(errs, err)
			continue
		}
		e.log.Info("failover resumed: its view is served again", "tenant", st.Tenant, "group", st.Group, "mode", st.Mode, "phase", st.Phase)
		if st.Phase == PhaseCommitting {
			e.watchCommit(st.Tenant, st.Group)
		}
	}
	return errors.Join(errs...)
}
