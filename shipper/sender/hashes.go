package sender

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/qcdp/qcdp/stream"
)

// Welcomed reports whether the replica has welcomed this sender's spool
// since the sender started: its journal is then bound to this spool, and
// its hashes describe what this stream wrote.
func (s *Sender) Welcomed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.welcomed
}

// HashTimeout bounds one hash query: the replica waits up to 20 s for
// the record the query names and reads up to MaxHashBlocks blocks.
const HashTimeout = 5 * time.Minute

// Hashes asks the replica for the hashes of a disk of the group (a hash
// resync, package filter) on a connection of its own, beside the stream:
// count blocks of bs bytes from off, of the newest state the replica
// holds once it holds every record up to after. A replica that answers
// no hash queries (an older one) fails with a *stream.RefusedError or a
// protocol error: the caller copies the disk whole.
func (s *Sender) Hashes(ctx context.Context, disk string, off uint64, bs, count uint32, after uint64) (stream.HashReply, error) {
	q := stream.HashQuery{Group: s.group, Disk: disk, BlockSize: bs, Offset: off, Count: count, After: after}
	req, err := stream.AppendHashQuery(nil, q)
	if err != nil {
		return stream.HashReply{}, fmt.Errorf("sender: group %s: %w", s.group, err)
	}
	ctx, cancel := context.WithTimeout(ctx, HashTimeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: s.opts.DialTimeout}, Config: s.opts.TLS}
	c, err := d.DialContext(ctx, "tcp", s.opts.Addr)
	if err != nil {
		return stream.HashReply{}, fmt.Errorf("sender: group %s: hash query: dial %s: %w", s.group, s.opts.Addr, err)
	}
	defer c.Close()
	// The context bounds the query: its end closes the connection, and
	// the error then says why.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if _, err := c.Write(req); err != nil {
		return stream.HashReply{}, fmt.Errorf("sender: group %s: hash query to %s: %w", s.group, s.opts.Addr, err)
	}
	fr := stream.NewReader(bufio.NewReaderSize(c, 64<<10))
	f, err := fr.Next()
	if err != nil {
		if ctx.Err() != nil {
			err = errors.Join(ctx.Err(), err)
		}
		return stream.HashReply{}, fmt.Errorf("sender: group %s: hash query to %s: %w", s.group, s.opts.Addr, err)
	}
	if f.Type == stream.Refuse {
		r, err := stream.DecodeRefuse(f)
		if err != nil {
			return stream.HashReply{}, fmt.Errorf("sender: group %s: %w", s.group, err)
		}
		return stream.HashReply{}, fmt.Errorf("sender: group %s: hash query: %s: %w", s.group, s.opts.Addr, r)
	}
	r, err := stream.DecodeHashReply(f)
	if err != nil {
		return stream.HashReply{}, fmt.Errorf("sender: group %s: hash query: %s: %w", s.group, s.opts.Addr, err)
	}
	if r.Offset != off || r.Status == stream.HashOK && uint64(len(r.Hashes)) > uint64(count) {
		return stream.HashReply{}, fmt.Errorf("sender: group %s: hash query: %s: %w: %d hashes from %d in answer to %d from %d",
			s.group, s.opts.Addr, stream.ErrProtocol, len(r.Hashes), r.Offset, count, off)
	}
	return r, nil
}
