package spool

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/qcdp/qcdp/vfs"
)

// TestRecopyKept: the disks owed a full re-copy survive reopening the
// spool until each re-copy starts; a damaged recopy file (any truncation,
// any bit flip) fails Open with ErrCorrupt naming the file, never reads
// as "nothing owed".
func TestRecopyKept(t *testing.T) {
	fs := vfs.NewMemFS()
	s := mustOpen(t, Options{Dir: "/s", FS: fs})
	if err := s.OweRecopy("vda", "vdb", "vda"); err != nil {
		t.Fatal(err)
	}
	if err := s.OweRecopy("bad/name"); err == nil {
		t.Fatal("an invalid disk name was owed a re-copy")
	}
	s.Close()
	s = mustOpen(t, Options{Dir: "/s", FS: fs})
	if got := s.RecopyOwed(); !slices.Equal(got, []string{"vda", "vdb"}) {
		t.Fatalf("owed after reopen: %q", got)
	}
	if err := s.RecopyStarted("vda"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = mustOpen(t, Options{Dir: "/s", FS: fs})
	if got := s.RecopyOwed(); !slices.Equal(got, []string{"vdb"}) {
		t.Fatalf("owed after one re-copy started: %q", got)
	}
	s.Close()

	good := encodeRecopy([]string{"vdb"})
	for i := 0; i < len(good)*8+len(good); i++ {
		b := slices.Clone(good)
		if i < len(good) {
			b = b[:i] // truncated
		} else {
			bit := i - len(good)
			b[bit/8] ^= 1 << (bit % 8)
		}
		if err := vfs.Publish(fs, "/s/"+recopyName, b); err != nil {
			t.Fatal(err)
		}
		s, err := Open(context.Background(), Options{Dir: "/s", Group: "g1", FS: fs, Logger: quiet})
		if err == nil {
			owed := s.RecopyOwed()
			s.Close()
			t.Fatalf("damage %d: opened, owed %q", i, owed)
		}
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), recopyName) {
			t.Fatalf("damage %d: %v, want ErrCorrupt naming the file", i, err)
		}
	}
	if err := vfs.Publish(fs, "/s/"+recopyName, good); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, Options{Dir: "/s", FS: fs})
	defer s.Close()
	if err := s.RecopyStarted("vdb"); err != nil {
		t.Fatal(err)
	}
	if _, err := fs.Stat("/s/" + recopyName); err == nil {
		t.Fatal("the recopy file is kept with nothing owed")
	}
}
