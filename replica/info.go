package replica

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/qcdp/qcdp/replica/journal"
)

// ErrAmbiguousGroup: a group name without a tenant matches several tenants.
var ErrAmbiguousGroup = errors.New("replica: group is in several tenants; name the tenant")

// ErrBadTarget: a restore point or restore target that cannot be.
var ErrBadTarget = errors.New("replica: bad target")

// Errors of ResolveDisk.
var (
	ErrUnknownDisk   = errors.New("replica: no such disk")
	ErrAmbiguousDisk = errors.New("replica: ambiguous disk name")
)

// ExportInfo is one exported view: what `qcdp export` and `qcdp exports`
// print.
type ExportInfo struct {
	ID       string            `json:"id"`
	Tenant   string            `json:"tenant"`
	Group    string            `json:"group"`
	Point    journal.Point     `json:"point"`
	Writable bool              `json:"writable"`
	Exports  map[string]string `json:"exports"` // disk → NBD export name
	URIs     map[string]string `json:"uris"`    // disk → NBD URI
}

// PointsInfo is a group's any-point window and restore points: what
// `qcdp points` prints.
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

func (d *Site) info(e *export) ExportInfo {
	in := ExportInfo{ID: e.ID, Tenant: e.Tenant, Group: e.Group, Point: e.Point, Writable: e.Writable,
		Exports: map[string]string{}, URIs: map[string]string{}}
	for disk, name := range e.Disks {
		in.Exports[disk] = name
		in.URIs[disk] = d.URI(name)
	}
	return in
}

// Exports lists the views exported now, by id.
func (d *Site) Exports() []ExportInfo {
	d.mu.Lock()
	out := []ExportInfo{}
	for _, e := range d.views {
		out = append(out, d.info(e))
	}
	d.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Resolve finds the tenant of a group when none is given.
func (d *Site) Resolve(tenant, group string) (string, error) {
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
		return "", fmt.Errorf("%w %q; %s", ErrUnknownGroup, group, d.groupList())
	case 1:
		return found[0], nil
	}
	sort.Strings(found)
	return "", fmt.Errorf("%w: %q is in tenants %v", ErrAmbiguousGroup, group, found)
}

// groupList names the groups the site holds, for an error message.
func (d *Site) groupList() string {
	d.mu.Lock()
	var keys []string
	for k := range d.journals {
		keys = append(keys, k)
	}
	for k := range d.broken {
		keys = append(keys, k)
	}
	d.mu.Unlock()
	if len(keys) == 0 {
		return "the replica holds no group yet"
	}
	sort.Strings(keys)
	return "the replica holds " + strings.Join(keys, ", ")
}

// ResolveDisk finds the disk a name stands for among a group's disks (the
// stream's names, "<vm id>.<target>"): the disk of exactly that name, else
// the one disk whose name ends in "." + name, so that "vda" names
// "vm1.vda" when no other VM of the group has a vda. A name that matches
// none, or several, is refused with the names there are.
func ResolveDisk(disks []string, name string) (string, error) {
	var found []string
	for _, d := range disks {
		if d == name {
			return d, nil
		}
		if strings.HasSuffix(d, "."+name) {
			found = append(found, d)
		}
	}
	switch {
	case len(found) == 1:
		return found[0], nil
	case len(found) > 1:
		sort.Strings(found)
		return "", fmt.Errorf("%w: %q could be %s; name one of them", ErrAmbiguousDisk, name, strings.Join(found, " or "))
	case len(disks) == 0:
		return "", fmt.Errorf("%w %q: the group has no disk there", ErrUnknownDisk, name)
	}
	sorted := append([]string(nil), disks...)
	sort.Strings(sorted)
	return "", fmt.Errorf("%w %q; the group's disks are %s", ErrUnknownDisk, name, strings.Join(sorted, ", "))
}

// PointsOf returns a group's window and restore points.
func (d *Site) PointsOf(ctx context.Context, tenant, group string) (PointsInfo, error) {
	ps, win, err := d.Points(ctx, tenant, group)
	return PointsInfo{Tenant: tenant, Group: group, Window: win, Points: ps}, err
}

// Verify checks every record and base of a group's journal.
// Damage is returned as journal.ErrCorrupt naming file, offset and seq.
func (d *Site) Verify(ctx context.Context, tenant, group string) (journal.Report, error) {
	j, err := d.existing(ctx, tenant, group)
	if err != nil {
		return journal.Report{}, err
	}
	return j.Verify(ctx)
}
