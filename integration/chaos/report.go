package chaos

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// Tally counts what a run did and found; its Table is the summary the run
// ends with. Its methods are safe for concurrent use.
type Tally struct {
	Seed   uint64
	Faults int // asked for
	Only   []Kind
	// Replay is more of the replay command line ("REPAIR=spool-too"),
	// Notes lines the summary tells as they are (how the run differs from
	// the default).
	Replay string
	Notes  []string

	mu    sync.Mutex
	kinds map[Kind]*kindCount
	start time.Time

	Rounds    int
	Converged int   // convergence checks passed: RPO 0 and the newest point equals the source
	Points    int   // restore points checked against the workload model
	Bytes     int64 // bytes compared: source against replica, and views against the model
	Boots     int   // guest boots
	Restarts  int   // starts of a replica that ended before it served, again as systemd would
	// Findings: each must stay 0.
	Losses        int // a write fsync'd before a point missing from it, or a newest point that differs from the source
	NotState      int // a point that is no state of the guest (torn, corrupt, foreign bytes)
	CorruptServed int // a view that served bytes of an injected corruption
	Unreported    int // an injected corruption nobody named
	GuestErrors   int // an I/O error or an early exit the guest reported
	Held          int // a guest write held past the bound
	// Longest is the longest guest write or console gap seen, Bound the
	// bound it was held to.
	Longest, Bound time.Duration
	Failure        string // the first finding, with where to look
	// Open counts the open findings (Findings) seen but not failed on,
	// when the run counts them.
	Open map[string]int
}

type kindCount struct {
	injected, effective int
	notes               map[string]int
}

// NewTally starts counting a run.
func NewTally(seed uint64, faults int, only []Kind) *Tally {
	return &Tally{Seed: seed, Faults: faults, Only: only, kinds: map[Kind]*kindCount{}, start: time.Now(), Open: map[string]int{}}
}

func (t *Tally) kind(k Kind) *kindCount {
	c := t.kinds[k]
	if c == nil {
		c = &kindCount{notes: map[string]int{}}
		t.kinds[k] = c
	}
	return c
}

// Injected counts a fault of kind k.
func (t *Tally) Injected(k Kind) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.kind(k).injected++
}

// Effective counts a fault of kind k that was seen to take effect (the
// spool refused, the watchdog killed, the corruption was named...).
func (t *Tally) Effective(k Kind) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.kind(k).effective++
}

// Note counts an outcome of a fault of kind k worth telling apart.
func (t *Tally) Note(k Kind, what string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.kind(k).notes[what]++
}

// Update runs fn under the tally's lock, to change its counters.
func (t *Tally) Update(fn func(t *Tally)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	fn(t)
}

// Injections is the number of faults injected so far.
func (t *Tally) Injections() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, c := range t.kinds {
		n += c.injected
	}
	return n
}

// Fail records the first finding.
func (t *Tally) Fail(msg string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.Failure == "" {
		t.Failure = msg
	}
}

// Table is the summary: counts per fault kind, the checks, the findings
// and how to replay the run.
func (t *Tally) Table() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var b strings.Builder
	injected := 0
	for _, c := range t.kinds {
		injected += c.injected
	}
	only := ""
	if len(t.Only) > 0 {
		var ks []string
		for _, k := range t.Only {
			ks = append(ks, string(k))
		}
		only = " KINDS=" + strings.Join(ks, ",")
	}
	fmt.Fprintf(&b, "chaos summary: seed %d, %d faults in %d rounds, %d guest boots, %v\n",
		t.Seed, injected, t.Rounds, t.Boots, time.Since(t.start).Round(time.Second))
	replay := only
	if t.Replay != "" {
		replay += " " + t.Replay
	}
	fmt.Fprintf(&b, "replay: make chaos SEED=%d FAULTS=%d%s\n", t.Seed, max(t.Faults, injected), replay)
	for _, n := range t.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	fmt.Fprintf(&b, "%-20s %8s %9s  %s\n", "fault kind", "injected", "effective", "outcomes")
	for _, ki := range Kinds {
		c := t.kinds[ki.Kind]
		switch {
		case ki.Skip != "":
			fmt.Fprintf(&b, "%-20s %8s %9s  skipped: %s\n", ki.Kind, "-", "-", ki.Skip)
			continue
		case len(t.Only) > 0 && !contains(t.Only, ki.Kind):
			continue
		case c == nil:
			c = &kindCount{}
		}
		var notes []string
		for n, v := range c.notes {
			notes = append(notes, fmt.Sprintf("%s %d", n, v))
		}
		sort.Strings(notes)
		fmt.Fprintf(&b, "%-20s %8d %9d  %s\n", ki.Kind, c.injected, c.effective, strings.Join(notes, ", "))
	}
	fmt.Fprintf(&b, "checks: %d rounds checked, %d converged (RPO 0, newest point == source), %d restore points checked against the model, %s compared\n",
		t.Rounds, t.Converged, t.Points, bytesString(t.Bytes))
	if t.Restarts > 0 {
		fmt.Fprintf(&b, "replica starts that failed and were retried as systemd's Restart=on-failure would: %d\n", t.Restarts)
	}
	fmt.Fprintf(&b, "findings: losses %d, points not a guest state %d, corrupt bytes served %d, corruptions not reported %d, guest I/O errors %d, writes held past the bound %d\n",
		t.Losses, t.NotState, t.CorruptServed, t.Unreported, t.GuestErrors, t.Held)
	for _, f := range Findings {
		if n := t.Open[f.ID]; n > 0 {
			fmt.Fprintf(&b, "open finding %s seen %d times (counted, not failed on): %s\n", f.ID, n, f.What)
		}
	}
	fmt.Fprintf(&b, "longest guest write or console gap: %v (bound %v)\n", t.Longest.Round(time.Millisecond), t.Bound)
	if t.Failure != "" {
		fmt.Fprintf(&b, "result: FAIL: %s\n", t.Failure)
	} else {
		b.WriteString("result: PASS\n")
	}
	return b.String()
}

func contains(ks []Kind, k Kind) bool {
	for _, x := range ks {
		if x == k {
			return true
		}
	}
	return false
}

func bytesString(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d bytes", n)
}
