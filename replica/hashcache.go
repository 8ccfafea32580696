package replica

import (
	"context"
	"fmt"
	"sync"

	"github.com/qcdp/qcdp/stream"
)

// maxHashCache bounds the memory the replica keeps block hashes in, over
// all disks: 24 bytes per block, so 256 MiB keeps the hashes of about
// 11 million 64 KiB blocks (700 GB of disks). A disk that does not fit is
// hashed without the cache.
const maxHashCache = 256 << 20

// hashCache keeps the block hashes a hash query computed, with the seq of
// the state they are of, so that the next query of an unchanged block (no
// record touched it since: journal.DiskView.LastWrites) takes the kept
// hash instead of reading the journal again. It is the replica's, in
// memory: a restarted replica reads everything once.
type hashCache struct {
	mu    sync.Mutex
	disks map[hashKey]*diskHashes
	bytes int64
}

// hashKey names one disk's hashes: its journal (a journal replaced by an
// operator starts afresh), block size and size (the last block is cut by
// it).
type hashKey struct {
	j    any
	disk string
	bs   int64
	size int64
}

type diskHashes struct {
	hashes []stream.Hash
	seqs   []uint64 // the state each hash is of; 0: none kept
}

// get returns the disk's kept hashes, made for it if there is room; nil
// when there is none.
func (c *hashCache) get(k hashKey) *diskHashes {
	c.mu.Lock()
	defer c.mu.Unlock()
	if dh, ok := c.disks[k]; ok {
		return dh
	}
	n := (k.size + k.bs - 1) / k.bs
	cost := n * (stream.HashLen + 8)
	if c.bytes+cost > maxHashCache {
		return nil
	}
	if c.disks == nil {
		c.disks = map[hashKey]*diskHashes{}
	}
	// A disk resized, or hashed at another block size, drops what it had.
	for old, dh := range c.disks {
		if old.j == k.j && old.disk == k.disk {
			c.bytes -= int64(len(dh.seqs)) * (stream.HashLen + 8)
			delete(c.disks, old)
		}
	}
	dh := &diskHashes{hashes: make([]stream.Hash, n), seqs: make([]uint64, n)}
	c.disks[k] = dh
	c.bytes += cost
	return dh
}

// blockSource is a disk of one state as hashing needs it
// (*journal.DiskView).
type blockSource interface {
	BlockReader
	LastWrites(off, n, bs int64) ([]uint64, error)
}

// cachedHashes is HashBlocks through the cache: kept hashes of blocks no
// record touched since their state are taken; the others are read,
// hashed and kept as of state (the seq of d's state). It returns the
// hashes and the bytes it read.
func (c *hashCache) cachedHashes(ctx context.Context, key any, disk string, d blockSource, state uint64, off, bs int64, count int) ([]stream.Hash, int64, error) {
	size := d.Size()
	end := min(off+int64(count)*bs, size)
	if off >= end {
		return nil, 0, nil
	}
	dh := c.get(hashKey{j: key, disk: disk, bs: bs, size: size})
	if dh == nil {
		hs, err := HashBlocks(ctx, d, off, bs, count)
		return hs, end - off, err
	}
	last, err := d.LastWrites(off, end-off, bs)
	if err != nil {
		return nil, 0, err
	}
	out := make([]stream.Hash, len(last))
	first := off / bs
	var read int64
	// Runs of blocks to read, hashed a run at a time.
	for i := 0; i < len(last); {
		c.mu.Lock()
		kept := dh.seqs[first+int64(i)] != 0 && last[i] <= dh.seqs[first+int64(i)]
		if kept {
			out[i] = dh.hashes[first+int64(i)]
		}
		c.mu.Unlock()
		if kept {
			i++
			continue
		}
		j := i + 1
		for j < len(last) && int64(j-i)*bs < hashRead {
			c.mu.Lock()
			k := dh.seqs[first+int64(j)] != 0 && last[j] <= dh.seqs[first+int64(j)]
			c.mu.Unlock()
			if k {
				break
			}
			j++
		}
		at := off + int64(i)*bs
		hs, err := HashBlocks(ctx, d, at, bs, j-i)
		if err != nil {
			return nil, read, fmt.Errorf("hash [%d,+%d): %w", at, int64(j-i)*bs, err)
		}
		read += min(end, off+int64(j)*bs) - at
		c.mu.Lock()
		for x, h := range hs {
			out[i+x] = h
			dh.hashes[first+int64(i+x)] = h
			dh.seqs[first+int64(i+x)] = state
		}
		c.mu.Unlock()
		i = j
	}
	return out, read, nil
}
