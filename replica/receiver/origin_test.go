package receiver_test

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica/journal"
	"github.com/qcdp/qcdp/stream"
)

func otherSpool(b byte, epoch uint64) stream.SpoolID {
	s := testSpool
	s.ID[0], s.Epoch = b, epoch
	return s
}

// TestSpoolBinding: the first spool that streams into a journal is bound
// to it; any other spool is refused as diverged at every seq, without
// displacing the bound spool's stream, and the refusal is kept for the
// group's status. A newer epoch of the bound spool is welcomed (and
// noted); an older one is a copy, refused; one that lost records the
// journal holds is refused.
func TestSpoolBinding(t *testing.T) {
	r := start(t)
	a, _ := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if d, err := a.hello("web", 10); err != nil || d != 0 {
		t.Fatalf("welcome %d %v", d, err)
	}
	a.batch(t, 1, 10)
	if ack, err := a.answer(); err != nil || ack != 10 {
		t.Fatalf("ack %d %v", ack, err)
	}

	// Another spool of the group (a lost spool directory, another host):
	// refused below, at and past the journal's seq.
	for _, last := range []uint64{5, 10, 11, 1000} {
		b, _ := dial(t, r, r.pki.Client("alpha", "kvm-a2"))
		b.spool = otherSpool(0xb0, 1)
		_, err := b.hello("web", last)
		re := refusal(t, err, stream.CodeDiverged)
		for _, want := range []string{testSpool.String(), b.spool.String(), "kvm-a1", "same group name"} {
			if !strings.Contains(re.Message, want) {
				t.Errorf("last %d: refusal %q does not name %q", last, re.Message, want)
			}
		}
	}
	got, ok := r.srv.Refused("alpha", "web")
	if !ok || got.Spool != journal.SpoolID(otherSpool(0xb0, 1).ID) || got.Host != "kvm-a2" || got.Reason == "" {
		t.Fatalf("Refused: %+v %v", got, ok)
	}
	// The bound spool's stream was never displaced.
	a.batch(t, 11, 5)
	if ack, err := a.answer(); err != nil || ack != 15 {
		t.Fatalf("the bound spool's stream after the refusals: ack %d %v", ack, err)
	}
	a.c.Close()

	// A restart of the host: a newer epoch of the same spool.
	a2, _ := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	a2.spool.Epoch = 3
	if d, err := a2.hello("web", 15); err != nil || d != 15 {
		t.Fatalf("epoch 3: welcome %d %v", d, err)
	}
	a2.c.Close()
	// An older copy of the spool directory.
	old, _ := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	old.spool.Epoch = 2
	_, err := old.hello("web", 40)
	if re := refusal(t, err, stream.CodeDiverged); !strings.Contains(re.Message, "is a copy") {
		t.Errorf("older epoch: %q", re.Message)
	}
	// The spool lost records 13..15 (a host crash before their fsync),
	// and has since written new ones past them.
	lost, _ := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	lost.spool.Epoch = 4
	_, err = lost.helloIntact("web", 40, 12)
	if re := refusal(t, err, stream.CodeDiverged); !strings.Contains(re.Message, "vouches only for seqs up to 12") {
		t.Errorf("lost records: %q", re.Message)
	}
}

// TestSpoolBindingUpgrade: a journal written before spools had an identity
// binds the first spool that vouches for all it holds (the host's old
// spool, which got its identity when opened); a new spool (a lost spool
// directory) is refused even once its last seq passes the journal's.
func TestSpoolBindingUpgrade(t *testing.T) {
	r := start(t)
	dir := filepath.Join(r.root, "alpha", "db-old")
	j, err := journal.Open(context.Background(), journal.Options{Dir: dir, Group: "db-old", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	var recs []record.Record
	for s := uint64(1); s <= 20; s++ {
		recs = append(recs, record.Record{Seq: s, Kind: record.Data, Disk: "vda", Length: 1, Payload: []byte{1}})
	}
	if err := j.Append(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}

	fresh, _ := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	fresh.spool = otherSpool(0xf0, 1)
	_, err = fresh.helloIntact("db-old", 25, 0)
	if re := refusal(t, err, stream.CodeDiverged); !strings.Contains(re.Message, "named no identity") {
		t.Errorf("new spool on an old journal: %q", re.Message)
	}
	up, _ := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if d, err := up.helloIntact("db-old", 22, 22); err != nil || d != 20 {
		t.Fatalf("the upgraded spool: welcome %d %v", d, err)
	}
	up.batch(t, 21, 2)
	if ack, err := up.answer(); err != nil || ack != 22 {
		t.Fatalf("ack %d %v", ack, err)
	}
	// Bound now: the new spool stays refused past the journal's seq.
	fresh, _ = dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	fresh.spool = otherSpool(0xf0, 1)
	_, err = fresh.helloIntact("db-old", 100, 100)
	refusal(t, err, stream.CodeDiverged)
}

// TestSpoolLineage: once spools are welcomed, each open's epoch descends
// from the epoch last welcomed (package shipper/spool). The replica takes
// a descendant of the bound epoch; of two copies of one spool directory,
// both descending from the same welcomed epoch, it takes the first and
// refuses the second for good, however it reopens, once a record came
// from the first; a spool that crashed before it noted that the replica
// took its newer epoch comes back descending from the one before, which
// is taken while nothing came since.
func TestSpoolLineage(t *testing.T) {
	r := start(t)
	hello := func(epoch, last uint64) error {
		t.Helper()
		c, _ := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
		defer c.c.Close()
		c.spool.Epoch = epoch
		_, err := c.hello("web", last)
		return err
	}
	const e0 = 3                           // a spool whose epochs do not descend yet
	ea := record.EpochDescending(e0, 0xaa) // copy A's next open
	eb := record.EpochDescending(e0, 0xbb) // copy B's
	if err := hello(e0, 0); err != nil {
		t.Fatal(err)
	}
	if err := hello(ea, 0); err != nil {
		t.Fatalf("a descendant of the bound epoch: %v", err)
	}
	// B descends from the epoch bound before, and nothing came since A
	// was bound: as a crash before A noted its welcome would look. (It is
	// refused while A's session has not ended at the replica: it retries.)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		err := hello(eb, 0)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a descendant of the epoch before, nothing since: %v", err)
		}
	}
	// B streams.
	c, _ := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	c.spool.Epoch = eb
	if _, err := c.hello("web", 0); err != nil {
		t.Fatal(err)
	}
	c.batch(t, 1, 5)
	if ack, err := c.answer(); err != nil || ack != 5 {
		t.Fatalf("B's records: ack %d %v", ack, err)
	}
	c.c.Close()
	// A again, as it was and reopened (descending from its welcomed ea,
	// or from e0 if it never noted ea's welcome): refused for good.
	for _, e := range []uint64{ea, record.EpochDescending(ea, 0x77), record.EpochDescending(e0, 0xcc)} {
		err := hello(e, 5)
		if re := refusal(t, err, stream.CodeDiverged); !strings.Contains(re.Message, "is a copy") {
			t.Errorf("copy A at epoch %#x: %q", e, re.Message)
		}
	}
	// B's own next open descends from eb: taken.
	if err := hello(record.EpochDescending(eb, 1), 5); err != nil {
		t.Fatalf("B reopened: %v", err)
	}
}
