package chaos

import (
	"context"
	"testing"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica/journal"
)

// TestReadJournal reads back what a real journal wrote, across segments,
// so that a change of the journal's layout breaks this test, not the
// suite's signatures of open findings.
func TestReadJournal(t *testing.T) {
	dir := t.TempDir()
	j, err := journal.Open(context.Background(), journal.Options{Dir: dir, Group: "g1", SegmentBytes: 4096})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	var recs []record.Record
	for seq := uint64(1); seq <= 40; seq++ {
		r := record.Record{Seq: seq, Time: int64(seq), Kind: record.Data, Disk: "vda", Offset: seq * 512, Length: 512, Payload: make([]byte, 512)}
		if seq%10 == 0 {
			r = record.Record{Seq: seq, Time: int64(seq), Kind: record.Marker, Marker: record.ResyncBegin, Disk: "vda"}
		}
		recs = append(recs, r)
	}
	if err := j.Append(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	got, err := ReadJournal(dir, 8, 31)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 24 || got[0].Seq != 8 || got[23].Seq != 31 {
		t.Fatalf("read %d records, want seqs 8..31: %v", len(got), got)
	}
	for _, r := range got {
		if want := recs[r.Seq-1]; r.Kind != want.Kind || r.Marker != want.Marker || r.Disk != want.Disk || r.Offset != want.Offset {
			t.Errorf("seq %d read as %+v, written %+v", r.Seq, r, want)
		}
	}
}
