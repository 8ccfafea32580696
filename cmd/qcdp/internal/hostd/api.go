package hostd

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"time"

	"github.com/qcdp/qcdp/cmd/qcdp/internal/ctlapi"
	"github.com/qcdp/qcdp/shipper/sender"
)

// Status is what GET /v1/status returns and `qcdp status` shows.
type Status struct {
	Groups []GroupStatus `json:"groups"`
}

// GroupStatus is one protection group.
type GroupStatus struct {
	Name      string       `json:"name"`
	Socket    string       `json:"nbd_socket"`
	SpoolDir  string       `json:"spool_dir"`
	LastSeq   uint64       `json:"last_seq"`
	Acked     uint64       `json:"acked_seq"`
	Bytes     int64        `json:"spool_bytes"`
	MaxBytes  int64        `json:"spool_max"`
	Disks     []DiskStatus `json:"disks"`
	NBDWrites int64        `json:"nbd_writes"`
	NBDErrors int64        `json:"nbd_errors"`
	// Replica is the stream to the group's replica; nil without one.
	Replica *sender.Stats `json:"replica,omitempty"`
}

// DiskStatus is one protected disk.
type DiskStatus struct {
	VM     string    `json:"vm"`
	VMID   string    `json:"vm_id"`
	Target string    `json:"target"`
	Stream string    `json:"stream"`
	Node   string    `json:"node"`
	Format string    `json:"format"`
	Size   int64     `json:"size"`
	State  string    `json:"state"`
	Error  string    `json:"error,omitempty"`
	Since  time.Time `json:"since"`
}

// Status reports every group and protected disk.
func (d *Daemon) Status() Status {
	var st Status
	names := make([]string, 0, len(d.groups))
	for n := range d.groups {
		names = append(names, n)
	}
	sort.Strings(names)
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, n := range names {
		g := d.groups[n]
		ss := g.sp.Stats()
		ns := g.srv.Stats()
		gs := GroupStatus{Name: n, Socket: g.sock, SpoolDir: d.pol.SpoolDir(g.cfg),
			LastSeq: g.sp.LastSeq(), Acked: g.sp.Acked(), Bytes: ss.Bytes, MaxBytes: g.cfg.SpoolMax,
			NBDWrites: ns.Writes, NBDErrors: ns.Errors, Disks: []DiskStatus{}}
		if g.snd != nil {
			rs := g.snd.Stats()
			gs.Replica = &rs
		}
		for _, v := range d.vms {
			if v.group != g {
				continue
			}
			for _, dc := range v.disks {
				state, err := dc.cap.State()
				ds := DiskStatus{VM: v.vm.Name, VMID: v.vm.ID, Target: dc.disk.Target, Stream: dc.name,
					Node: dc.disk.Node, Format: dc.disk.Format, Size: dc.disk.Size, State: string(state), Since: dc.since}
				if err != nil {
					ds.Error = err.Error()
				}
				gs.Disks = append(gs.Disks, ds)
			}
		}
		sort.Slice(gs.Disks, func(i, j int) bool { return gs.Disks[i].Stream < gs.Disks[j].Stream })
		st.Groups = append(st.Groups, gs)
	}
	return st
}

// apiCodes maps the daemon's errors to the control API's codes.
var apiCodes = map[error]string{ErrUnknownVM: ctlapi.CodeNotFound, ErrUnknownGroup: ctlapi.CodeNotFound}

// ServeAPI serves the control API on the unix socket at path until ctx
// ends. Only the socket's permissions (0600, root) guard it.
func (d *Daemon) ServeAPI(ctx context.Context, path string) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		ctlapi.WriteJSON(w, http.StatusOK, d.Status())
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		WriteMetrics(w, d.Status())
	})
	vmAction := func(do func(ctx context.Context, vm, disk string) error) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			q := r.URL.Query()
			ctlapi.Reply(w, nil, do(r.Context(), q.Get("vm"), q.Get("disk")), apiCodes)
		}
	}
	mux.HandleFunc("POST /v1/detach", vmAction(d.Detach))
	mux.HandleFunc("POST /v1/pause", vmAction(d.Pause))
	mux.HandleFunc("POST /v1/resume", vmAction(d.Resume))
	mux.HandleFunc("POST /v1/attach", vmAction(func(ctx context.Context, vm, _ string) error { return d.Attach(ctx, vm) }))
	mux.HandleFunc("POST /v1/bookmark", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		res, err := d.Bookmark(r.Context(), q.Get("group"), q.Get("name"), q.Get("app") == "1")
		ctlapi.Reply(w, res, err, apiCodes)
	})
	if err := ctlapi.Serve(ctx, path, mux); err != nil {
		return fmt.Errorf("hostd: %w", err)
	}
	return nil
}

// Client talks to a running host daemon's control API.
type Client struct{ c *ctlapi.Client }

// NewClient returns a client of the control socket at path.
func NewClient(path string) *Client { return &Client{ctlapi.NewClient(path)} }

// Status fetches the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.c.Do(ctx, http.MethodGet, "/v1/status", nil, &st)
	return st, err
}

func (c *Client) vm(ctx context.Context, action, vm, disk string) error {
	return c.c.Do(ctx, http.MethodPost, "/v1/"+action, url.Values{"vm": {vm}, "disk": {disk}}, nil)
}

// Detach asks the daemon to detach vm (disk "" for all its disks).
func (c *Client) Detach(ctx context.Context, vm, disk string) error {
	return c.vm(ctx, "detach", vm, disk)
}

// Pause asks the daemon to hold capture of vm (disk "" for all its disks).
func (c *Client) Pause(ctx context.Context, vm, disk string) error {
	return c.vm(ctx, "pause", vm, disk)
}

// Resume asks the daemon to end a pause.
func (c *Client) Resume(ctx context.Context, vm, disk string) error {
	return c.vm(ctx, "resume", vm, disk)
}

// Attach asks the daemon to protect vm again.
func (c *Client) Attach(ctx context.Context, vm string) error { return c.vm(ctx, "attach", vm, "") }

// Bookmark asks the daemon for a bookmark in group's stream (app: freeze
// the guests through their agents first).
func (c *Client) Bookmark(ctx context.Context, group, name string, app bool) (BookmarkResult, error) {
	var res BookmarkResult
	q := url.Values{"group": {group}, "name": {name}}
	if app {
		q.Set("app", "1")
	}
	err := c.c.Do(ctx, http.MethodPost, "/v1/bookmark", q, &res)
	return res, err
}
