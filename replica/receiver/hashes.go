package receiver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/qcdp/qcdp/stream"
)

// Hasher answers a hash query of a tenant's group (the host's hash resync,
// see stream.HashQuery): the hashes of the disk's newest state once the
// journal holds every record up to q.After. Its error is logged and the
// connection refused with CodeUnavailable; a group or disk the replica
// holds nothing of is a reply with stream.HashNoDisk, not an error.
type Hasher func(ctx context.Context, tenant string, q stream.HashQuery) (stream.HashReply, error)

// maxHashQueries bounds the hash queries a replica answers at once.
const maxHashQueries = 4

// hashes serves a hash query connection whose first frame f is a HashQ,
// authorized like a stream: every query names a group the host may write.
// The connection carries one query at a time, each answered before the
// next is read, until the host closes it or sends nothing for IdleTimeout.
func (srv *Server) hashes(ctx context.Context, c net.Conn, fr *stream.Reader, id stream.Identity, f stream.Frame, limit int, log *slog.Logger) {
	for {
		q, err := stream.DecodeHashQuery(f)
		if err != nil {
			code := stream.CodeBadRequest
			var ve *stream.VersionError
			if errors.As(err, &ve) {
				code = stream.CodeVersion
			}
			log.Warn("receiver: hash query refused", "code", code, "err", err)
			refuse(c, code, err.Error())
			return
		}
		qlog := log.With("group", q.Group, "disk", q.Disk)
		if code, err := srv.authorize(id, q.Group); err != nil {
			qlog.Warn("receiver: hash query refused", "code", code, "err", err)
			refuse(c, code, err.Error())
			return
		}
		if err := srv.overStreams(id.Tenant, q.Group, limit); err != nil {
			qlog.Warn("receiver: hash query refused", "code", stream.CodeUnavailable, "err", err)
			refuse(c, stream.CodeUnavailable, err.Error())
			return
		}
		if srv.Hasher == nil {
			// As a replica older than hash queries does: the host copies
			// disks whole.
			refuse(c, stream.CodeProtocol, "this replica answers no hash queries")
			return
		}
		// At most maxHashQueries at once on the replica: each reads and
		// hashes up to stream.MaxHashSpan of a journal.
		select {
		case srv.hashSem <- struct{}{}:
		case <-ctx.Done():
			return
		case <-time.After(srv.IdleTimeout):
			refuse(c, stream.CodeUnavailable, "replica busy: too many hash queries")
			return
		}
		c.SetDeadline(time.Time{})
		r, err := srv.Hasher(ctx, id.Tenant, q)
		<-srv.hashSem
		if err != nil {
			qlog.Error("receiver: hash query", "err", err)
			refuse(c, stream.CodeUnavailable, fmt.Sprintf("replica cannot hash disk %q of group %q now", q.Disk, q.Group))
			return
		}
		out, err := stream.AppendHashReplyV(nil, f.Version, r) // in the query's version
		if err != nil {
			qlog.Error("receiver: hash reply", "err", err)
			refuse(c, stream.CodeInternal, "replica made a bad hash reply")
			return
		}
		if err := srv.write(c, out); err != nil {
			qlog.Warn("receiver: hash reply", "err", err)
			return
		}
		c.SetReadDeadline(time.Now().Add(srv.IdleTimeout))
		if f, err = fr.Next(); err != nil {
			var ne net.Error
			if !errors.Is(err, io.EOF) && ctx.Err() == nil && !(errors.As(err, &ne) && ne.Timeout()) {
				qlog.Warn("receiver: hash query connection", "err", err)
				code := stream.CodeProtocol
				if errors.Is(err, stream.ErrVersion) {
					code = stream.CodeVersion
				}
				refuse(c, code, err.Error())
			}
			return
		}
		if f.Type != stream.HashQ {
			refuse(c, stream.CodeProtocol, fmt.Sprintf("%v frame on a hash query connection", f.Type))
			return
		}
	}
}
