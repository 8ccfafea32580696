package journal

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/record/logfile"
)

// testdata/golden-v3 is a journal whose host declared its membership:
// Members records in its segments (in sealed segments' index files too),
// and a Compact that folded two declarations into long-term layers, so its
// MANIFEST is version 2 with a table of declarations. Never edit it; a
// new layout takes a new fixture. QCDP_WRITE_GOLDEN=1 writes it when it is
// missing.
const goldenV3Dir = "testdata/golden-v3"

var goldenV3Retention = Retention{Window: 6 * time.Second, Bookmarks: time.Hour,
	Schedules: []Schedule{{Every: time.Hour, Keep: 24 * time.Hour}}}

var (
	gvda = record.Member{Disk: "vda", Size: 4096, VM: "6b1f8d2e-vm", VMName: "db-1", Target: "vda"}
	gvdb = record.Member{Disk: "vdb", Size: 1024, VM: "6b1f8d2e-vm", VMName: "db-1", Target: "vdb"}
	gvdc = record.Member{Disk: "vdc", Size: 512, VM: "77", VMName: "cache", Target: "scsi0"}
)

func goldenV3Records(t testing.TB) []record.Record {
	data := func(disk string, off uint64, n int, c byte) record.Record {
		return record.Record{Kind: record.Data, Disk: disk, Offset: off, Length: uint64(n), Payload: bytes.Repeat([]byte{c}, n)}
	}
	mark := func(m record.MarkerKind, disk, name string) record.Record {
		return record.Record{Kind: record.Marker, Marker: m, Disk: disk, Name: name}
	}
	decl := func(ms ...record.Member) record.Record {
		r, err := record.MembersRecord(record.Declaration{Disks: ms})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	recs := []record.Record{
		decl(gvda, gvdb),                           // 1
		data("vda", 0, 1024, 'a'),                  // 2
		data("vdb", 0, 512, 'b'),                   // 3
		mark(record.SyncComplete, "vdb", ""),       // 4: vda not in sync yet
		data("vda", 1024, 512, 'c'),                // 5
		mark(record.SyncComplete, "vda", ""),       // 6: the first point
		mark(record.UserBookmark, "", "nightly"),   // 7
		decl(gvda, gvdb, gvdc),                     // 8: vdc joins, not in sync
		data("vdc", 0, 512, 'd'),                   // 9
		mark(record.SyncComplete, "vdc", ""),       // 10
		mark(record.CrashConsistent, "", "cc-11"),  // 11
		data("vdb", 512, 512, 'e'),                 // 12
		decl(gvda, gvdc),                           // 13: vdb leaves
		data("vda", 0, 16, 'f'),                    // 14
		mark(record.ResyncBegin, "vda", ""),        // 15
		data("vda", 2048, 512, 'g'),                // 16
		mark(record.ResyncEnd, "vda", ""),          // 17
		mark(record.AppConsistent, "", "fsfreeze"), // 18
	}
	for i := range recs {
		recs[i].Seq = uint64(i + 1)
		recs[i].Time = goldenTime(uint64(i + 1))
	}
	return recs
}

func goldenV3Options(dir string) Options {
	return Options{Dir: dir, Group: goldenGroup, SegmentBytes: goldenSegBytes, Retention: goldenV3Retention, Logger: quiet()}
}

func TestGoldenV3Write(t *testing.T) {
	if os.Getenv("QCDP_WRITE_GOLDEN") != "1" {
		t.Skip("QCDP_WRITE_GOLDEN=1 writes the fixtures that are missing")
	}
	if _, err := os.Stat(goldenV3Dir); !errors.Is(err, os.ErrNotExist) {
		return
	}
	ctx := context.Background()
	j, err := Open(ctx, goldenV3Options(goldenV3Dir))
	if err != nil {
		t.Fatal(err)
	}
	recs := goldenV3Records(t)
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

// TestGoldenV3Formats decodes golden-v3's manifest and index files and
// encodes them back byte for byte; the manifest names both declarations.
func TestGoldenV3Formats(t *testing.T) {
	files := readDirFiles(t, goldenV3Dir)
	m, err := decodeManifest(goldenGroup, files[manifestName])
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(encodeManifest(goldenGroup, m), files[manifestName]) {
		t.Fatal("the manifest no longer encodes to the fixture's bytes")
	}
	if v := files[manifestName][4]; v != manVersionDecls {
		t.Fatalf("manifest version %d", v)
	}
	if m.first != 12 || len(m.layers) != 2 || m.mem == nil || m.mem.seq != 8 ||
		m.layers[0].to != 7 || m.layers[0].mem.seq != 1 || m.layers[1].to != 11 || m.layers[1].mem != m.mem {
		t.Fatalf("manifest: first %d, layers %+v, declaration %+v", m.first, m.layers, m.mem)
	}
	if !reflect.DeepEqual(m.layers[0].mem.decl.Disks, []record.Member{gvda, gvdb}) ||
		!reflect.DeepEqual(m.mem.decl.Disks, []record.Member{gvda, gvdb, gvdc}) {
		t.Fatalf("manifest declarations %+v, %+v", m.layers[0].mem.decl, m.mem.decl)
	}
	members := 0
	for n, b := range files {
		if !strings.HasSuffix(n, idxSuffix) {
			continue
		}
		x, err := decodeIndex(b)
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		for _, e := range x.entries {
			if e.kind == record.Members {
				members++
			}
		}
		if !bytes.Equal(encodeIndex(x), b) {
			t.Fatalf("%s no longer encodes to the fixture's bytes", n)
		}
	}
	if members == 0 {
		t.Fatal("no index file of the fixture lists a members record")
	}
}

// TestGoldenV3Journal opens a copy of golden-v3 and checks its points, the
// disks and sizes of views at long-term points and in the window, that the
// declaration in effect still rules what is taken, and that Open used every
// file as it is.
func TestGoldenV3Journal(t *testing.T) {
	ctx := context.Background()
	dir := copyGoldenDir(t, goldenV3Dir)
	j, err := Open(ctx, goldenV3Options(dir))
	if err != nil {
		t.Fatal(err)
	}
	pts, w, err := j.Points(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantPts := []Point{
		{Seq: 7, Time: time.Unix(0, goldenTime(7)), Kind: record.UserBookmark, Name: "nightly", LongTerm: true},
		{Seq: 18, Time: time.Unix(0, goldenTime(18)), Kind: record.AppConsistent, Name: "fsfreeze"},
	}
	if !reflect.DeepEqual(pts, wantPts) {
		t.Fatalf("points %+v\nwant %+v", pts, wantPts)
	}
	wantWin := Window{FirstSeq: 11, LastSeq: 18, FirstTime: time.Unix(0, goldenTime(11)), LastTime: time.Unix(0, goldenTime(18)), Gaps: []Gap{{15, 16}}}
	if !reflect.DeepEqual(w, wantWin) {
		t.Fatalf("window %+v\nwant %+v", w, wantWin)
	}
	img := func(parts ...any) []byte {
		var b []byte
		for i := 0; i < len(parts); i += 2 {
			b = append(b, bytes.Repeat([]byte{parts[i].(byte)}, parts[i+1].(int))...)
		}
		return b
	}
	for _, tc := range []struct {
		seq   uint64
		disks map[string][]byte
	}{
		{7, map[string][]byte{"vda": img(byte('a'), 1024, byte('c'), 512, byte(0), 2560), "vdb": img(byte('b'), 512, byte(0), 512)}},
		{11, map[string][]byte{"vda": img(byte('a'), 1024, byte('c'), 512, byte(0), 2560), "vdb": img(byte('b'), 512, byte(0), 512), "vdc": img(byte('d'), 512)}},
		{14, map[string][]byte{"vda": img(byte('f'), 16, byte('a'), 1008, byte('c'), 512, byte(0), 2560), "vdc": img(byte('d'), 512)}},
		{18, map[string][]byte{"vda": img(byte('f'), 16, byte('a'), 1008, byte('c'), 512, byte(0), 512, byte('g'), 512, byte(0), 1536), "vdc": img(byte('d'), 512)}},
	} {
		v, err := j.View(ctx, Target{Seq: tc.seq})
		if err != nil {
			t.Fatalf("seq %d: %v", tc.seq, err)
		}
		var names []string
		for d := range tc.disks {
			names = append(names, d)
		}
		if got := v.Disks(); !reflect.DeepEqual(got, sortedKeys(tc.disks)) {
			t.Fatalf("seq %d: disks %v, want %v", tc.seq, got, names)
		}
		for disk, want := range tc.disks {
			d, err := v.Disk(disk)
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, d.Size())
			if err := d.ReadAt(ctx, got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("seq %d: %s of %d bytes reads\n%q\nwant %d bytes\n%q", tc.seq, disk, len(got), got, len(want), want)
			}
		}
		v.Close()
	}
	if _, err := j.Verify(ctx); err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if err := j.Append(ctx, []record.Record{dataRec(19, "vdb", 0, []byte("x"))}); !errors.Is(err, record.ErrMembership) {
		t.Fatalf("a record of vdb, which left: %v", err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	got, want := readDirFiles(t, dir), readDirFiles(t, goldenV3Dir)
	delete(got, ackedName)
	delete(want, ackedName)
	for n := range want {
		if !bytes.Equal(got[n], want[n]) {
			t.Errorf("%s differs after Open, Verify and Close", n)
		}
	}
	if len(got) != len(want) {
		t.Errorf("%d files, want %d", len(got), len(want))
	}
}

// TestMembersFromIndex: a sealed segment's Members record is found
// through its index file at Open (the declaration read from the record),
// and a flipped bit in it fails Open as corruption naming the segment.
func TestMembersFromIndex(t *testing.T) {
	ctx := context.Background()
	fs := newFS()
	j := openT(t, fs, func(o *Options) { o.SegmentBytes = 256 })
	appendT(t, j, membersRec(t, 1, vda, vdb))
	appendT(t, j, dataRec(2, "vda", 0, bytes.Repeat([]byte("a"), 300)))
	appendT(t, j, markRec(3, record.SyncComplete, "", ""))
	seg := j.segs[0].path
	if len(j.segs) < 2 {
		t.Fatal("the test wants the declaration in a sealed segment")
	}
	j.Close()
	idx, err := fs.Open(seg + idxSuffix)
	if err != nil {
		t.Fatalf("the sealed segment has no index: %v", err)
	}
	idx.Close()
	var logged bytes.Buffer
	j = openT(t, fs, func(o *Options) { o.SegmentBytes = 256; o.Logger = slog.New(slog.NewTextHandler(&logged, nil)) })
	if logged.Len() > 0 {
		t.Fatalf("Open did not use the index as it is:\n%s", logged.String())
	}
	v, err := j.View(ctx, Target{Seq: 3})
	if err != nil {
		t.Fatal(err)
	}
	if d, ok := v.Declaration(); !ok || !reflect.DeepEqual(d.Disks, []record.Member{vda, vdb}) {
		t.Fatalf("declaration after reopen: %+v %v", d, ok)
	}
	v.Close()
	j.Close()

	f, err := fs.OpenFile(seg, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	off := int64(logfile.HeaderLen("g1")) + record.FrameLen + record.BodyHeaderLen + 9
	f.ReadAt(b, off)
	b[0] ^= 0x10
	f.WriteAt(b, off)
	f.Close()
	_, err = Open(ctx, Options{Dir: dir, Group: "g1", FS: fs, Logger: quiet(), SegmentBytes: 256})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), seg) {
		t.Fatalf("Open: %v, want ErrCorrupt naming %s", err, seg)
	}
}
