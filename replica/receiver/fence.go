package receiver

import (
	"context"

	"github.com/qcdp/qcdp/stream"
)

// Stop ends the stream of a tenant's group: the session streaming now is
// refused with code and msg and closed, and Stop returns once it has let
// go of the group, so nothing more is appended by it. A session waiting to
// stream the group takes it afterwards unless Fenced now refuses it: set
// the fence first, then Stop. ctx bounds the wait.
func (srv *Server) Stop(ctx context.Context, tenant, group string, code stream.Code, msg string) error {
	key := groupKey{tenant, group}
	srv.mu.Lock()
	gs := srv.groups[key]
	if gs == nil {
		srv.mu.Unlock()
		return nil
	}
	cur := gs.cur
	gs.users++
	srv.mu.Unlock()
	if cur != nil {
		refuse(cur.conn, code, msg)
		cur.kill()
	}
	select {
	case gs.sem <- struct{}{}:
		srv.release(key, gs, nil, true)
		return nil
	case <-ctx.Done():
		srv.release(key, gs, nil, false)
		return ctx.Err()
	}
}
