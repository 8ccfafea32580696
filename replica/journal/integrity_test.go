package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/qcdp/qcdp/record/logfile"
	"io"
	"math/rand/v2"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

func readAll(t testing.TB, fs vfs.FS, path string) []byte {
	t.Helper()
	f, err := fs.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeFile(t testing.TB, fs vfs.FS, path string, b []byte) {
	t.Helper()
	if err := fs.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := fs.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := fs.SyncDir(filepath.Dir(path)); err != nil {
		t.Fatal(err)
	}
}

// copyFS copies the journal directory, with edit applied to one file.
func copyFS(t testing.TB, src vfs.FS, edit func(name string, b []byte) []byte) *vfs.MemFS {
	t.Helper()
	dst := newFS()
	names, err := src.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		if n == overlayDir {
			continue
		}
		b := readAll(t, src, filepath.Join(dir, n))
		if edit != nil {
			b = edit(n, bytes.Clone(b))
		}
		if b != nil {
			writeFile(t, dst, filepath.Join(dir, n), b)
		}
	}
	return dst
}

// TestTruncateEveryOffset cuts the newest segment at every offset. It
// holds 20 acknowledged records, then 10 more whose fsync completed but
// whose mark a crash cut short (never acknowledged). A cut inside what was
// acknowledged is corruption naming the first record lost; a cut past it
// is a torn tail: Open keeps the acknowledged records and only those,
// saves what follows and cuts it off, and the journal takes the next seq.
// A journal written before the mark existed (no ACKED) recovers as it
// always did: every complete record is kept.
func TestTruncateEveryOffset(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(9, 9))
	var recs []record.Record
	for _, r := range genStream(rng, 1, 200, t0) {
		if r.Kind == record.Data && r.Length > 300 {
			continue
		}
		r.Seq = uint64(len(recs) + 1)
		recs = append(recs, r)
		if len(recs) == 30 {
			break
		}
	}
	const acked = 20
	src := newFS()
	j := openT(t, src, func(o *Options) { o.SegmentBytes = 1 << 30 })
	appendAll(t, j, rng, recs[:acked])
	src.SetInjector(func(op vfs.Op, path string) error {
		if op == vfs.OpWrite && filepath.Base(path) == ackedName {
			return errors.New("power lost")
		}
		return nil
	})
	if err := j.Append(ctx, recs[acked:]); !errors.Is(err, ErrBroken) {
		t.Fatalf("Append with the power going before its mark: %v", err)
	}
	src.SetInjector(nil)
	src.Crash()
	j.Close()
	seg := filepath.Join(dir, segName(1))
	whole := readAll(t, src, seg)
	// Where each record starts and ends.
	hl := int(logfile.HeaderLen("g1"))
	starts, ends := []int{}, []int{}
	for i, off := 0, hl; i < len(recs); i++ {
		starts = append(starts, off)
		off += record.EncodedLen(&recs[i])
		ends = append(ends, off)
	}
	if ends[len(recs)-1] != len(whole) {
		t.Fatalf("segment of %d bytes, want %d: the fsync'd records did not survive", len(whole), ends[len(recs)-1])
	}
	markEnd := ends[acked-1]
	for cut := 0; cut <= len(whole); cut++ {
		complete, boundary := uint64(0), cut == hl
		lost := 0 // the first record not wholly kept
		for i := range recs {
			if ends[i] <= cut {
				complete, lost = recs[i].Seq, i+1
			}
			boundary = boundary || ends[i] == cut
		}
		for _, legacy := range []bool{false, true} {
			fs := copyFS(t, src, func(n string, b []byte) []byte {
				switch {
				case n == segName(1):
					return b[:cut]
				case n == ackedName && legacy:
					return nil
				}
				return b
			})
			j, err := Open(ctx, Options{Dir: dir, Group: "g1", FS: fs, Logger: quiet()})
			if !legacy && cut < markEnd {
				where := fmt.Sprintf("%s offset %d, seq %d", seg, starts[lost], recs[lost].Seq)
				if cut < hl {
					where = fmt.Sprintf("%s offset 0, seq 1", seg)
				}
				if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), where) {
					t.Fatalf("cut at %d, inside what was acknowledged: Open: %v, want ErrCorrupt at %q", cut, err, where)
				}
				continue
			}
			if err != nil {
				t.Fatalf("cut at %d (legacy %v): Open: %v", cut, legacy, err)
			}
			want, cutTail := complete, !boundary && cut != hl
			if !legacy {
				want, cutTail = acked, cut > markEnd
			}
			if j.LastSeq() != want {
				t.Fatalf("cut at %d (legacy %v): LastSeq %d, want %d", cut, legacy, j.LastSeq(), want)
			}
			names, _ := fs.ReadDir(dir)
			kept := false
			for _, n := range names {
				kept = kept || strings.Contains(n, tornInfix)
			}
			if kept != cutTail {
				t.Fatalf("cut at %d (legacy %v): tail copy kept %v, files %v", cut, legacy, kept, names)
			}
			if !slices.Contains(names, ackedName) {
				t.Fatalf("cut at %d (legacy %v): no %s after Open: %v", cut, legacy, ackedName, names)
			}
			if _, err := j.Verify(ctx); err != nil {
				t.Fatalf("cut at %d (legacy %v): Verify after recovery: %v", cut, legacy, err)
			}
			next := dataRec(want+1, "vda", 0, []byte("after"))
			if err := j.Append(ctx, []record.Record{next}); err != nil {
				t.Fatalf("cut at %d (legacy %v): Append after recovery: %v", cut, legacy, err)
			}
			if want > 0 && cut%17 == 0 {
				snaps := snapsAt(recs, map[uint64]bool{want: true})
				checkView(t, j, want, snaps[want])
			}
			j.Close()
		}
	}
}

// TestBitFlips flips bits all over the segments and layers, the newest
// records included: Open or Verify reports each, and no view ever serves a
// wrong byte.
func TestBitFlips(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(3, 1))
	recs := genStream(rng, 1, 300, t0)
	ret := Retention{Window: 100 * time.Second, Schedules: []Schedule{{Every: 50 * time.Second, Keep: time.Hour}}}
	src := newFS()
	j := openT(t, src, func(o *Options) { o.Retention = ret })
	appendAll(t, j, rng, recs)
	if err := j.Compact(ctx, at(300)); err != nil {
		t.Fatal(err)
	}
	pts, _, _ := j.Points(ctx)
	j.Close()
	want := map[uint64]bool{}
	for _, p := range pts {
		want[p.Seq] = true
	}
	snaps := snapsAt(recs, want)
	names, _ := src.ReadDir(dir)
	var lastSeg string
	for _, n := range names {
		if _, ok := parseSegName(n); ok {
			lastSeg = n
		}
	}
	flips, detected := 0, 0
	for _, n := range names {
		if !strings.HasSuffix(n, segSuffix) && !strings.HasSuffix(n, layerSuffix) {
			continue
		}
		size := len(readAll(t, src, filepath.Join(dir, n)))
		var at []int
		for pos := rng.IntN(40); pos < size; pos += 1 + rng.IntN(size/6+1) {
			at = append(at, pos)
		}
		if n == lastSeg {
			// The newest records were acknowledged like any other: a flip
			// there is corruption too, never a torn tail.
			at = append(at, size-1, max(0, size-100))
			for range 8 {
				at = append(at, size-1-rng.IntN(min(size, 130<<10)))
			}
		}
		for _, pos := range at {
			bit := byte(1 << rng.IntN(8))
			fs := copyFS(t, src, func(name string, b []byte) []byte {
				if name == n {
					b[pos] ^= bit
				}
				return b
			})
			flips++
			j, err := Open(ctx, Options{Dir: dir, Group: "g1", FS: fs, Logger: quiet(), Retention: ret})
			if err != nil {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("%s byte %d: Open: %v", n, pos, err)
				}
				detected++
				continue
			}
			rep, err := j.Verify(ctx)
			if !errors.Is(err, ErrCorrupt) || len(rep.Corrupt) == 0 {
				t.Fatalf("%s byte %d flipped: Verify = %+v, %v", n, pos, rep, err)
			}
			detected++
			for k := range 4 {
				p := pts[(k*len(pts)/4+rng.IntN(3))%len(pts)]
				v, err := j.View(ctx, Target{Seq: p.Seq})
				if err != nil {
					continue
				}
				for _, disk := range modelDisks {
					d, err := v.Disk(disk)
					if err != nil {
						continue
					}
					buf := make([]byte, d.Size())
					if err := d.ReadAt(ctx, buf, 0); err != nil {
						if !errors.Is(err, ErrCorrupt) {
							t.Fatalf("%s byte %d: read error %v is not ErrCorrupt", n, pos, err)
						}
						continue
					}
					if i := firstDiff(buf, snaps[p.Seq].data[disk][:len(buf)]); i >= 0 {
						t.Fatalf("%s byte %d flipped: view of seq %d disk %s served a wrong byte at %d", n, pos, p.Seq, disk, i)
					}
				}
				v.Close()
			}
			j.Close()
		}
	}
	t.Logf("%d flips, all detected", flips)
	if flips < 50 || detected != flips {
		t.Fatalf("%d flips, %d detected", flips, detected)
	}
}

func TestGroupAndNames(t *testing.T) {
	for _, g := range []string{"", "..", "a/b", "../../etc"} {
		if _, err := Open(context.Background(), Options{Dir: dir, Group: g, FS: newFS()}); err == nil {
			t.Errorf("group %q accepted", g)
		}
	}
	fs := newFS()
	j := openT(t, fs)
	appendAll(t, j, rand.New(rand.NewPCG(1, 1)), []record.Record{dataRec(1, "vda", 0, []byte("x")), markRec(2, record.SyncComplete, "vda", "")})
	v, err := j.View(context.Background(), Target{Seq: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Disk("../vda"); err == nil {
		t.Error("a disk name like a path was accepted")
	}
	v.Close()
	j.Close()
	// A journal of another group is refused.
	_, err = Open(context.Background(), Options{Dir: dir, Group: "other", FS: fs, Logger: quiet()})
	if !errors.Is(err, ErrGroup) {
		t.Fatalf("other group: %v", err)
	}
}

func FuzzIndex(f *testing.F) {
	x := &idxFile{kind: idxKindSeg, covered: 1000, disks: []string{"vda", "vdb"}, names: map[uint64]string{3: "bm"},
		entries: []entry{{seq: 1, off: 4096, length: 512, pos: 30, disk: 0, kind: record.Data}, {seq: 2, disk: noDisk, kind: record.Marker, marker: record.CrashConsistent}, {seq: 3, disk: noDisk, kind: record.Marker, marker: record.UserBookmark}}}
	f.Add(encodeIndex(x))
	x.entries = append(x.entries, entry{seq: 4, length: 40, pos: 200, disk: noDisk, kind: record.Members})
	f.Add(encodeIndex(x))
	x.entries = append(x.entries, entry{seq: 5, length: 90, pos: 300, disk: noDisk, kind: record.Definition})
	x.names[5] = "4c4c4544-0042"
	f.Add(encodeIndex(x))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		x, err := decodeIndex(b)
		if err != nil {
			return
		}
		y, err := decodeIndex(encodeIndex(x))
		if err != nil || !reflect.DeepEqual(x, y) {
			t.Fatalf("re-encoding: %v\n%+v\n%+v", err, x, y)
		}
	})
}

func FuzzManifest(f *testing.F) {
	m := &manifest{gen: 2, first: 11, nextID: 3, state: map[string]uint8{"vda": stSynced},
		layers: []layerRef{{id: 1, from: 0, to: 5, valid: true}, {id: 2, from: 5, to: 10, kept: true, valid: true, marker: record.UserBookmark, name: "x"}}}
	f.Add(encodeManifest("g1", m))
	d1 := newMembership(2, record.Declaration{Disks: []record.Member{{Disk: "vda", Size: 1 << 20, VM: "v", VMName: "web", Target: "vda"}}})
	d2 := newMembership(7, record.Declaration{})
	m.mem, m.layers[0].mem, m.layers[1].mem = d2, d1, d2
	f.Add(encodeManifest("g1", m))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeManifest("g1", b)
		if err != nil {
			return
		}
		if !bytes.Equal(encodeManifest("g1", m), b) {
			t.Fatal("re-encoding differs")
		}
	})
}

// FuzzSegment feeds arbitrary bytes after a valid segment header to the
// recovery scan, with a part of them acknowledged: it must classify them
// (records, torn tail or corruption) without panicking or allocating from a
// length it read, and never keep less than was acknowledged.
func FuzzSegment(f *testing.F) {
	hdr := segFormat.AppendHeader(nil, "g1", 1)
	r1 := dataRec(1, "vda", 0, []byte("hello"))
	r2 := markRec(2, record.UserBookmark, "", "bm")
	f.Add(record.AppendEncode(record.AppendEncode(nil, &r1), &r2), uint16(0))
	f.Add([]byte{0, 0, 0}, uint16(0))
	f.Add(record.AppendEncode(nil, &r1), uint16(20))
	f.Fuzz(func(t *testing.T, body []byte, acked uint16) {
		// acked: how much of the body was acknowledged; only what follows
		// may be a torn tail.
		durable := int64(len(hdr)) + int64(min(int(acked), len(body)))
		for _, tear := range []bool{false, true} {
			fs := newFS()
			path := filepath.Join(dir, segName(1))
			writeFile(t, fs, path, append(bytes.Clone(hdr), body...))
			fl, _ := fs.Open(path)
			sc, err := scanFile(fl, path, int64(len(hdr)+len(body)), segMagic, "g1", 1, tear, durable, func(r *record.Record, pos int64) error {
				if err := r.Validate(); err != nil {
					t.Fatalf("scanned an invalid record: %v", err)
				}
				return nil
			})
			fl.Close()
			if err != nil && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			if err == nil && sc.Torn == nil && sc.End != int64(len(hdr)+len(body)) {
				t.Fatalf("clean scan ends at %d of %d", sc.End, len(hdr)+len(body))
			}
			if sc.Torn != nil && !tear {
				t.Fatal("torn tail where none may be")
			}
			if err == nil && sc.End < durable {
				t.Fatalf("the scan kept %d bytes, but %d were acknowledged", sc.End, durable)
			}
		}
	})
}
