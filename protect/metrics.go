package protect

import (
	"fmt"
	"io"
	"strings"
)

// diskStates are the states a disk can be in, each exported as a 0/1 gauge.
var diskStates = []string{"initial-sync", "syncing", "tracking", "resync", "paused", "error", "detached", StateFailedOver}

// WriteMetrics writes st in the Prometheus text exposition format: per
// group the measured RPO (DESIGN.md "Words"), the spool's use and the
// stream's progress; per disk its state.
func WriteMetrics(w io.Writer, st Status) error {
	var b strings.Builder
	help := func(name, typ, text string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, text, name, typ)
	}
	help("qcdp_rpo_seconds", "gauge", "Now minus the capture time of the oldest write not yet durable at the replica; 0 when nothing is pending.")
	for _, g := range st.Groups {
		if g.Replica != nil {
			fmt.Fprintf(&b, "qcdp_rpo_seconds{group=%q} %g\n", g.Name, g.Replica.RPO.Seconds())
		}
	}
	help("qcdp_replica_connected", "gauge", "1 while the group's stream to its replica is up.")
	for _, g := range st.Groups {
		if g.Replica != nil {
			fmt.Fprintf(&b, "qcdp_replica_connected{group=%q} %d\n", g.Name, boolInt(g.Replica.Connected))
		}
	}
	help("qcdp_replica_diverged", "gauge", "1 while the replica refuses the group's stream as diverged (another spool's journal, or records the spool lost): a resync is needed.")
	for _, g := range st.Groups {
		if g.Replica != nil {
			fmt.Fprintf(&b, "qcdp_replica_diverged{group=%q} %d\n", g.Name, boolInt(g.Replica.Diverged != ""))
		}
	}
	help("qcdp_replica_failed_over", "gauge", "1 while the replica refuses the group's stream because the group failed over at the recovery site: its captures are detached until the failover is undone.")
	for _, g := range st.Groups {
		if g.Replica != nil {
			fmt.Fprintf(&b, "qcdp_replica_failed_over{group=%q} %d\n", g.Name, boolInt(g.Replica.FailedOver != ""))
		}
	}
	help("qcdp_group_healing", "gauge", "1 while the group's spool is broken and being reopened: writes are refused and disks go to tracking.")
	for _, g := range st.Groups {
		fmt.Fprintf(&b, "qcdp_group_healing{group=%q} %d\n", g.Name, boolInt(strings.HasPrefix(g.State, "healing")))
	}
	help("qcdp_spool_bytes", "gauge", "Bytes the group's spool holds.")
	for _, g := range st.Groups {
		fmt.Fprintf(&b, "qcdp_spool_bytes{group=%q} %d\n", g.Name, g.Bytes)
	}
	help("qcdp_spool_max_bytes", "gauge", "The spool's bound; at it, writes are refused and disks go to tracking.")
	for _, g := range st.Groups {
		fmt.Fprintf(&b, "qcdp_spool_max_bytes{group=%q} %d\n", g.Name, g.MaxBytes)
	}
	help("qcdp_last_seq", "counter", "The last seq the group's sequencer assigned.")
	for _, g := range st.Groups {
		fmt.Fprintf(&b, "qcdp_last_seq{group=%q} %d\n", g.Name, g.LastSeq)
	}
	help("qcdp_acked_seq", "counter", "The last seq the replica holds durably.")
	for _, g := range st.Groups {
		fmt.Fprintf(&b, "qcdp_acked_seq{group=%q} %d\n", g.Name, g.Acked)
	}
	help("qcdp_disk_state", "gauge", "1 for the state a protected disk is in.")
	for _, g := range st.Groups {
		for _, d := range g.Disks {
			for _, s := range diskStates {
				fmt.Fprintf(&b, "qcdp_disk_state{group=%q,vm=%q,disk=%q,state=%q} %d\n", g.Name, d.VM, d.Target, s, boolInt(d.State == s))
			}
		}
	}
	help("qcdp_resync_compared_bytes", "gauge", "Bytes a disk's current (or last) resync has compared.")
	help("qcdp_resync_sent_bytes", "gauge", "Bytes a disk's current (or last) resync has sent.")
	help("qcdp_resync_total_bytes", "gauge", "The size of a resyncing disk.")
	help("qcdp_resync_done", "gauge", "1 once a disk's resync has finished.")
	help("qcdp_resync_dirty_bytes", "gauge", "Bytes a disk's resync found changed so far (bitmap: dirty; hash: different from the replica).")
	help("qcdp_resync_hash_bytes", "gauge", "Bytes of block hashes a disk's hash resync received from the replica.")
	help("qcdp_resync_rate_bytes_per_second", "gauge", "Bytes a disk's resync compares per second, on average since it began.")
	help("qcdp_resync_eta_seconds", "gauge", "Seconds a disk's resync should still take at its rate so far (0 when done or unknown).")
	for _, g := range st.Groups {
		for _, d := range g.Disks {
			if r := d.Resync; r != nil {
				l := fmt.Sprintf("{group=%q,vm=%q,disk=%q,mode=%q}", g.Name, d.VM, d.Target, r.Mode)
				fmt.Fprintf(&b, "qcdp_resync_compared_bytes%s %d\nqcdp_resync_sent_bytes%s %d\nqcdp_resync_total_bytes%s %d\nqcdp_resync_done%s %d\n",
					l, r.Compared, l, r.Sent, l, r.Total, l, boolInt(r.Done))
				fmt.Fprintf(&b, "qcdp_resync_dirty_bytes%s %d\nqcdp_resync_hash_bytes%s %d\nqcdp_resync_rate_bytes_per_second%s %.0f\nqcdp_resync_eta_seconds%s %.0f\n",
					l, r.Dirty, l, r.HashBytes, l, r.RateBytes, l, r.Progress.ETA().Seconds())
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
