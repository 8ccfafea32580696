package journal

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/qcdp/qcdp/record"
)

// TestReview4DefinitionsAmplification: a hostile host sends one padded
// Definition record (unknown JSON fields are kept whole) per batch, each
// of a new VM id that no Members record declares. Every Append republishes
// the whole DEFINITIONS file, which grows to maxDefVMs*MaxDefinition +
// maxDefHistory (320 MiB) and is also held in memory per open journal: the
// replica writes O(n^2) bytes for O(n) received.
func TestReview4DefinitionsAmplification(t *testing.T) {
	ctx := context.Background()
	fs := newFS()
	j := openT(t, fs)
	defer j.Close()
	const n = 48
	pad := strings.Repeat("x", 256<<10)
	var sent, written int64
	for i := 1; i <= n; i++ {
		d := vmDef(fmt.Sprintf("ghost-%03d", i), 64)
		b, _ := json.Marshal(d)
		var m map[string]any
		json.Unmarshal(b, &m)
		m["padding_the_replica_keeps"] = pad
		p, _ := json.Marshal(m)
		r := record.Record{Seq: uint64(i), Time: int64(i) * 1e9, Kind: record.Definition, Name: d.ID, Length: uint64(len(p)), Payload: p}
		if err := j.Append(ctx, []record.Record{r}); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		sent += int64(len(p))
		fi, err := fs.Stat(j.path(defsName))
		if err != nil {
			t.Fatal(err)
		}
		written += fi.Size()
	}
	t.Logf("received %d KiB of definitions (no VM declared), DEFINITIONS rewritten for %d KiB in all (%.0fx)", sent>>10, written>>10, float64(written)/float64(sent))
	if written > 4*sent {
		t.Fatalf("write amplification %.0fx: each Append rewrites every VM's definitions; with 256 ids of 1 MiB each a host makes the replica write ~32 GiB for 256 MiB sent, and hold 320 MiB per group in memory", float64(written)/float64(sent))
	}
}

// TestReview4DefinitionsEvictedByFlood: the definition in effect at an old
// restore point still in the journal (a point from before the host was
// compromised, or before 16 daemon restarts: each new spool session sends
// every definition again, identical bytes included) is dropped by count,
// so a failover to that point is refused ("no definition ... its host sends
// none: upgrade it") although its data is all there.
func TestReview4DefinitionsEvictedByFlood(t *testing.T) {
	ctx := context.Background()
	fs := newFS()
	j := openT(t, fs)
	defer j.Close()
	a := vmDef("vm-1", 1024)
	recs := []record.Record{
		membersRec(t, 1, vda),
		defRec(t, 2, a),
		dataRec(3, "vda", 0, []byte("good data")),
		markRec(4, record.SyncComplete, "", ""),
		markRec(5, record.UserBookmark, "", "before-the-incident"),
	}
	for i := range recs {
		recs[i].Time = int64(recs[i].Seq) * 1e9
	}
	if err := j.Append(ctx, recs); err != nil {
		t.Fatal(err)
	}
	// The same definition again, as a restarted host daemon sends it.
	for s := uint64(6); s < 6+maxDefsPerVM; s++ {
		if err := j.Append(ctx, []record.Record{defRec(t, s, a)}); err != nil {
			t.Fatal(err)
		}
	}
	v, err := j.View(ctx, Target{Bookmark: "before-the-incident"})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if got := j.Definitions(v.Point().Seq); len(got) == 0 {
		t.Fatalf("restore point seq %d is served, but the definition of its VM is gone: a failover to it is refused", v.Point().Seq)
	}
}
