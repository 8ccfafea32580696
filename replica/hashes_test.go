package replica

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/stream"
)

// memDisk is a BlockReader of bytes in memory that notes its reads.
type memDisk struct {
	b       []byte
	reads   int
	maxRead int
	fail    error // every read fails with it
}

func (m *memDisk) Size() int64 { return int64(len(m.b)) }

func (m *memDisk) ReadAt(ctx context.Context, p []byte, off int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if m.fail != nil {
		return m.fail
	}
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return fmt.Errorf("read [%d,+%d) outside a disk of %d bytes", off, len(p), len(m.b))
	}
	m.reads++
	m.maxRead = max(m.maxRead, len(p))
	copy(p, m.b[off:])
	return nil
}

// pattern is n bytes that differ from block to block and within blocks.
func pattern(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7 + i>>12 + i>>20)
	}
	return p
}

// wantHashes hashes the blocks of b by hand.
func wantHashes(b []byte, off, bs int64, count int) []stream.Hash {
	var out []stream.Hash
	for i := 0; i < count; i++ {
		from := off + int64(i)*bs
		if from >= int64(len(b)) {
			break
		}
		out = append(out, stream.BlockHash(b[from:min(from+bs, int64(len(b)))]))
	}
	return out
}

func TestHashBlocks(t *testing.T) {
	ctx := context.Background()
	const K = 4096
	cases := []struct {
		name  string
		size  int
		off   int64
		bs    int64
		count int
		want  int // hashes
	}{
		{"whole blocks", 8 * K, 0, K, 8, 8},
		{"fewer than the disk", 8 * K, 0, K, 3, 3},
		{"from an offset", 8 * K, 2 * K, K, 3, 3},
		{"past the end", 8 * K, 0, K, 20, 8},
		{"last block cut", 8*K + 100, 0, K, 20, 9},
		{"last block cut, from an offset", 8*K + 100, 6 * K, K, 20, 3},
		{"only the cut block", 8*K + 100, 8 * K, K, 5, 1},
		{"one block bigger than the disk", 3000, 0, K, 4, 1},
		{"big blocks, cut", 3*(64<<10) + 512, 0, 64 << 10, 10, 4},
		{"off at the end", 8 * K, 8 * K, K, 5, 0},
		{"off past the end", 8 * K, 9 * K, K, 5, 0},
		{"off far past the end", 8 * K, 1 << 40, K, 5, 0},
		{"count 0", 8 * K, 0, K, 0, 0},
		{"empty disk", 0, 0, K, 5, 0},
		// More than one read (8 MiB each) of the journal.
		{"across reads", 9<<20 + 4000, 0, K, stream.MaxHashBlocks, (9<<20)/K + 1},
		{"across reads, from an offset", 9<<20 + 4000, 1 << 20, K, 2100, 2049},
		{"blocks bigger than a read", 40<<20 + 1, 0, 16 << 20, 4, 3},
		{"blocks bigger than a read, from one", 40<<20 + 1, 16 << 20, 16 << 20, 4, 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := &memDisk{b: pattern(tc.size)}
			got, err := HashBlocks(ctx, d, tc.off, tc.bs, tc.count)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != tc.want {
				t.Fatalf("%d hashes, want %d", len(got), tc.want)
			}
			want := wantHashes(d.b, tc.off, tc.bs, tc.count)
			if len(want) != tc.want {
				t.Fatalf("the test is wrong: %d hashes by hand, want %d", len(want), tc.want)
			}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("hash %d (block at %d) %x, want %x", i, tc.off+int64(i)*tc.bs, got[i], want[i])
				}
			}
			if tc.want == 0 && d.reads != 0 {
				t.Fatalf("%d reads for no hash", d.reads)
			}
			// Memory: one read holds at most a block or 8 MiB.
			if d.maxRead > max(int(tc.bs), 8<<20) {
				t.Fatalf("a read of %d bytes", d.maxRead)
			}
		})
	}
	// The cut block is hashed over the bytes before the end alone, not
	// padded: a disk of 100 bytes does not hash like one of 4096 bytes
	// whose tail is zero.
	short := &memDisk{b: bytes.Repeat([]byte{0}, 100)}
	long := &memDisk{b: bytes.Repeat([]byte{0}, K)}
	hs, _ := HashBlocks(ctx, short, 0, K, 1)
	hl, _ := HashBlocks(ctx, long, 0, K, 1)
	if len(hs) != 1 || len(hl) != 1 || hs[0] == hl[0] || hs[0] != stream.BlockHash(make([]byte, 100)) {
		t.Fatalf("a cut block hashed as %x, a whole zero one %x", hs, hl)
	}
	// A failed read fails the whole call.
	bad := &memDisk{b: pattern(8 * K), fail: errors.New("disk on fire")}
	if hs, err := HashBlocks(ctx, bad, 0, K, 8); err == nil || hs != nil {
		t.Fatalf("a failed read: %d hashes, %v", len(hs), err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := HashBlocks(cctx, &memDisk{b: pattern(8 * K)}, 0, K, 8); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled: %v", err)
	}
}

// appendT appends records to j, numbering them after its last.
func appendT(t *testing.T, j interface {
	LastSeq() uint64
	Append(context.Context, []record.Record) error
}, recs ...record.Record) {
	t.Helper()
	for i := range recs {
		recs[i].Seq, recs[i].Time = j.LastSeq()+uint64(i)+1, time.Now().UnixNano()
	}
	if err := j.Append(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
}

// TestSiteHashes: the daemon's Hasher answers from the newest state of
// the group's journal, inside a resync bracket too.
func TestSiteHashes(t *testing.T) {
	ctx := context.Background()
	d, hostTLS := newDaemonWith(t, `
[[tenant]]
name = "acme"
hosts = ["*"]
groups = ["db", "web"]
`)
	q := stream.HashQuery{Group: "db", Disk: "vda", BlockSize: 4096, Offset: 0, Count: 8}

	// No journal: no disk, and no journal is made.
	r, err := d.hashes(ctx, "acme", q)
	if err != nil || r.Status != stream.HashNoDisk || len(r.Hashes) != 0 {
		t.Fatalf("a group without a journal: %+v %v", r, err)
	}
	if dir, _ := d.cfg.JournalDir("acme", "db"); !notExist(dir) {
		t.Fatalf("a hash query made the journal %s", dir)
	}
	r, err = d.hashes(ctx, "acme", stream.HashQuery{Group: "db", Disk: "vda", BlockSize: 4096, Offset: 8192, Count: 1})
	if err != nil || r.Status != stream.HashNoDisk || r.Offset != 8192 {
		t.Fatalf("a group without a journal, from an offset: %+v %v", r, err)
	}

	j := fill(t, d, "acme", "db", "vda", "vdb") // vda: 4096 bytes of 1, vdb of 2
	r, err = d.hashes(ctx, "acme", q)
	if err != nil || r.Status != stream.HashOK || r.Size != 4096 || r.Seq != j.LastSeq() || r.Offset != 0 ||
		len(r.Hashes) != 1 || r.Hashes[0] != stream.BlockHash(bytes.Repeat([]byte{1}, 4096)) {
		t.Fatalf("vda: %+v %v", r, err)
	}
	// A disk the group does not have.
	r, err = d.hashes(ctx, "acme", stream.HashQuery{Group: "db", Disk: "vdz", BlockSize: 4096, Count: 8})
	if err != nil || r.Status != stream.HashNoDisk || r.Seq != j.LastSeq() || len(r.Hashes) != 0 {
		t.Fatalf("vdz: %+v %v", r, err)
	}
	// Another tenant's journal is not looked at.
	r, err = d.hashes(ctx, "other", q)
	if err == nil && r.Status != stream.HashNoDisk {
		t.Fatalf("another tenant's query: %+v", r)
	}

	// Inside a resync bracket the newest state is hashed.
	vda := make([]byte, 3*4096+512)
	copy(vda, bytes.Repeat([]byte{1}, 4096))
	copy(vda[4096:], bytes.Repeat([]byte{9}, 2*4096+512))
	appendT(t, j,
		record.Record{Kind: record.Marker, Marker: record.ResyncBegin, Disk: "vda"},
		record.Record{Kind: record.Data, Disk: "vda", Offset: 4096, Length: 2*4096 + 512, Payload: vda[4096:]})
	r, err = d.hashes(ctx, "acme", stream.HashQuery{Group: "db", Disk: "vda", BlockSize: 4096, Offset: 4096, Count: 8, After: j.LastSeq()})
	if err != nil || r.Status != stream.HashOK || r.Size != uint64(len(vda)) || r.Seq != j.LastSeq() || r.Offset != 4096 {
		t.Fatalf("inside the bracket: %+v %v", r, err)
	}
	if want := wantHashes(vda, 4096, 4096, 8); fmt.Sprint(r.Hashes) != fmt.Sprint(want) {
		t.Fatalf("inside the bracket: hashes %x, want %x", r.Hashes, want)
	}

	// A query that names a record not there yet waits for it.
	after := j.LastSeq() + 2
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(150 * time.Millisecond)
		if err := j.Append(ctx, []record.Record{
			{Seq: after - 1, Time: time.Now().UnixNano(), Kind: record.Zero, Disk: "vda", Offset: 0, Length: 4096},
			{Seq: after, Time: time.Now().UnixNano(), Kind: record.Data, Disk: "vda", Offset: 0, Length: 4, Payload: []byte("qcdp")},
		}); err != nil {
			t.Error(err)
		}
	}()
	r, err = d.hashes(ctx, "acme", stream.HashQuery{Group: "db", Disk: "vda", BlockSize: 4096, Count: 1, After: after})
	<-done
	want := stream.BlockHash(append([]byte("qcdp"), make([]byte, 4092)...))
	if err != nil || r.Status != stream.HashOK || r.Seq != after || len(r.Hashes) != 1 || r.Hashes[0] != want {
		t.Fatalf("a query after seq %d: %+v %v", after, r, err)
	}
	// One whose context ends while it waits fails.
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if r, err := d.hashes(cctx, "acme", stream.HashQuery{Group: "db", Disk: "vda", BlockSize: 4096, Count: 1, After: after + 5}); err == nil {
		t.Fatalf("a query whose context ended: %+v", r)
	}

	// Over the wire: the daemon's receiver serves hash queries with it.
	c, err := tls.Dial("tcp", d.Addr().String(), hostTLS("acme", "kvm1"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := stream.AppendHashQuery(nil, stream.HashQuery{Group: "db", Disk: "vdb", BlockSize: 4096, Count: 4})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	f, err := stream.NewReader(bufio.NewReader(c)).Next()
	if err != nil {
		t.Fatal(err)
	}
	r, err = stream.DecodeHashReply(f)
	if err != nil || r.Status != stream.HashOK || r.Size != 4096 || len(r.Hashes) != 1 || r.Hashes[0] != stream.BlockHash(bytes.Repeat([]byte{2}, 4096)) {
		t.Fatalf("over the wire: %+v %v", r, err)
	}
}

// A hash query closes the view it hashed: the journal does not keep its
// point (inside a resync bracket, no restore point) as a layer boundary.
func TestSiteHashesReleaseView(t *testing.T) {
	ctx := context.Background()
	d, _ := newDaemonWith(t, `
[[tenant]]
name = "tiny"
hosts = ["*"]
groups = ["db"]
window_bytes = 1
long_term = []
`)
	j := fill(t, d, "tiny", "db", "vda")
	appendT(t, j,
		record.Record{Kind: record.Marker, Marker: record.ResyncBegin, Disk: "vda"},
		record.Record{Kind: record.Data, Disk: "vda", Offset: 0, Length: 512, Payload: bytes.Repeat([]byte{7}, 512)})
	inside := j.LastSeq()
	r, err := d.hashes(ctx, "tiny", stream.HashQuery{Group: "db", Disk: "vda", BlockSize: 4096, Count: 1})
	if err != nil || r.Status != stream.HashOK || r.Seq != inside {
		t.Fatalf("%+v %v", r, err)
	}
	appendT(t, j,
		record.Record{Kind: record.Marker, Marker: record.ResyncEnd, Disk: "vda"},
		record.Record{Kind: record.Data, Disk: "vda", Offset: 512, Length: 512, Payload: bytes.Repeat([]byte{8}, 512)})
	if err := j.Compact(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	dir, _ := d.cfg.JournalDir("tiny", "db")
	layers, err := filepath.Glob(filepath.Join(dir, "*.lay"))
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers after every record was folded, want 1 (seq %d still pinned by the hash query's view?): %v", len(layers), inside, layers)
	}
}
