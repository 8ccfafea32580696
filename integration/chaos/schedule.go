package chaos

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// Kind is a kind of fault.
type Kind string

// The fault kinds; Kinds says what each does and what must hold after it.
const (
	LinkCut       Kind = "link-cut"
	LinkPartition Kind = "link-partition"
	LinkDelay     Kind = "link-delay"
	LinkSqueeze   Kind = "link-squeeze"
	ReplicaKill   Kind = "replica-kill"
	ReplicaStop   Kind = "replica-stop"
	HostKill      Kind = "host-kill"
	HostStop      Kind = "host-stop"
	ReplicaFSFull Kind = "replica-fs-full"
	SpoolFull     Kind = "spool-full"
	VMPoweroff    Kind = "vm-poweroff"
	VMQuit        Kind = "vm-quit"
	VMKill        Kind = "vm-kill"
	JournalFlip   Kind = "journal-flip"
	JournalCut    Kind = "journal-truncate"
	JournalIndex  Kind = "journal-index-flip"
	SpoolFlip     Kind = "spool-flip"
	SpoolCut      Kind = "spool-truncate"
	ClockStep     Kind = "clock-step"
)

// KindInfo is one row of the fault table.
type KindInfo struct {
	Kind Kind
	// Weight is how often the schedule draws it, against the others.
	Weight int
	// Solo kinds take a round of their own: they stop a daemon or the
	// guest and go through a repair. The others share a round with up to
	// two more of other Resources, overlapping in time.
	Solo     bool
	Resource string
	What     string // what is done
	Expect   string // what must hold, beyond the checks after every round
	// Skip, when set, is why the kind is never injected.
	Skip string
}

// Kinds is the fault table. Cheap kinds are drawn far more often than the
// ones that restart the guest or repair a group, so that about a thousand
// faults fit in an hour under TCG.
var Kinds = []KindInfo{
	{LinkCut, 140, false, "link", "reset every host-replica connection and refuse new ones for 0.3-3 s",
		"the sender reconnects; nothing acknowledged is lost", ""},
	{LinkPartition, 80, false, "link", "hold every byte on the link for 0.5-4 s, connections kept open",
		"the stream resumes where it stopped", ""},
	{LinkDelay, 70, false, "link", "delay every chunk by 20-400 ms each way for 1-4 s",
		"RPO grows, nothing else", ""},
	{LinkSqueeze, 70, false, "link", "cap the link at 32 KiB/s-1 MiB/s each way for 1-4 s",
		"the spool absorbs the backlog", ""},
	{ReplicaKill, 120, false, "replica", "kill -9 qcdp replica, start it again after 0-2 s",
		"the journal recovers its torn tail; the stream resumes without gap or duplicate", ""},
	{ReplicaStop, 90, false, "replica", "SIGSTOP qcdp replica for 0.5-4 s, then SIGCONT",
		"the stream resumes", ""},
	{HostKill, 80, false, "host", "kill -9 qcdp host, start it again (as systemd would) after 0-1.5 s",
		"the guest is not held; the new daemon adopts the jobs and brackets the re-copy", ""},
	{HostStop, 80, false, "host", "SIGSTOP qcdp host for 0.5-5 s under a fake systemd with WatchdogSec=3s: past it the watchdog kills it and the suite starts it again",
		"no guest write held longer than WatchdogSec + 1 s", ""},
	{ReplicaFSFull, 40, false, "replica-fs", "fill the replica's storage (a small tmpfs in the suite's mount namespace) for 1-4 s",
		"appends fail and are never acknowledged; the journal recovers once there is room", ""},
	{SpoolFull, 20, true, "", "cut the link and write 80 MiB through the guest's disk (HMP qemu-io on the device) into a 64 MiB spool",
		"writes are answered EIO at once, the disk goes to tracking and catches up by a bracketed resync; the burst's writes all complete in the guest", ""},
	{VMPoweroff, 8, true, "", "power the guest off from its console, boot it again with a new workload seed",
		"the guest's longest write stayed under the bound; the new boot is protected again", ""},
	{VMQuit, 8, true, "", "QMP quit, boot the guest again",
		"the new boot is protected again", ""},
	{VMKill, 12, true, "", "kill -9 QEMU, boot the guest again",
		"the new boot is protected again", ""},
	{JournalFlip, 10, true, "", "quiesce, stop the replica, flip one bit of a journal segment or layer, start it",
		"qcdp verify names the file; no view serves a wrong byte; the documented repair (journal aside, re-attach) converges", ""},
	{JournalCut, 5, true, "", "quiesce, stop the replica, cut a journal segment or layer short, start it",
		"as journal-flip", ""},
	{JournalIndex, 5, true, "", "quiesce, stop the replica, flip one bit of a journal index file (a cache), start it",
		"the index is rebuilt: views serve the right bytes, qcdp verify passes", ""},
	{SpoolFlip, 4, true, "", "let the spool hold unsent records, stop qcdp host, flip one bit of a spool segment that is not the last",
		"qcdp spool verify names the file; qcdp host refuses the spool; nothing wrong is shipped; the repair (spool and journal aside, re-attach) converges", ""},
	{SpoolCut, 3, true, "", "as spool-flip, cutting a spool segment that is not the last short",
		"as spool-flip", ""},
	{ClockStep, 50, false, "clock", "step qcdp host's wall clock by 1 min-48 h, back or ahead, for 1-4 s (its clock-offset seam, shipper.ClockOffsetEnv), then back",
		"capture times never go back, and a step forward undone within 10 s never moves them ahead; no restore point inside the any-point window is folded away", ""},
}

// Info returns the table row of k.
func Info(k Kind) (KindInfo, bool) {
	i := slices.IndexFunc(Kinds, func(ki KindInfo) bool { return ki.Kind == k })
	if i < 0 {
		return KindInfo{}, false
	}
	return Kinds[i], true
}

// ParseKinds parses a comma-separated list of kinds ("" is all of them).
func ParseKinds(s string) ([]Kind, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []Kind
	for f := range strings.SplitSeq(s, ",") {
		k := Kind(strings.TrimSpace(f))
		if _, ok := Info(k); !ok {
			var names []string
			for _, ki := range Kinds {
				names = append(names, string(ki.Kind))
			}
			return nil, fmt.Errorf("chaos: unknown fault kind %q; kinds: %s", k, strings.Join(names, ", "))
		}
		out = append(out, k)
	}
	return out, nil
}

// Fault is one fault of a schedule, with everything random about it
// drawn when the schedule was made.
type Fault struct {
	N     int // 1-based, in the run
	Kind  Kind
	Start time.Duration // after the round began
	Hold  time.Duration // how long it lasts (down time for a kill)
	Delay time.Duration // link-delay
	Step  time.Duration // clock-step: added to the host daemon's wall clock
	Rate  int64         // link-squeeze, bytes per second
	// Pick chooses what a corruption hits (file and offset), as a
	// fraction in [0, 1) each.
	PickFile, PickOffset float64
	Bit                  uint8 // which bit a flip flips
	// Graceful: a daemon stopped before a corruption gets SIGTERM, else
	// SIGKILL.
	Graceful bool
}

func (f Fault) String() string {
	s := fmt.Sprintf("#%d %s", f.N, f.Kind)
	switch f.Kind {
	case LinkDelay:
		s += fmt.Sprintf(" delay=%v", f.Delay)
	case LinkSqueeze:
		s += fmt.Sprintf(" rate=%dKiB/s", f.Rate>>10)
	case ClockStep:
		s += fmt.Sprintf(" step=%v", f.Step)
	}
	if f.Hold > 0 {
		s += fmt.Sprintf(" hold=%v", f.Hold)
	}
	if f.Start > 0 {
		s += fmt.Sprintf(" at=+%v", f.Start)
	}
	return s
}

// Round is a set of faults injected together, after which every check
// runs.
type Round struct {
	N      int
	Faults []Fault
	Sample int // restore points to sample in the check
}

// Solo reports whether the round is one solo fault.
func (r Round) Solo() bool {
	if len(r.Faults) != 1 {
		return false
	}
	ki, _ := Info(r.Faults[0].Kind)
	return ki.Solo
}

func (r Round) String() string {
	if len(r.Faults) == 0 {
		return fmt.Sprintf("round %d (no fault: set-up or the end)", r.N)
	}
	var fs []string
	for _, f := range r.Faults {
		fs = append(fs, f.String())
	}
	return fmt.Sprintf("round %d: %s", r.N, strings.Join(fs, ", "))
}

// Schedule draws rounds from seed: the same seed and kinds give the same
// faults in the same order. only restricts the kinds (nil: every kind not
// skipped). The first rounds draw every allowed kind once, in a random
// order, so that even a short run exercises each.
type Schedule struct {
	rng     *rand.Rand
	kinds   []KindInfo
	total   int
	cover   []Kind
	faults  int
	rounds  int
	Skipped []KindInfo // kinds asked for that are never injected
}

// NewSchedule makes the schedule of a run.
func NewSchedule(seed uint64, only []Kind) (*Schedule, error) {
	s := &Schedule{rng: rand.New(rand.NewPCG(seed, 0x5eed_c4a05))}
	for _, ki := range Kinds {
		if only != nil && !slices.Contains(only, ki.Kind) {
			continue
		}
		if ki.Skip != "" || ki.Weight == 0 {
			s.Skipped = append(s.Skipped, ki)
			continue
		}
		s.kinds = append(s.kinds, ki)
		s.total += ki.Weight
		s.cover = append(s.cover, ki.Kind)
	}
	if len(s.kinds) == 0 {
		return nil, fmt.Errorf("chaos: no fault kind left to inject")
	}
	s.rng.Shuffle(len(s.cover), func(i, j int) { s.cover[i], s.cover[j] = s.cover[j], s.cover[i] })
	return s, nil
}

// draw picks a kind by weight among those allowed by ok.
func (s *Schedule) draw(ok func(KindInfo) bool) (KindInfo, bool) {
	total := 0
	for _, ki := range s.kinds {
		if ok(ki) {
			total += ki.Weight
		}
	}
	if total == 0 {
		return KindInfo{}, false
	}
	n := s.rng.IntN(total)
	for _, ki := range s.kinds {
		if !ok(ki) {
			continue
		}
		if n < ki.Weight {
			return ki, true
		}
		n -= ki.Weight
	}
	panic("unreachable")
}

// Next returns the next round.
func (s *Schedule) Next() Round {
	s.rounds++
	r := Round{N: s.rounds, Sample: 1 + s.rng.IntN(2)}
	var first KindInfo
	if len(s.cover) > 0 {
		first, _ = Info(s.cover[0])
		s.cover = s.cover[1:]
	} else {
		first, _ = s.draw(func(KindInfo) bool { return true })
	}
	r.Faults = append(r.Faults, s.fault(first, 0))
	if first.Solo {
		return r
	}
	used := map[string]bool{first.Resource: true}
	for extra := s.rng.IntN(3); extra > 0; extra-- {
		ki, ok := s.draw(func(ki KindInfo) bool { return !ki.Solo && !used[ki.Resource] })
		if !ok {
			break
		}
		used[ki.Resource] = true
		r.Faults = append(r.Faults, s.fault(ki, time.Duration(s.rng.IntN(1500))*time.Millisecond))
	}
	return r
}

func between(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rng.Int64N(int64(hi-lo)+1))
}

// fault draws one fault's parameters; the draws are the same whatever
// its kind, so that filtering kinds does not shift the others' draws
// within a round.
func (s *Schedule) fault(ki KindInfo, start time.Duration) Fault {
	s.faults++
	rng := s.rng
	f := Fault{N: s.faults, Kind: ki.Kind, Start: start,
		PickFile: rng.Float64(), PickOffset: rng.Float64(), Bit: uint8(rng.IntN(8)), Graceful: rng.IntN(2) == 0}
	u := rng.Float64()
	delay := between(rng, 20*time.Millisecond, 400*time.Millisecond)
	rate := 32<<10 + rng.Int64N(1<<20-32<<10)
	span := func(lo, hi time.Duration) time.Duration { return lo + time.Duration(u*float64(hi-lo)) }
	switch ki.Kind {
	case LinkCut:
		f.Hold = span(300*time.Millisecond, 3*time.Second)
	case LinkPartition:
		f.Hold = span(500*time.Millisecond, 4*time.Second)
	case LinkDelay:
		f.Hold = span(time.Second, 4*time.Second)
		f.Delay = delay
	case LinkSqueeze:
		f.Hold = span(time.Second, 4*time.Second)
		f.Rate = rate
	case ReplicaKill:
		f.Hold = span(0, 2*time.Second)
	case ReplicaStop:
		f.Hold = span(500*time.Millisecond, 4*time.Second)
	case HostKill:
		f.Hold = span(0, 1500*time.Millisecond)
	case HostStop:
		f.Hold = span(500*time.Millisecond, 5*time.Second)
	case ReplicaFSFull:
		f.Hold = span(time.Second, 4*time.Second)
	case SpoolFull:
		f.Hold = span(2*time.Second, 4*time.Second)
	case ClockStep:
		f.Hold = span(time.Second, 4*time.Second)
		// From the draws every fault makes: how far from PickOffset,
		// which way from Graceful.
		f.Step = (time.Minute + time.Duration(f.PickOffset*float64(48*time.Hour-time.Minute))).Round(time.Second)
		if f.Graceful {
			f.Step = -f.Step
		}
	}
	return f
}

// Faults is how many faults the rounds drawn so far hold.
func (s *Schedule) Faults() int { return s.faults }
