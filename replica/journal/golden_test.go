package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/record/logfile"
	"github.com/qcdp/qcdp/vfs"
)

// testdata/golden-v1 is a journal directory written by file version 1,
// index version 1 and manifest version 1: segments with their sealed index
// files, two layers made by a Compact with a retention window (the base,
// kept as the long-term point of a bookmark, and a fold boundary), and the
// MANIFEST. It has no ACKED file: it was written before the acknowledged
// mark existed. testdata/corrupt-layer-v1 has one bit of a layer record
// flipped, testdata/corrupt-idx-v1 one bit of a segment index and one of a
// layer index.
//
// testdata/golden-v2 is the same journal written by the same calls once
// the mark existed: the same files and an ACKED file (version 1).
// testdata/corrupt-tail-v2 has one bit flipped 100 bytes before the end of
// its newest segment, testdata/cut-tail-v2 that segment cut by 10 bytes
// (both acknowledged), testdata/corrupt-acked-v2 one bit flipped in the
// slot of ACKED holding the newest mark.
//
// Never edit them: a new layout takes a new version and a new fixture, and
// these must still open. QCDP_WRITE_GOLDEN=1 writes the fixtures that are
// missing; remove one first to write it again on purpose (golden-v1 cannot
// be written again: the current code writes ACKED).

const (
	goldenDir        = "testdata/golden-v1"
	goldenLayerDir   = "testdata/corrupt-layer-v1"
	goldenIdxDir     = "testdata/corrupt-idx-v1"
	goldenV2Dir      = "testdata/golden-v2"
	goldenFlipDir    = "testdata/corrupt-tail-v2"
	goldenCutDir     = "testdata/cut-tail-v2"
	goldenAckedDir   = "testdata/corrupt-acked-v2"
	goldenGroup      = "db-prod"
	goldenSegBytes   = 1024
	goldenT0         = int64(1_700_000_000) * 1e9
	goldenLastSeq    = 18
	goldenFirstInWin = 8 // first retained seq after the Compact
)

func goldenTime(seq uint64) int64 { return goldenT0 + int64(seq)*1e9 }

var goldenRetention = Retention{Window: 10 * time.Second, Bookmarks: time.Hour}

// goldenRecords are the records written to the fixture; the Compact ran at
// the time of the last one, so seqs 1..7 live in the layers.
func goldenRecords() []record.Record {
	data := func(disk string, off uint64, n int, c byte) record.Record {
		return record.Record{Kind: record.Data, Disk: disk, Offset: off, Length: uint64(n), Payload: bytes.Repeat([]byte{c}, n)}
	}
	mark := func(m record.MarkerKind, disk, name string) record.Record {
		return record.Record{Kind: record.Marker, Marker: m, Disk: disk, Name: name}
	}
	recs := []record.Record{
		data("vda", 0, 1024, 'a'),                       // 1
		data("vdb", 0, 512, 'b'),                        // 2
		mark(record.SyncComplete, "", ""),               // 3
		data("vda", 512, 512, 'c'),                      // 4
		mark(record.UserBookmark, "", "nightly"),        // 5
		data("vda", 1024, 512, 'd'),                     // 6
		{Kind: record.Zero, Disk: "vda", Length: 256},   // 7
		data("vdb", 256, 512, 'e'),                      // 8
		{Kind: record.Trim, Disk: "vdb", Length: 128},   // 9
		mark(record.CrashConsistent, "", "cc-10"),       // 10
		data("vda", 256, 100, 'f'),                      // 11
		mark(record.UserBookmark, "", "before upgrade"), // 12
		data("vda", 2048, 512, 'g'),                     // 13
		mark(record.ResyncBegin, "vdb", ""),             // 14
		data("vdb", 0, 512, 'h'),                        // 15
		mark(record.ResyncEnd, "vdb", ""),               // 16
		data("vda", 0, 16, 'i'),                         // 17
		mark(record.AppConsistent, "", "fsfreeze"),      // 18
	}
	for i := range recs {
		recs[i].Seq = uint64(i + 1)
		recs[i].Time = goldenTime(uint64(i + 1))
	}
	return recs
}

// goldenImages are the exact bytes of every disk at the points the test
// opens views of.
func goldenImages() map[uint64]map[string][]byte {
	img := func(parts ...any) []byte {
		var b []byte
		for i := 0; i < len(parts); i += 2 {
			b = append(b, bytes.Repeat([]byte{parts[i].(byte)}, parts[i+1].(int))...)
		}
		return b
	}
	return map[uint64]map[string][]byte{
		5: { // the long-term point, all in the base layer
			"vda": img(byte('a'), 512, byte('c'), 512),
			"vdb": img(byte('b'), 512),
		},
		12: { // both layers and the window's records
			"vda": img(byte(0), 256, byte('f'), 100, byte('a'), 156, byte('c'), 512, byte('d'), 512),
			"vdb": img(byte(0), 128, byte('b'), 128, byte('e'), 512),
		},
		18: { // the newest point
			"vda": img(byte('i'), 16, byte(0), 240, byte('f'), 100, byte('a'), 156, byte('c'), 512, byte('d'), 512, byte(0), 512, byte('g'), 512),
			"vdb": img(byte('h'), 512, byte('e'), 256),
		},
	}
}

func TestGoldenWrite(t *testing.T) {
	if os.Getenv("QCDP_WRITE_GOLDEN") != "1" {
		t.Skip("QCDP_WRITE_GOLDEN=1 writes the fixtures that are missing")
	}
	ctx := context.Background()
	if _, err := os.Stat(goldenDir); err != nil {
		t.Fatalf("%v: it was written before ACKED existed; restore it from version control", err)
	}
	if _, err := os.Stat(goldenV2Dir); errors.Is(err, os.ErrNotExist) {
		j, err := Open(ctx, goldenOptions(goldenV2Dir))
		if err != nil {
			t.Fatal(err)
		}
		recs := goldenRecords()
		for k := 0; k < len(recs); k += 3 {
			if err := j.Append(ctx, recs[k:min(k+3, len(recs))]); err != nil {
				t.Fatal(err)
			}
		}
		if err := j.Compact(ctx, time.Unix(0, goldenTime(goldenLastSeq))); err != nil {
			t.Fatal(err)
		}
		if err := j.Close(); err != nil {
			t.Fatal(err)
		}
	}
	corrupt := func(dst, src string, edit func(dir string)) {
		if _, err := os.Stat(dst); err == nil {
			return
		}
		tmp := copyGoldenDir(t, src)
		edit(tmp)
		if err := os.Rename(tmp, dst); err != nil {
			t.Fatal(err)
		}
	}
	corrupt(goldenLayerDir, goldenDir, func(dir string) { flipBit(t, filepath.Join(dir, goldenLayerFile), goldenLayerFlip) })
	corrupt(goldenIdxDir, goldenDir, func(dir string) {
		flipBit(t, filepath.Join(dir, goldenIdxSeg), goldenIdxFlip)
		flipBit(t, filepath.Join(dir, goldenLayerFile+idxSuffix), goldenIdxFlip)
	})
	corrupt(goldenFlipDir, goldenV2Dir, func(dir string) {
		flipBit(t, filepath.Join(dir, goldenNewestSeg), goldenNewestSize-100)
	})
	corrupt(goldenCutDir, goldenV2Dir, func(dir string) {
		if err := os.Truncate(filepath.Join(dir, goldenNewestSeg), goldenNewestSize-10); err != nil {
			t.Fatal(err)
		}
	})
	corrupt(goldenAckedDir, goldenV2Dir, func(dir string) { flipBit(t, filepath.Join(dir, ackedName), goldenAckedFlip) })
}

func goldenOptions(dir string) Options {
	return Options{Dir: dir, Group: goldenGroup, SegmentBytes: goldenSegBytes, Retention: goldenRetention, Logger: quiet()}
}

func flipBit(t testing.TB, path string, off int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[off] ^= 0x10
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// copyGoldenDir copies a fixture directory into a temporary one, so that
// opening it cannot change the fixture.
func copyGoldenDir(t testing.TB, src string) string {
	t.Helper()
	names, err := os.ReadDir(src)
	if err != nil {
		t.Fatalf("%v (QCDP_WRITE_GOLDEN=1 writes missing fixtures)", err)
	}
	dst := filepath.Join(t.TempDir(), goldenGroup)
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(src, n.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, n.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// readDirFiles returns every file of dir by name.
func readDirFiles(t testing.TB, dir string) map[string][]byte {
	t.Helper()
	names, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[n.Name()] = b
	}
	return out
}

// The bits the corrupt fixtures flip: in the payload of the first record of
// the base layer (its frame at offset 27; goldenLayerFlip is 18 bytes into
// its payload, of vda at seq 5), and 30 bytes into the index of a sealed
// segment and into the base layer's index.
const (
	goldenLayerFile = "00000000000000000001.lay"
	goldenLayerFlip = 100
	goldenIdxSeg    = "00000000000000000009.seg.idx"
	goldenIdxFlip   = 30
)

// The newest segment of the fixtures and its size; goldenAckedFlip is a
// byte of the seq in the ACKED slot holding golden-v2's newest mark.
const (
	goldenNewestSeg  = "00000000000000000016.seg"
	goldenNewestSize = 213
	goldenAckedFlip  = ackedSlotLen + 8
)

// goldenFiles are the fixture's files and sizes.
var goldenFiles = map[string]int{
	"MANIFEST":                     136,
	"00000000000000000001.lay":     1673,
	"00000000000000000001.lay.idx": 132,
	"00000000000000000002.lay":     649,
	"00000000000000000002.lay.idx": 128,
	"00000000000000000005.seg":     1275,
	"00000000000000000005.seg.idx": 231,
	"00000000000000000009.seg":     1549,
	"00000000000000000009.seg.idx": 381,
	"00000000000000000016.seg":     213,
}

// goldenManifest is what the fixture's MANIFEST says.
var goldenManifest = &manifest{
	gen: 1, first: goldenFirstInWin, nextID: 3,
	state: map[string]uint8{"vda": stSynced, "vdb": stSynced},
	layers: []layerRef{
		{id: 1, from: 0, to: 5, time: goldenTime(5), marker: record.UserBookmark, name: "nightly", kept: true, valid: true},
		{id: 2, from: 5, to: 7, time: goldenTime(7), valid: true},
	},
}

// goldenIndexes are what some of the fixture's index files say (hlen is
// derived, not stored).
var goldenIndexes = map[string]*idxFile{
	"00000000000000000001.lay.idx": {kind: idxKindLayer, covered: 1673, disks: []string{"vda", "vdb"}, entries: []entry{
		{seq: 4, time: goldenTime(4), off: 0, length: 1024, pos: 27, disk: 0, kind: record.Data, hlen: 55},
		{seq: 2, time: goldenTime(2), off: 0, length: 512, pos: 1106, disk: 1, kind: record.Data, hlen: 55},
	}},
	"00000000000000000009.seg.idx": {kind: idxKindSeg, covered: 1549, disks: []string{"vdb", "vda"}, entries: []entry{
		{seq: 9, time: goldenTime(9), off: 0, length: 128, pos: 27, disk: 0, kind: record.Trim, hlen: 55},
		{seq: 10, time: goldenTime(10), pos: 82, disk: noDisk, kind: record.Marker, marker: record.CrashConsistent, hlen: 57},
		{seq: 11, time: goldenTime(11), off: 256, length: 100, pos: 139, disk: 1, kind: record.Data, hlen: 55},
		{seq: 12, time: goldenTime(12), pos: 294, disk: noDisk, kind: record.Marker, marker: record.UserBookmark, hlen: 66},
		{seq: 13, time: goldenTime(13), off: 2048, length: 512, pos: 360, disk: 1, kind: record.Data, hlen: 55},
		{seq: 14, time: goldenTime(14), pos: 927, disk: 0, kind: record.Marker, marker: record.ResyncBegin, hlen: 55},
		{seq: 15, time: goldenTime(15), off: 0, length: 512, pos: 982, disk: 0, kind: record.Data, hlen: 55},
	}, names: map[uint64]string{10: "cc-10", 12: "before upgrade"}},
}

// goldenMarks are what the slots of golden-v2's ACKED say: the mark of
// the Append of seqs 13..15, then of 16..18.
var goldenMarks = [2]mark{{seq: 15, seg: 9, end: 1549}, {seq: 18, seg: 16, end: goldenNewestSize}}

// goldenMark is the mark of the fixtures' journal once opened.
var goldenMark = mark{seq: goldenLastSeq, seg: 16, end: goldenNewestSize}

// TestGoldenFormats decodes the fixtures' manifest, index and ACKED files
// and encodes them back byte for byte.
func TestGoldenFormats(t *testing.T) {
	for _, fixture := range []string{goldenDir, goldenV2Dir} {
		t.Run(filepath.Base(fixture), func(t *testing.T) { checkGoldenFormats(t, fixture) })
	}
}

func checkGoldenFormats(t *testing.T, fixture string) {
	files := readDirFiles(t, fixture)
	got := map[string]int{}
	for n, b := range files {
		got[n] = len(b)
	}
	want := maps.Clone(goldenFiles)
	if fixture == goldenV2Dir {
		want[ackedName] = 2 * ackedSlotLen
		b := files[ackedName]
		for i, wm := range goldenMarks {
			slot := b[i*ackedSlotLen : (i+1)*ackedSlotLen]
			m, err := decodeMarkSlot(goldenGroup, slot)
			if err != nil || m != wm {
				t.Fatalf("ACKED slot %d: %+v, %v, want %+v", i, m, err, wm)
			}
			enc := markSlot(goldenGroup, m)
			if !bytes.Equal(enc, slot) {
				t.Fatalf("ACKED slot %d no longer encodes to the fixture's bytes", i)
			}
		}
		if rm, slot, st, err := readAcked(vfs.Default, filepath.Join(fixture, ackedName), goldenGroup); err != nil || rm != goldenMarks[1] || slot != 1 || st != ackExact {
			t.Fatalf("readAcked: %+v slot %d state %d, %v", rm, slot, st, err)
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("files %v\nwant %v", got, want)
	}
	m, err := decodeManifest(goldenGroup, files[manifestName])
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(m, goldenManifest) {
		t.Fatalf("manifest %+v\nwant %+v", m, goldenManifest)
	}
	if !bytes.Equal(encodeManifest(goldenGroup, m), files[manifestName]) {
		t.Fatal("the manifest no longer encodes to the fixture's bytes")
	}
	for n, b := range files {
		if !strings.HasSuffix(n, idxSuffix) {
			continue
		}
		x, err := decodeIndex(b)
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		if x.covered != int64(len(files[strings.TrimSuffix(n, idxSuffix)])) {
			t.Fatalf("%s covers %d bytes of %d", n, x.covered, len(files[strings.TrimSuffix(n, idxSuffix)]))
		}
		if want, ok := goldenIndexes[n]; ok && !reflect.DeepEqual(x, want) {
			t.Fatalf("%s: %+v\nwant %+v", n, x, want)
		}
		if !bytes.Equal(encodeIndex(x), b) {
			t.Fatalf("%s no longer encodes to the fixture's bytes", n)
		}
	}
}

// TestGoldenJournal opens a copy of each fixture with the current code,
// checks its points, views and integrity, and that Open used every file as
// it is (an index it could not read would have been written again). The
// only file Open writes is ACKED: golden-v1 has none, and gets one naming
// its newest record; golden-v2's older slot is written again with the
// newest mark.
func TestGoldenJournal(t *testing.T) {
	for _, fixture := range []string{goldenDir, goldenV2Dir} {
		t.Run(filepath.Base(fixture), func(t *testing.T) {
			dir := copyGoldenDir(t, fixture)
			checkGoldenJournal(t, dir)
			checkGoldenFiles(t, dir, fixture, encodeAcked(goldenGroup, goldenMark))
		})
	}
}

// checkGoldenFiles checks that the files of dir are those of fixture, with
// acked as the ACKED file.
func checkGoldenFiles(t *testing.T, dir, fixture string, acked []byte) {
	t.Helper()
	got, want := readDirFiles(t, dir), readDirFiles(t, fixture)
	want[ackedName] = acked
	if !reflect.DeepEqual(got, want) {
		for n := range want {
			if !bytes.Equal(got[n], want[n]) {
				t.Errorf("%s differs after Open, Verify and Close", n)
			}
		}
		t.Fatalf("files %d, want %d", len(got), len(want))
	}
}

// checkGoldenJournal opens the journal in dir and checks everything the
// fixture holds.
func checkGoldenJournal(t *testing.T, dir string) {
	t.Helper()
	ctx := context.Background()
	j, err := Open(ctx, goldenOptions(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := j.Close(); err != nil {
			t.Fatal(err)
		}
	}()
	if j.LastSeq() != goldenLastSeq {
		t.Fatalf("LastSeq %d, want %d", j.LastSeq(), goldenLastSeq)
	}

	pts, w, err := j.Points(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantPts := []Point{
		{Seq: 5, Time: time.Unix(0, goldenTime(5)), Kind: record.UserBookmark, Name: "nightly", LongTerm: true},
		{Seq: 10, Time: time.Unix(0, goldenTime(10)), Kind: record.CrashConsistent, Name: "cc-10"},
		{Seq: 12, Time: time.Unix(0, goldenTime(12)), Kind: record.UserBookmark, Name: "before upgrade"},
		{Seq: 18, Time: time.Unix(0, goldenTime(18)), Kind: record.AppConsistent, Name: "fsfreeze"},
	}
	if !reflect.DeepEqual(pts, wantPts) {
		t.Fatalf("points %+v\nwant %+v", pts, wantPts)
	}
	wantWin := Window{FirstSeq: 7, LastSeq: 18, FirstTime: time.Unix(0, goldenTime(7)), LastTime: time.Unix(0, goldenTime(18)), Gaps: []Gap{{14, 15}}}
	if !reflect.DeepEqual(w, wantWin) {
		t.Fatalf("window %+v\nwant %+v", w, wantWin)
	}

	for _, tc := range []struct {
		at   Target
		want Point
	}{
		{Target{Bookmark: "nightly"}, wantPts[0]},
		{Target{Seq: 12}, wantPts[2]},
		{Target{Time: time.Unix(0, goldenTime(18))}, wantPts[3]},
	} {
		v, err := j.View(ctx, tc.at)
		if err != nil {
			t.Fatalf("View(%v): %v", tc.at, err)
		}
		if p := v.Point(); !reflect.DeepEqual(p, tc.want) {
			v.Close()
			t.Fatalf("View(%v) shows %+v, want %+v", tc.at, p, tc.want)
		}
		want := goldenImages()[tc.want.Seq]
		if got := v.Disks(); !reflect.DeepEqual(got, []string{"vda", "vdb"}) {
			v.Close()
			t.Fatalf("view of seq %d: disks %v", tc.want.Seq, got)
		}
		for _, disk := range []string{"vda", "vdb"} {
			d, err := v.Disk(disk)
			if err != nil {
				v.Close()
				t.Fatal(err)
			}
			wantSize := (int64(len(want[disk])) + 511) &^ 511
			if d.Size() != wantSize {
				v.Close()
				t.Fatalf("view of seq %d: %s of %d bytes, want %d", tc.want.Seq, disk, d.Size(), wantSize)
			}
			got := make([]byte, d.Size())
			if err := d.ReadAt(ctx, got, 0); err != nil {
				v.Close()
				t.Fatalf("view of seq %d: read %s: %v", tc.want.Seq, disk, err)
			}
			wantImg := append(bytes.Clone(want[disk]), make([]byte, wantSize-int64(len(want[disk])))...)
			if !bytes.Equal(got, wantImg) {
				v.Close()
				t.Fatalf("view of seq %d: %s reads\n%q\nwant\n%q", tc.want.Seq, disk, got, wantImg)
			}
		}
		if err := v.Close(); err != nil {
			t.Fatal(err)
		}
	}

	rep, err := j.Verify(ctx)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if want := (Report{Segments: 3, Layers: 2, Records: 4 + 7 + 3 + 2 + 2, Bytes: 1275 + 1549 + 213 + 1673 + 649, AckedSeq: goldenLastSeq}); !reflect.DeepEqual(rep, want) {
		t.Fatalf("Verify: %+v, want %+v", rep, want)
	}
}

// TestGoldenCorruptIndex: a damaged index file is a cache miss. Open scans
// the file and writes the index again, byte for byte as it was.
func TestGoldenCorruptIndex(t *testing.T) {
	dir := copyGoldenDir(t, goldenIdxDir)
	for _, n := range []string{goldenIdxSeg, goldenLayerFile + idxSuffix} {
		if b, err := os.ReadFile(filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		} else if _, err := decodeIndex(b); err == nil {
			t.Fatalf("%s: the fixture's index decodes", n)
		}
	}
	checkGoldenJournal(t, dir)
	checkGoldenFiles(t, dir, goldenDir, encodeAcked(goldenGroup, goldenMark))
}

// TestGoldenCorruptLayer: a flipped bit in a layer record is never served
// and Verify names it; without its index, Open refuses the journal.
func TestGoldenCorruptLayer(t *testing.T) {
	ctx := context.Background()
	dir := copyGoldenDir(t, goldenLayerDir)
	where := filepath.Join(dir, goldenLayerFile) + " offset 27"
	j, err := Open(ctx, goldenOptions(dir))
	if err != nil {
		t.Fatal(err) // the index is intact: the record is checked when read
	}
	defer j.Close()
	v, err := j.View(ctx, Target{Bookmark: "nightly"})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	d, err := v.Disk("vda")
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 512)
	if err := d.ReadAt(ctx, p, 0); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), where) {
		t.Fatalf("read of the damaged record: %v, want ErrCorrupt at %q", err, where)
	}
	// The other record of the layer is intact.
	d, err = v.Disk("vdb")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.ReadAt(ctx, p, 0); err != nil || !bytes.Equal(p, goldenImages()[5]["vdb"]) {
		t.Fatalf("read of vdb: %v", err)
	}
	rep, err := j.Verify(ctx)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), where) {
		t.Fatalf("Verify: %v, want ErrCorrupt at %q", err, where)
	}
	if len(rep.Corrupt) != 1 || !strings.Contains(rep.Corrupt[0], where) {
		t.Fatalf("Verify reports %q", rep.Corrupt)
	}

	dir = copyGoldenDir(t, goldenLayerDir)
	if err := os.Remove(filepath.Join(dir, goldenLayerFile+idxSuffix)); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, goldenOptions(dir)); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), filepath.Join(dir, goldenLayerFile)+" offset 27") {
		t.Fatalf("Open with the layer index gone: %v, want ErrCorrupt at %s offset 27", err, goldenLayerFile)
	}
}

// TestGoldenAckedTail: damage to the newest record of golden-v2, which
// Append acknowledged, is corruption naming file, offset and seq; the same
// damage in golden-v1, which has no mark, is a torn tail as it always was.
func TestGoldenAckedTail(t *testing.T) {
	ctx := context.Background()
	recs := goldenRecords()
	start17 := int(logfile.HeaderLen(goldenGroup)) + record.EncodedLen(&recs[15])
	start18 := start17 + record.EncodedLen(&recs[16])
	for _, tc := range []struct {
		fixture string
		where   string
		legacy  uint64 // LastSeq without the mark; 0: corrupt then too
	}{
		{goldenFlipDir, fmt.Sprintf("offset %d, seq 17", start17), 0}, // 100 bytes before the end is inside seq 17
		{goldenCutDir, fmt.Sprintf("offset %d, seq 18", start18), 17},
	} {
		t.Run(filepath.Base(tc.fixture), func(t *testing.T) {
			dir := copyGoldenDir(t, tc.fixture)
			where := filepath.Join(dir, goldenNewestSeg) + " " + tc.where
			j, err := Open(ctx, goldenOptions(dir))
			if err == nil {
				j.Close()
				t.Fatalf("Open accepted damage to acknowledged records: LastSeq %d", j.LastSeq())
			}
			if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), where) {
				t.Fatalf("Open: %v, want ErrCorrupt at %q", err, where)
			}
			// Without the mark (a journal written before it existed), a
			// newest record cut short is a torn tail, as it always was; a
			// damaged record before the newest is corruption either way.
			if err := os.Remove(filepath.Join(dir, ackedName)); err != nil {
				t.Fatal(err)
			}
			j, err = Open(ctx, goldenOptions(dir))
			if tc.legacy == 0 {
				if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), where) {
					t.Fatalf("Open without ACKED: %v, want ErrCorrupt at %q", err, where)
				}
				return
			}
			if err != nil {
				t.Fatalf("Open without ACKED: %v", err)
			}
			defer j.Close()
			if j.LastSeq() != tc.legacy {
				t.Fatalf("Open without ACKED: LastSeq %d, want %d", j.LastSeq(), tc.legacy)
			}
		})
	}
}

// TestGoldenCorruptAcked: a damaged slot of ACKED is what a crash during
// its write leaves; Open takes the other slot as a lower bound, keeps the
// intact records after it, and writes the damaged slot again.
func TestGoldenCorruptAcked(t *testing.T) {
	dir := copyGoldenDir(t, goldenAckedDir)
	if _, _, st, err := readAcked(vfs.Default, filepath.Join(dir, ackedName), goldenGroup); err != nil || st != ackDamaged {
		t.Fatalf("the fixture's ACKED: state %d, %v", st, err)
	}
	checkGoldenJournal(t, dir)
	// The damaged slot 1 is written again with the newest mark, slot 0
	// still says 15: that is golden-v2's ACKED.
	checkGoldenFiles(t, dir, goldenV2Dir, readDirFiles(t, goldenV2Dir)[ackedName])
}
