package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

// ackedJournal appends n records of 1000 bytes to one segment of a new
// journal and closes it: every one of them was acknowledged.
func ackedJournal(t *testing.T, n int) (*vfs.MemFS, []record.Record) {
	t.Helper()
	fs := newFS()
	j := openT(t, fs, func(o *Options) { o.SegmentBytes = 1 << 20 })
	var recs []record.Record
	for s := uint64(1); s <= uint64(n); s++ {
		recs = append(recs, dataRec(s, "vda", s*4096, bytes.Repeat([]byte{byte(s)}, 1000)))
	}
	appendAll(t, j, rand.New(rand.NewPCG(4, 4)), recs)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	return fs, recs
}

// TestAckedTailDamage: Append acknowledged the newest record of the newest
// segment (it was fsync'd before Append returned, and the host has dropped
// it), so damage to it is corruption that Open reports naming file, offset
// and seq, never a torn tail cut off with a warning.
func TestAckedTailDamage(t *testing.T) {
	ctx := context.Background()
	src, recs := ackedJournal(t, 40)
	seg := filepath.Join(dir, segName(1))
	size := len(readAll(t, src, seg))
	lastPos := size - record.EncodedLen(&recs[39])
	for _, tc := range []struct {
		name string
		edit func(b []byte) []byte
	}{
		{"one bit flipped 100 bytes before the end", func(b []byte) []byte { b[len(b)-100] ^= 0x08; return b }},
		{"cut by 10 bytes", func(b []byte) []byte { return b[:len(b)-10] }},
		{"newest record cut off whole", func(b []byte) []byte { return b[:lastPos] }},
		{"newest record zeroed", func(b []byte) []byte { clear(b[lastPos:]); return b }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := copyFS(t, src, func(n string, b []byte) []byte {
				if n == segName(1) {
					return tc.edit(b)
				}
				return b
			})
			j, err := Open(ctx, Options{Dir: dir, Group: "g1", FS: fs, Logger: quiet()})
			if err == nil {
				last := j.LastSeq()
				rep, verr := j.Verify(ctx)
				j.Close()
				t.Fatalf("Open accepted the damage: LastSeq %d of 40 acknowledged; Verify: %+v, %v", last, rep, verr)
			}
			want := fmt.Sprintf("%s offset %d, seq 40", seg, lastPos)
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), want) {
				t.Fatalf("Open: %v\nwant ErrCorrupt naming %q", err, want)
			}
		})
	}
}

// TestReopenAfterFailedFsync: after an fsync fails, the journal is closed
// and reopened in the same process, whose page cache still holds the
// records the failed Append wrote. The reopened journal must not report
// them as durable unless they are: after a power cut it must hold at least
// what it reported.
func TestReopenAfterFailedFsync(t *testing.T) {
	ctx := context.Background()
	var recs []record.Record
	for s := uint64(1); s <= 20; s++ {
		recs = append(recs, dataRec(s, "vda", s*512, bytes.Repeat([]byte{byte(s)}, 300)))
	}
	fs := newFS()
	j := openT(t, fs, func(o *Options) { o.SegmentBytes = 1 << 20 })
	if err := j.Append(ctx, recs[:10]); err != nil {
		t.Fatal(err)
	}
	fs.SetInjector(vfs.FailNth(vfs.OpSync, 1, syscall.EIO))
	if err := j.Append(ctx, recs[10:]); !errors.Is(err, ErrBroken) {
		t.Fatalf("Append with a failing fsync: %v, want ErrBroken", err)
	}
	fs.SetInjector(nil)
	j.Close()

	j = openT(t, fs, func(o *Options) { o.SegmentBytes = 1 << 20 })
	durable := j.LastSeq() // what the next Welcome tells the host
	if durable < 10 {
		t.Fatalf("reopened: LastSeq %d, but 10 were acknowledged", durable)
	}
	j.Close()
	fs.Crash()
	j = openT(t, fs, func(o *Options) { o.SegmentBytes = 1 << 20 })
	defer j.Close()
	if got := j.LastSeq(); got < durable {
		t.Fatalf("the reopened journal reported seq %d durable; after a power cut it holds %d", durable, got)
	}
}

// TestMarkWriteFails: the mark's write or fsync fails after the records'
// fsync succeeded. Append fails (nothing is acknowledged), and whatever
// the reopened journal then reports as durable survives a power cut.
func TestMarkWriteFails(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		op    vfs.Op
		crash bool   // the power goes before the reopen
		want  uint64 // LastSeq after the reopen
	}{
		// A torn slot in the page cache: the other slot names 20, the
		// records after it are intact and were fsync'd: kept.
		{vfs.OpWrite, false, 30},
		// The slot never reached the disk: the records after the mark
		// were never acknowledged and are cut.
		{vfs.OpWrite, true, 20},
		// The slot is whole in the page cache, its fsync failed: Open
		// writes it again before it reports it.
		{vfs.OpSync, false, 30},
		{vfs.OpSync, true, 20},
	} {
		t.Run(fmt.Sprintf("%v crash %v", tc.op, tc.crash), func(t *testing.T) {
			var recs []record.Record
			for s := uint64(1); s <= 30; s++ {
				recs = append(recs, dataRec(s, "vda", s*512, bytes.Repeat([]byte{byte(s)}, 300)))
			}
			fs := newFS()
			j := openT(t, fs, func(o *Options) { o.SegmentBytes = 1 << 20 })
			if err := j.Append(ctx, recs[:20]); err != nil {
				t.Fatal(err)
			}
			fs.SetInjector(func(op vfs.Op, path string) error {
				if op == tc.op && filepath.Base(path) == ackedName {
					return syscall.EIO
				}
				return nil
			})
			if err := j.Append(ctx, recs[20:]); !errors.Is(err, ErrBroken) {
				t.Fatalf("Append: %v, want ErrBroken", err)
			}
			if j.LastSeq() != 20 {
				t.Fatalf("LastSeq %d after a failed mark, want 20", j.LastSeq())
			}
			fs.SetInjector(nil)
			j.Close()
			if tc.crash {
				fs.Crash()
			}
			j = openT(t, fs, func(o *Options) { o.SegmentBytes = 1 << 20 })
			got := j.LastSeq()
			if got != tc.want {
				t.Fatalf("reopened: LastSeq %d, want %d", got, tc.want)
			}
			if _, err := j.Verify(ctx); err != nil {
				t.Fatalf("Verify: %v", err)
			}
			j.Close()
			fs.Crash()
			j = openT(t, fs, func(o *Options) { o.SegmentBytes = 1 << 20 })
			defer j.Close()
			if j.LastSeq() != got {
				t.Fatalf("reported %d durable; after a power cut LastSeq %d", got, j.LastSeq())
			}
			// And the mark holds: damage to the newest record is corruption.
			j.Close()
			bad := copyFS(t, fs, func(n string, b []byte) []byte {
				if n == segName(1) {
					b[len(b)-1] ^= 1
				}
				return b
			})
			if _, err := Open(ctx, Options{Dir: dir, Group: "g1", FS: bad, Logger: quiet()}); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("newest record flipped after recovery: %v, want ErrCorrupt", err)
			}
		})
	}
}

// TestAckedFlips flips one bit in every byte of ACKED: one slot is then
// damaged, which a torn write of it also leaves. Open takes the other slot
// as a lower bound, keeps every record (all intact) and writes the damaged
// slot again; both slots damaged is corruption.
func TestAckedFlips(t *testing.T) {
	ctx := context.Background()
	src, _ := ackedJournal(t, 10)
	path := filepath.Join(dir, ackedName)
	for pos := range 2 * ackedSlotLen {
		fs := copyFS(t, src, func(n string, b []byte) []byte {
			if n == ackedName {
				b[pos] ^= 1 << (pos % 8)
			}
			return b
		})
		if _, _, st, err := readAcked(fs, path, "g1"); err != nil || st != ackDamaged {
			t.Fatalf("byte %d flipped: readAcked state %d, %v, want a damaged slot", pos, st, err)
		}
		j, err := Open(ctx, Options{Dir: dir, Group: "g1", FS: fs, Logger: quiet()})
		if err != nil {
			t.Fatalf("byte %d flipped: Open: %v", pos, err)
		}
		if j.LastSeq() != 10 {
			t.Fatalf("byte %d flipped: LastSeq %d, want 10", pos, j.LastSeq())
		}
		if rep, err := j.Verify(ctx); err != nil || rep.AckedSeq != 10 {
			t.Fatalf("byte %d flipped: Verify after Open: %+v, %v", pos, rep, err)
		}
		j.Close()
	}
	fs := copyFS(t, src, func(n string, b []byte) []byte {
		if n == ackedName {
			b[8] ^= 1
			b[ackedSlotLen+8] ^= 1
		}
		return b
	})
	if _, err := Open(ctx, Options{Dir: dir, Group: "g1", FS: fs, Logger: quiet()}); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
		t.Fatalf("both slots damaged: %v, want ErrCorrupt naming %s", err, path)
	}
	fs = copyFS(t, src, func(n string, b []byte) []byte {
		if n == ackedName {
			return encodeAcked("g2", mark{seq: 10, seg: 1, end: 100})
		}
		return b
	})
	if _, err := Open(ctx, Options{Dir: dir, Group: "g1", FS: fs, Logger: quiet()}); !errors.Is(err, ErrGroup) {
		t.Fatalf("ACKED of another group: %v, want ErrGroup", err)
	}
}

// TestVerifyNamesDamage: damage that happens while the journal is open,
// to its newest record or to ACKED, is named by Verify.
func TestVerifyNamesDamage(t *testing.T) {
	ctx := context.Background()
	fs, recs := ackedJournal(t, 10)
	j := openT(t, fs, func(o *Options) { o.SegmentBytes = 1 << 20 })
	defer j.Close()
	seg := filepath.Join(dir, segName(1))
	size := len(readAll(t, fs, seg))
	lastPos := size - record.EncodedLen(&recs[9])
	flip := func(path string, off int64) {
		f, err := fs.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 1)
		f.ReadAt(b, off)
		b[0] ^= 0x40
		f.WriteAt(b, off)
		f.Close()
	}
	if rep, err := j.Verify(ctx); err != nil || rep.AckedSeq != 10 || rep.Records != 10 {
		t.Fatalf("Verify: %+v, %v", rep, err)
	}
	flip(seg, int64(size-100))
	rep, err := j.Verify(ctx)
	want := fmt.Sprintf("%s offset %d, seq 10", seg, lastPos)
	if !errors.Is(err, ErrCorrupt) || len(rep.Corrupt) != 1 || !strings.Contains(rep.Corrupt[0], want) {
		t.Fatalf("newest record flipped: Verify %+v, %v, want %q", rep, err, want)
	}
	flip(seg, int64(size-100))
	flip(filepath.Join(dir, ackedName), 9)
	rep, err = j.Verify(ctx)
	want = fmt.Sprintf("%s offset 0, seq 10", filepath.Join(dir, ackedName))
	if !errors.Is(err, ErrCorrupt) || len(rep.Corrupt) != 1 || !strings.Contains(rep.Corrupt[0], want) {
		t.Fatalf("ACKED flipped: Verify %+v, %v, want %q", rep, err, want)
	}
}

// TestMarkAcrossSegments: a batch that spans segments is marked segment by
// segment, so the prefix LastSeq reports after a failure is the one a
// reopen keeps.
func TestMarkAcrossSegments(t *testing.T) {
	ctx := context.Background()
	var recs []record.Record
	for s := uint64(1); s <= 40; s++ {
		recs = append(recs, dataRec(s, "vda", s*512, bytes.Repeat([]byte{byte(s)}, 1000)))
	}
	fs := newFS()
	j := openT(t, fs) // 8 KiB segments: the batch spans several
	marks := 0
	fs.SetInjector(func(op vfs.Op, path string) error {
		if op == vfs.OpSync && filepath.Base(path) == ackedName {
			if marks++; marks == 3 {
				return syscall.EIO
			}
		}
		return nil
	})
	if err := j.Append(ctx, recs); !errors.Is(err, ErrBroken) {
		t.Fatalf("Append: %v, want ErrBroken", err)
	}
	fs.SetInjector(nil)
	prefix := j.LastSeq()
	if prefix == 0 || prefix >= 40 {
		t.Fatalf("LastSeq %d: the batch should have been durable in part", prefix)
	}
	j.Close()
	fs.Crash()
	j = openT(t, fs)
	defer j.Close()
	if j.LastSeq() != prefix {
		t.Fatalf("after a power cut LastSeq %d, want the prefix %d", j.LastSeq(), prefix)
	}
	if _, err := j.Verify(ctx); err != nil {
		t.Fatal(err)
	}
}

func FuzzAcked(f *testing.F) {
	f.Add(markSlot("g1", mark{seq: 18, seg: 16, end: 213}))
	f.Add(make([]byte, ackedSlotLen))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeMarkSlot("g1", b)
		if err != nil {
			return
		}
		if !bytes.Equal(markSlot("g1", m), b) {
			t.Fatalf("%+v re-encodes differently", m)
		}
	})
}

// TestMarkAfterFold: when Compact has folded every record (the mark's
// record lives in a layer), reopening keeps the journal whole, and the
// records appended after it are held to their mark like any others.
func TestMarkAfterFold(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(8, 8))
	recs := genStream(rng, 1, 120, t0)
	fs := newFS()
	ret := Retention{Window: time.Second}
	j := openT(t, fs, func(o *Options) { o.Retention = ret })
	appendAll(t, j, rng, recs[:80])
	if err := j.Compact(ctx, at(10_000)); err != nil {
		t.Fatal(err)
	}
	if j.first != 81 {
		t.Fatalf("first retained seq %d: not everything was folded", j.first)
	}
	j.Close()
	fs.Crash()
	j = openT(t, fs, func(o *Options) { o.Retention = ret })
	if j.LastSeq() != 80 {
		t.Fatalf("LastSeq %d after folding everything, want 80", j.LastSeq())
	}
	if rep, err := j.Verify(ctx); err != nil || rep.AckedSeq != 80 {
		t.Fatalf("Verify: %+v, %v", rep, err)
	}
	appendAll(t, j, rng, recs[80:])
	j.Close()
	fs.Crash()
	j = openT(t, fs, func(o *Options) { o.Retention = ret })
	if j.LastSeq() != 120 {
		t.Fatalf("LastSeq %d, want 120", j.LastSeq())
	}
	checkAll(t, j, recs, rng)
	j.Close()
	var newest string
	names, _ := fs.ReadDir(dir)
	for _, n := range names {
		if _, ok := parseSegName(n); ok {
			newest = n
		}
	}
	bad := copyFS(t, fs, func(n string, b []byte) []byte {
		if n == newest {
			b = b[:len(b)-1]
		}
		return b
	})
	if _, err := Open(ctx, Options{Dir: dir, Group: "g1", FS: bad, Logger: quiet(), Retention: ret}); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "seq 120") {
		t.Fatalf("newest record cut short: %v, want ErrCorrupt naming seq 120", err)
	}
}

func TestRuleFor(t *testing.T) {
	m := mark{seq: 50, seg: 41, end: 900} // seq 50 ends at offset 900 of segment 41
	all := segRule{mayTear: false, limit: -1}
	for _, tc := range []struct {
		name   string
		st     ackState
		first  uint64
		isLast bool
		want   segRule
	}{
		{"no mark: older segment", ackNone, 1, false, all},
		{"no mark: newest segment may tear", ackNone, 41, true, segRule{mayTear: true, limit: -1}},
		{"exact: before the mark's segment", ackExact, 30, false, all},
		{"exact: the mark's segment, newest", ackExact, 41, true, segRule{durable: 900, limit: 900}},
		{"exact: the mark's segment, not newest", ackExact, 41, false, segRule{durable: 900, limit: 900}},
		{"exact: after the mark", ackExact, 51, true, segRule{mayTear: true, limit: -1, dropAll: true}},
		{"exact: after the mark, not newest", ackExact, 51, false, segRule{limit: -1, dropAll: true}},
		{"damaged: before the mark's segment", ackDamaged, 30, false, all},
		{"damaged: the mark's segment, newest", ackDamaged, 41, true, segRule{mayTear: true, durable: 900, limit: -1}},
		{"damaged: after the mark, newest", ackDamaged, 51, true, segRule{mayTear: true, limit: -1}},
		{"damaged: after the mark, not newest", ackDamaged, 51, false, all},
	} {
		if got := ruleFor(m, tc.st, tc.first, tc.isLast); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}
