package receiver_test

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

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
	if re := refusal(t, err, stream.CodeDiverged); !strings.Contains(re.Message, "older copy") {
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
