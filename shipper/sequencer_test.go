package shipper

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/nbd"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/shipper/spool"
)

func openSpool(t *testing.T, maxBytes int64) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(context.Background(), spool.Options{
		Dir: t.TempDir(), Group: "vm1", MaxBytes: maxBytes, SegmentBytes: 64 << 10,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	return sp
}

// TestConcurrentDisksOneOrder: writers on two disks of a group, each on its
// own goroutine, produce one gap-free seq order in which each disk's writes
// keep their own order and contents, with capture times that never go back.
func TestConcurrentDisksOneOrder(t *testing.T) {
	sp := openSpool(t, 0)
	seq := NewSequencer(sp)
	const perDisk = 2000
	disks := []string{"vda", "vdb"}
	ctx := context.Background()
	var wg sync.WaitGroup
	for d, name := range disks {
		e, err := seq.Export(name, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := make([]byte, 512)
			for i := 0; i < perDisk; i++ {
				binary.LittleEndian.PutUint64(p, uint64(i))
				p[8] = byte(d)
				var err error
				if i%10 == 9 {
					err = e.Zero(ctx, int64(i)*512, 512, nbd.ZeroFlags{Fast: true})
				} else {
					err = e.WriteAt(ctx, p, int64(i)*512)
				}
				if err != nil {
					t.Errorf("%s write %d: %v", name, i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	c := sp.Cursor(1)
	defer c.Close()
	next := map[string]uint64{}
	var lastTime int64
	for want := uint64(1); ; want++ {
		r, err := c.Next()
		if err == io.EOF {
			if want-1 != 2*perDisk {
				t.Fatalf("%d records, want %d", want-1, 2*perDisk)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if r.Seq != want {
			t.Fatalf("seq %d, want %d", r.Seq, want)
		}
		if r.Time < lastTime {
			t.Fatalf("seq %d: capture time went back", r.Seq)
		}
		lastTime = r.Time
		i := next[r.Disk]
		next[r.Disk]++
		if r.Offset != i*512 || r.Length != 512 {
			t.Fatalf("seq %d: %s write %d at [%d,+%d)", r.Seq, r.Disk, i, r.Offset, r.Length)
		}
		switch {
		case i%10 == 9:
			if r.Kind != record.Zero {
				t.Fatalf("seq %d: kind %v, want zero", r.Seq, r.Kind)
			}
		case r.Kind != record.Data || binary.LittleEndian.Uint64(r.Payload) != i || disks[r.Payload[8]] != r.Disk:
			t.Fatalf("seq %d: %s write %d has the wrong contents", r.Seq, r.Disk, i)
		}
	}
	// A new sequencer on the same spool continues the order.
	seq2 := NewSequencer(sp)
	if s, err := seq2.Mark(record.CrashConsistent, "after"); err != nil || s != 2*perDisk+1 {
		t.Fatalf("Mark = %d, %v", s, err)
	}
}

func TestFullSpoolIsEIOAtOnce(t *testing.T) {
	sp := openSpool(t, 64<<10)
	seq := NewSequencer(sp)

	e, _ := seq.Export("vda", 1<<30)
	p := make([]byte, 4096)
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		err = e.WriteAt(context.Background(), p, 0)
	}
	if !errors.Is(err, nbd.EIO) || !errors.Is(err, spool.ErrFull) {
		t.Fatalf("write to a full spool: %v, want EIO wrapping ErrFull", err)
	}
	var errno nbd.Errno
	if !errors.As(err, &errno) || errno != nbd.EIO {
		t.Fatalf("the NBD server would send %v", errno)
	}
	for i := 0; i < 1000 && err != nil; i++ { // small records may still fit
		err = e.Zero(context.Background(), 0, 4096, nbd.ZeroFlags{})
	}
	for i := 0; i < 1000 && err == nil; i++ {
		err = e.Zero(context.Background(), 0, 4096, nbd.ZeroFlags{})
	}
	start := time.Now()
	if err := e.Zero(context.Background(), 0, 4096, nbd.ZeroFlags{}); !errors.Is(err, nbd.EIO) {
		t.Fatalf("zero to a full spool: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("a full spool held a write for %v", d)
	}
	if _, err := seq.Mark(record.UserBookmark, "x"); !errors.Is(err, spool.ErrFull) {
		t.Fatalf("Mark on a full spool: %v", err)
	}
	// Acknowledging frees room and the seq order goes on without a gap.
	// (The resync bracket the first refusal opened is still open, so no
	// second resync-begin marker is due.)
	if err := sp.Ack(sp.LastSeq()); err != nil {
		t.Fatal(err)
	}
	last := sp.LastSeq()
	if err := e.WriteAt(context.Background(), p, 0); err != nil {
		t.Fatal(err)
	}
	if sp.LastSeq() != last+1 {
		t.Fatalf("LastSeq %d after %d", sp.LastSeq(), last)
	}
}

// readAll returns the records from seq from on.
func readAll(t *testing.T, sp *spool.Spool, from uint64) []record.Record {
	t.Helper()
	c := sp.Cursor(from)
	defer c.Close()
	var out []record.Record
	for {
		r, err := c.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		r.Payload = nil
		out = append(out, r)
	}
}

// A refused write opens a resync bracket by itself; the filter's own
// ResyncBegin then joins it rather than writing a second one, and only
// ResyncEnd closes it.
func TestResyncBrackets(t *testing.T) {
	sp := openSpool(t, 64<<10)
	seq := NewSequencer(sp)
	vda, _ := seq.Export("vda", 1<<30)
	vdb, _ := seq.Export("vdb", 1<<30)
	ctx := context.Background()
	p := make([]byte, 4096)
	b1, err := seq.MarkDisk(record.ResyncBegin, "vdb")
	if err != nil {
		t.Fatal(err)
	}
	if b2, _ := seq.MarkDisk(record.ResyncBegin, "vdb"); b2 != b1 {
		t.Fatalf("second ResyncBegin of an open bracket wrote seq %d, want the open one %d", b2, b1)
	}
	if _, err := seq.MarkDisk(record.ResyncEnd, "vdb"); err != nil {
		t.Fatal(err)
	}
	if b3, _ := seq.MarkDisk(record.ResyncBegin, "vdb"); b3 <= b1 {
		t.Fatalf("ResyncBegin after ResyncEnd returned %d, want a new marker after %d", b3, b1)
	}
	seq.MarkDisk(record.ResyncEnd, "vdb")

	for err == nil {
		err = vda.WriteAt(ctx, p, 0)
	}
	if err := sp.Ack(sp.LastSeq()); err != nil {
		t.Fatal(err)
	}
	last := sp.LastSeq()
	if err := vdb.WriteAt(ctx, p, 0); err != nil { // another disk's write
		t.Fatal(err)
	}
	got := readAll(t, sp, last+1)
	if len(got) != 2 || got[0].Marker != record.ResyncBegin || got[0].Disk != "vda" || got[1].Disk != "vdb" {
		t.Fatalf("the owed marker of vda must precede any later record: %+v", got)
	}
	if s, _ := seq.MarkDisk(record.ResyncBegin, "vda"); s != last+1 {
		t.Fatalf("filter's ResyncBegin after a refusal: seq %d, want the owed marker %d", s, last+1)
	}
	// A write refused while the bracket is open (QEMU will re-copy it)
	// keeps the bracket from closing until the job has converged again.
	for err == nil {
		err = vda.WriteAt(ctx, p, 0)
	}
	if err := sp.Ack(sp.LastSeq()); err != nil {
		t.Fatal(err)
	}
	if _, err := seq.MarkDisk(record.ResyncEnd, "vda"); !errors.Is(err, ErrResyncPending) {
		t.Fatalf("ResyncEnd right after a refused write: %v, want ErrResyncPending", err)
	}
	if _, err := seq.MarkDisk(record.ResyncEnd, "vda"); err != nil {
		t.Fatalf("ResyncEnd once converged again: %v", err)
	}
	if _, err := seq.MarkDisk(record.UserBookmark, "../x"); err == nil {
		t.Fatal("a path-like disk name was accepted")
	}
}

func TestBoundsAndNames(t *testing.T) {
	sp := openSpool(t, 0)
	seq := NewSequencer(sp)
	for _, bad := range []string{"", "..", "a/b", "vda\x00"} {
		if _, err := seq.Export(bad, 1); err == nil {
			t.Errorf("Export(%q) succeeded", bad)
		}
	}
	e, _ := seq.Export("vda", 8192)
	ctx := context.Background()
	if err := e.WriteAt(ctx, make([]byte, 512), 8192-256); !errors.Is(err, nbd.ENOSPC) {
		t.Errorf("write past the end: %v", err)
	}
	if err := e.Zero(ctx, -1, 1, nbd.ZeroFlags{}); !errors.Is(err, nbd.ENOSPC) {
		t.Errorf("zero at a negative offset: %v", err)
	}
	if err := e.Trim(ctx, 4096, 1<<62); !errors.Is(err, nbd.EINVAL) {
		t.Errorf("trim past the end: %v", err)
	}
	if sp.LastSeq() != 0 {
		t.Fatalf("rejected requests were recorded: LastSeq %d", sp.LastSeq())
	}
	if err := e.WriteAt(ctx, make([]byte, 512), 8192-512); err != nil {
		t.Fatal(err)
	}
	if err := e.Trim(ctx, 0, 8192); err != nil {
		t.Fatal(err)
	}
	if err := e.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if st := sp.Stats(); st.Unsynced != 0 || st.Records != 2 {
		t.Fatalf("after Flush: %+v", st)
	}
}

func TestWriteAtDoesNotAllocate(t *testing.T) {
	sp := openSpool(t, 0)
	e, _ := NewSequencer(sp).Export("vda", 1<<30)
	p := make([]byte, 4096)
	ctx := context.Background()
	if a := testing.AllocsPerRun(200, func() {
		if err := e.WriteAt(ctx, p, 4096); err != nil {
			t.Fatal(err)
		}
	}); a != 0 {
		t.Fatalf("WriteAt allocates %v times per call", a)
	}
}

// TestRefusalsLoggedOncePerRun: a full spool (or a failed disk) refusing
// every write is in the log once, naming why, and its end once with the
// number refused: not once per write, and not silent.
func TestRefusalsLoggedOncePerRun(t *testing.T) {
	sp := openSpool(t, 64<<10)
	seq := NewSequencer(sp)
	var logged bytes.Buffer
	seq.SetLogger(slog.New(slog.NewTextHandler(&logged, nil)))
	e, _ := seq.Export("vda", 1<<30)
	p := make([]byte, 4096)
	for err := error(nil); err == nil; {
		err = e.WriteAt(context.Background(), p, 0)
	}
	for i := 0; i < 99; i++ {
		if err := e.WriteAt(context.Background(), p, 0); err == nil {
			t.Fatal("a full spool took a 4 KiB write")
		}
	}
	if err := sp.Ack(sp.LastSeq()); err != nil {
		t.Fatal(err)
	}
	if err := e.WriteAt(context.Background(), p, 0); err != nil {
		t.Fatal(err)
	}
	log := logged.String()
	if n := strings.Count(log, "refuses writes"); n != 1 || !strings.Contains(log, "full") {
		t.Fatalf("want one log line naming the full spool, got %d:\n%s", n, log)
	}
	if n := strings.Count(log, "takes writes again"); n != 1 || !strings.Contains(log, "refused=100") {
		t.Fatalf("want one log line when writes are taken again, with refused=100, got %d:\n%s", n, log)
	}
}
