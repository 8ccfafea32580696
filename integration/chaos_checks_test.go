package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/qcdp/qcdp/integration/chaos"
	"github.com/qcdp/qcdp/integration/guest"
	"github.com/qcdp/qcdp/integration/guest/workload"
	"github.com/qcdp/qcdp/record"
)

// The checks after every round.

// chaosStatus is the part of `qcdp status --json` the suite reads.
type chaosStatus struct {
	State     string `json:"state"`
	LastSeq   uint64 `json:"last_seq"`
	Acked     uint64 `json:"acked_seq"`
	NBDErrors int64  `json:"nbd_errors"`
	Disks     []struct {
		Stream string    `json:"stream"`
		State  string    `json:"state"`
		Error  string    `json:"error"`
		Since  time.Time `json:"since"`
	} `json:"disks"`
	Replica *struct {
		Connected bool   `json:"connected"`
		LastAcked uint64 `json:"last_acked"`
		LastError string `json:"last_error"`
		Diverged  string `json:"diverged"`
	} `json:"replica"`
	raw string
}

func (s chaosStatus) anyDisk(state string) bool {
	for _, d := range s.Disks {
		if d.State == state {
			return true
		}
	}
	return false
}

// status asks the host daemon; a daemon that does not answer gives a
// zero status (the callers wait for a state, and a restarting daemon
// answers soon).
func (r *chaosRun) status(ctx context.Context) chaosStatus {
	tctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(tctx, r.bin, "status", "--json", "--socket", r.h.Control).Output()
	if err != nil {
		return chaosStatus{raw: err.Error()}
	}
	var st struct {
		Groups []chaosStatus `json:"groups"`
	}
	if json.Unmarshal(out, &st) != nil || len(st.Groups) != 1 {
		return chaosStatus{raw: string(out)}
	}
	s := st.Groups[0]
	s.raw = string(out)
	return s
}

// replicaJSON runs a replica command with --json into v.
func (r *chaosRun) replicaJSON(ctx context.Context, v any, args ...string) error {
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	argv := append(args, "--socket", r.rctl, "--json")
	out, err := exec.CommandContext(tctx, r.bin, argv...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("qcdp %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return json.Unmarshal(out, v)
}

// waitAttached waits until both disks were attached after since and are
// syncing.
func (r *chaosRun) waitAttached(ctx context.Context, since time.Time) {
	var st chaosStatus
	for end := time.Now().Add(chaosConverge); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		st = r.status(ctx)
		n := 0
		for _, d := range st.Disks {
			if d.Since.After(since) && d.State == "syncing" {
				n++
			}
		}
		if n == 2 {
			return
		}
	}
	r.fatalf("the guest's disks were not protected again within %v: %s\n%s", chaosConverge, st.raw, r.host.Report())
}

func (r *chaosRun) pause(ctx context.Context) {
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := r.mon.Execute(tctx, "stop", nil, nil); err != nil {
		r.fatalf("QMP stop: %v", err)
	}
	r.paused = append(r.paused, span{from: time.Now()})
}

func (r *chaosRun) resume(ctx context.Context) {
	if len(r.paused) == 0 || !r.paused[len(r.paused)-1].to.IsZero() {
		return
	}
	tctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := r.mon.Execute(tctx, "cont", nil, nil); err != nil {
		r.fatalf("QMP cont: %v", err)
	}
	r.paused[len(r.paused)-1].to = time.Now()
}

// pausedWithin is how long the suite kept the guest paused in [from, to].
func (r *chaosRun) pausedWithin(from, to time.Time) time.Duration {
	var d time.Duration
	for _, p := range r.paused {
		end := p.to
		if end.IsZero() {
			end = time.Now()
		}
		lo, hi := maxTime(p.from, from), minTime(end, to)
		if hi.After(lo) {
			d += hi.Sub(lo)
		}
	}
	return d
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// noteHeld records a guest write's duration against its bound.
func (r *chaosRun) noteHeld(what string, d, bound time.Duration) {
	r.tally.Update(func(t *chaos.Tally) { t.Longest = max(t.Longest, d) })
	if d > bound {
		r.tally.Update(func(t *chaos.Tally) { t.Held++ })
		r.fatalf("%s held %v, bound %v (invariant 1)", what, d.Round(time.Millisecond), bound)
	}
}

// checkMaxWrite checks the longest write of a boot the guest measured
// itself, reported when its workload ended.
func (r *chaosRun) checkMaxWrite(done guest.Event) {
	r.noteHeld("the guest's longest write of its boot", done.MaxWrite, chaosWatchdog+chaosHeld)
}

// checkGuest: the guest reported no error, QEMU runs, and no console gap
// between two fsyncs since the last check (the suite's pauses taken out)
// was longer than the bound: one write held long stalls the whole paced
// workload. The bound is the watchdog's where the gap overlaps a hung
// (SIGSTOPped) host daemon, else a second.
func (r *chaosRun) checkGuest(ctx context.Context) {
	vm := r.vm()
	events := vm.Serial.Events()
	for _, ev := range events {
		if ev.Kind == guest.Error {
			r.tally.Update(func(t *chaos.Tally) { t.GuestErrors++ })
			r.fatalf("the guest reported an error: %s\n%s", ev.Line, vm.Report())
		}
	}
	select {
	case <-vm.Exited():
		r.tally.Update(func(t *chaos.Tally) { t.GuestErrors++ })
		r.fatalf("QEMU exited: %v\n%s", vm.Wait(ctx), vm.Report())
	default:
	}
	p := r.boots[len(r.boots)-1].epoch.Params
	interval := time.Duration(p.SyncEvery) * time.Second / time.Duration(p.Rate)
	var prev *guest.Event
	for i := range events {
		ev := &events[i]
		if ev.Kind != guest.Synced {
			continue
		}
		if prev != nil && ev.At.After(r.guestChecked) {
			bound := interval + chaosHeld + chaosSlack
			for _, h := range r.hangs {
				end := h.to
				if end.IsZero() {
					end = time.Now()
				}
				if h.from.Before(ev.At) && end.After(prev.At) {
					bound = interval + chaosWatchdog + chaosHeld + chaosSlack
				}
			}
			gap := ev.At.Sub(prev.At) - r.pausedWithin(prev.At, ev.At)
			r.noteHeld(fmt.Sprintf("the guest's console gap between fsyncs of seq %d and %d", prev.Seq, ev.Seq), gap, bound)
		}
		prev = ev
	}
	if prev != nil {
		r.guestChecked = prev.At
	}
}

// converge pauses the guest and waits until the replica holds everything
// the host took and every disk is back in sync; then the newest point
// must equal the source disks byte for byte and be the guest's state
// after its last fsync'd write. keepPaused leaves the guest paused (the
// caller resumes it).
func (r *chaosRun) converge(ctx context.Context, keepPaused bool) time.Duration {
	start := time.Now()
	r.pause(ctx)
	if !keepPaused {
		defer r.resume(ctx)
	}
	st, pts, quiet := r.waitQuiet(ctx, chaosConverge)
	if !quiet {
		r.tally.Update(func(t *chaos.Tally) { t.Losses++ })
		r.fatalf("the replica did not converge within %v of the faults healing (RPO never 0): host status %s\nreplica window %+v\n%s\n%s",
			chaosConverge, st.raw, pts.Window, r.host.Report(), r.replica.Report())
	}
	views, pt, err := r.views(ctx, "--seq", fmt.Sprint(pts.Window.LastSeq))
	if err != nil {
		r.tally.Update(func(t *chaos.Tally) { t.Losses++ })
		r.fatalf("the newest point (seq %d) after converging: %v", pts.Window.LastSeq, err)
	}
	for i := range r.disks {
		src := r.source(ctx, i)
		if off := firstDiff(src, views[i]); off >= 0 {
			r.tally.Update(func(t *chaos.Tally) { t.Losses++ })
			r.fatalf("the newest point (seq %d) differs from source disk %s from byte %d (block %d) with RPO 0",
				pt.Seq, r.disks[i].NodeName, off, off/workload.BlockSize)
		}
		r.tally.Update(func(t *chaos.Tally) { t.Bytes += int64(len(src)) })
	}
	if err := r.judge(pt, views); err != nil {
		r.fatalf("the newest point (seq %d): %v", pt.Seq, err)
	}
	r.tally.Update(func(t *chaos.Tally) { t.Converged++ })
	r.lastPoint = pt
	return time.Since(start)
}

// waitQuiet waits until the replica holds everything the host took and
// every disk is in sync: both disks syncing, the stream connected and
// not diverged, every seq acknowledged and in the replica's window.
func (r *chaosRun) waitQuiet(ctx context.Context, timeout time.Duration) (chaosStatus, pointsJSON, bool) {
	var st chaosStatus
	var pts pointsJSON
	for end := time.Now().Add(timeout); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		st = r.status(ctx)
		if st.State != "ok" || len(st.Disks) != 2 || !st.anyDisk("syncing") || st.anyDisk("initial-sync") ||
			st.anyDisk("tracking") || st.anyDisk("resync") || st.anyDisk("error") || st.anyDisk("paused") ||
			st.Replica == nil || !st.Replica.Connected || st.Replica.Diverged != "" ||
			st.LastSeq == 0 || st.Replica.LastAcked != st.LastSeq {
			continue
		}
		if err := r.replicaJSON(ctx, &pts, "points", "g1"); err != nil || pts.Window.LastSeq != st.LastSeq {
			continue
		}
		return st, pts, true
	}
	return st, pts, false
}

// firstDiff is the first offset where a and b differ (a shorter one reads
// as zeros past its end), -1 if none.
func firstDiff(a, b []byte) int64 {
	n := max(len(a), len(b))
	at := func(x []byte, i int) byte {
		if i < len(x) {
			return x[i]
		}
		return 0
	}
	for i := 0; i < n; i += 4096 {
		j := min(i+4096, n)
		if j <= len(a) && j <= len(b) && bytes.Equal(a[i:j], b[i:j]) {
			continue
		}
		for k := i; k < j; k++ {
			if at(a, k) != at(b, k) {
				return int64(k)
			}
		}
	}
	return -1
}

// views exports a point, reads every disk's view with nbdcopy and
// unexports it. The views come in the guest's disk order.
func (r *chaosRun) views(ctx context.Context, flag, value string) ([][]byte, pointJSON, error) {
	var e struct {
		ID    string            `json:"id"`
		Point pointJSON         `json:"point"`
		URIs  map[string]string `json:"uris"`
	}
	if err := r.replicaJSON(ctx, &e, "export", flag, value, "g1"); err != nil {
		return nil, pointJSON{}, err
	}
	defer exec.CommandContext(ctx, r.bin, "unexport", "--socket", r.rctl, e.ID).Run()
	var streams []string
	for s := range e.URIs {
		streams = append(streams, s)
	}
	sort.Strings(streams) // vm1.vda-dev, vm1.vdb-dev
	if len(streams) != len(r.disks) {
		return nil, e.Point, fmt.Errorf("point %d has %d disks (%v), the guest %d", e.Point.Seq, len(streams), streams, len(r.disks))
	}
	var out [][]byte
	for i, s := range streams {
		f := filepath.Join(r.dir, fmt.Sprintf("view-%d.raw", i))
		os.Remove(f)
		tctx, cancel := context.WithTimeout(ctx, time.Minute)
		b, err := exec.CommandContext(tctx, "nbdcopy", e.URIs[s], f).CombinedOutput()
		cancel()
		if err != nil {
			return nil, e.Point, fmt.Errorf("%w: nbdcopy %s (point %d): %v: %s", errViewRead, s, e.Point.Seq, err, bytes.TrimSpace(b))
		}
		v, err := os.ReadFile(f)
		if err != nil {
			return nil, e.Point, err
		}
		out = append(out, v)
	}
	return out, e.Point, nil
}

var errViewRead = errors.New("a view failed to read")

// pickPoint draws a restore point's seq in the window, outside its gaps.
func (r *chaosRun) pickPoint(pts pointsJSON) (uint64, bool) {
	w := pts.Window
	if w.LastSeq == 0 || w.FirstSeq == 0 || w.LastSeq < w.FirstSeq {
		return 0, false
	}
	// The spans between the gaps, and their edges: where a fault began or
	// a bracket closed is where a wrong point would hide.
	type span struct{ lo, hi uint64 }
	var spans []span
	var edges []uint64
	lo := w.FirstSeq
	gaps := append(w.Gaps[:0:0], w.Gaps...)
	sort.Slice(gaps, func(i, j int) bool { return gaps[i].FromSeq < gaps[j].FromSeq })
	for _, g := range gaps {
		if g.FromSeq > lo {
			spans = append(spans, span{lo, g.FromSeq - 1})
		}
		lo = max(lo, g.ToSeq+1)
	}
	if lo <= w.LastSeq {
		spans = append(spans, span{lo, w.LastSeq})
	}
	var total uint64
	for _, s := range spans {
		total += s.hi - s.lo + 1
		edges = append(edges, s.lo, s.hi)
	}
	if total == 0 {
		return 0, false
	}
	if r.rng.IntN(2) == 0 {
		return edges[r.rng.IntN(len(edges))], true
	}
	n := r.rng.Uint64N(total)
	for _, s := range spans {
		if n <= s.hi-s.lo {
			return s.lo + n, true
		}
		n -= s.hi - s.lo + 1
	}
	return 0, false
}

// sample checks n restore points drawn from the window and returns how
// many it checked.
func (r *chaosRun) sample(ctx context.Context, n int) int {
	var pts pointsJSON
	if err := r.replicaJSON(ctx, &pts, "points", "g1"); err != nil {
		r.fatalf("qcdp points: %v", err)
	}
	checked := 0
	for range n {
		seq, ok := r.pickPoint(pts)
		if !ok {
			r.logf("no restore point to sample in the window %+v", pts.Window)
			break
		}
		views, pt, err := r.views(ctx, "--seq", fmt.Sprint(seq))
		if err != nil {
			// Retention may have moved the window since; a gap is not
			// listed until the bracket closes. Neither is a finding.
			r.logf("point %d not exported: %v", seq, err)
			continue
		}
		if err := r.judge(pt, views); err != nil {
			r.fatalf("restore point seq %d (%s): %v", pt.Seq, pt.Time.Format(time.RFC3339Nano), err)
		}
		checked++
	}
	return checked
}

// syncedBefore is the highest seq boot b's guest had reported fsync'd
// before t, and the highest it reported at all.
func syncedBefore(b *chaosBoot, t time.Time) (before, known uint64) {
	for _, ev := range b.vm.Serial.Events() {
		if ev.Kind != guest.Synced && ev.Kind != guest.Done {
			continue
		}
		known = max(known, ev.Seq)
		if ev.At.Before(t) {
			before = max(before, ev.Seq)
		}
	}
	return before, known
}

// preBracket tells the signatures of open findings F2 and F3 at the
// point seq from the journal's records around it: "F2" when the record is
// a re-declaration of the group's disks (Members) followed by nothing but
// declarations and markers up to a resync-begin; "F3" when it is a copy
// record (data or zero) of a disk whose resync-begin has not been written
// yet, after a re-declaration with nothing but copy records between. ""
// when neither.
func (r *chaosRun) preBracket(seq uint64) string {
	recs, err := chaos.ReadJournal(r.journalDir(), max(seq, 65)-64, seq+64)
	if err != nil {
		return ""
	}
	at := -1
	for i, rec := range recs {
		if rec.Seq == seq {
			at = i
		}
	}
	if at < 0 {
		return ""
	}
	p := recs[at]
	isCopy := func(k record.Kind) bool { return k == record.Data || k == record.Zero }
	switch {
	case p.Kind == record.Members:
		for _, rec := range recs[at+1:] {
			switch {
			case rec.Kind == record.Marker && rec.Marker == record.ResyncBegin:
				return "F2"
			case rec.Kind != record.Members && rec.Kind != record.Marker:
				return ""
			}
		}
	case isCopy(p.Kind):
		declared := false
		for i := at - 1; i >= 0 && !declared; i-- {
			switch {
			case recs[i].Kind == record.Members:
				declared = true
			case !isCopy(recs[i].Kind):
				return ""
			}
		}
		if !declared {
			return ""
		}
		for _, rec := range recs[at+1:] {
			if rec.Kind == record.Marker && rec.Disk == p.Disk {
				if rec.Marker == record.ResyncBegin {
					return "F3"
				}
				return ""
			}
		}
	}
	return ""
}

// judge checks that views are one state the guest's disks went through
// and hold every write the guest had fsync'd before the point's time. The
// point's boot is the last one that began before its time; an earlier
// boot's state is right only if no later boot had fsync'd anything by
// then.
func (r *chaosRun) judge(pt pointJSON, views [][]byte) error {
	cur := -1
	for i, b := range r.boots {
		if b.epoch.Boot.Before(pt.Time) {
			cur = i
		}
	}
	if cur < 0 {
		r.tally.Update(func(t *chaos.Tally) { t.NotState++ })
		return fmt.Errorf("point %d at %s is older than the guest's first boot", pt.Seq, pt.Time.Format(time.RFC3339Nano))
	}
	var first error
	candidates := []int{}
	for i := cur; i >= 0 && i >= cur-2; i-- {
		candidates = append(candidates, i)
	}
	if r.lagging { // a point's time may lag its writes: a later boot's state
		for i := cur + 1; i < len(r.boots); i++ {
			candidates = append(candidates, i)
		}
	}
	for _, i := range candidates {
		b := r.boots[i]
		before, known := syncedBefore(b, pt.Time)
		rg, err := b.epoch.Locate(views, known)
		if err != nil {
			if first == nil {
				first = fmt.Errorf("boot %d: %w", i+1, err)
			}
			continue
		}
		r.tally.Update(func(t *chaos.Tally) {
			t.Points++
			t.Bytes += int64(len(views)) * b.epoch.Params.AreaBytes()
		})
		later, laterBoot := uint64(0), 0
		for j := i + 1; j <= cur && later == 0; j++ {
			later, _ = syncedBefore(r.boots[j], pt.Time)
			laterBoot = j + 1
		}
		if rg.Hi >= before && later == 0 {
			return nil
		}
		if id := r.preBracket(pt.Seq); id != "" {
			// Open finding F2's or F3's signature: a point before the
			// bracket of a re-copy, stamped after writes nobody
			// captured.
			r.finding(id, func(t *chaos.Tally) { t.Losses++ },
				"point %d, just before a bracket, holds boot %d's state after seq %v, stamped %s, after boot %d had fsync'd seq %d (invariant 3)",
				pt.Seq, i+1, rg, pt.Time.Format(time.RFC3339Nano), max(laterBoot, i+1), max(later, before))
			return nil
		}
		r.tally.Update(func(t *chaos.Tally) { t.Losses++ })
		if later > 0 {
			return fmt.Errorf("the point holds boot %d's state after seq %v, but boot %d had fsync'd seq %d before the point's time %s (invariant 3)",
				i+1, rg, laterBoot, later, pt.Time.Format(time.RFC3339Nano))
		}
		return fmt.Errorf("the point holds boot %d's state after seq %v, but the guest had fsync'd seq %d before the point's time %s (invariant 3)",
			i+1, rg, before, pt.Time.Format(time.RFC3339Nano))
	}
	if r.preBracket(pt.Seq) == "F3" {
		r.finding("F3", func(t *chaos.Tally) { t.NotState++ },
			"point %d, a copy record before its disk's bracket, is no state of the guest (invariant 2): %v", pt.Seq, first)
		return nil
	}
	r.tally.Update(func(t *chaos.Tally) { t.NotState++ })
	return fmt.Errorf("the views are no state of the guest (invariant 2): %w", first)
}
