package receiver_test

import (
	"context"
	"github.com/qcdp/qcdp/record"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/qcdp/qcdp/shipper/spool"
	"github.com/qcdp/qcdp/stream"
	"github.com/qcdp/qcdp/vfs"
)

// A new spool is welcomed at its first open (epoch 1) and crashes before
// Welcomed persists (or the Welcome is lost and the host restarts). It
// then reopens a couple of times before it reaches the replica again (the
// replica is down, the host reboots): with welcomed still 0 its epoch
// steps by 1..2^32 per open and soon passes 2^32, whose high bits the
// replica reads as a parent tag. Refused as a copy, for good.
func TestReview2LegacyEpochPast2p32RefusedForever(t *testing.T) {
	r := start(t)
	fs := vfs.NewMemFS()
	q := slog.New(slog.NewTextHandler(io.Discard, nil))
	open := func() *spool.Spool {
		sp, err := spool.Open(context.Background(), spool.Options{Dir: "/s", Group: "web", FS: fs, Logger: q})
		if err != nil {
			t.Fatal(err)
		}
		return sp
	}
	hello := func(sp *spool.Spool) error {
		c, _ := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
		defer c.c.Close()
		id := sp.Identity()
		c.spool = stream.SpoolID{ID: id.ID, Created: id.Created, Epoch: id.Epoch}
		_, err := c.helloIntact("web", sp.LastSeq(), sp.Intact())
		return err
	}
	sp := open()
	if err := hello(sp); err != nil { // bound at epoch 1; the host crashes before Welcomed
		t.Fatal(err)
	}
	sp.Close()
	for {
		sp = open()                       // reopened without reaching the replica
		if sp.Identity().Epoch >= 2<<32 { // parent 2.. (parent 1 passes by accident: epoch 1's tag is 1)
			break
		}
		sp.Close()
	}
	defer sp.Close()
	if err := hello(sp); err != nil {
		t.Fatalf("the one legitimate spool at epoch %#x: %v", sp.Identity().Epoch, err)
	}
}

// A copy descending from the epoch bound before passes foreign (related
// via Prev), so it claims the group and knocks the bound copy's live
// stream off before admit refuses it: at every retry of its sender.
func TestReview2PrevCopyKnocksBoundStreamOff(t *testing.T) {
	r := start(t)
	c0, _ := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	c0.spool.Epoch = 3
	if _, err := c0.hello("web", 0); err != nil {
		t.Fatal(err)
	}
	c0.c.Close()
	a, _ := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	a.spool.Epoch = record.EpochDescending(3, 0xaa)
	if _, err := a.hello("web", 0); err != nil {
		t.Fatal(err)
	}
	a.batch(t, 1, 5)
	if ack, err := a.answer(); err != nil || ack != 5 {
		t.Fatalf("ack %d %v", ack, err)
	}
	b, _ := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	b.spool.Epoch = record.EpochDescending(3, 0xbb)
	_, err := b.hello("web", 5)
	if re := refusal(t, err, stream.CodeDiverged); !strings.Contains(re.Message, "is a copy") {
		t.Fatalf("B: %q", re.Message)
	}
	a.batch(t, 6, 1)
	if ack, err := a.answer(); err != nil || ack != 6 {
		t.Fatalf("the bound copy's stream after B's refused hello: ack %d %v (knocked off)", ack, err)
	}
}
