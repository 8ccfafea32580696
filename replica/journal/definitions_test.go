package journal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

// vmDef is a definition of VM id whose memory tells its versions apart.
func vmDef(id string, mib int64) record.VMDefinition {
	return record.VMDefinition{ID: id, Name: "vm-" + id, Source: "libvirt", VCPUs: 2, MemoryMiB: mib,
		Disks: []record.VMDisk{{Disk: "vda", Target: "vda", Size: sizeA, Boot: 1}},
		NICs:  []record.VMNIC{{MAC: "52:54:00:00:00:01", Network: "default"}}}
}

func defRec(t testing.TB, seq uint64, d record.VMDefinition) record.Record {
	t.Helper()
	r, err := record.DefinitionRecord(d)
	if err != nil {
		t.Fatal(err)
	}
	r.Seq, r.Time = seq, int64(seq)*1e9
	return r
}

// wantDefs checks Definitions(seq): the VMs and the seqs and memory sizes
// of their definitions, by VM id.
func wantDefs(t *testing.T, j *Journal, seq uint64, want map[string][2]int64) {
	t.Helper()
	got := j.Definitions(seq)
	m := map[string][2]int64{}
	for i, d := range got {
		if i > 0 && got[i-1].Def.ID >= d.Def.ID {
			t.Fatalf("Definitions(%d) not sorted by VM id: %q after %q", seq, d.Def.ID, got[i-1].Def.ID)
		}
		m[d.Def.ID] = [2]int64{int64(d.Seq), d.Def.MemoryMiB}
	}
	if len(want) == 0 && len(m) == 0 {
		return
	}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("Definitions(%d) = %v, want %v (VM: seq, MiB)", seq, m, want)
	}
}

// TestDefinitionsThroughCompact: definitions appended among data are in
// effect from their seq on; they survive a crash, a reopen from the index
// files, and a compaction that folds every record into layers.
func TestDefinitionsThroughCompact(t *testing.T) {
	ctx := context.Background()
	fs := newFS()
	ret := Retention{Window: 10 * time.Second, Schedules: []Schedule{{Every: time.Second, Keep: time.Hour}}}
	j := openT(t, fs, func(o *Options) { o.Retention = ret; o.SegmentBytes = 2 << 10 })
	recs := []record.Record{
		membersRec(t, 1, vda, vdb),
		defRec(t, 2, vmDef("a", 1024)),
		dataRec(3, "vda", 0, bytes.Repeat([]byte("a"), 1500)),
		markRec(4, record.SyncComplete, "", ""),
		defRec(t, 5, vmDef("b", 512)),
		dataRec(6, "vdb", 0, bytes.Repeat([]byte("b"), 1500)),
		defRec(t, 7, vmDef("a", 2048)),
		dataRec(8, "vda", 0, bytes.Repeat([]byte("c"), 1500)),
		defRec(t, 9, vmDef("b", 768)),
		defRec(t, 10, vmDef("c", 64)),
		markRec(11, record.UserBookmark, "", "after"),
	}
	for i := range recs {
		recs[i].Time = int64(recs[i].Seq) * 1e9
	}
	appendT(t, j, recs[:6]...)
	appendT(t, j, recs[6:]...)
	check := func(j *Journal) {
		t.Helper()
		wantDefs(t, j, 0, nil)
		wantDefs(t, j, 1, nil)
		wantDefs(t, j, 2, map[string][2]int64{"a": {2, 1024}})
		wantDefs(t, j, 6, map[string][2]int64{"a": {2, 1024}, "b": {5, 512}})
		wantDefs(t, j, 8, map[string][2]int64{"a": {7, 2048}, "b": {5, 512}})
		want := map[string][2]int64{"a": {7, 2048}, "b": {9, 768}, "c": {10, 64}}
		wantDefs(t, j, 11, want)
		wantDefs(t, j, 1<<40, want) // no further than the journal holds
		got := j.Definitions(11)
		if !reflect.DeepEqual(got[0].Def, vmDef("a", 2048)) {
			t.Fatalf("definition %+v, want %+v", got[0].Def, vmDef("a", 2048))
		}
		got[0].Def.Disks[0].Disk = "changed" // the caller's copy
		if j.Definitions(11)[0].Def.Disks[0].Disk != "vda" {
			t.Fatal("Definitions returned the journal's own slices")
		}
	}
	check(j)
	if len(j.segs) < 3 {
		t.Fatalf("%d segments: the test wants sealed ones, with index files", len(j.segs))
	}
	// The sealed segments' index files name the definition records by
	// their VMs, and Open reads them from there.
	named := map[uint64]string{}
	for _, seg := range j.segs[:len(j.segs)-1] {
		x, err := decodeIndex(readAll(t, fs, seg.path+idxSuffix))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range x.entries {
			if e.kind == record.Definition {
				named[e.seq] = x.names[e.seq]
			}
		}
	}
	sealed := j.segs[len(j.segs)-1].first
	want := map[uint64]string{}
	for _, r := range recs {
		if r.Kind == record.Definition && r.Seq < sealed {
			want[r.Seq] = r.Name
		}
	}
	if len(want) < 2 || !reflect.DeepEqual(named, want) {
		t.Fatalf("definition records in the index files: %v, want %v", named, want)
	}
	j.Close()
	fs.Crash()
	j = openT(t, fs, func(o *Options) { o.Retention = ret; o.SegmentBytes = 2 << 10 })
	check(j)
	if _, err := j.Verify(ctx); err != nil {
		t.Fatal(err)
	}

	// Fold every record into layers.
	if err := j.Compact(ctx, time.Unix(3600, 0)); err != nil {
		t.Fatal(err)
	}
	if j.first != 12 || len(j.recs) != 0 || len(j.defRecs) != 0 {
		t.Fatalf("after the fold: first retained seq %d, %d records, %d definitions, want all folded", j.first, len(j.recs), len(j.defRecs))
	}
	for s := range j.names {
		t.Fatalf("after the fold: the name of seq %d is still kept", s)
	}
	check(j)
	j.Close()
	fs.Crash()
	j = openT(t, fs, func(o *Options) { o.Retention = ret; o.SegmentBytes = 2 << 10 })
	defer j.Close()
	check(j)
	if _, err := j.Verify(ctx); err != nil {
		t.Fatal(err)
	}
	// And the journal goes on.
	appendT(t, j, defRec(t, 12, vmDef("c", 128)))
	wantDefs(t, j, 12, map[string][2]int64{"a": {7, 2048}, "b": {9, 768}, "c": {12, 128}})
}

// TestDefinitionsNoPoint: Definition records write no disk and make no
// restore point: the points, the window and the views are those of the
// same stream without them.
func TestDefinitionsNoPoint(t *testing.T) {
	ctx := context.Background()
	j := openT(t, newFS())
	defer j.Close()
	appendT(t, j,
		membersRec(t, 1, vda, vdb),
		defRec(t, 2, vmDef("a", 1024)),
		dataRec(3, "vda", 0, []byte("hello")),
	)
	// Before every disk's initial sync, a definition is no point.
	for _, s := range []uint64{2, 3} {
		if _, err := j.View(ctx, Target{Seq: s}); !errors.Is(err, ErrNoPoint) {
			t.Fatalf("View(seq %d) before the sync: %v, want ErrNoPoint", s, err)
		}
	}
	appendT(t, j,
		markRec(4, record.SyncComplete, "", ""),
		defRec(t, 5, vmDef("a", 2048)),
		defRec(t, 6, vmDef("b", 64)),
		dataRec(7, "vda", 0, []byte("world")),
		markRec(8, record.UserBookmark, "", "bm"),
	)
	pts, w, err := j.Points(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if w.FirstSeq != 4 || w.LastSeq != 8 {
		t.Fatalf("window %+v, want seqs 4..8", w)
	}
	var seqs []uint64
	for _, p := range pts {
		seqs = append(seqs, p.Seq)
	}
	if !reflect.DeepEqual(seqs, []uint64{4, 8}) {
		t.Fatalf("points at %v, want the markers 4 and 8 only", seqs)
	}
	// The state after each definition is the state before it.
	for _, s := range []uint64{4, 5, 6, 7} {
		v, err := j.View(ctx, Target{Seq: s})
		if err != nil {
			t.Fatalf("View(seq %d): %v", s, err)
		}
		if got := v.Disks(); !reflect.DeepEqual(got, []string{"vda", "vdb"}) {
			t.Fatalf("seq %d: disks %v", s, got)
		}
		want := "hello"
		if s == 7 {
			want = "world"
		}
		if got := readWhole(t, v, "vda")[:5]; string(got) != want {
			t.Fatalf("seq %d: vda starts %q, want %q", s, got, want)
		}
		v.Close()
	}
}

// TestDefinitionsKeepNewest: the journal keeps a VM's newest 16
// definitions; at a seq older than all of them the VM is left out.
func TestDefinitionsKeepNewest(t *testing.T) {
	fs := newFS()
	j := openT(t, fs)
	var recs []record.Record
	for s := uint64(1); s <= 20; s++ {
		recs = append(recs, defRec(t, s, vmDef("a", int64(s))))
	}
	recs = append(recs, defRec(t, 21, vmDef("b", 1)))
	appendT(t, j, recs[:3]...)
	appendT(t, j, recs[3:]...)
	check := func(j *Journal) {
		t.Helper()
		wantDefs(t, j, 4, nil)
		wantDefs(t, j, 5, map[string][2]int64{"a": {5, 5}})
		wantDefs(t, j, 21, map[string][2]int64{"a": {20, 20}, "b": {21, 1}})
		if n := len(j.defs["a"]); n != maxDefsPerVM {
			t.Fatalf("%d definitions of VM a kept, want %d", n, maxDefsPerVM)
		}
	}
	check(j)
	j.Close()
	fs.Crash()
	j = openT(t, fs)
	defer j.Close()
	check(j)
}

// TestDefinitionTableBounds: beyond maxDefVMs VMs, the one defined least
// recently is dropped; beyond maxDefHistory bytes of older definitions,
// the oldest are, never a VM's newest.
func TestDefinitionTableBounds(t *testing.T) {
	var adds []defEntry
	for i := range maxDefVMs + 3 {
		d := vmDef(fmt.Sprintf("vm%04d", i), 1)
		adds = append(adds, defEntry{seq: uint64(i + 1), raw: []byte("{}"), def: d})
	}
	tb := defTable{}.with(1<<20, adds)
	if len(tb) != maxDefVMs {
		t.Fatalf("%d VMs kept, want %d", len(tb), maxDefVMs)
	}
	for i := range 3 {
		if _, ok := tb[fmt.Sprintf("vm%04d", i)]; ok {
			t.Fatalf("vm%04d, defined least recently, was kept", i)
		}
	}
	big := make([]byte, 5<<20)
	adds = nil
	for i := range 20 {
		raw := bytes.Clone(big) // each one another definition
		raw[0] = byte(i)
		adds = append(adds, defEntry{seq: uint64(i + 1), raw: raw, def: vmDef(fmt.Sprintf("v%d", i%2), 1)})
	}
	tb = defTable{}.with(1<<20, adds)
	history := 0
	for id, l := range tb {
		if l[len(l)-1].seq < 19 {
			t.Fatalf("VM %s lost its newest definition: kept up to seq %d", id, l[len(l)-1].seq)
		}
		for _, e := range l[:len(l)-1] {
			history += len(e.raw)
		}
	}
	if history > maxDefHistory || history < maxDefHistory-len(big) {
		t.Fatalf("%d bytes of older definitions kept, want at most %d and no fewer than needed", history, maxDefHistory)
	}
	// Records never acknowledged are dropped when their seqs come again.
	tb = tb.with(10, nil)
	if tb.top() > 10 {
		t.Fatalf("a definition of seq %d kept past 10", tb.top())
	}
}

// defsJournal is a closed journal holding definitions among data.
func defsJournal(t *testing.T) *vfs.MemFS {
	t.Helper()
	fs := newFS()
	j := openT(t, fs)
	appendT(t, j,
		membersRec(t, 1, vda),
		defRec(t, 2, vmDef("a", 1024)),
		dataRec(3, "vda", 0, []byte("x")),
		defRec(t, 4, vmDef("b", 64)),
		defRec(t, 5, vmDef("a", 2048)),
	)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	return fs
}

// TestDefinitionsFileDamage cuts DEFINITIONS at every offset and flips a
// bit in every byte of it: Open refuses the journal with ErrCorrupt naming
// the file, never serves a wrong or a lost definition. A file that is gone
// while records still name definitions is corruption too; one of another
// group is ErrGroup.
func TestDefinitionsFileDamage(t *testing.T) {
	ctx := context.Background()
	src := defsJournal(t)
	path := filepath.Join(dir, defsName)
	whole := readAll(t, src, path)
	open := func(fs vfs.FS) error {
		j, err := Open(ctx, Options{Dir: dir, Group: "g1", FS: fs, Logger: quiet()})
		if err == nil {
			j.Close()
		}
		return err
	}
	if err := open(copyFS(t, src, nil)); err != nil {
		t.Fatalf("the intact journal: %v", err)
	}
	for cut := 0; cut < len(whole); cut++ {
		fs := copyFS(t, src, func(n string, b []byte) []byte {
			if n == defsName {
				return b[:cut]
			}
			return b
		})
		if err := open(fs); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
			t.Fatalf("cut at %d of %d: Open: %v, want ErrCorrupt naming %s", cut, len(whole), err, path)
		}
	}
	for pos := range whole {
		fs := copyFS(t, src, func(n string, b []byte) []byte {
			if n == defsName {
				b[pos] ^= 1 << (pos % 8)
			}
			return b
		})
		if err := open(fs); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
			t.Fatalf("byte %d flipped: Open: %v, want ErrCorrupt naming %s", pos, err, path)
		}
	}
	gone := copyFS(t, src, func(n string, b []byte) []byte {
		if n == defsName {
			return nil
		}
		return b
	})
	if err := open(gone); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "seq 2 is a definition record") {
		t.Fatalf("DEFINITIONS gone: %v, want ErrCorrupt naming the definition record", err)
	}
	other := copyFS(t, src, func(n string, b []byte) []byte {
		if n == defsName {
			t, err := decodeDefinitions("g1", b)
			if err != nil {
				panic(err)
			}
			return encodeDefinitions("g2", t)
		}
		return b
	})
	if err := open(other); !errors.Is(err, ErrGroup) {
		t.Fatalf("DEFINITIONS of another group: %v, want ErrGroup", err)
	}
	// Damage while the journal is open is Verify's to name.
	fs := copyFS(t, src, nil)
	j := openT(t, fs)
	defer j.Close()
	bad := bytes.Clone(whole)
	bad[len(bad)/2] ^= 4
	writeFile(t, fs, path, bad)
	if rep, err := j.Verify(ctx); !errors.Is(err, ErrCorrupt) || len(rep.Corrupt) != 1 || !strings.Contains(rep.Corrupt[0], path) {
		t.Fatalf("Verify of a damaged DEFINITIONS: %+v, %v", rep, err)
	}
}

// TestDefinitionsCrash: a definition Append acknowledged survives a crash;
// one published for records a crash then kept from being acknowledged is
// dropped at Open, and its seq taken by another record does not bring it
// back; a failed publish writes nothing of the batch and breaks the
// journal until it is reopened.
func TestDefinitionsCrash(t *testing.T) {
	ctx := context.Background()
	fs := newFS()
	j := openT(t, fs)
	appendT(t, j, membersRec(t, 1, vda), defRec(t, 2, vmDef("a", 1024)))
	fs.Crash() // before Close: Append made it durable
	j.Close()
	j = openT(t, fs)
	wantDefs(t, j, 2, map[string][2]int64{"a": {2, 1024}})

	// The power goes after DEFINITIONS was published, before the
	// segment's records were.
	fs.SetInjector(func(op vfs.Op, path string) error {
		if op == vfs.OpWrite && strings.HasSuffix(path, segSuffix) {
			return errors.New("power lost")
		}
		return nil
	})
	if err := j.Append(ctx, []record.Record{defRec(t, 3, vmDef("a", 4096)), defRec(t, 4, vmDef("z", 1))}); err == nil {
		t.Fatal("Append with the power gone")
	}
	fs.SetInjector(nil)
	wantDefs(t, j, 4, map[string][2]int64{"a": {2, 1024}})
	fs.Crash()
	j.Close()
	if tb, err := decodeDefinitions("g1", readAll(t, fs, filepath.Join(dir, defsName))); err != nil || tb.top() != 4 {
		t.Fatalf("DEFINITIONS after the crash: top seq %d, %v; want the unacknowledged ones there", tb.top(), err)
	}
	j = openT(t, fs)
	wantDefs(t, j, 4, map[string][2]int64{"a": {2, 1024}})
	if tb, err := decodeDefinitions("g1", readAll(t, fs, filepath.Join(dir, defsName))); err != nil || tb.top() != 2 {
		t.Fatalf("DEFINITIONS after Open: top seq %d, %v; want only what was acknowledged", tb.top(), err)
	}
	// The host's spool lost them too: seqs 3 and 4 are data now.
	appendT(t, j, dataRec(3, "vda", 0, []byte("x")), dataRec(4, "vda", 1, []byte("y")))
	j.Close()
	fs.Crash()
	j = openT(t, fs)
	wantDefs(t, j, 4, map[string][2]int64{"a": {2, 1024}})

	// A publish that fails: nothing of the batch is written.
	fs.SetInjector(vfs.FailNth(vfs.OpSync, 1, syscall.EIO))
	err := j.Append(ctx, []record.Record{defRec(t, 5, vmDef("a", 8)), dataRec(6, "vda", 0, []byte("z"))})
	fs.SetInjector(nil)
	if !errors.Is(err, ErrBroken) || !errors.Is(err, syscall.EIO) {
		t.Fatalf("Append whose DEFINITIONS fsync fails: %v, want ErrBroken", err)
	}
	if j.LastSeq() != 4 {
		t.Fatalf("LastSeq %d after a failed publish, want 4", j.LastSeq())
	}
	j.Close()
	fs.Crash()
	j = openT(t, fs)
	defer j.Close()
	wantDefs(t, j, 6, map[string][2]int64{"a": {2, 1024}})
	appendT(t, j, defRec(t, 5, vmDef("a", 8)))
	wantDefs(t, j, 5, map[string][2]int64{"a": {5, 8}})
}

// TestDefinitionsFileKept: Open's clean-up of files it does not know
// leaves DEFINITIONS alone, and a journal that never had a definition has
// no such file.
func TestDefinitionsFileKept(t *testing.T) {
	fs := newFS()
	j := openT(t, fs)
	appendT(t, j, dataRec(1, "vda", 0, []byte("x")))
	j.Close()
	if _, err := fs.Stat(filepath.Join(dir, defsName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a journal without definitions has %s: %v", defsName, err)
	}
	j = openT(t, fs)
	appendT(t, j, defRec(t, 2, vmDef("a", 1)))
	j.Close()
	for range 2 {
		j = openT(t, fs)
		j.Close()
	}
	if _, err := fs.Stat(filepath.Join(dir, defsName)); err != nil {
		t.Fatalf("%s after reopening: %v", defsName, err)
	}
	j = openT(t, fs)
	defer j.Close()
	wantDefs(t, j, 2, map[string][2]int64{"a": {2, 1}})
}

// goldenDefinitions is what testdata/definitions-v1 holds: the JSON is
// written out here, not made by encoding/json, so that the fixture pins
// the file's layout.
func goldenDefinitions(t testing.TB) defTable {
	t.Helper()
	tb := defTable{}
	for _, e := range []struct {
		seq uint64
		raw string
	}{
		{7, `{"id":"101","name":"pve-101","source":"proxmox","vcpus":1,"memory_mib":512,"disks":[{"disk":"pve101.scsi0","target":"scsi0","bus":"scsi","size":1073741824}]}`},
		{3, `{"id":"4c4c4544-0042","name":"db-1","source":"libvirt","vcpus":2,"memory_mib":4096,"disks":[{"disk":"vm1.vda","target":"vda","size":21474836480,"boot":1}],"nics":[{"mac":"52:54:00:00:00:42"}]}`},
		{9, `{"id":"4c4c4544-0042","name":"db-1","source":"libvirt","vcpus":4,"memory_mib":8192,"disks":[{"disk":"vm1.vda","target":"vda","size":21474836480,"boot":1}],"nics":[{"mac":"52:54:00:00:00:42"}],"future":true}`},
	} {
		d, err := record.DecodeDefinition([]byte(e.raw))
		if err != nil {
			t.Fatal(err)
		}
		tb[d.ID] = append(tb[d.ID], defEntry{seq: e.seq, raw: []byte(e.raw), def: d})
	}
	return tb
}

const goldenDefinitionsFile = "testdata/definitions-v1"

// TestGoldenDefinitionsFile: the DEFINITIONS file of version 1 reads and
// is written byte for byte the same; a field of the JSON this version does
// not know is kept.
func TestGoldenDefinitionsFile(t *testing.T) {
	want := goldenDefinitions(t)
	if os.Getenv("QCDP_WRITE_GOLDEN") == "1" {
		if _, err := os.Stat(goldenDefinitionsFile); errors.Is(err, os.ErrNotExist) {
			if err := os.WriteFile(goldenDefinitionsFile, encodeDefinitions("g1", want), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	b, err := os.ReadFile(goldenDefinitionsFile)
	if err != nil {
		t.Fatalf("%v (QCDP_WRITE_GOLDEN=1 writes missing fixtures)", err)
	}
	got, err := decodeDefinitions("g1", b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("decoded %+v\nwant %+v", got, want)
	}
	if !bytes.Equal(encodeDefinitions("g1", got), b) {
		t.Fatal("the encoder no longer writes " + goldenDefinitionsFile)
	}
	if !strings.Contains(string(got["4c4c4544-0042"][1].raw), `"future":true`) {
		t.Fatal("a JSON field this version does not know was not kept")
	}
	at := got.at(8)
	if len(at) != 2 || at[0].Def.ID != "101" || at[0].Seq != 7 || at[1].Seq != 3 || at[1].Def.VCPUs != 2 {
		t.Fatalf("at seq 8: %+v", at)
	}
}

func FuzzDefinitionsFile(f *testing.F) {
	f.Add(encodeDefinitions("g1", goldenDefinitions(f)))
	f.Add(encodeDefinitions("g1", defTable{}))
	f.Add([]byte("QCJD"))
	f.Fuzz(func(t *testing.T, b []byte) {
		tb, err := decodeDefinitions("g1", b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrGroup) {
				t.Fatalf("error %v is neither ErrCorrupt nor ErrGroup", err)
			}
			return
		}
		if !bytes.Equal(encodeDefinitions("g1", tb), b) {
			t.Fatal("re-encoding differs")
		}
	})
}
