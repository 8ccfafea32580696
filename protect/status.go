package protect

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/filter"
	"github.com/qcdp/qcdp/hypervisor"
	"github.com/qcdp/qcdp/shipper"
	"github.com/qcdp/qcdp/shipper/sender"
)

// Status is what GET /v1/status returns and `qcdp status` shows.
type Status struct {
	Groups []GroupStatus `json:"groups"`
}

// GroupStatus is one protection group.
type GroupStatus struct {
	Name string `json:"name"`
	// State is the group's own state: "ok", "healing: ..." while a
	// broken spool is being reopened (writes are refused meanwhile), or
	// "failed-over: ..." (the replica's words) while the group is failed
	// over at the recovery site (its disks are failed-over).
	State    string       `json:"state"`
	Heals    int64        `json:"spool_heals,omitempty"`
	Socket   string       `json:"nbd_socket"`
	SpoolDir string       `json:"spool_dir"`
	LastSeq  uint64       `json:"last_seq"`
	Acked    uint64       `json:"acked_seq"`
	Bytes    int64        `json:"spool_bytes"`
	MaxBytes int64        `json:"spool_max"`
	Disks    []DiskStatus `json:"disks"`
	// Unmatched says, for each selector of the policy that protects
	// nothing now, why: no such VM on this host, or not running.
	Unmatched []string `json:"unmatched,omitempty"`
	NBDWrites int64    `json:"nbd_writes"`
	NBDErrors int64    `json:"nbd_errors"`
	// ClockStepsBack counts the steps back of this host's wall clock the
	// group's capture clock ignored (capture times never go back).
	ClockStepsBack int64 `json:"clock_steps_back,omitempty"`
	// Replica is the stream to the group's replica; nil without one.
	Replica *sender.Stats `json:"replica,omitempty"`
	// FinalSeq is the seq of the final point a planned failover was
	// prepared at (PrepareFailover), until a VM of the group is attached
	// again; 0 when none.
	FinalSeq uint64 `json:"final_seq,omitempty"`
}

// DiskStatus is one protected disk.
type DiskStatus struct {
	VM     string    `json:"vm"`
	VMID   string    `json:"vm_id"`
	Target string    `json:"target"`
	Stream string    `json:"stream"`
	Node   string    `json:"node"`
	Format string    `json:"format"`
	Size   int64     `json:"size"`
	State  string    `json:"state"`
	Error  string    `json:"error,omitempty"`
	Since  time.Time `json:"since"`
	// Resync is the disk's resync since its capture started, if any:
	// bytes compared and sent, the total, the rate and the time left.
	Resync *ResyncStatus `json:"resync,omitempty"`
}

// ResyncStatus is a disk's resync as status shows it.
type ResyncStatus struct {
	filter.Progress
	RateBytes float64 `json:"rate_bytes_per_second"`
	ETA       string  `json:"eta,omitempty"`
}

// String is the resync for a person: "bitmap 12.0 MiB sent of 40.0 MiB
// dirty, 1.0 GiB compared of 4.0 GiB, 80.0 MiB/s, 38s left".
func (r ResyncStatus) String() string {
	s := fmt.Sprintf("%s resync: %s sent of %s dirty, %s compared of %s", r.Mode, HumanBytes(r.Sent), HumanBytes(r.Dirty), HumanBytes(r.Compared), HumanBytes(r.Total))
	if r.HashBytes > 0 {
		s += fmt.Sprintf(" (%s of hashes)", HumanBytes(r.HashBytes))
	}
	switch {
	case r.Done:
		s += ", done"
	case r.ETA != "":
		s += fmt.Sprintf(", %s/s, %s left", HumanBytes(int64(r.RateBytes)), r.ETA)
	}
	if r.Error != "" && !r.Done {
		s += "; last try failed: " + r.Error
	}
	return s
}

// HumanBytes is n bytes for a person: "512 B", "1.5 MiB".
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// Status reports every group and protected disk.
func (d *Engine) Status() Status {
	var st Status
	names := make([]string, 0, len(d.groups))
	for n := range d.groups {
		names = append(names, n)
	}
	sort.Strings(names)
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, n := range names {
		g := d.groups[n]
		ss := g.Spool().Stats()
		ns := g.ServerStats()
		gs := GroupStatus{Name: n, Socket: g.Socket(), SpoolDir: d.pol.SpoolDir(g.cfg),
			LastSeq: g.Spool().LastSeq(), Acked: g.Spool().Acked(), Bytes: ss.Bytes, MaxBytes: g.cfg.SpoolMax,
			NBDWrites: ns.Writes, NBDErrors: ns.Errors, Disks: []DiskStatus{}}
		gs.ClockStepsBack, _ = g.Sequencer().ClockSteps()
		h := g.Health()
		gs.State, gs.Heals = h.String(), h.Heals
		if g.failedOver != "" && h.State == shipper.StateOK {
			gs.State = StateFailedOver + ": " + g.failedOver
		}
		gs.FinalSeq = g.final
		if snd := g.Sender(); snd != nil {
			rs := snd.Stats()
			gs.Replica = &rs
		}
		for _, v := range d.vms {
			if v.group != g {
				continue
			}
			for _, dc := range v.disks {
				state, err := dc.cap.State()
				ds := DiskStatus{VM: v.vm.Name, VMID: v.vm.ID, Target: dc.disk.Target, Stream: dc.name,
					Node: dc.disk.Node, Format: dc.disk.Format, Size: dc.disk.Size, State: string(state), Since: dc.since}
				if err != nil {
					ds.Error = err.Error()
				}
				if v.failedOver {
					ds.State, ds.Error = StateFailedOver, g.failedOver
				}
				if p, ok := dc.cap.Progress(); ok {
					rs := &ResyncStatus{Progress: p, RateBytes: p.Rate()}
					if eta := p.ETA(); eta > 0 {
						rs.ETA = eta.String()
					}
					ds.Resync = rs
				}
				gs.Disks = append(gs.Disks, ds)
			}
		}
		sort.Slice(gs.Disks, func(i, j int) bool { return gs.Disks[i].Stream < gs.Disks[j].Stream })
		if d.scanned {
			gs.Unmatched = unmatched(g.cfg, d.seen)
		}
		st.Groups = append(st.Groups, gs)
	}
	return st
}

// unmatched explains each of a group's VM selectors that selects no
// running VM among seen.
func unmatched(gc *configs.Group, seen []hypervisor.VM) []string {
	var out []string
	for _, sel := range gc.VMs {
		var what string
		var match func(hypervisor.VM) bool
		switch {
		case sel.UUID != "":
			what, match = fmt.Sprintf("uuid %s", sel.UUID), func(vm hypervisor.VM) bool { return strings.EqualFold(vm.UUID, sel.UUID) }
		case sel.Name != "":
			what, match = fmt.Sprintf("VM %q", sel.Name), func(vm hypervisor.VM) bool { return vm.Name == sel.Name }
		default:
			what, match = fmt.Sprintf("label %q", sel.Label), func(vm hypervisor.VM) bool { return slices.Contains(labelsOf(vm), sel.Label) }
		}
		found, running := false, false
		for _, vm := range seen {
			if match(vm) {
				found = true
				running = running || vm.Running
			}
		}
		switch {
		case !found && sel.Label != "":
			out = append(out, fmt.Sprintf("%s (%s): no VM on this host carries it", what, sel.Origin))
		case !found:
			out = append(out, fmt.Sprintf("%s (%s): no such VM on this host", what, sel.Origin))
		case !running:
			out = append(out, fmt.Sprintf("%s (%s): not running", what, sel.Origin))
		}
	}
	return out
}
