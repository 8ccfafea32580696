package main

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/qcdp/qcdp/cmd/qcdp/internal/ctlapi"
	"github.com/qcdp/qcdp/failover"
	"github.com/qcdp/qcdp/replica"
	"github.com/qcdp/qcdp/replica/journal"
)

// replicaCodes maps the site's and the journal's errors to API codes.
var replicaCodes = map[error]string{
	replica.ErrUnknownGroup:   ctlapi.CodeNotFound,
	replica.ErrUnknownExport:  ctlapi.CodeNotFound,
	replica.ErrOwnedExport:    ctlapi.CodeInvalid,
	replica.ErrAmbiguousGroup: ctlapi.CodeInvalid,
	replica.ErrBadTarget:      ctlapi.CodeInvalid,
	journal.ErrNoPoint:        ctlapi.CodeInvalid,
	journal.ErrNoDisk:         ctlapi.CodeNotFound,
	replica.ErrUnknownDisk:    ctlapi.CodeNotFound,
	replica.ErrAmbiguousDisk:  ctlapi.CodeInvalid,
}

// targetOf reads seq=, time= (RFC 3339) or bookmark= from a query.
func targetOf(q url.Values) (journal.Target, error) {
	var t journal.Target
	n := 0
	if s := q.Get("seq"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return t, &ctlapi.Error{Msg: "seq " + strconv.Quote(s) + " is not a number", Code: ctlapi.CodeInvalid}
		}
		t.Seq, n = v, n+1
	}
	if s := q.Get("time"); s != "" {
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return t, &ctlapi.Error{Msg: "time " + strconv.Quote(s) + " is not RFC 3339", Code: ctlapi.CodeInvalid}
		}
		t.Time, n = v, n+1
	}
	if s := q.Get("bookmark"); s != "" {
		t.Bookmark, n = s, n+1
	}
	if n != 1 {
		return t, &ctlapi.Error{Msg: "give exactly one of seq, time or bookmark", Code: ctlapi.CodeInvalid}
	}
	return t, nil
}

// groupFunc handles a request about one group, its tenant resolved.
type groupFunc func(w http.ResponseWriter, r *http.Request, tenant, group string)

// withGroup resolves the request's group (and tenant, when several
// tenants have it) before fn; an unknown group is answered with codes.
func withGroup(site *replica.Site, codes map[error]string, fn groupFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		tenant, err := site.Resolve(q.Get("tenant"), q.Get("group"))
		if err != nil {
			ctlapi.Reply(w, nil, err, codes)
			return
		}
		fn(w, r, tenant, q.Get("group"))
	}
}

// replicaAPI is the replica daemon's control API over site.
func replicaAPI(site *replica.Site, fo *failover.Engine) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/groups", func(w http.ResponseWriter, r *http.Request) {
		gs, err := site.Groups(r.Context())
		ctlapi.Reply(w, gs, err, replicaCodes)
	})
	onGroup := func(fn groupFunc) http.HandlerFunc { return withGroup(site, replicaCodes, fn) }
	mux.HandleFunc("GET /v1/points", onGroup(func(w http.ResponseWriter, r *http.Request, tenant, group string) {
		pi, err := site.PointsOf(r.Context(), tenant, group)
		ctlapi.Reply(w, pi, err, replicaCodes)
	}))
	mux.HandleFunc("POST /v1/export", onGroup(func(w http.ResponseWriter, r *http.Request, tenant, group string) {
		at, err := targetOf(r.URL.Query())
		if err != nil {
			ctlapi.Reply(w, nil, err, replicaCodes)
			return
		}
		// The view lives on after the request: not bound to its context.
		e, err := site.Export(context.WithoutCancel(r.Context()), tenant, group, at, r.URL.Query().Get("writable") == "1")
		if err != nil {
			ctlapi.Reply(w, nil, err, replicaCodes)
			return
		}
		if r.Context().Err() != nil { // the client is gone: nobody knows this export
			site.Unexport(e.ID)
			return
		}
		ctlapi.Reply(w, e, nil, replicaCodes)
	}))
	mux.HandleFunc("GET /v1/exports", func(w http.ResponseWriter, r *http.Request) {
		ctlapi.WriteJSON(w, http.StatusOK, site.Exports())
	})
	mux.HandleFunc("POST /v1/unexport", func(w http.ResponseWriter, r *http.Request) {
		ctlapi.Reply(w, nil, site.Unexport(r.URL.Query().Get("id")), replicaCodes)
	})
	mux.HandleFunc("POST /v1/restore", onGroup(func(w http.ResponseWriter, r *http.Request, tenant, group string) {
		q := r.URL.Query()
		at, err := targetOf(q)
		if err != nil {
			ctlapi.Reply(w, nil, err, replicaCodes)
			return
		}
		ri, err := site.Restore(r.Context(), tenant, group, at, q.Get("disk"), q.Get("path"), q.Get("format"))
		ctlapi.Reply(w, ri, err, replicaCodes)
	}))
	mux.HandleFunc("POST /v1/verify", onGroup(func(w http.ResponseWriter, r *http.Request, tenant, group string) {
		rep, err := site.Verify(r.Context(), tenant, group)
		ctlapi.Reply(w, rep, err, replicaCodes)
	}))
	if fo != nil {
		failoverAPI(mux, site, fo)
	}
	return mux
}

// replicaClient talks to a running replica daemon's control API.
type replicaClient struct{ c *ctlapi.Client }

func newReplicaClient(path string) *replicaClient {
	return &replicaClient{ctlapi.NewClient(path, "replica")}
}

// groupQuery names a group (tenant may be "": the daemon finds it) and,
// where given, a target.
func groupQuery(tenant, group string, at *journal.Target) url.Values {
	q := url.Values{"group": {group}}
	if tenant != "" {
		q.Set("tenant", tenant)
	}
	if at != nil {
		switch {
		case at.Bookmark != "":
			q.Set("bookmark", at.Bookmark)
		case !at.Time.IsZero():
			q.Set("time", at.Time.Format(time.RFC3339Nano))
		default:
			q.Set("seq", strconv.FormatUint(at.Seq, 10))
		}
	}
	return q
}

func (c *replicaClient) Groups(ctx context.Context) ([]replica.GroupInfo, error) {
	var out []replica.GroupInfo
	err := c.c.Do(ctx, http.MethodGet, "/v1/groups", nil, &out)
	return out, err
}

func (c *replicaClient) Points(ctx context.Context, tenant, group string) (replica.PointsInfo, error) {
	var out replica.PointsInfo
	err := c.c.Do(ctx, http.MethodGet, "/v1/points", groupQuery(tenant, group, nil), &out)
	return out, err
}

func (c *replicaClient) Export(ctx context.Context, tenant, group string, at journal.Target, writable bool) (replica.ExportInfo, error) {
	q := groupQuery(tenant, group, &at)
	if writable {
		q.Set("writable", "1")
	}
	var out replica.ExportInfo
	err := c.c.Do(ctx, http.MethodPost, "/v1/export", q, &out)
	return out, err
}

func (c *replicaClient) Exports(ctx context.Context) ([]replica.ExportInfo, error) {
	var out []replica.ExportInfo
	err := c.c.Do(ctx, http.MethodGet, "/v1/exports", nil, &out)
	return out, err
}

func (c *replicaClient) Unexport(ctx context.Context, id string) error {
	return c.c.Do(ctx, http.MethodPost, "/v1/unexport", url.Values{"id": {id}}, nil)
}

// Restore materializes one disk of a group at a point into an image file
// (raw or qcow2) the daemon creates at path.
func (c *replicaClient) Restore(ctx context.Context, tenant, group string, at journal.Target, disk, path, format string) (replica.RestoreInfo, error) {
	q := groupQuery(tenant, group, &at)
	q.Set("disk", disk)
	q.Set("path", path)
	q.Set("format", format)
	var out replica.RestoreInfo
	err := c.c.Do(ctx, http.MethodPost, "/v1/restore", q, &out)
	return out, err
}

func (c *replicaClient) Verify(ctx context.Context, tenant, group string) (journal.Report, error) {
	var out journal.Report
	err := c.c.Do(ctx, http.MethodPost, "/v1/verify", groupQuery(tenant, group, nil), &out)
	return out, err
}
