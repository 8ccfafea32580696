package shipper

import (
	"context"
	"strings"
	"syscall"
	"testing"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/shipper/spool"
	"github.com/qcdp/qcdp/vfs"
)

// TestReviewRecopyOwedWhenUnkept (review): OweRecopy fails (ENOSPC on
// the recopy file) inside reopened: it was only logged, with nothing owed in memory either, so the bracket closed at
// once though the lost writes were never re-copied. Now the disk stays
// owed in memory and keeping it is retried.
func TestReviewRecopyOwedWhenUnkept(t *testing.T) {
	ctx := context.Background()
	l := lossyHeal(t)
	fs, seq, exp, sp2 := l.fs, l.seq, l.exp, l.sp2
	fs.SetInjector(func(op vfs.Op, p string) error {
		if op == vfs.OpOpen && strings.Contains(p, "recopy") {
			return syscall.ENOSPC
		}
		return nil
	})
	seq.reopened(sp2)
	fs.SetInjector(nil)
	if err := exp.WriteAt(ctx, []byte{9}, 9*4096); err != nil {
		t.Fatal(err)
	}
	t.Logf("owed after reopen: %q", seq.RecopyOwed())
	if s, err := seq.MarkDisk(record.ResyncEnd, "vda"); err == nil {
		t.Fatalf("3 answered writes lost, recopy file could not be written: ResyncEnd accepted at seq %d without any re-copy", s)
	}
}

// TestReviewOwedBracketAtRestart (review): the heal lost vda's answered writes; the daemon stops before any
// record follows (the owed resync-begin is written only before the next
// record). After the restart the recopy file says vda is owed, but the new
// sequencer opens no bracket for it: if vda's VM is not running (nobody
// attaches it), the stream never says vda is out of sync, and every point
// offered after other disks' records lacks vda's lost writes.
func TestReviewOwedBracketAtRestart(t *testing.T) {
	ctx := context.Background()
	l := lossyHeal(t)
	opts, seq, sp2 := l.opts, l.seq, l.sp2
	seq.reopened(sp2)
	last := sp2.LastSeq()
	sp2.Close() // the daemon stops before any new record
	sp3, err := spool.Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer sp3.Close()
	seq = NewSequencer(sp3)
	seq.SetLogger(quiet)
	t.Logf("owed after restart: %q", seq.RecopyOwed())
	expB, _ := seq.Export("vdb", 1<<20) // another VM's disk writes
	if err := expB.WriteAt(ctx, []byte{5}, 0); err != nil {
		t.Fatal(err)
	}
	for _, r := range readAll(t, sp3, last+1) {
		if r.Kind == record.Marker && r.Marker == record.ResyncBegin && r.Disk == "vda" {
			return
		}
	}
	t.Fatalf("vda is owed a re-copy (%q) but after the restart the stream has no resync-begin for it: the replica still takes vda as in sync", seq.RecopyOwed())
}
