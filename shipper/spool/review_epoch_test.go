package spool

import (
	"context"
	"encoding/binary"
	"hash/crc32"
	"math"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

// encodeV1 lays out a version-1 identity file (what every spool written
// before d9a03c7 holds).
func encodeV1(id identity) []byte {
	b := encodeIdentity(id)[:48]
	binary.LittleEndian.PutUint16(b[4:], 1)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// A v1 spool reopened a few times has a legacy epoch >= 2^32 (each open
// adds 1..2^32). After the upgrade it steps it again (welcomed 0): the new
// epoch has high 32 bits != 0 and looks to the replica like a descendant
// of tag E>>32, which is neither the bound epoch's tag nor Prev's.
func TestReview2UpgradedEpochLooksLikeForeignDescendant(t *testing.T) {
	fs := vfs.NewMemFS()
	s := mustOpen(t, Options{Dir: "/a", FS: fs})
	id := s.id
	s.Close()
	bound := uint64(5)<<32 | 0x1234 // what the replica bound (v1 ORIGIN)
	id.Epoch, id.intact, id.welcomed = bound, math.MaxUint64, 0
	if err := vfs.Publish(fs, "/a/"+identityName, encodeV1(id)); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, Options{Dir: "/a", FS: fs})
	defer s.Close()
	e := s.Identity().Epoch
	// receiver.related(Origin{Epoch: bound, Prev: 0}, e):
	p := record.EpochParent(e)
	ok := e == bound || (p == 0 && e > bound) || p == record.EpochTag(bound)
	if !ok {
		t.Fatalf("upgraded spool reopened at epoch %#x (parent %#x): the replica bound at %#x refuses it as a copy, forever", e, p, bound)
	}
}

// A welcomed epoch whose low 32 bits are 0 (a legacy epoch k<<32, e.g.
// 1 + (2^32-1)) makes descendant loop forever: e>>32 is always 0.
func TestReview2DescendantOfZeroTagHangs(t *testing.T) {
	done := make(chan struct{})
	go func() { descendant(1<<32, 1<<32); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("descendant(1<<32, ...) never returns: the spool's Open spins forever")
	}
	_ = context.Background
}
