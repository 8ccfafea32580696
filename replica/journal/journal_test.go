package journal

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"testing"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

const dir = "/j/grp/g1"

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openT(t testing.TB, fs vfs.FS, mod ...func(*Options)) *Journal {
	t.Helper()
	o := Options{Dir: dir, Group: "g1", FS: fs, Logger: quiet(), SegmentBytes: 8 << 10}
	for _, m := range mod {
		m(&o)
	}
	j, err := Open(context.Background(), o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return j
}

func dataRec(seq uint64, disk string, off uint64, p []byte) record.Record {
	return record.Record{Seq: seq, Time: int64(seq) * 1e6, Kind: record.Data, Disk: disk, Offset: off, Length: uint64(len(p)), Payload: p}
}

func markRec(seq uint64, m record.MarkerKind, disk, name string) record.Record {
	return record.Record{Seq: seq, Time: int64(seq) * 1e6, Kind: record.Marker, Marker: m, Disk: disk, Name: name}
}

func TestAppendReopen(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewCrashFS()
	j := openT(t, fs)
	if j.LastSeq() != 0 {
		t.Fatalf("LastSeq of a new journal = %d", j.LastSeq())
	}
	var batch []record.Record
	for s := uint64(1); s <= 100; s++ {
		batch = append(batch, dataRec(s, "vda", s*512, bytes.Repeat([]byte{byte(s)}, 700)))
		if len(batch) == 7 {
			if err := j.Append(ctx, batch); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	if err := j.Append(ctx, batch); err != nil {
		t.Fatal(err)
	}
	// Gaps and duplicates are refused and change nothing.
	for _, bad := range [][]record.Record{
		{dataRec(100, "vda", 0, []byte("x"))},
		{dataRec(102, "vda", 0, []byte("x"))},
		{dataRec(101, "vda", 0, []byte("x")), dataRec(103, "vda", 0, []byte("x"))},
	} {
		if err := j.Append(ctx, bad); !errors.Is(err, ErrSeq) {
			t.Fatalf("Append %d..: %v, want ErrSeq", bad[0].Seq, err)
		}
	}
	if err := j.Append(ctx, []record.Record{{Seq: 101, Kind: record.Data, Disk: "../x", Length: 1, Payload: []byte("x")}}); err == nil {
		t.Fatal("a disk name like a path was accepted")
	}
	if j.LastSeq() != 100 {
		t.Fatalf("LastSeq = %d", j.LastSeq())
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if err := j.Append(ctx, []record.Record{dataRec(101, "vda", 0, []byte("x"))}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
	fs.Crash() // everything Append returned for is durable
	j = openT(t, fs)
	defer j.Close()
	if j.LastSeq() != 100 {
		t.Fatalf("after crash LastSeq = %d\n%s", j.LastSeq(), fs)
	}
	if len(j.segs) < 3 {
		t.Fatalf("%d segments; the test wants several", len(j.segs))
	}
	if err := j.Append(ctx, []record.Record{dataRec(101, "vda", 0, []byte("x"))}); err != nil {
		t.Fatal(err)
	}
}

func TestAppendFailures(t *testing.T) {
	ctx := context.Background()
	for _, op := range []vfs.Op{vfs.OpWrite, vfs.OpSync, vfs.OpSyncDir, vfs.OpOpen} {
		for n := 1; n <= 6; n++ {
			fs := vfs.NewCrashFS()
			j := openT(t, fs)
			fs.SetInjector(vfs.FailNth(op, n, errors.New("injected")))
			var acked uint64
			rng := rand.New(rand.NewPCG(uint64(n), 1))
			for s, tries := uint64(1), 0; s <= 60 && tries < 1000; tries++ {
				k := 1 + rng.IntN(5)
				var b []record.Record
				for i := range k {
					b = append(b, dataRec(s+uint64(i), "vda", uint64(rng.IntN(1<<16)), bytes.Repeat([]byte{byte(s)}, 300+rng.IntN(900))))
				}
				if err := j.Append(ctx, b); err == nil {
					s += uint64(k)
					acked = s - 1
				} else if errors.Is(err, ErrBroken) {
					break
				} else {
					// A failure may leave a durable prefix of the batch.
					s = j.LastSeq() + 1
					acked = s - 1
				}
			}
			fs.SetInjector(nil)
			j.Close()
			fs.Crash()
			j = openT(t, fs)
			if got := j.LastSeq(); got < acked {
				t.Fatalf("%v #%d: LastSeq %d after crash, %d acknowledged", op, n, got, acked)
			}
			j.Close()
		}
	}
}

func newFS() *vfs.MemFS { return vfs.NewCrashFS() }
