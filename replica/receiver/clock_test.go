package receiver_test

import (
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/stream"
)

// timedBatch sends records first.. with the given capture times.
func (c *client) timedBatch(t *testing.T, first uint64, times []int64) {
	t.Helper()
	e := stream.NewBatchEncoder(true)
	for i, tm := range times {
		r := record.Record{Seq: first + uint64(i), Time: tm, Kind: record.Data, Disk: "vda", Length: 3, Payload: []byte{1, 2, 3}}
		if err := e.Add(&r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.c.Write(e.Frame()); err != nil {
		t.Fatal(err)
	}
}

// TestCaptureTimesKeptInOrder: a host whose clock stepped back 48 h (the
// trust review's reproduction: at seq 51), within a session and across a
// reconnect, and a host whose clock runs an hour ahead: the journal gets
// capture times that never decrease and never run ahead of the replica's
// clock, and the corrections are reported.
func TestCaptureTimesKeptInOrder(t *testing.T) {
	r := start(t)
	now := time.Now()
	r.srv.Now = func() time.Time { return now }
	c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.hello("web", 100); err != nil {
		t.Fatal(err)
	}
	base := now.Add(-10 * time.Minute).UnixNano()
	var times []int64
	for i := 1; i <= 60; i++ {
		tm := base + int64(i)*int64(time.Second)
		if i >= 51 {
			tm -= int64(48 * time.Hour)
		}
		times = append(times, tm)
	}
	c.timedBatch(t, 1, times)
	if a, err := c.answer(); err != nil || a != 60 {
		t.Fatalf("ack %d %v", a, err)
	}
	c.c.Close()

	// A new session (the daemon restarted with its clock still behind).
	c, _ = dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if _, err := c.hello("web", 100); err != nil {
		t.Fatal(err)
	}
	c.timedBatch(t, 61, []int64{base - int64(47*time.Hour), now.Add(time.Hour).UnixNano()})
	if a, err := c.answer(); err != nil || a != 62 {
		t.Fatalf("ack %d %v", a, err)
	}

	r.mu.Lock()
	got := append([]int64(nil), r.times...)
	r.mu.Unlock()
	if len(got) != 62 {
		t.Fatalf("journal got %d records, want 62", len(got))
	}
	for i := 1; i < len(got); i++ {
		if got[i] < got[i-1] {
			t.Fatalf("seq %d: capture time in the journal went back by %v", i+1, time.Duration(got[i-1]-got[i]))
		}
	}
	if got[61] > now.UnixNano() {
		t.Fatalf("seq 62: capture time %v ahead of the replica's clock", time.Duration(got[61]-now.UnixNano()))
	}
	rep := r.srv.Clock("alpha", "web")
	if rep.Back != 11 || rep.MaxBack < 47*time.Hour || rep.Ahead != 1 || rep.MaxAhead < 59*time.Minute {
		t.Fatalf("clock report %+v: want 11 times back (10 in the first session, 1 after the reconnect), max ≥ 47h, 1 ahead by ≥ 59m", rep)
	}
}

// TestCaptureTimesAheadNeverLate: a host daemon restarted while its wall
// clock was 31 h ahead keeps stamping 31 h ahead (its capture times never
// go back). The replica must lower them, but never to a time later than
// the write: its receipt time is later by however long the records waited
// (here 20 s of a stalled link). The first record found ahead takes the
// last good time; the next ones move on at the host clock's pace.
func TestCaptureTimesAheadNeverLate(t *testing.T) {
	r := start(t)
	now := time.Now()
	clock := now
	r.srv.Now = func() time.Time { return clock }
	c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.hello("web", 100); err != nil {
		t.Fatal(err)
	}
	good := now.Add(-time.Second).UnixNano()
	c.timedBatch(t, 1, []int64{good})
	if a, err := c.answer(); err != nil || a != 1 {
		t.Fatalf("ack %d %v", a, err)
	}
	// Written at now+1s..now+5s (true time), stamped 31 h ahead, received
	// 20 s late.
	ahead := now.Add(31 * time.Hour)
	var times []int64
	for i := 1; i <= 5; i++ {
		times = append(times, ahead.Add(time.Duration(i)*time.Second).UnixNano())
	}
	clock = now.Add(25 * time.Second)
	c.timedBatch(t, 2, times)
	if a, err := c.answer(); err != nil || a != 6 {
		t.Fatalf("ack %d %v", a, err)
	}
	r.mu.Lock()
	got := append([]int64(nil), r.times...)
	r.mu.Unlock()
	for i := 1; i < len(got); i++ {
		trueTime := now.Add(time.Duration(i) * time.Second).UnixNano()
		if got[i] > trueTime {
			t.Fatalf("seq %d: stamped %v, %v after it was written (the receipt time leaks in)", i+1, time.Unix(0, got[i]), time.Duration(got[i]-trueTime))
		}
		if got[i] < got[i-1] {
			t.Fatalf("seq %d: went back", i+1)
		}
	}
	if d := time.Duration(got[5] - got[1]); d != 4*time.Second {
		t.Fatalf("seqs 2..6 span %v, want the host clock's 4 s", d)
	}
}
