package shipper

import (
	"os"
	"strings"
	"time"
)

// stepTolerance is how far the wall clock may move against the monotonic
// clock before the capture clock calls it a step.
const stepTolerance = time.Second

// forwardConfirm is how long the wall clock must stay stepped forward
// before the capture clock follows it: an NTP correction stays, a mistaken
// step undone at once never moves capture times ahead (where they would
// stay, since they never go back, and the replica could only lower them
// to its own receipt times, later than the writes they stamp).
const forwardConfirm = 10 * time.Second

// readClock returns the wall clock (ns since the epoch) and a monotonic
// reading (time since some fixed instant). A seam for tests.
type readClock func() (wall int64, mono time.Duration)

// ClockOffsetEnv names a file whose content, a Go duration ("-48h",
// "90s", "0"), is added to the wall clock the capture clock reads, re-read
// at most every 100 ms: a fault-injection seam, so that a test (the chaos
// suite's clock-step fault) can step one daemon's clock without stepping
// the machine's. Unset, as in production, the wall clock is read as is.
const ClockOffsetEnv = "QCDP_CLOCK_OFFSET_FILE"

// systemClock reads both from time.Now (plus ClockOffsetEnv's offset).
func systemClock() readClock {
	start := time.Now()
	path := os.Getenv(ClockOffsetEnv)
	var offset time.Duration
	var readAt time.Duration = -time.Hour
	return func() (int64, time.Duration) {
		t := time.Now()
		mono := t.Sub(start) // Sub uses the monotonic reading
		if path != "" && mono-readAt >= 100*time.Millisecond {
			readAt = mono
			if b, err := os.ReadFile(path); err == nil {
				if d, err := time.ParseDuration(strings.TrimSpace(string(b))); err == nil {
					offset = d
				}
			}
		}
		return t.Add(offset).UnixNano(), mono
	}
}

// captureClock stamps capture times that never decrease along a group's
// stream, whatever the wall clock does: the journal binary-searches them
// and retention folds by them, so one step back would fold away points
// that are minutes old. It advances with the monotonic clock from an
// anchor on the wall clock. When the wall clock steps forward past it (an
// NTP correction) and stays so for forwardConfirm, the anchor follows; when the wall clock steps back, the
// step is counted and the capture clock goes on at the monotonic rate, so
// it stays ahead of the wall clock by the step until a later step forward.
// It starts no earlier than the spool's last capture time, so a restart on
// a host whose clock is behind does not go back either. Callers serialize
// (the sequencer's lock).
type captureClock struct {
	read   readClock
	monoAt time.Duration // monotonic reading at the anchor
	base   int64         // capture time at the anchor
	ahead  int64         // capture clock minus wall clock at the anchor (≥ 0)
	last   int64         // the last stamp given
	steps  int64         // steps back seen
	back   time.Duration // their sum
	// fwdAt is the monotonic reading when the wall clock was first seen
	// stepped forward, while it stays so; -1 when it is not.
	fwdAt time.Duration
}

func newCaptureClock(read readClock, last int64) *captureClock {
	wall, mono := read()
	base := max(wall, last)
	return &captureClock{read: read, monoAt: mono, base: base, ahead: base - wall, last: last, fwdAt: -1}
}

// stamp returns the next capture time: never less than the last one.
func (c *captureClock) stamp() int64 {
	wall, mono := c.read()
	t := c.base + int64(mono-c.monoAt)
	switch diff := t - wall; {
	case diff < -int64(stepTolerance): // the wall clock stepped forward
		if c.fwdAt < 0 {
			c.fwdAt = mono
		}
		if mono-c.fwdAt >= forwardConfirm { // and stayed so: follow it
			c.monoAt, c.base, c.ahead, t, c.fwdAt = mono, wall, 0, wall, -1
		}
	case diff-c.ahead > int64(stepTolerance): // the wall clock stepped back
		c.fwdAt = -1
		c.steps++
		c.back += time.Duration(diff - c.ahead)
		c.monoAt, c.base, c.ahead = mono, t, diff
	default:
		c.fwdAt = -1 // a forward step undone before it was followed
	}
	c.last = max(c.last, t)
	return c.last
}
