package replica

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/qcdp/qcdp/replica/journal"
	"github.com/qcdp/qcdp/stream"
)

// hashWait bounds how long a hash query waits for the journal to hold
// the record it names (HashQuery.After) before it is answered "behind";
// the host asks again.
const hashWait = 20 * time.Second

// hashRead is the most one read of a hash query takes from the journal
// (the journal's read lock is held for one read).
const hashRead = 8 << 20

// hashes answers a host's hash query (receiver.Hasher): the hashes of the
// disk's newest state in the group's journal, once that journal holds
// every record up to q.After. A group without a journal, or a disk the
// newest state does not have, is stream.HashNoDisk: the host copies it
// whole.
func (d *Site) hashes(ctx context.Context, tenant string, q stream.HashQuery) (stream.HashReply, error) {
	j, err := d.existing(ctx, tenant, q.Group)
	if errors.Is(err, ErrUnknownGroup) {
		return stream.HashReply{Status: stream.HashNoDisk, Offset: q.Offset}, nil
	}
	if err != nil {
		return stream.HashReply{}, err
	}
	deadline := time.Now().Add(hashWait)
	for j.LastSeq() < q.After {
		if time.Now().After(deadline) {
			return stream.HashReply{Status: stream.HashBehind, Offset: q.Offset, Seq: j.LastSeq()}, nil
		}
		select {
		case <-ctx.Done():
			return stream.HashReply{}, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	v, err := j.Newest(ctx)
	if errors.Is(err, journal.ErrNoPoint) {
		return stream.HashReply{Status: stream.HashNoDisk, Offset: q.Offset}, nil
	}
	if err != nil {
		return stream.HashReply{}, fmt.Errorf("replica: hash %s/%s disk %s: %w", tenant, q.Group, q.Disk, err)
	}
	defer v.Close()
	if !v.Written(q.Disk) {
		// Declared perhaps, but no byte of it ever arrived.
		return stream.HashReply{Status: stream.HashNoDisk, Offset: q.Offset, Seq: v.Point().Seq}, nil
	}
	dv, err := v.Disk(q.Disk)
	if errors.Is(err, journal.ErrNoDisk) {
		if q.Count == 0 {
			// It holds the disk's bytes, though the newest state does not
			// declare it (it left the group and is coming back).
			return stream.HashReply{Status: stream.HashOK, Offset: q.Offset, Seq: v.Point().Seq}, nil
		}
		return stream.HashReply{Status: stream.HashNoDisk, Offset: q.Offset, Seq: v.Point().Seq}, nil
	}
	if err != nil {
		return stream.HashReply{}, fmt.Errorf("replica: hash %s/%s disk %s: %w", tenant, q.Group, q.Disk, err)
	}
	r := stream.HashReply{Status: stream.HashOK, Offset: q.Offset, Size: uint64(dv.Size()), Seq: v.Point().Seq}
	start := time.Now()
	hs, read, err := d.hcache.cachedHashes(ctx, j, q.Disk, dv, r.Seq, int64(q.Offset), int64(q.BlockSize), int(q.Count))
	d.log.Debug("replica: hash query", "tenant", tenant, "group", q.Group, "disk", q.Disk, "offset", q.Offset,
		"blocks", len(hs), "read_bytes", read, "waited", start.Sub(deadline.Add(-hashWait)).Round(time.Millisecond),
		"took", time.Since(start).Round(time.Millisecond))
	if err != nil {
		return stream.HashReply{}, fmt.Errorf("replica: hash %s/%s disk %s: %w", tenant, q.Group, q.Disk, err)
	}
	r.Hashes = hs
	return r, nil
}

// BlockReader is what HashBlocks reads: a disk of a known size.
type BlockReader interface {
	Size() int64
	ReadAt(ctx context.Context, p []byte, off int64) error
}

// HashBlocks hashes count blocks of bs bytes of d from off (stream.BlockHash),
// stopping at the disk's end: a block cut by the end is hashed over the
// bytes before it.
func HashBlocks(ctx context.Context, d BlockReader, off, bs int64, count int) ([]stream.Hash, error) {
	size := d.Size()
	end := min(off+int64(count)*bs, size)
	if off >= end {
		return nil, nil
	}
	out := make([]stream.Hash, 0, (end-off+bs-1)/bs)
	buf := make([]byte, max(bs, min(hashRead, end-off)))
	for at := off; at < end; {
		n := min(int64(len(buf)), end-at)
		n -= n % bs
		if n == 0 {
			n = end - at // the last, cut block
		}
		p := buf[:n]
		if err := d.ReadAt(ctx, p, at); err != nil {
			return nil, fmt.Errorf("read [%d,+%d): %w", at, n, err)
		}
		for len(p) > 0 {
			b := p[:min(int64(len(p)), bs)]
			out = append(out, stream.BlockHash(b))
			p = p[len(b):]
		}
		at += n
	}
	return out, nil
}
