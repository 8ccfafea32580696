package replica

import (
	"context"
	"testing"
)

// memSource is a disk in memory whose blocks carry the seq that last
// wrote them, counting the bytes read.
type memSource struct {
	data []byte
	last map[int64]uint64 // block index → seq
	read int64
}

func (m *memSource) Size() int64 { return int64(len(m.data)) }
func (m *memSource) ReadAt(_ context.Context, p []byte, off int64) error {
	copy(p, m.data[off:])
	m.read += int64(len(p))
	return nil
}
func (m *memSource) LastWrites(off, n, bs int64) ([]uint64, error) {
	out := make([]uint64, (n+bs-1)/bs)
	for i := range out {
		out[i] = m.last[off/bs+int64(i)]
	}
	return out, nil
}

// The replica keeps the hashes of a query: the next one reads only the
// blocks a record touched since, and its hashes are those of the blocks
// as they are now.
func TestHashCacheReadsOnlyWhatChanged(t *testing.T) {
	ctx := context.Background()
	const bs = 64 << 10
	src := &memSource{data: make([]byte, 1<<20+1000), last: map[int64]uint64{}}
	for i := range src.data {
		src.data[i] = byte(i * 7)
	}
	for b := range int64(17) {
		src.last[b] = 5
	}
	var c hashCache
	key := new(int)
	check := func(state uint64, wantRead int64) {
		t.Helper()
		src.read = 0
		got, read, err := c.cachedHashes(ctx, key, "vda", src, state, 0, bs, 17)
		if err != nil {
			t.Fatal(err)
		}
		want, err := HashBlocks(ctx, &memSource{data: src.data}, 0, bs, 17)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("%d hashes, want %d", len(got), len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("state %d: block %d: a kept hash of an older content", state, i)
			}
		}
		if read != wantRead || src.read != wantRead {
			t.Fatalf("state %d: read %d bytes (reported %d), want %d", state, src.read, read, wantRead)
		}
	}
	check(10, int64(len(src.data)))
	check(10, 0)
	check(12, 0) // nothing written since 10
	// Block 3 and the cut last block are written at seq 13.
	src.data[3*bs+5]++
	src.data[len(src.data)-1]++
	src.last[3], src.last[16] = 13, 13
	check(13, bs+1000)
	check(13, 0)
	// Another journal, or the disk at another size, starts afresh.
	src.read = 0
	if _, read, _ := c.cachedHashes(ctx, new(int), "vda", src, 13, 0, bs, 17); read != int64(len(src.data)) {
		t.Fatalf("another journal's hashes were taken: read %d", read)
	}
}
