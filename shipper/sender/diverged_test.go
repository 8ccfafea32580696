package sender_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/shipper/sender"
	"github.com/qcdp/qcdp/shipper/spool"
	"github.com/qcdp/qcdp/vfs"
)

// otherSize is the payload size of the records a second spool writes: its
// records differ from the first spool's at every seq, so a journal that
// took one of them fails the site's check.
const otherSize = 777

// refusedAgain waits until the sender has had two more sessions end since
// it reported n0 reconnects: both began after the caller's last append, so
// their Hello carried the spool's last seq as it is now. It returns false
// when the sender was welcomed and streams instead.
func refusedAgain(t testing.TB, s *sender.Sender, n0 int64) bool {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().Reconnects < n0+2 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
	return true
}

// holdsAll checks that a spool still holds every record it was given:
// nothing acknowledged, nothing deleted.
func holdsAll(t testing.TB, name string, sp *spool.Spool, n uint64) {
	t.Helper()
	if st := sp.Stats(); sp.Acked() != 0 || st.FirstSeq != 1 || st.LastSeq != n || st.Records != n {
		t.Errorf("spool %s: acked %d, holds seqs %d..%d (%d records); want nothing acknowledged and all of 1..%d",
			name, sp.Acked(), st.FirstSeq, st.LastSeq, st.Records, n)
	}
}

// TestLostSpoolNeverSpliced is trust issue 1: the host's spool directory is
// lost after spool A streamed 1..100, and a new spool B of the same group
// starts again at seq 1. B is refused as diverged at every seq, also once
// its last seq passes the replica's: the journal keeps exactly A's 1..100
// (B's records would fail the site's content check), and B's spool keeps
// every record (nothing it never sent is acknowledged away).
func TestLostSpoolNeverSpliced(t *testing.T) {
	st := newSite(t, 1000)
	a := openSpool(t, "g1")
	appendN(t, a, 100, 1000)
	ra := startSender(t, st, a, nil)
	waitAcked(t, a, 10*time.Second)
	ra.stop(t)
	a.Close() // the host's state directory is lost with it
	// The replica restarts too: the spool its journal is bound to is read
	// from the journal's directory, not remembered.
	st.stop()
	st.start()

	b := openSpool(t, "g1")
	rb := startSender(t, st, b, nil)
	welcomed := false
	for b.LastSeq() < 150 {
		n0 := rb.s.Stats().Reconnects
		appendN(t, b, 10, otherSize)
		if welcomed {
			continue
		}
		if !refusedAgain(t, rb.s, n0) {
			t.Errorf("spool B with seqs 1..%d was welcomed onto A's journal (stats %+v)", b.LastSeq(), rb.s.Stats())
			welcomed = true
			continue
		}
		checkDiverged(t, rb.s)
	}
	if welcomed {
		time.Sleep(time.Second) // let the splice happen, to be seen below
	}
	rb.stop(t)
	holdsAll(t, "B", b, b.LastSeq())
	st.stop()
	if got := st.durable("g1"); got != 100 || st.applied != 100 {
		t.Fatalf("journal at %d (applied %d), want A's 100 alone", got, st.applied)
	}
}

// TestSameGroupTwoHosts: a second host protects a group of the same name
// while the first streams it. The second is refused as diverged and never
// displaces the first's stream; the journal holds the first host's records
// alone, and the second's spool keeps all of its own.
func TestSameGroupTwoHosts(t *testing.T) {
	st := newSite(t, 1000)
	a := openSpool(t, "g1")
	appendN(t, a, 100, 1000)
	startSender(t, st, a, nil)
	waitAcked(t, a, 10*time.Second)

	c := openSpool(t, "g1")
	appendN(t, c, 150, otherSize)
	rc := startSender(t, st, c, func(o *sender.Options) {
		o.TLS, o.Host = st.pki.Client("acme", "kvm2"), "kvm2"
	})
	for i := 0; i < 5; i++ {
		n0 := rc.s.Stats().Reconnects
		appendN(t, a, 10, 1000)
		if !refusedAgain(t, rc.s, n0) {
			t.Errorf("host kvm2's spool was welcomed onto kvm1's journal (stats %+v)", rc.s.Stats())
			break
		}
		checkDiverged(t, rc.s)
	}
	waitAcked(t, a, 10*time.Second)
	rc.stop(t)
	holdsAll(t, "of kvm2", c, 150)
	st.stop()
	if got := st.durable("g1"); got != 150 || st.applied != 150 {
		t.Fatalf("journal at %d (applied %d), want kvm1's 150", got, st.applied)
	}
}

// checkDiverged checks that the sender's status says the stream diverged,
// and why: the replica's refusal names both spools.
func checkDiverged(t testing.TB, s *sender.Sender) {
	t.Helper()
	st := s.Stats()
	if st.Connected || !strings.Contains(st.Diverged, "spool "+st.Spool.ID.String()) || !strings.Contains(st.LastError, "diverged") {
		t.Errorf("status of a diverged stream: %+v", st)
	}
}

// TestCrashLostSentRecordsNeverSpliced: the replica holds records 1..100
// that the host's spool sent from its page cache but had not fsync'd when
// the host crashed (before the Ack came back). The same spool, reopened
// after the crash, holds none of them and writes new records 1..120:
// it is refused as diverged at every seq (it vouches only for what the
// crash left), the journal keeps the first 1..100, and the spool keeps
// all of its new records.
func TestCrashLostSentRecordsNeverSpliced(t *testing.T) {
	st := newSite(t, 1000)
	fs := vfs.NewMemFS()
	opts := spool.Options{Dir: "/state/spool/g1", Group: "g1", FS: fs, Logger: quiet}
	sp, err := spool.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, sp, 100, 1000) // never fsync'd
	crashed := make(chan struct{})
	st.mu.Lock()
	st.afterAppend = func() {
		if st.applied == 100 {
			st.ln.cut() // the host crashes before the Ack reaches it
			close(crashed)
		}
	}
	st.mu.Unlock()
	r := startSender(t, st, sp, func(o *sender.Options) { o.MinBackoff, o.MaxBackoff = time.Hour, time.Hour })
	<-crashed
	r.stop(t)
	st.mu.Lock()
	st.afterAppend = nil
	st.mu.Unlock()
	if sp.Acked() != 0 {
		t.Fatalf("the spool was acknowledged up to %d before the crash", sp.Acked())
	}
	fs.Crash()
	sp.Close()

	sp, err = spool.Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	if sp.LastSeq() != 0 || sp.Identity().Epoch < 2 {
		t.Fatalf("after the crash: last seq %d, identity %+v; want 0 and a new epoch", sp.LastSeq(), sp.Identity())
	}
	rb := startSender(t, st, sp, nil)
	for sp.LastSeq() < 120 {
		n0 := rb.s.Stats().Reconnects
		appendN(t, sp, 10, otherSize)
		if !refusedAgain(t, rb.s, n0) {
			t.Errorf("the crashed spool with seqs 1..%d was welcomed onto the journal (stats %+v)", sp.LastSeq(), rb.s.Stats())
			time.Sleep(time.Second)
			break
		}
		checkDiverged(t, rb.s)
	}
	rb.stop(t)
	holdsAll(t, "after the crash", sp, sp.LastSeq())
	st.stop()
	if got := st.durable("g1"); got != 100 || st.applied != 100 {
		t.Fatalf("journal at %d (applied %d), want the first 100 alone", got, st.applied)
	}
}
