package protect

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/hypervisor"
	"github.com/qcdp/qcdp/record"
)

// A group's membership (the VMs and disks it protects, with their sizes)
// is declared in its stream by its sequencer (shipper.Sequencer.Declare):
// the replica offers a restore point only once every declared disk is in
// sync, and sizes its views as declared. The engine declares a VM's disks
// when it attaches the VM, before their captures start; removes a disk the
// operator detaches; and, after a complete scan, removes the VMs that no
// hypervisor lists any more or that the policy no longer puts in the
// group. A VM that stops stays declared while its hypervisor lists it
// (libvirt lists stopped domains): its disks keep their last state. A VM
// found by its QMP socket (plain QEMU, Proxmox) is listed only while it
// runs, so it leaves the membership when it stops, and when it starts
// again its disks must complete their initial sync before the group has a
// restore point again.
// The membership is kept across restarts (membersPath), so that a restarted
// daemon does not drop the VMs it has not attached again yet. A group
// prepared for a planned failover keeps the membership of its final point
// until a VM of it is attached again (failover.go).
//
// Each declared VM's definition (its hardware, disks and NICs: what the
// recovery site builds a standby from) follows its declaration in the
// stream (shipper.Sequencer.Define), when its hypervisor gives one
// (Definer), and again when libvirt says the domain's definition changed
// (its "defined" event). A definition that cannot be read is logged, and
// protection goes on without it.

// membersPath is where a group's declared membership is kept.
func (d *Engine) membersPath(gc *configs.Group) string {
	return filepath.Join(d.pol.Host.StateDir, "members", gc.Name)
}

// declare declares the disks v captures, as v's in its group, each inside
// an open resync bracket: an attach starts a copy that is not a write log
// (and a VM that restarts, or a daemon that comes back, may have written
// what nobody captured), so no restore point may fall between the
// declaration and the copy's end. A disk declared before gets its bracket
// ahead of the declaration (a point at the declaration would be stamped
// after writes the stream lacks); a new one right after it (it is not in
// sync until its first copy ends anyway). The capture's own resync-begin
// joins the open bracket; its READY closes it.
//
// Then it defines the VM (define): disks are every disk its source
// reported, for the sizes of those not protected.
func (d *Engine) declare(ctx context.Context, v *vmCapture, disks []hypervisor.Disk) error {
	seq := v.group.Sequencer()
	declared := map[string]bool{}
	if cur, ok := seq.Members(); ok {
		for _, m := range cur.Disks {
			declared[m.Disk] = true
		}
	}
	ms := make([]record.Member, 0, len(v.disks))
	for _, dc := range v.disks {
		ms = append(ms, record.Member{Disk: dc.name, Size: uint64(dc.disk.Size), VMName: v.vm.Name, Target: dc.disk.Target})
		if declared[dc.name] {
			if _, err := seq.MarkDisk(record.ResyncBegin, dc.name); err != nil {
				// The sequencer owes it and writes it before any record.
				d.log.Warn("resync-begin before re-declaring", "disk", dc.name, "err", err)
			}
		}
	}
	if _, err := seq.Declare(v.vm.ID, ms); err != nil {
		return fmt.Errorf("declare its disks in the group's membership: %w", err)
	}
	for _, dc := range v.disks {
		if !declared[dc.name] {
			if _, err := seq.MarkDisk(record.ResyncBegin, dc.name); err != nil {
				d.log.Warn("resync-begin after declaring", "disk", dc.name, "err", err)
			}
		}
	}
	d.define(ctx, v, disks)
	return nil
}

// Definer is a Source that describes a VM for the recovery site
// (hypervisor.Libvirt and hypervisor.Sockets are): disks are the VM's
// disks as Disks reported them, names the stream name of each protected
// one by its target.
type Definer interface {
	Definition(ctx context.Context, vm hypervisor.VM, disks []hypervisor.Disk, names map[string]string) (record.VMDefinition, error)
}

var (
	_ Definer = (*hypervisor.Libvirt)(nil)
	_ Definer = (*hypervisor.Sockets)(nil)
)

// defineTimeout bounds reading a VM's definition: it is read while the
// VM is attached, and protection waits for nothing it does not need.
const defineTimeout = 10 * time.Second

// define appends v's definition to its group's stream, if its source
// gives one; a failure is logged and changes nothing else.
func (d *Engine) define(ctx context.Context, v *vmCapture, disks []hypervisor.Disk) {
	src, ok := v.src.(Definer)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, defineTimeout)
	defer cancel()
	names := map[string]string{}
	for _, dc := range v.disks {
		names[dc.disk.Target] = dc.name
	}
	def, err := src.Definition(ctx, v.vm, disks, names)
	if err == nil {
		_, err = v.group.Sequencer().Define(def)
	}
	if err != nil {
		d.log.Warn("VM definition not recorded: the recovery site keeps the one it had, if any", "vm", v.vm.Name, "id", v.vm.ID, "err", err)
	}
}

// redefine defines the attached VM id again: its hypervisor says its
// definition changed (libvirt's "defined" event).
func (d *Engine) redefine(ctx context.Context, id string) {
	d.attachMu.Lock() // not while the VM is attached anew
	defer d.attachMu.Unlock()
	d.mu.Lock()
	v, ok := d.vms[id]
	// A failed-over group's stream is refused, and nothing may follow a
	// prepared group's final point.
	skip := !ok || v.detached || v.failedOver || v.group.failedOver != "" || v.group.final != 0
	d.mu.Unlock()
	if skip {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, defineTimeout)
	defer cancel()
	disks, err := v.src.Disks(ctx, v.vm)
	if err != nil {
		d.log.Warn("VM definition changed but not recorded: its disks", "vm", v.vm.Name, "id", id, "err", err)
		return
	}
	d.define(ctx, v, disks)
}

// reconcileMembers removes from each group's membership the VMs a complete
// scan did not list (seen), or that the policy now puts in no group or
// another, unless they are attached to the group.
func (d *Engine) reconcileMembers(seen []hypervisor.VM) {
	byID := map[string]hypervisor.VM{}
	for _, vm := range seen {
		byID[vm.ID] = vm
	}
	d.mu.Lock()
	attached := map[string]*group{}
	for id, v := range d.vms {
		attached[id] = v.group
	}
	final := map[*group]bool{}
	for _, g := range d.groups {
		final[g] = g.final != 0
	}
	d.mu.Unlock()
	for name, g := range d.groups {
		decl, ok := g.Sequencer().Members()
		if !ok || final[g] {
			// A group prepared for a planned failover keeps the
			// membership of its final point (a transient domain that
			// stopped is no longer listed).
			continue
		}
		gone := map[string]bool{}
		for _, m := range decl.Disks {
			if m.VM == "" || attached[m.VM] == g {
				continue
			}
			vm, listed := byID[m.VM]
			if listed {
				if gc, _, err := d.pol.GroupFor(configs.VMIdentity{Name: vm.Name, UUID: vm.UUID, Labels: labelsOf(vm)}); err == nil && gc.Name == name {
					continue
				}
			}
			gone[m.VM] = true
		}
		for id := range gone {
			if _, err := g.Sequencer().Declare(id, nil); err != nil {
				d.log.Warn("remove a VM from its group's membership", "group", name, "vm", id, "err", err)
				continue
			}
			d.log.Info("VM removed from its group's membership: no hypervisor lists it, or the policy no longer protects it there", "group", name, "vm", id)
		}
	}
}
