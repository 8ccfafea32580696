package spool

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/qcdp/qcdp/vfs"
)

// TestIdentityKeptAcrossOpens: a new spool gets a random identity at its
// first Open and keeps it; every Open starts a new epoch; two spools never
// share an id.
func TestIdentityKeptAcrossOpens(t *testing.T) {
	fs := vfs.NewMemFS()
	s := mustOpen(t, Options{Dir: "/a", FS: fs})
	id := s.Identity()
	if id.ID == (ID{}) || id.Epoch != 1 || time.Since(time.Unix(0, id.Created)) > time.Minute {
		t.Fatalf("new spool's identity %+v", id)
	}
	if got := s.Intact(); got != 0 {
		t.Fatalf("a new spool vouches up to %d", got)
	}
	appendN(t, s, 5)
	if err := s.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.Close()
	prev := id.Epoch
	for range 3 {
		s = mustOpen(t, Options{Dir: "/a", FS: fs})
		got := s.Identity()
		if got.ID != id.ID || got.Created != id.Created || got.Epoch <= prev || got.Epoch > prev+1<<32 {
			t.Fatalf("reopened: identity %+v, want %+v at an epoch in (%d, %d]", got, id, prev, prev+1<<32)
		}
		prev = got.Epoch
		s.Close()
	}
	other := mustOpen(t, Options{Dir: "/b", FS: fs})
	defer other.Close()
	if other.Identity().ID == id.ID {
		t.Fatal("two spools got the same id")
	}
}

// TestIntact: a spool vouches for the records it holds once the replica
// has welcomed it; records lost in a crash (never fsync'd) lower what it
// vouches for to what the crash left, and records written afterwards do
// not raise it until the replica welcomes the spool again.
func TestIntact(t *testing.T) {
	fs := vfs.NewMemFS()
	s := mustOpen(t, Options{Dir: "/spool", FS: fs})
	if err := s.Welcomed(0); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 10)
	if err := s.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 5) // sent, say, but never fsync'd
	if got := s.Intact(); got != 15 {
		t.Fatalf("Intact %d, want 15", got)
	}
	fs.Crash()
	s.Close()

	s = mustOpen(t, Options{Dir: "/spool", FS: fs})
	if s.LastSeq() != 10 || s.Intact() != 10 || s.Identity().Epoch < 2 {
		t.Fatalf("after the crash: last %d, intact %d, identity %+v", s.LastSeq(), s.Intact(), s.Identity())
	}
	appendN(t, s, 5) // seqs 11..15 again, other records
	if got := s.Intact(); got != 10 {
		t.Fatalf("Intact %d after new records past the loss, want 10", got)
	}
	if err := s.Welcomed(12); !errors.Is(err, ErrSeq) {
		t.Fatalf("Welcomed past the intact seq: %v, want ErrSeq", err)
	}
	if err := s.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// Kept across a clean reopen until the replica welcomes the spool.
	s = mustOpen(t, Options{Dir: "/spool", FS: fs})
	if got := s.Intact(); got != 10 {
		t.Fatalf("Intact %d after a reopen, want 10", got)
	}
	if err := s.Welcomed(10); err != nil {
		t.Fatal(err)
	}
	if got := s.Intact(); got != 15 {
		t.Fatalf("Intact %d once welcomed, want 15", got)
	}
	fs.Crash() // Welcomed is durable when it returns
	s.Close()
	s = mustOpen(t, Options{Dir: "/spool", FS: fs})
	defer s.Close()
	if got := s.Intact(); got != 15 {
		t.Fatalf("Intact %d after a crash following Welcomed, want 15", got)
	}
}

// TestIdentityWriteFails: Open fails when the identity cannot be made
// durable, and Welcomed reports a failed write without raising Intact.
func TestIdentityWriteFails(t *testing.T) {
	fs := vfs.NewMemFS()
	fs.SetInjector(func(op vfs.Op, path string) error {
		if op == vfs.OpRename && filepath.Base(path) == identityName+".tmp" {
			return syscall.EIO
		}
		return nil
	})
	if _, err := Open(context.Background(), Options{Dir: "/spool", Group: "g1", FS: fs, Logger: quiet}); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Open with the identity unwritable: %v", err)
	}
	fs.SetInjector(nil)
	s := mustOpen(t, Options{Dir: "/spool", FS: fs})
	defer s.Close()
	appendN(t, s, 3)
	fs.SetInjector(vfs.FailNth(vfs.OpSync, 1, syscall.EIO))
	if err := s.Welcomed(0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Welcomed with a failing fsync: %v", err)
	}
	if got := s.Intact(); got != 0 {
		t.Fatalf("Intact %d after a failed Welcomed", got)
	}
}

// goldenIdentity is what testdata/identity-v1 holds.
var goldenIdentity = identity{
	Identity: Identity{ID: ID{0x3f, 0x2a, 0x9c, 0x1d, 0x44, 0x05, 0x4b, 0x67, 0x80, 0x11, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x01},
		Created: 1700000000123456789, Epoch: 7},
	intact: 41,
}

const goldenIdentityFile = "testdata/identity-v1"

// goldenIdentityV2 is what testdata/identity-v2 holds: version 2 adds the
// epoch last welcomed.
var goldenIdentityV2 = identity{
	Identity: goldenIdentity.Identity,
	intact:   41, welcomed: 0x1234abcd00000007,
}

const goldenIdentityFileV2 = "testdata/identity-v2"

// TestGoldenIdentity: the identity file of version 1 still reads, is
// written byte for byte the same, and a spool holding it keeps its id,
// starts the next epoch and vouches for no more than before. Every bit
// flipped and every cut is refused as corruption.
func TestGoldenIdentity(t *testing.T) {
	if os.Getenv("QCDP_WRITE_GOLDEN") == "1" {
		if _, err := os.Stat(goldenIdentityFileV2); errors.Is(err, os.ErrNotExist) {
			if err := os.WriteFile(goldenIdentityFileV2, encodeIdentity(goldenIdentityV2), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	b2, err := os.ReadFile(goldenIdentityFileV2)
	if err != nil {
		t.Fatalf("%v (QCDP_WRITE_GOLDEN=1 writes missing fixtures)", err)
	}
	if id, err := decodeIdentity(b2); err != nil || id != goldenIdentityV2 {
		t.Fatalf("decoded %+v (%v), want %+v", id, err, goldenIdentityV2)
	}
	if !bytes.Equal(encodeIdentity(goldenIdentityV2), b2) {
		t.Fatal("the encoder no longer writes " + goldenIdentityFileV2)
	}
	for bit := 0; bit < 8*len(b2); bit++ {
		c := bytes.Clone(b2)
		c[bit/8] ^= 1 << (bit % 8)
		if _, err := decodeIdentity(c); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("v2 bit %d flipped: %v", bit, err)
		}
	}
	b, err := os.ReadFile(goldenIdentityFile)
	if err != nil {
		t.Fatalf("%v (QCDP_WRITE_GOLDEN=1 writes missing fixtures)", err)
	}
	id, err := decodeIdentity(b)
	if err != nil || id != goldenIdentity {
		t.Fatalf("decoded %+v (%v), want %+v", id, err, goldenIdentity)
	}

	dir := copyGolden(t, goldenDir)
	if err := os.WriteFile(filepath.Join(dir, identityName), b, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := Open(context.Background(), Options{Dir: dir, Group: goldenGroup, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Identity(); got.ID != goldenIdentity.ID || got.Created != goldenIdentity.Created || got.Epoch <= 7 || s.Intact() != 12 {
		t.Fatalf("identity %+v, intact %d; want the fixture's at an epoch past 7, intact 12", got, s.Intact())
	}
	s.Close()

	for bit := 0; bit < 8*len(b); bit++ {
		c := bytes.Clone(b)
		c[bit/8] ^= 1 << (bit % 8)
		if _, err := decodeIdentity(c); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("bit %d flipped: %v", bit, err)
		}
	}
	for n := 0; n < len(b); n++ {
		if _, err := decodeIdentity(b[:n]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("cut at %d: %v", n, err)
		}
	}
	// A damaged identity file fails Open: the spool is not silently made
	// another one (the replica would refuse it as diverged for good).
	c := bytes.Clone(b)
	c[10] ^= 0x80
	if err := os.WriteFile(filepath.Join(dir, identityName), c, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), Options{Dir: dir, Group: goldenGroup, Logger: quiet}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open with a damaged identity file: %v", err)
	}
}

// TestBrokenIsSignalled: a failed fsync closes Broken's channel, and a
// reader waiting for records learns it at once.
func TestBrokenIsSignalled(t *testing.T) {
	fs := vfs.NewMemFS()
	s := mustOpen(t, Options{Dir: "/spool", FS: fs})
	defer s.Close()
	appendN(t, s, 3)
	waited := make(chan error, 1)
	go func() { waited <- s.Wait(context.Background(), 4) }()
	select {
	case <-s.Broken():
		t.Fatal("Broken before anything failed")
	default:
	}
	fs.SetInjector(vfs.FailFrom(vfs.OpSync, 1, syscall.EIO))
	if err := s.Sync(context.Background()); err == nil {
		t.Fatal("Sync with a failing fsync succeeded")
	}
	select {
	case <-s.Broken():
	case <-time.After(10 * time.Second):
		t.Fatal("Broken not signalled")
	}
	if err := s.Err(); !errors.Is(err, ErrBroken) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("Err %v", err)
	}
	if err := <-waited; !errors.Is(err, ErrBroken) {
		t.Fatalf("Wait: %v", err)
	}
}

// TestCopiesGetDifferentEpochs: two copies of one stopped spool directory
// (a cloned host image, a restored backup), each opened, do not share an
// epoch: the replica, which refuses a lower epoch than the one it took,
// can never take both copies' streams in turns.
func TestCopiesGetDifferentEpochs(t *testing.T) {
	fs := vfs.NewMemFS()
	s := mustOpen(t, Options{Dir: "/a", FS: fs})
	appendN(t, s, 3)
	if err := s.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	s.Close()
	f, err := fs.Open("/a/" + identityName)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for i := range 20 {
		if err := vfs.Publish(fs, "/a/"+identityName, b); err != nil { // the same copy, opened again
			t.Fatal(err)
		}
		s := mustOpen(t, Options{Dir: "/a", FS: fs})
		e := s.Identity().Epoch
		s.Close()
		if seen[e] {
			t.Fatalf("open %d of the same copy got epoch %d again: two copies would stream as one", i, e)
		}
		seen[e] = true
	}
}
