package replicad

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"time"

	"github.com/qcdp/qcdp/cmd/qcdp/internal/ctlapi"
	"github.com/qcdp/qcdp/replica/journal"
)

// apiCodes maps the daemon's and the journal's errors to API codes.
var apiCodes = map[error]string{
	ErrUnknownGroup:    ctlapi.CodeNotFound,
	ErrUnknownExport:   ctlapi.CodeNotFound,
	ErrAmbiguousGroup:  ctlapi.CodeInvalid,
	journal.ErrNoPoint: ctlapi.CodeInvalid,
	journal.ErrNoDisk:  ctlapi.CodeNotFound,
	errBadTarget:       ctlapi.CodeInvalid,
}

var errBadTarget = fmt.Errorf("replicad: give exactly one of seq, time, bookmark")

// ErrAmbiguousGroup: a group name without a tenant matches several tenants.
var ErrAmbiguousGroup = fmt.Errorf("replicad: group is in several tenants; name the tenant")

// ExportInfo is what `qcdp export` prints.
type ExportInfo struct {
	ID       string            `json:"id"`
	Tenant   string            `json:"tenant"`
	Group    string            `json:"group"`
	Point    journal.Point     `json:"point"`
	Writable bool              `json:"writable"`
	URIs     map[string]string `json:"uris"` // disk → NBD URI
}

// PointsInfo is what `qcdp points` prints.
type PointsInfo struct {
	Tenant string          `json:"tenant"`
	Group  string          `json:"group"`
	Window journal.Window  `json:"window"`
	Points []journal.Point `json:"points"`
}

// RestoreInfo is what `qcdp restore` prints.
type RestoreInfo struct {
	Point journal.Point `json:"point"`
	Disk  string        `json:"disk"`
	Path  string        `json:"path"`
	Bytes int64         `json:"bytes"`
}

func (d *Daemon) info(e *export) ExportInfo {
	in := ExportInfo{ID: e.ID, Tenant: e.Tenant, Group: e.Group, Point: e.Point, Writable: e.Writable, URIs: map[string]string{}}
	for disk, name := range e.Disks {
		in.URIs[disk] = d.URI(name)
	}
	return in
}

// resolve finds the tenant of a group when none is given.
func (d *Daemon) resolve(tenant, group string) (string, error) {
	if tenant != "" {
		return tenant, nil
	}
	var found []string
	d.mu.Lock()
	for k := range d.journals {
		if t, g, _ := cutKey(k); g == group {
			found = append(found, t)
		}
	}
	for k := range d.broken {
		if t, g, _ := cutKey(k); g == group {
			found = append(found, t)
		}
	}
	d.mu.Unlock()
	switch len(found) {
	case 0:
		return "", fmt.Errorf("%w: %q", ErrUnknownGroup, group)
	case 1:
		return found[0], nil
	}
	sort.Strings(found)
	return "", fmt.Errorf("%w: %q is in tenants %v", ErrAmbiguousGroup, group, found)
}

// target reads seq=, time= (RFC 3339) or bookmark= from a query.
func target(q url.Values) (journal.Target, error) {
	var t journal.Target
	n := 0
	if s := q.Get("seq"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return t, fmt.Errorf("%w: seq %q", errBadTarget, s)
		}
		t.Seq, n = v, n+1
	}
	if s := q.Get("time"); s != "" {
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return t, fmt.Errorf("%w: time %q is not RFC 3339", errBadTarget, s)
		}
		t.Time, n = v, n+1
	}
	if s := q.Get("bookmark"); s != "" {
		t.Bookmark, n = s, n+1
	}
	if n != 1 {
		return t, errBadTarget
	}
	return t, nil
}

// ServeAPI serves the control API on the unix socket at path until ctx ends.
func (d *Daemon) ServeAPI(ctx context.Context, path string) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/groups", func(w http.ResponseWriter, r *http.Request) {
		gs, err := d.Groups(r.Context())
		ctlapi.Reply(w, gs, err, apiCodes)
	})
	withGroup := func(fn func(w http.ResponseWriter, r *http.Request, tenant, group string)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			q := r.URL.Query()
			tenant, err := d.resolve(q.Get("tenant"), q.Get("group"))
			if err != nil {
				ctlapi.Reply(w, nil, err, apiCodes)
				return
			}
			fn(w, r, tenant, q.Get("group"))
		}
	}
	mux.HandleFunc("GET /v1/points", withGroup(func(w http.ResponseWriter, r *http.Request, tenant, group string) {
		ps, win, err := d.Points(r.Context(), tenant, group)
		ctlapi.Reply(w, PointsInfo{Tenant: tenant, Group: group, Window: win, Points: ps}, err, apiCodes)
	}))
	mux.HandleFunc("POST /v1/export", withGroup(func(w http.ResponseWriter, r *http.Request, tenant, group string) {
		at, err := target(r.URL.Query())
		if err != nil {
			ctlapi.Reply(w, nil, err, apiCodes)
			return
		}
		// The view lives on after the request: not bound to its context.
		e, err := d.Export(context.WithoutCancel(r.Context()), tenant, group, at, r.URL.Query().Get("writable") == "1")
		if err != nil {
			ctlapi.Reply(w, nil, err, apiCodes)
			return
		}
		if r.Context().Err() != nil { // the client is gone: nobody knows this export
			d.Unexport(e.ID)
			return
		}
		ctlapi.Reply(w, d.info(e), nil, apiCodes)
	}))
	mux.HandleFunc("GET /v1/exports", func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		out := []ExportInfo{}
		for _, e := range d.views {
			out = append(out, d.info(e))
		}
		d.mu.Unlock()
		sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
		ctlapi.WriteJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("POST /v1/unexport", func(w http.ResponseWriter, r *http.Request) {
		ctlapi.Reply(w, nil, d.Unexport(r.URL.Query().Get("id")), apiCodes)
	})
	mux.HandleFunc("POST /v1/restore", withGroup(func(w http.ResponseWriter, r *http.Request, tenant, group string) {
		q := r.URL.Query()
		at, err := target(q)
		if err != nil {
			ctlapi.Reply(w, nil, err, apiCodes)
			return
		}
		p, n, err := d.Restore(r.Context(), tenant, group, at, q.Get("disk"), q.Get("path"))
		ctlapi.Reply(w, RestoreInfo{Point: p, Disk: q.Get("disk"), Path: q.Get("path"), Bytes: n}, err, apiCodes)
	}))
	mux.HandleFunc("POST /v1/verify", withGroup(func(w http.ResponseWriter, r *http.Request, tenant, group string) {
		j, err := d.existing(r.Context(), tenant, group)
		if err != nil {
			ctlapi.Reply(w, nil, err, apiCodes)
			return
		}
		rep, err := j.Verify(r.Context())
		ctlapi.Reply(w, rep, err, apiCodes)
	}))
	if err := ctlapi.Serve(ctx, path, mux); err != nil {
		return fmt.Errorf("replicad: %w", err)
	}
	return nil
}
