package main

import (
	"context"
	"net/http"

	"github.com/qcdp/qcdp/cmd/qcdp/internal/ctlapi"
	"github.com/qcdp/qcdp/failover"
	"github.com/qcdp/qcdp/replica"
	"github.com/qcdp/qcdp/replica/journal"
)

// failoverCodes maps the failover engine's errors to API codes.
var failoverCodes = map[error]string{
	failover.ErrPlan:          ctlapi.CodeInvalid,
	failover.ErrActive:        ctlapi.CodeInvalid,
	failover.ErrNone:          ctlapi.CodeNotFound,
	failover.ErrCommitted:     ctlapi.CodeInvalid,
	failover.ErrMode:          ctlapi.CodeInvalid,
	failover.ErrExists:        ctlapi.CodeInvalid,
	replica.ErrUnknownGroup:   ctlapi.CodeNotFound,
	replica.ErrAmbiguousGroup: ctlapi.CodeInvalid,
	journal.ErrNoPoint:        ctlapi.CodeInvalid,
}

// failoverAPI adds the failover routes to the replica's control API.
func failoverAPI(mux *http.ServeMux, site *replica.Site, fo *failover.Engine) {
	onGroup := func(fn groupFunc) http.HandlerFunc { return withGroup(site, failoverCodes, fn) }
	mux.HandleFunc("POST /v1/failover", onGroup(func(w http.ResponseWriter, r *http.Request, tenant, group string) {
		q := r.URL.Query()
		var at journal.Target
		if q.Has("seq") || q.Has("time") || q.Has("bookmark") {
			var err error
			if at, err = targetOf(q); err != nil {
				ctlapi.Reply(w, nil, err, failoverCodes)
				return
			}
		}
		// A failover runs to its end (or undoes itself) even when the
		// client goes away: half a failover helps nobody.
		ctx := context.WithoutCancel(r.Context())
		var st *failover.State
		var err error
		switch mode := failover.Mode(q.Get("mode")); mode {
		case failover.ModeTest, failover.ModeStart:
			st, err = fo.Failover(ctx, tenant, group, mode, at)
		case failover.ModePlanned:
			st, err = fo.Planned(ctx, tenant, group)
		default:
			err = &ctlapi.Error{Msg: "mode must be test, start or planned", Code: ctlapi.CodeInvalid}
		}
		ctlapi.Reply(w, st, err, failoverCodes)
	}))
	mux.HandleFunc("POST /v1/failover/commit", onGroup(func(w http.ResponseWriter, r *http.Request, tenant, group string) {
		st, err := fo.Commit(context.WithoutCancel(r.Context()), tenant, group)
		ctlapi.Reply(w, st, err, failoverCodes)
	}))
	mux.HandleFunc("POST /v1/failover/undo", onGroup(func(w http.ResponseWriter, r *http.Request, tenant, group string) {
		ctlapi.Reply(w, nil, fo.Undo(context.WithoutCancel(r.Context()), tenant, group), failoverCodes)
	}))
	mux.HandleFunc("POST /v1/failover/cleanup", onGroup(func(w http.ResponseWriter, r *http.Request, tenant, group string) {
		ctlapi.Reply(w, nil, fo.Cleanup(context.WithoutCancel(r.Context()), tenant, group), failoverCodes)
	}))
	mux.HandleFunc("GET /v1/failover", onGroup(func(w http.ResponseWriter, r *http.Request, tenant, group string) {
		st, err := fo.Status(r.Context(), tenant, group)
		ctlapi.Reply(w, st, err, failoverCodes)
	}))
}

// The client side.

func (c *replicaClient) Failover(ctx context.Context, tenant, group string, mode failover.Mode, at *journal.Target) (failover.State, error) {
	q := groupQuery(tenant, group, at)
	q.Set("mode", string(mode))
	var out failover.State
	err := c.c.Do(ctx, http.MethodPost, "/v1/failover", q, &out)
	return out, err
}

func (c *replicaClient) FailoverDo(ctx context.Context, tenant, group, what string) (failover.State, error) {
	var out failover.State
	err := c.c.Do(ctx, http.MethodPost, "/v1/failover/"+what, groupQuery(tenant, group, nil), &out)
	return out, err
}

func (c *replicaClient) FailoverStatus(ctx context.Context, tenant, group string) (failover.Status, error) {
	var out failover.Status
	err := c.c.Do(ctx, http.MethodGet, "/v1/failover", groupQuery(tenant, group, nil), &out)
	return out, err
}
