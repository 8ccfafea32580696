package hostd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/qcdp/qcdp/shipper/sender"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"time"
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

// ServeAPI serves the control API on the unix socket at path until ctx
// ends. Only the socket's permissions (0600, root) guard it.
func (d *Daemon) ServeAPI(ctx context.Context, path string) error {
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("hostd: control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("hostd: control socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.Status())
	})
	mux.HandleFunc("POST /v1/detach", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		answer(w, d.Detach(r.Context(), q.Get("vm"), q.Get("disk")))
	})
	mux.HandleFunc("POST /v1/pause", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		answer(w, d.Pause(r.Context(), q.Get("vm"), q.Get("disk")))
	})
	mux.HandleFunc("POST /v1/resume", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		answer(w, d.Resume(r.Context(), q.Get("vm"), q.Get("disk")))
	})
	mux.HandleFunc("POST /v1/bookmark", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		res, err := d.Bookmark(r.Context(), q.Get("group"), q.Get("name"), q.Get("app") == "1")
		if err != nil {
			answer(w, err)
			return
		}
		writeJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc("POST /v1/attach", func(w http.ResponseWriter, r *http.Request) {
		answer(w, d.Attach(r.Context(), r.URL.Query().Get("vm")))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	select {
	case err := <-served:
		return fmt.Errorf("hostd: control API: %w", err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-served
		os.Remove(path)
		return nil
	}
}

type apiError struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

func answer(w http.ResponseWriter, err error) {
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, struct{}{})
	case errors.Is(err, ErrUnknownVM):
		writeJSON(w, http.StatusNotFound, apiError{err.Error(), "unknown-vm"})
	case errors.Is(err, ErrUnknownGroup):
		writeJSON(w, http.StatusNotFound, apiError{err.Error(), "unknown-group"})
	default:
		writeJSON(w, http.StatusInternalServerError, apiError{err.Error(), "failed"})
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// Client talks to a running daemon's control API.
type Client struct {
	hc *http.Client
}

// NewClient returns a client of the control socket at path.
func NewClient(path string) *Client {
	return &Client{hc: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", path)
		},
	}}}
}

// Status fetches the daemon's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.do(ctx, http.MethodGet, "/v1/status", nil, &st)
	return st, err
}

// Detach asks the daemon to detach vm (disk "" for all its disks).
func (c *Client) Detach(ctx context.Context, vm, disk string) error {
	return c.do(ctx, http.MethodPost, "/v1/detach", url.Values{"vm": {vm}, "disk": {disk}}, nil)
}

// Pause asks the daemon to hold capture of vm (disk "" for all its disks).
func (c *Client) Pause(ctx context.Context, vm, disk string) error {
	return c.do(ctx, http.MethodPost, "/v1/pause", url.Values{"vm": {vm}, "disk": {disk}}, nil)
}

// Resume asks the daemon to end a pause.
func (c *Client) Resume(ctx context.Context, vm, disk string) error {
	return c.do(ctx, http.MethodPost, "/v1/resume", url.Values{"vm": {vm}, "disk": {disk}}, nil)
}

// Bookmark asks the daemon for a bookmark in group's stream (app: freeze
// the guests through their agents first).
func (c *Client) Bookmark(ctx context.Context, group, name string, app bool) (BookmarkResult, error) {
	var res BookmarkResult
	q := url.Values{"group": {group}, "name": {name}}
	if app {
		q.Set("app", "1")
	}
	err := c.do(ctx, http.MethodPost, "/v1/bookmark", q, &res)
	return res, err
}

// Attach asks the daemon to protect vm again.
func (c *Client) Attach(ctx context.Context, vm string) error {
	return c.do(ctx, http.MethodPost, "/v1/attach", url.Values{"vm": {vm}}, nil)
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, out any) error {
	u := "http://qcdp" + path
	if q != nil {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("control API %s: %w (is `qcdp host` running?)", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("control API %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e apiError
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			switch e.Code {
			case "unknown-vm":
				return fmt.Errorf("%w: %s", ErrUnknownVM, e.Error)
			case "unknown-group":
				return fmt.Errorf("%w: %s", ErrUnknownGroup, e.Error)
			}
			return errors.New(e.Error)
		}
		return fmt.Errorf("control API %s: %s", path, resp.Status)
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return fmt.Errorf("control API %s: decode: %w", path, err)
		}
	}
	return nil
}
