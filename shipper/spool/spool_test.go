package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// genRecord returns a deterministic record for seq: mostly data of varied
// sizes, some zeroes, trims and markers.
func genRecord(seq uint64) record.Record {
	rng := rand.New(rand.NewPCG(seq, 7))
	disk := []string{"vda", "vdb"}[seq%2]
	r := record.Record{Seq: seq, Time: int64(seq) * 1000, Disk: disk}
	switch rng.IntN(10) {
	case 0:
		r.Kind, r.Offset, r.Length = record.Zero, uint64(rng.IntN(64))*512, uint64(1+rng.IntN(16))*512
	case 1:
		r.Kind, r.Offset, r.Length = record.Trim, uint64(rng.IntN(64))*512, 4096
	case 2:
		r.Kind, r.Disk, r.Marker, r.Name = record.Marker, "", record.UserBookmark, fmt.Sprintf("mark-%d", seq)
	default:
		p := make([]byte, 1+rng.IntN(300))
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		r.Kind, r.Offset, r.Length, r.Payload = record.Data, uint64(rng.IntN(1<<20)), uint64(len(p)), p
	}
	return r
}

func sameRecord(a, b record.Record) bool {
	if len(a.Payload) == 0 && len(b.Payload) == 0 {
		a.Payload, b.Payload = nil, nil
	}
	return a.Seq == b.Seq && a.Time == b.Time && a.Kind == b.Kind && a.Disk == b.Disk &&
		a.Offset == b.Offset && a.Length == b.Length && a.Marker == b.Marker && a.Name == b.Name &&
		bytes.Equal(a.Payload, b.Payload)
}

func mustOpen(t testing.TB, opts Options) *Spool {
	t.Helper()
	if opts.Group == "" {
		opts.Group = "g1"
	}
	if opts.Logger == nil {
		opts.Logger = quiet
	}
	s, err := Open(context.Background(), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func appendN(t testing.TB, s *Spool, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		r := genRecord(s.LastSeq() + 1)
		if err := s.Append(&r); err != nil {
			t.Fatalf("Append seq %d: %v", r.Seq, err)
		}
	}
}

// checkAll reads the spool from the start and checks every record is the
// generated one, from first to last.
func checkAll(t testing.TB, s *Spool, first, last uint64) {
	t.Helper()
	c := s.Cursor(first)
	defer c.Close()
	want := first
	for {
		r, err := c.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Next after seq %d: %v", want-1, err)
		}
		if !sameRecord(r, genRecord(want)) {
			t.Fatalf("seq %d: got %+v", want, r)
		}
		want++
	}
	if want != last+1 {
		t.Fatalf("read up to seq %d, want %d", want-1, last)
	}
}

func TestAppendReopen(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, Options{Dir: dir, SegmentBytes: 8 << 10})
	appendN(t, s, 500)
	checkAll(t, s, 1, 500)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, Options{Dir: dir, SegmentBytes: 8 << 10})
	defer s.Close()
	if s.LastSeq() != 500 {
		t.Fatalf("LastSeq after reopen = %d", s.LastSeq())
	}
	if st := s.Stats(); st.Segments < 5 || st.Records != 500 || st.FirstSeq != 1 {
		t.Fatalf("Stats = %+v", st)
	}
	appendN(t, s, 100)
	checkAll(t, s, 1, 600)
	checkAll(t, s, 250, 600)
}

func TestAppendSeqEnforced(t *testing.T) {
	s := mustOpen(t, Options{Dir: t.TempDir()})
	defer s.Close()
	for _, seq := range []uint64{0, 2} {
		r := genRecord(seq)
		if err := s.Append(&r); !errors.Is(err, ErrSeq) {
			t.Fatalf("Append seq %d to an empty spool: %v", seq, err)
		}
	}
	bad := record.Record{Seq: 1, Kind: record.Data, Disk: "../x", Length: 0}
	if err := s.Append(&bad); !errors.Is(err, record.ErrInvalid) {
		t.Fatalf("invalid record: %v", err)
	}
}

func TestGroupMismatch(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, Options{Dir: dir, Group: "g1"})
	appendN(t, s, 3)
	s.Close()
	if _, err := Open(context.Background(), Options{Dir: dir, Group: "g2", Logger: quiet}); !errors.Is(err, ErrGroup) {
		t.Fatalf("Open with another group: %v", err)
	}
	if _, err := Open(context.Background(), Options{Dir: dir, Group: "../g", Logger: quiet}); err == nil {
		t.Fatal("Open with a group name that is a path succeeded")
	}
}

// files returns the contents of every file in dir of fs.
func files(t testing.TB, fs vfs.FS, dir string) map[string][]byte {
	t.Helper()
	names, err := fs.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][]byte{}
	for _, n := range names {
		f, err := fs.Open(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		m[n] = b
	}
	return m
}

func memWith(t testing.TB, dir string, m map[string][]byte) *vfs.MemFS {
	t.Helper()
	fs := vfs.NewMemFS()
	if err := fs.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for n, b := range m {
		f, err := fs.Create(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(b); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	return fs
}

// recordEnds returns the offsets at which each record of a segment ends.
func recordEnds(t testing.TB, seg []byte) (hdrLen int, ends []int) {
	t.Helper()
	h, err := segFormat.ParseHeader(seg)
	if err != nil {
		t.Fatal(err)
	}
	off := int(h.Len)
	for off < len(seg) {
		_, n, err := record.Decode(seg[off:])
		if err != nil {
			t.Fatalf("offset %d: %v", off, err)
		}
		off += n
		ends = append(ends, off)
	}
	return int(h.Len), ends
}

// TestKillEveryOffset simulates a kill -9 (or crash) that cut the last
// segment at every possible offset: every complete record must survive,
// the torn tail must be cut (and kept aside), and appends must go on.
func TestKillEveryOffset(t *testing.T) {
	const dir = "/spool"
	fs := vfs.NewMemFS()
	s := mustOpen(t, Options{Dir: dir, FS: fs, SegmentBytes: 2 << 10})
	appendN(t, s, 40)
	s.Close()
	orig := files(t, fs, dir)
	names, firsts, _ := listSegments(fs, dir)
	lastName := names[len(names)-1]
	lastFirst := firsts[len(firsts)-1]
	seg := orig[lastName]
	hdrLen, ends := recordEnds(t, seg)
	if len(ends) < 2 || len(names) < 3 {
		t.Fatalf("want several segments and records; got %d segments, %d records in the last", len(names), len(ends))
	}
	for cut := 0; cut <= len(seg); cut++ {
		m := map[string][]byte{}
		for n, b := range orig {
			m[n] = b
		}
		m[lastName] = seg[:cut]
		mfs := memWith(t, dir, m)
		s, err := Open(context.Background(), Options{Dir: dir, Group: "g1", FS: mfs, Logger: quiet})
		if err != nil {
			t.Fatalf("cut at %d: Open: %v", cut, err)
		}
		complete := 0
		for _, e := range ends {
			if e <= cut {
				complete++
			}
		}
		want := lastFirst - 1 + uint64(complete)
		if got := s.LastSeq(); got != want {
			t.Fatalf("cut at %d: LastSeq %d, want %d", cut, got, want)
		}
		checkAll(t, s, 1, want)
		clean := cut == hdrLen || (complete > 0 && ends[complete-1] == cut)
		tornKept := false
		for n := range files(t, mfs, dir) {
			if strings.Contains(n, ".torn-") {
				tornKept = true
			}
		}
		if tornKept == clean {
			t.Fatalf("cut at %d: torn tail kept: %v, clean end: %v", cut, tornKept, clean)
		}
		if cut%16 != 0 && !clean { // appending after recovery: a sample is enough
			s.Close()
			continue
		}
		appendN(t, s, 3)
		s.Close()
		s = mustOpen(t, Options{Dir: dir, FS: mfs})
		checkAll(t, s, 1, want+3)
		s.Close()
	}
}

func TestZeroTailIsTorn(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, Options{Dir: dir})
	appendN(t, s, 10)
	s.Close()
	names, _, _ := listSegments(vfs.Default, dir)
	f, _ := os.OpenFile(filepath.Join(dir, names[len(names)-1]), os.O_WRONLY|os.O_APPEND, 0)
	f.Write(make([]byte, 5000))
	f.Close()
	s = mustOpen(t, Options{Dir: dir})
	defer s.Close()
	checkAll(t, s, 1, 10)
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	f.ReadAt(b, off)
	b[0] ^= 0x10
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestCorruptionRefused: a bad record in a middle segment, or followed by
// good records in the last one, is corruption, not a torn tail.
func TestCorruptionRefused(t *testing.T) {
	for _, tc := range []struct {
		name string
		seg  func(n int) int // which segment
		rec  int             // which record in it
	}{
		{"middle segment last record", func(n int) int { return n / 2 }, -1},
		{"middle segment first record", func(n int) int { return n / 2 }, 0},
		{"first segment", func(int) int { return 0 }, 1},
		{"last segment followed by records", func(n int) int { return n - 1 }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := mustOpen(t, Options{Dir: dir, SegmentBytes: 4 << 10})
			appendN(t, s, 100)
			s.Close()
			names, _, _ := listSegments(vfs.Default, dir)
			path := filepath.Join(dir, names[tc.seg(len(names))])
			b, _ := os.ReadFile(path)
			hdrLen, ends := recordEnds(t, b)
			i := tc.rec
			if i < 0 {
				i = len(ends) - 1
			}
			start := hdrLen
			if i > 0 {
				start = ends[i-1]
			}
			flipByte(t, path, int64(start+record.FrameLen+40))
			_, err := Open(context.Background(), Options{Dir: dir, Group: "g1", Logger: quiet})
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Open = %v, want ErrCorrupt", err)
			}
			if !strings.Contains(err.Error(), names[tc.seg(len(names))]) || !strings.Contains(err.Error(), fmt.Sprintf("offset %d", start)) {
				t.Fatalf("error does not name file and offset %d: %v", start, err)
			}
			if _, err := Inspect(context.Background(), dir, InspectOptions{}); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Inspect = %v, want ErrCorrupt", err)
			}
		})
	}
}

// TestCrashKeepsSynced: after a power loss, everything Sync covered is back.
func TestCrashKeepsSynced(t *testing.T) {
	const dir = "/spool"
	fs := vfs.NewCrashFS()
	s := mustOpen(t, Options{Dir: dir, FS: fs, SegmentBytes: 4 << 10})
	appendN(t, s, 100)
	if err := s.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 50) // never synced
	fs.Crash()
	s.Close()
	s = mustOpen(t, Options{Dir: dir, FS: fs})
	defer s.Close()
	if got := s.LastSeq(); got != 100 {
		t.Fatalf("LastSeq after crash = %d, want the 100 synced", got)
	}
	checkAll(t, s, 1, 100)
	appendN(t, s, 5)
	checkAll(t, s, 1, 105)
}

// TestBackgroundSync: the SyncBytes policy fsyncs without Append waiting.
func TestBackgroundSync(t *testing.T) {
	const dir = "/spool"
	fs := vfs.NewCrashFS()
	s := mustOpen(t, Options{Dir: dir, FS: fs, SegmentBytes: 4 << 10, SyncBytes: 1})
	synced := make(chan struct{}, 1000)
	s.afterSync = func() { synced <- struct{}{} }
	appendN(t, s, 1)
	<-synced
	for s.Stats().Unsynced != 0 { // the kick may have come before the append's bytes counted
		appendN(t, s, 0)
		<-synced
	}
	fs.Crash()
	s.Close()
	s = mustOpen(t, Options{Dir: dir, FS: fs})
	defer s.Close()
	checkAll(t, s, 1, 1)
}

func TestFullIsImmediateAndAckFrees(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, Options{Dir: dir, MaxBytes: 16 << 10})
	defer s.Close()
	var err error
	for i := 0; i < 1000 && err == nil; i++ {
		r := genRecord(s.LastSeq() + 1)
		err = s.Append(&r)
	}
	if !errors.Is(err, ErrFull) {
		t.Fatalf("Append never failed with ErrFull: %v", err)
	}
	full := s.LastSeq()
	if st := s.Stats(); st.Bytes > 16<<10 {
		t.Fatalf("retained %d bytes over the bound", st.Bytes)
	}
	start := time.Now()
	r := genRecord(full + 1)
	if err := s.Append(&r); !errors.Is(err, ErrFull) || time.Since(start) > time.Second {
		t.Fatalf("Append on a full spool: %v after %v", err, time.Since(start))
	}
	if err := s.Ack(full); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Bytes != 0 || st.Segments != 0 || st.Acked != full {
		t.Fatalf("Stats after acking everything: %+v", st)
	}
	appendN(t, s, 10)
	checkAll(t, s, full+1, full+10)
	if _, err := s.Cursor(1).Next(); !errors.Is(err, ErrGone) {
		t.Fatalf("cursor at an acknowledged, deleted seq: %v", err)
	}
}

func TestAckDeletesAndSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, Options{Dir: dir, SegmentBytes: 4 << 10})
	appendN(t, s, 200)
	before := s.Stats()
	if err := s.Ack(120); err != nil {
		t.Fatal(err)
	}
	after := s.Stats()
	if after.Segments >= before.Segments || after.Bytes >= before.Bytes || after.FirstSeq > 121 || after.FirstSeq <= 1 {
		t.Fatalf("Ack(120): before %+v after %+v", before, after)
	}
	if err := s.Ack(300); !errors.Is(err, ErrSeq) {
		t.Fatalf("Ack beyond the end: %v", err)
	}
	s.Close()
	s = mustOpen(t, Options{Dir: dir})
	defer s.Close()
	if s.Acked() != 120 || s.LastSeq() != 200 {
		t.Fatalf("after restart acked %d last %d", s.Acked(), s.LastSeq())
	}
	checkAll(t, s, 121, 200)
	if err := s.Ack(200); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = mustOpen(t, Options{Dir: dir})
	if s.LastSeq() != 200 || s.Stats().Segments != 0 {
		t.Fatalf("after acking all and restart: %+v", s.Stats())
	}
	appendN(t, s, 1)
	s.Close()
}

// TestWriteErrors: ENOSPC or EIO in the middle of a write leaves no garbage,
// the spool stays readable and later appends work.
func TestWriteErrors(t *testing.T) {
	for _, errno := range []error{syscall.ENOSPC, syscall.EIO} {
		for _, big := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/big=%v", errno, big), func(t *testing.T) {
				const dir = "/spool"
				fs := vfs.NewMemFS()
				s := mustOpen(t, Options{Dir: dir, FS: fs, SegmentBytes: 64 << 10})
				appendN(t, s, 20)
				fs.SetInjector(vfs.FailNth(vfs.OpWrite, 1, errno))
				r := genRecord(21)
				if big {
					r = record.Record{Seq: 21, Kind: record.Data, Disk: "vda", Length: 100 << 10, Payload: bytes.Repeat([]byte{7}, 100<<10)}
				}
				if err := s.Append(&r); !errors.Is(err, errno) {
					t.Fatalf("Append with injected %v: %v", errno, err)
				}
				fs.SetInjector(nil)
				checkAll(t, s, 1, 20)
				appendN(t, s, 10)
				checkAll(t, s, 1, 30)
				s.Close()
				s = mustOpen(t, Options{Dir: dir, FS: fs})
				defer s.Close()
				checkAll(t, s, 1, 30)
				for n := range files(t, fs, dir) {
					if strings.Contains(n, "torn") {
						t.Fatalf("garbage left behind: %s", n)
					}
				}
			})
		}
	}
}

func TestBrokenWhenCutBackFails(t *testing.T) {
	fs := vfs.NewMemFS()
	s := mustOpen(t, Options{Dir: "/spool", FS: fs})
	defer s.Close()
	appendN(t, s, 5)
	fs.SetInjector(func(op vfs.Op, _ string) error {
		if op == vfs.OpWrite || op == vfs.OpTruncate {
			return syscall.EIO
		}
		return nil
	})
	r := genRecord(6)
	if err := s.Append(&r); !errors.Is(err, ErrBroken) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("Append = %v, want ErrBroken wrapping EIO", err)
	}
	fs.SetInjector(nil)
	if err := s.Append(&r); !errors.Is(err, ErrBroken) {
		t.Fatalf("Append after break = %v", err)
	}
	if err := s.Sync(context.Background()); !errors.Is(err, ErrBroken) {
		t.Fatalf("Sync after break = %v", err)
	}
}

func TestSyncErrorBreaks(t *testing.T) {
	fs := vfs.NewMemFS()
	s := mustOpen(t, Options{Dir: "/spool", FS: fs})
	defer s.Close()
	appendN(t, s, 5)
	fs.SetInjector(vfs.FailNth(vfs.OpSync, 1, syscall.EIO))
	if err := s.Sync(context.Background()); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Sync = %v", err)
	}
	fs.SetInjector(nil)
	r := genRecord(6)
	if err := s.Append(&r); !errors.Is(err, ErrBroken) {
		t.Fatalf("Append after a failed fsync = %v", err)
	}
}

// TestCursorFollowsAppends: a reader keeps up with a writer, segment
// rotations and acknowledgements included, and never sees a partial record.
func TestCursorFollowsAppends(t *testing.T) {
	s := mustOpen(t, Options{Dir: t.TempDir(), SegmentBytes: 4 << 10})
	defer s.Close()
	const n = 3000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < n; i++ {
			r := genRecord(uint64(i + 1))
			if err := s.Append(&r); err != nil {
				t.Errorf("Append: %v", err)
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := s.Cursor(1)
	defer c.Close()
	for want := uint64(1); want <= n; {
		r, err := c.Next()
		if err == io.EOF {
			if err := s.Wait(ctx, want); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if !sameRecord(r, genRecord(want)) {
			t.Fatalf("seq %d: %+v", want, r)
		}
		if want%500 == 0 {
			if err := s.Ack(want - 1); err != nil {
				t.Fatal(err)
			}
		}
		want++
	}
	wg.Wait()
}

func TestInspectAndApply(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, Options{Dir: dir, SegmentBytes: 8 << 10})
	// A reference model of the two disks.
	model := map[string][]byte{"vda": make([]byte, 2<<20), "vdb": make([]byte, 2<<20)}
	size := map[string]int{}
	const n, toSeq = 400, 300
	markers := 0
	for seq := uint64(1); seq <= n; seq++ {
		r := genRecord(seq)
		if err := s.Append(&r); err != nil {
			t.Fatal(err)
		}
		if seq > toSeq {
			continue
		}
		switch r.Kind {
		case record.Data:
			copy(model[r.Disk][r.Offset:], r.Payload)
		case record.Zero, record.Trim:
			clear(model[r.Disk][r.Offset : r.Offset+r.Length])
		case record.Marker:
			markers++
			continue
		}
		size[r.Disk] = max(size[r.Disk], int(r.Offset+r.Length))
	}
	s.Close()
	rep, err := Inspect(context.Background(), dir, InspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Group != "g1" || rep.FirstSeq != 1 || rep.LastSeq != n || rep.Records != n || rep.Torn != "" {
		t.Fatalf("Inspect: %+v", rep)
	}
	out := t.TempDir()
	targets := map[string]string{"vda": filepath.Join(out, "vda.raw")}
	if _, err := Apply(context.Background(), dir, targets, ApplyOptions{ToSeq: toSeq}); !errors.Is(err, ErrUnmapped) {
		t.Fatalf("Apply with vdb unmapped: %v", err)
	}
	if _, err := os.Stat(targets["vda"]); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("a refused Apply created an image")
	}
	targets["vdb"] = filepath.Join(out, "vdb.raw")
	sum, err := Apply(context.Background(), dir, targets, ApplyOptions{ToSeq: toSeq})
	if err != nil {
		t.Fatal(err)
	}
	if sum.LastSeq != toSeq || sum.Records != toSeq || len(sum.Markers) != markers {
		t.Fatalf("summary %+v", sum)
	}
	for disk, path := range targets {
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != size[disk] || !sum.Disks[disk].Created {
			t.Fatalf("%s: size %d, want %d", disk, len(got), size[disk])
		}
		if !bytes.Equal(got, model[disk][:size[disk]]) {
			t.Fatalf("%s differs from the model", disk)
		}
	}
}

func FuzzSegment(f *testing.F) {
	fs := vfs.NewMemFS()
	s := mustOpen(f, Options{Dir: "/s", FS: fs, SegmentBytes: 1 << 10})
	appendN(f, s, 12)
	s.Close()
	for _, b := range files(f, fs, "/s") {
		f.Add(b)
		f.Add(b[:len(b)/2])
	}
	f.Add(segFormat.AppendHeader(nil, "g1", 1))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		fs := memWith(t, "/s", map[string][]byte{segName(1): b})
		s, err := Open(context.Background(), Options{Dir: "/s", Group: "g1", FS: fs, Logger: quiet})
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrGroup) {
				t.Fatalf("Open: unexpected error %v", err)
			}
			return
		}
		defer s.Close()
		last := s.LastSeq()
		c := s.Cursor(0)
		for seq := uint64(1); ; seq++ {
			r, err := c.Next()
			if err == io.EOF {
				if seq != last+1 {
					t.Fatalf("read %d records, LastSeq %d", seq-1, last)
				}
				break
			}
			if err != nil || r.Seq != seq {
				t.Fatalf("Next: %+v %v", r, err)
			}
		}
		r := record.Record{Seq: last + 1, Kind: record.Zero, Disk: "vda", Length: 1}
		if err := s.Append(&r); err != nil {
			t.Fatalf("Append after recovery: %v", err)
		}
	})
}

// TestReopenAfterFailedFsync: a spool broken by a failed fsync is closed
// and reopened in the same process, whose page cache still holds what was
// appended. Whatever the reopened spool says is durable (Sync returns nil,
// nothing unsynced) must survive a power cut.
func TestReopenAfterFailedFsync(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewCrashFS()
	opts := Options{Dir: "/spool", FS: fs}
	s := mustOpen(t, opts)
	appendN(t, s, 10)
	if err := s.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 10)
	fs.SetInjector(vfs.FailNth(vfs.OpSync, 1, syscall.EIO))
	if err := s.Sync(ctx); !errors.Is(err, ErrBroken) {
		t.Fatalf("Sync with a failing fsync: %v, want ErrBroken", err)
	}
	fs.SetInjector(nil)
	s.Close()

	s = mustOpen(t, opts)
	if err := s.Sync(ctx); err != nil {
		t.Fatalf("Sync after reopening: %v", err)
	}
	durable := s.LastSeq()
	if st := s.Stats(); st.Unsynced != 0 || durable != 20 {
		t.Fatalf("reopened: %+v", st)
	}
	s.Close()
	fs.Crash()
	s = mustOpen(t, opts)
	defer s.Close()
	if got := s.LastSeq(); got < durable {
		t.Fatalf("the reopened spool said seq %d was durable; after a power cut it holds %d", durable, got)
	}
	checkAll(t, s, 1, durable)
}

// TestOpenFsyncFails: recovery fsyncs what it keeps before it reports it;
// when that fsync fails, Open fails (it is no corruption) and a later Open
// recovers everything.
func TestOpenFsyncFails(t *testing.T) {
	ctx := context.Background()
	fs := vfs.NewCrashFS()
	opts := Options{Dir: "/spool", FS: fs, Group: "g1", Logger: quiet, SegmentBytes: 4 << 10}
	s := mustOpen(t, opts)
	appendN(t, s, 40) // several segments, none fsync'd
	s.Close()
	for _, op := range []vfs.Op{vfs.OpSync, vfs.OpSyncDir} {
		fs.SetInjector(vfs.FailNth(op, 1, syscall.EIO))
		_, err := Open(ctx, opts)
		fs.SetInjector(nil)
		if !errors.Is(err, syscall.EIO) || errors.Is(err, ErrCorrupt) {
			t.Fatalf("%v failing at Open: %v, want EIO", op, err)
		}
	}
	s = mustOpen(t, opts)
	s.Close()
	fs.Crash()
	s = mustOpen(t, opts)
	defer s.Close()
	if s.LastSeq() != 40 {
		t.Fatalf("after a power cut LastSeq %d, want the 40 the reopen made durable", s.LastSeq())
	}
	checkAll(t, s, 1, 40)
}
