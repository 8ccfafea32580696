package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/qcdp/qcdp/cmd/qcdp/internal/ctlapi"
	"github.com/qcdp/qcdp/protect"
)

// hostCodes maps the engine's errors to the control API's codes.
var hostCodes = map[error]string{
	protect.ErrUnknownVM:    ctlapi.CodeNotFound,
	protect.ErrUnknownDisk:  ctlapi.CodeNotFound,
	protect.ErrUnknownGroup: ctlapi.CodeNotFound,
	protect.ErrBadName:      ctlapi.CodeInvalid,
	protect.ErrFailedOver:   ctlapi.CodeInvalid,
	protect.ErrPrepared:     ctlapi.CodeInvalid,
	protect.ErrPrepare:      ctlapi.CodeInvalid,
}

// hostAPI is the host daemon's control API over engine d.
func hostAPI(d *protect.Engine) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		ctlapi.WriteJSON(w, http.StatusOK, d.Status())
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		protect.WriteMetrics(w, d.Status())
	})
	vmAction := func(do func(ctx context.Context, vm, disk string) error) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			q := r.URL.Query()
			ctlapi.Reply(w, nil, do(r.Context(), q.Get("vm"), q.Get("disk")), hostCodes)
		}
	}
	mux.HandleFunc("POST /v1/detach", vmAction(d.Detach))
	mux.HandleFunc("POST /v1/pause", vmAction(d.Pause))
	mux.HandleFunc("POST /v1/resume", vmAction(d.Resume))
	mux.HandleFunc("POST /v1/attach", vmAction(func(ctx context.Context, vm, _ string) error { return d.Attach(ctx, vm) }))
	mux.HandleFunc("POST /v1/bookmark", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		res, err := d.Bookmark(r.Context(), q.Get("group"), q.Get("name"), q.Get("app") == "1")
		ctlapi.Reply(w, res, err, hostCodes)
	})
	mux.HandleFunc("POST /v1/prepare-failover", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		var timeout time.Duration
		if s := q.Get("timeout"); s != "" {
			var err error
			if timeout, err = time.ParseDuration(s); err != nil || timeout <= 0 {
				ctlapi.WriteJSON(w, http.StatusBadRequest, &ctlapi.Error{Msg: fmt.Sprintf("timeout %q: want a positive duration, e.g. 5m", s), Code: ctlapi.CodeInvalid})
				return
			}
		}
		res, err := d.PrepareFailover(r.Context(), q.Get("group"), timeout, q.Get("agent") == "1")
		ctlapi.Reply(w, res, err, hostCodes)
	})
	return mux
}

// hostClient talks to a running host daemon's control API.
type hostClient struct{ c *ctlapi.Client }

func newHostClient(path string) *hostClient { return &hostClient{ctlapi.NewClient(path, "host")} }

// Status fetches the daemon's status.
func (c *hostClient) Status(ctx context.Context) (protect.Status, error) {
	var st protect.Status
	err := c.c.Do(ctx, http.MethodGet, "/v1/status", nil, &st)
	return st, err
}

func (c *hostClient) vm(ctx context.Context, action, vm, disk string) error {
	return c.c.Do(ctx, http.MethodPost, "/v1/"+action, url.Values{"vm": {vm}, "disk": {disk}}, nil)
}

// Detach asks the daemon to detach vm (disk "" for all its disks).
func (c *hostClient) Detach(ctx context.Context, vm, disk string) error {
	return c.vm(ctx, "detach", vm, disk)
}

// Pause asks the daemon to hold capture of vm (disk "" for all its disks).
func (c *hostClient) Pause(ctx context.Context, vm, disk string) error {
	return c.vm(ctx, "pause", vm, disk)
}

// Resume asks the daemon to end a pause.
func (c *hostClient) Resume(ctx context.Context, vm, disk string) error {
	return c.vm(ctx, "resume", vm, disk)
}

// Attach asks the daemon to protect vm again.
func (c *hostClient) Attach(ctx context.Context, vm string) error { return c.vm(ctx, "attach", vm, "") }

// Bookmark asks the daemon for a bookmark in group's stream (app: freeze
// the guests through their agents first).
func (c *hostClient) Bookmark(ctx context.Context, group, name string, app bool) (protect.BookmarkResult, error) {
	var res protect.BookmarkResult
	q := url.Values{"group": {group}, "name": {name}}
	if app {
		q.Set("app", "1")
	}
	err := c.c.Do(ctx, http.MethodPost, "/v1/bookmark", q, &res)
	return res, err
}

// PrepareFailover asks the daemon to prepare group for a planned failover:
// shut its VMs down (agent: through their guest agents), mark the final
// point and wait until the replica holds it, each wait bounded by timeout.
func (c *hostClient) PrepareFailover(ctx context.Context, group string, timeout time.Duration, agent bool) (protect.PrepareResult, error) {
	var res protect.PrepareResult
	q := url.Values{"group": {group}, "timeout": {timeout.String()}}
	if agent {
		q.Set("agent", "1")
	}
	err := c.c.Do(ctx, http.MethodPost, "/v1/prepare-failover", q, &res)
	return res, err
}
