package receiver_test

import (
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/stream"
	"github.com/qcdp/qcdp/stream/streamtest"
)

// send writes recs, numbered from first, as one batch.
func (c *client) send(t *testing.T, first uint64, recs []record.Record) {
	t.Helper()
	e := stream.NewBatchEncoder(true)
	for i := range recs {
		recs[i].Seq = first + uint64(i)
		if err := e.Add(&recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.c.Write(e.Frame()); err != nil {
		t.Fatal(err)
	}
}

func declare(t *testing.T, disks ...record.Member) record.Record {
	t.Helper()
	r, err := record.MembersRecord(record.Declaration{Disks: disks})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// manyDisks is item 5's batch: data for d0, then a zero record for each of
// d1..d(n-1). Disk ids that wrapped at 65,536 made d0 serve d65536's zeroes.
func manyDisks(n int) []record.Record {
	recs := []record.Record{{Kind: record.Data, Disk: "d0", Length: 4, Payload: []byte("keep")}}
	for i := 1; i < n; i++ {
		recs = append(recs, record.Record{Kind: record.Zero, Disk: fmt.Sprintf("d%d", i), Length: 4})
	}
	return recs
}

// TestRefusedRecordsNotStored: a batch with a record the group's
// membership does not allow is refused with CodeProtocol, nothing of it is
// stored, and the journal goes on with the next session.
func TestRefusedRecordsNotStored(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup []record.Record // acknowledged first
		bad   []record.Record
		why   string
	}{
		{"70,000 disks, nothing declared", nil, manyDisks(70000), "more than 256 disks"},
		{"an undeclared disk", []record.Record{
			declare(t, record.Member{Disk: "d0", Size: 1 << 20}),
			{Kind: record.Data, Disk: "d0", Length: 4, Payload: []byte("keep")},
		}, manyDisks(70000)[1:3], `disk "d1" is not declared`},
		{"a zero record at 2^62, nothing declared", nil, []record.Record{
			{Kind: record.Data, Disk: "vda", Length: 4, Payload: []byte("keep")},
			{Kind: record.Zero, Disk: "vda", Offset: 1 << 62, Length: 1 << 20},
		}, "past the largest disk"},
		{"a zero record past the declared size", []record.Record{
			declare(t, record.Member{Disk: "vda", Size: 1 << 30}),
		}, []record.Record{
			{Kind: record.Zero, Disk: "vda", Offset: 1 << 62, Length: 1 << 20},
		}, "ends past disk vda of 1073741824 bytes"},
		{"a declaration of 257 disks", nil, []record.Record{
			{Kind: record.Members, Length: 4, Payload: []byte{1, 1, 0, 0}},
		}, "disks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := start(t)
			c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
			if err != nil {
				t.Fatal(err)
			}
			end := uint64(len(tc.setup) + len(tc.bad))
			if _, err := c.hello("web", end); err != nil {
				t.Fatal(err)
			}
			durable := uint64(len(tc.setup))
			if durable > 0 {
				c.send(t, 1, tc.setup)
				if a, err := c.answer(); err != nil || a != durable {
					t.Fatalf("ack %d %v, want %d", a, err, durable)
				}
			}
			if tc.bad[0].Kind == record.Members {
				tc.bad[0] = rawMembers(257)
			}
			sendUnchecked(t, c, durable+1, tc.bad)
			re := refusal(t, func() error { _, err := c.answer(); return err }(), stream.CodeProtocol)
			if !strings.Contains(re.Message, tc.why) {
				t.Errorf("refusal %q does not say %q", re.Message, tc.why)
			}
			r.mu.Lock()
			stored := len(r.times)
			r.mu.Unlock()
			if stored != int(durable) {
				t.Fatalf("%d records stored, want %d", stored, durable)
			}
			// The journal is not broken: the next session is welcomed
			// with the same durable seq and goes on.
			c, _ = dial(t, r, r.pki.Client("alpha", "kvm-a1"))
			if d, err := c.hello("web", end); err != nil || d != durable {
				t.Fatalf("welcome %d %v, want %d", d, err, durable)
			}
			c.send(t, durable+1, []record.Record{{Kind: record.Marker, Marker: record.UserBookmark, Name: "after"}})
			if a, err := c.answer(); err != nil || a != durable+1 {
				t.Fatalf("ack %d %v, want %d", a, err, durable+1)
			}
		})
	}
}

// rawMembers is a Members record declaring n disks, more than a
// declaration may hold.
func rawMembers(n int) record.Record {
	var d record.Declaration
	for i := range n {
		d.Disks = append(d.Disks, record.Member{Disk: fmt.Sprintf("d%03d", i), Size: 512})
	}
	p := record.AppendDeclaration(nil, d)
	return record.Record{Kind: record.Members, Length: uint64(len(p)), Payload: p}
}

// sendUnchecked writes recs, numbered from first, as one raw batch,
// without the checks the batch encoder makes: a host that breaks the rules.
func sendUnchecked(t *testing.T, c *client, first uint64, recs []record.Record) {
	t.Helper()
	var raw []byte
	for i := range recs {
		recs[i].Seq = first + uint64(i)
		raw = record.AppendEncode(raw, &recs[i])
	}
	f := make([]byte, stream.HeaderLen, stream.HeaderLen+stream.BatchHeaderLen+len(raw))
	f[8], f[9] = byte(stream.Batch), stream.Version
	f = binary.LittleEndian.AppendUint64(f, first)
	f = binary.LittleEndian.AppendUint32(f, uint32(len(recs)))
	f = binary.LittleEndian.AppendUint32(f, 0) // flags, reserved
	f = binary.LittleEndian.AppendUint32(f, uint32(len(raw)))
	f = append(f, raw...)
	streamtest.Reseal(f)
	if _, err := c.c.Write(f); err != nil {
		t.Fatal(err)
	}
}
