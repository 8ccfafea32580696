package receiver_test

import (
	"strings"
	"testing"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/stream"
	"github.com/qcdp/qcdp/stream/streamtest"
)

// asVersion rewrites the frame b as a peer of version v writes it (the
// layouts of versions 2 and 3 are the same).
func asVersion(b []byte, v uint8) []byte {
	b[9] = v
	streamtest.Reseal(b)
	return b
}

// next reads the replica's next frame and checks its version.
func (c *client) next(t *testing.T, typ stream.Type, v uint8) stream.Frame {
	t.Helper()
	f, err := c.fr.Next()
	if err != nil {
		t.Fatal(err)
	}
	if f.Type != typ || f.Version != v {
		if f.Type == stream.Refuse {
			re, _ := stream.DecodeRefuse(f)
			t.Fatalf("refused: %v", re)
		}
		t.Fatalf("a %v frame of version %d, want %v of version %d", f.Type, f.Version, typ, v)
	}
	return f
}

func testDefinition(t *testing.T) record.Record {
	t.Helper()
	r, err := record.DefinitionRecord(record.VMDefinition{ID: "vm-1", Name: "web", Source: "libvirt", VCPUs: 2, MemoryMiB: 2048,
		Disks: []record.VMDisk{{Disk: "vda", Target: "vda", Size: 1 << 20}}})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestV2HostSpokenTo: a host of stream version 2 is welcomed in version 2
// and its batches are acknowledged in version 2. A version 2 batch holding
// a Definition record (which only version 3 carries; no real v2 host sends
// one) is refused with CodeProtocol, nothing of it is stored, and so is a
// frame of version 3 in a version 2 session.
func TestV2HostSpokenTo(t *testing.T) {
	r := start(t)
	c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if err != nil {
		t.Fatal(err)
	}
	hello, err := stream.AppendHello(nil, stream.HelloMsg{Group: "web", Host: "h", LastSeq: 3, Intact: 3, Spool: c.spool})
	if err != nil {
		t.Fatal(err)
	}
	c.c.Write(asVersion(hello, 2))
	if w, err := stream.DecodeWelcome(c.next(t, stream.Welcome, 2)); err != nil || w.Durable != 0 || w.Spool != c.spool.ID {
		t.Fatalf("welcome %+v %v", w, err)
	}
	e := stream.NewBatchEncoder(false)
	for _, rec := range []record.Record{
		{Seq: 1, Kind: record.Data, Disk: "vda", Length: 3, Payload: []byte{1, 2, 3}},
		{Seq: 2, Kind: record.Marker, Marker: record.SyncComplete},
	} {
		if err := e.Add(&rec); err != nil {
			t.Fatal(err)
		}
	}
	c.c.Write(asVersion(e.Frame(), 2))
	if a, err := stream.DecodeAck(c.next(t, stream.Ack, 2)); err != nil || a != 2 {
		t.Fatalf("ack %d %v", a, err)
	}
	c.c.Write(asVersion(stream.AppendPing(nil), 2))
	if a, err := stream.DecodeAck(c.next(t, stream.Ack, 2)); err != nil || a != 2 {
		t.Fatalf("ack of a ping %d %v", a, err)
	}

	// A definition in a version 2 batch.
	e.Reset()
	def := testDefinition(t)
	def.Seq = 3
	if err := e.Add(&def); err != nil {
		t.Fatal(err)
	}
	c.c.Write(asVersion(e.Frame(), 2))
	re, err := stream.DecodeRefuse(c.next(t, stream.Refuse, 2))
	if err != nil || re.Code != stream.CodeProtocol || !strings.Contains(re.Message, "must speak stream v3 for definitions") {
		t.Fatalf("refusal %+v %v, want CodeProtocol saying the host must speak v3", re, err)
	}
	r.mu.Lock()
	stored := len(r.times)
	r.mu.Unlock()
	if stored != 2 {
		t.Fatalf("%d records stored, want 2", stored)
	}

	// A version 3 frame in a version 2 session.
	c, _ = dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	hello, _ = stream.AppendHello(nil, stream.HelloMsg{Group: "web", Host: "h", LastSeq: 3, Intact: 3, Spool: c.spool})
	c.c.Write(asVersion(hello, 2))
	c.next(t, stream.Welcome, 2)
	c.c.Write(stream.AppendPing(nil))
	re, err = stream.DecodeRefuse(c.next(t, stream.Refuse, 2))
	if err != nil || re.Code != stream.CodeProtocol || !strings.Contains(re.Message, "a stream v3 ping frame in a stream v2 session") {
		t.Fatalf("refusal %+v %v, want CodeProtocol naming both versions", re, err)
	}
}

// TestV3HostDefinitions: a host of version 3 is welcomed in version 3, and
// its Definition records are stored like any record.
func TestV3HostDefinitions(t *testing.T) {
	r := start(t)
	c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if err != nil {
		t.Fatal(err)
	}
	hello, err := stream.AppendHello(nil, stream.HelloMsg{Group: "web", Host: "h", LastSeq: 3, Intact: 3, Spool: c.spool})
	if err != nil {
		t.Fatal(err)
	}
	c.c.Write(hello)
	c.next(t, stream.Welcome, stream.Version)
	c.send(t, 1, []record.Record{
		declare(t, record.Member{Disk: "vda", Size: 1 << 20, VM: "vm-1"}),
		testDefinition(t),
		{Kind: record.Data, Disk: "vda", Length: 3, Payload: []byte{1, 2, 3}},
	})
	if a, err := stream.DecodeAck(c.next(t, stream.Ack, stream.Version)); err != nil || a != 3 {
		t.Fatalf("ack %d %v", a, err)
	}
}

// TestV2HashQuery: a hash query of version 2 is answered in version 2, one
// of version 3 on the same connection in version 3.
func TestV2HashQuery(t *testing.T) {
	h := &fakeHasher{}
	r := startHashing(t, h, nil)
	c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if err != nil {
		t.Fatal(err)
	}
	q := query("web", "vda", 0, 2)
	for _, v := range []uint8{2, stream.Version} {
		b, err := stream.AppendHashQuery(nil, q)
		if err != nil {
			t.Fatal(err)
		}
		c.sendFrame(t, asVersion(b, v))
		got, err := stream.DecodeHashReply(c.next(t, stream.Hashes, v))
		if err != nil {
			t.Fatal(err)
		}
		sameReply(t, got, replyFor(q))
	}
}
