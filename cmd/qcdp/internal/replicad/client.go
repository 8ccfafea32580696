package replicad

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/qcdp/qcdp/cmd/qcdp/internal/ctlapi"
	"github.com/qcdp/qcdp/replica/journal"
)

// Client talks to a running replica daemon's control API.
type Client struct{ c *ctlapi.Client }

// NewClient returns a client of the control socket at path.
func NewClient(path string) *Client { return &Client{ctlapi.NewClient(path)} }

// Query values naming a group (tenant may be "": the daemon finds it) and,
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

// Groups lists the journals the replica holds.
func (c *Client) Groups(ctx context.Context) ([]GroupInfo, error) {
	var out []GroupInfo
	err := c.c.Do(ctx, http.MethodGet, "/v1/groups", nil, &out)
	return out, err
}

// Points lists a group's restore points.
func (c *Client) Points(ctx context.Context, tenant, group string) (PointsInfo, error) {
	var out PointsInfo
	err := c.c.Do(ctx, http.MethodGet, "/v1/points", groupQuery(tenant, group, nil), &out)
	return out, err
}

// Export serves a view of a group at a restore point over NBD.
func (c *Client) Export(ctx context.Context, tenant, group string, at journal.Target, writable bool) (ExportInfo, error) {
	q := groupQuery(tenant, group, &at)
	if writable {
		q.Set("writable", "1")
	}
	var out ExportInfo
	err := c.c.Do(ctx, http.MethodPost, "/v1/export", q, &out)
	return out, err
}

// Exports lists the exported views.
func (c *Client) Exports(ctx context.Context) ([]ExportInfo, error) {
	var out []ExportInfo
	err := c.c.Do(ctx, http.MethodGet, "/v1/exports", nil, &out)
	return out, err
}

// Unexport withdraws an exported view.
func (c *Client) Unexport(ctx context.Context, id string) error {
	return c.c.Do(ctx, http.MethodPost, "/v1/unexport", url.Values{"id": {id}}, nil)
}

// Restore materializes one disk of a group at a restore point into a raw
// file the daemon creates at path.
func (c *Client) Restore(ctx context.Context, tenant, group string, at journal.Target, disk, path string) (RestoreInfo, error) {
	q := groupQuery(tenant, group, &at)
	q.Set("disk", disk)
	q.Set("path", path)
	var out RestoreInfo
	err := c.c.Do(ctx, http.MethodPost, "/v1/restore", q, &out)
	return out, err
}

// Verify checks every record and base of a group's journal.
func (c *Client) Verify(ctx context.Context, tenant, group string) (json.RawMessage, error) {
	var out json.RawMessage
	err := c.c.Do(ctx, http.MethodPost, "/v1/verify", groupQuery(tenant, group, nil), &out)
	return out, err
}
