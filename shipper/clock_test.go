package shipper

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
)

// fakeClock is a wall clock the test steps and a monotonic clock that only
// moves forward with tick.
type fakeClock struct {
	wall int64
	mono time.Duration
}

func (f *fakeClock) read() (int64, time.Duration) { return f.wall, f.mono }

func (f *fakeClock) tick(d time.Duration) { f.wall += int64(d); f.mono += d }

// TestCaptureTimesSurviveClockSteps reproduces the trust review's defect:
// a 48 h step back of the host's clock at seq 51. Capture times must never
// decrease along the stream, must keep advancing with real time after the
// step (not stand still for 48 h), and a later step forward is followed.
func TestCaptureTimesSurviveClockSteps(t *testing.T) {
	sp := openSpool(t, 0)
	fc := &fakeClock{wall: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC).UnixNano()}
	seq := newSequencer(sp, fc.read)
	ctx := context.Background()
	e, err := seq.Export("vda", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 100; i++ {
		if i == 51 {
			fc.wall -= int64(48 * time.Hour)
		}
		if i == 81 {
			fc.wall += int64(72 * time.Hour) // corrected past where it was
		}
		if err := e.WriteAt(ctx, make([]byte, 512), 0); err != nil {
			t.Fatal(err)
		}
		fc.tick(time.Second)
	}
	recs := readAll(t, sp, 1)
	for i := 1; i < len(recs); i++ {
		if recs[i].Time < recs[i-1].Time {
			t.Fatalf("seq %d: capture time went back by %v at the clock step", recs[i].Seq, time.Duration(recs[i-1].Time-recs[i].Time))
		}
	}
	// After the step back, one second of real time is one second of
	// capture time.
	if d := time.Duration(recs[59].Time - recs[49].Time); d != 10*time.Second {
		t.Fatalf("seq 50..60 span %v of capture time across the step back, want 10s (the monotonic time)", d)
	}
	// After the step forward has held for 10 s the wall clock is
	// followed again.
	if got, want := recs[99].Time, fc.wall-int64(time.Second); got != want {
		t.Fatalf("after the correction forward, capture time %d, want the wall clock %d", got, want)
	}
	if n, back := seq.ClockSteps(); n != 1 || back < 48*time.Hour-2*time.Second || back > 48*time.Hour+2*time.Second {
		t.Fatalf("ClockSteps = %d, %v; want 1 step of 48h", n, back)
	}
}

// TestCaptureTimesSurviveRestartWithClockBehind: a daemon restarted on a
// host whose clock is now behind the spool's last capture time starts from
// that time, not from the wall clock.
func TestCaptureTimesSurviveRestartWithClockBehind(t *testing.T) {
	sp := openSpool(t, 0)
	fc := &fakeClock{wall: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC).UnixNano()}
	seq := newSequencer(sp, fc.read)
	if _, err := seq.Mark(record.UserBookmark, "a"); err != nil {
		t.Fatal(err)
	}
	fc.tick(time.Minute)
	last := readAll(t, sp, 1)[0].Time

	fc2 := &fakeClock{wall: last - int64(48*time.Hour), mono: 5 * time.Second}
	seq2 := newSequencer(sp, fc2.read)
	e, err := seq2.Export("vda", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.WriteAt(context.Background(), make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
	recs := readAll(t, sp, 1)
	if got := recs[len(recs)-1].Time; got < last {
		t.Fatalf("after a restart with the clock 48h behind, capture time went back by %v", time.Duration(last-got))
	}
}

// TestClockOffsetSeam: the fault-injection seam steps this process's
// capture clock only: the wall clock it reads follows the offset file
// within 100 ms, and stamps still never go back.
func TestClockOffsetSeam(t *testing.T) {
	path := filepath.Join(t.TempDir(), "offset")
	if err := os.WriteFile(path, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(ClockOffsetEnv, path)
	read := systemClock()
	c := newCaptureClock(read, 0)
	first := c.stamp()
	if err := os.WriteFile(path, []byte("-48h\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(150 * time.Millisecond)
	wall, _ := read()
	if d := time.Since(time.Unix(0, wall)); d < 47*time.Hour || d > 49*time.Hour {
		t.Fatalf("the wall clock read %v behind after a -48h offset", d)
	}
	if s := c.stamp(); s < first {
		t.Fatalf("a stamp went back %v after the step", time.Duration(first-s))
	}
	if n, back := c.steps, c.back; n != 1 || back < 47*time.Hour {
		t.Fatalf("steps %d back %v, want one of about 48h", n, back)
	}
}

// TestCaptureTimesIgnoreStepForwardUndone: a wall clock stepped 17 h
// forward and set right 3 s later (a mistaken step) never moves capture
// times ahead: they would stay ahead, since they never go back.
func TestCaptureTimesIgnoreStepForwardUndone(t *testing.T) {
	fc := &fakeClock{wall: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC).UnixNano()}
	c := newCaptureClock(fc.read, 0)
	start := fc.wall
	for i := range 20 {
		if i == 5 {
			fc.wall += int64(17 * time.Hour)
		}
		if i == 8 {
			fc.wall -= int64(17 * time.Hour)
		}
		if got := c.stamp(); got > fc.wall+int64(2*time.Second) && (i < 5 || i >= 8) || got > start+int64(30*time.Second) {
			t.Fatalf("stamp %d: %v past the start, the wall clock %v past it", i, time.Duration(got-start), time.Duration(fc.wall-start))
		}
		fc.tick(time.Second)
	}
}
