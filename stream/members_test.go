package stream

import (
	"bytes"
	"encoding/hex"
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/qcdp/qcdp/record"
)

// testdata/v2-batch-members.hex is a batch of stream version 2 whose first
// record declares the group's membership (a record.Members record): the
// layout batches carry from version 2 on. Never edit it. Version 3 keeps
// the layout: the encoder writes the fixture but for the version byte.
const goldenMembersBatch = "testdata/v2-batch-members.hex"

func goldenMembersRecords(t testing.TB) []record.Record {
	m, err := record.MembersRecord(record.Declaration{Disks: []record.Member{
		{Disk: "vm1.vda", Size: 20 << 30, VM: "4c4c4544-0042", VMName: "db-1", Target: "vda"},
		{Disk: "vm1.vdb", Size: 1 << 30, VM: "4c4c4544-0042", VMName: "db-1", Target: "vdb"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	recs := []record.Record{
		m,
		{Kind: record.Data, Disk: "vm1.vda", Offset: 8192, Length: 4, Payload: []byte("qcdp")},
		{Kind: record.Marker, Marker: record.SyncComplete, Disk: "vm1.vdb"},
	}
	for i := range recs {
		recs[i].Seq = uint64(200 + i)
		recs[i].Time = 1700000000000000200 + int64(i)
	}
	return recs
}

func TestGoldenMembersBatch(t *testing.T) {
	recs := goldenMembersRecords(t)
	e := NewBatchEncoder(false)
	for i := range recs {
		if err := e.Add(&recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	enc := bytes.Clone(e.Frame())
	setVersion(enc, 2)
	if _, err := os.Stat(goldenMembersBatch); os.IsNotExist(err) && os.Getenv("QCDP_WRITE_GOLDEN") == "1" {
		var sb strings.Builder
		for i := 0; i < len(enc); i += 32 {
			sb.WriteString(hex.EncodeToString(enc[i:min(i+32, len(enc))]))
			sb.WriteByte('\n')
		}
		if err := os.WriteFile(goldenMembersBatch, []byte(sb.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h, err := os.ReadFile(goldenMembersBatch)
	if err != nil {
		t.Fatalf("%v (QCDP_WRITE_GOLDEN=1 writes missing fixtures)", err)
	}
	b, err := hex.DecodeString(strings.Join(strings.Fields(string(h)), ""))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, enc) {
		t.Fatal("the encoder no longer writes " + goldenMembersBatch)
	}
	f, err := NewReader(bytes.NewReader(b)).Next()
	if err != nil {
		t.Fatal(err)
	}
	d := NewBatchDecoder()
	defer d.Close()
	_, got, err := d.Decode(f)
	if err != nil {
		t.Fatal(err)
	}
	for i := range got {
		if len(got[i].Payload) == 0 {
			got[i].Payload = nil
		}
	}
	if !reflect.DeepEqual(got, recs) {
		t.Fatalf("decoded %+v\nwant %+v", got, recs)
	}
	decl, err := got[0].Declaration()
	if err != nil || len(decl.Disks) != 2 || decl.Disks[0].Size != 20<<30 {
		t.Fatalf("declaration %+v %v", decl, err)
	}
}
