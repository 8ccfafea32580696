package replica

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/nbd"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica/journal"
	"github.com/qcdp/qcdp/stream"
)

// What package failover needs of the site: fencing a group's stream,
// views exported under names that survive a daemon restart, an NBD socket
// QEMU may open, and the VM definitions and membership at a point.

// Fence makes the site refuse a group's stream and hash queries with
// stream.CodeFailedOver and why, and ends the stream running now; it
// returns once that stream has let go of the group's journal, so the
// journal takes nothing more. The fence is not kept across a restart: its
// owner (package failover) fences again before Serve.
func (d *Site) Fence(ctx context.Context, tenant, group, why string) error {
	d.mu.Lock()
	d.fences[tenant+"/"+group] = why
	d.mu.Unlock()
	d.log.Warn("group fenced: its stream is refused", "tenant", tenant, "group", group, "why", why)
	return d.recv.Stop(ctx, tenant, group, stream.CodeFailedOver, why)
}

// Unfence lets a fenced group stream again.
func (d *Site) Unfence(tenant, group string) {
	d.mu.Lock()
	_, was := d.fences[tenant+"/"+group]
	delete(d.fences, tenant+"/"+group)
	d.mu.Unlock()
	if was {
		d.log.Info("group unfenced: its stream is taken again", "tenant", tenant, "group", group)
	}
}

// Fenced reports why a group is fenced ("" and false: it is not).
func (d *Site) Fenced(tenant, group string) (string, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	why, ok := d.fences[tenant+"/"+group]
	return why, ok
}

func (d *Site) fenced(tenant, group string) error {
	if why, ok := d.Fenced(tenant, group); ok {
		return fmt.Errorf("group %s/%s has failed over at the recovery site: %s", tenant, group, why)
	}
	return nil
}

// ExportAs is Export under a name of the caller's (id, a configs.ValidName
// that no export uses), so that what points at the view (a standby's disk)
// finds it again under the same name after a restart.
func (d *Site) ExportAs(ctx context.Context, id, tenant, group string, at journal.Target, writable bool) (ExportInfo, error) {
	if err := configs.ValidName(id); err != nil || strings.HasPrefix(id, "x") {
		return ExportInfo{}, fmt.Errorf("replica: export id %q: a valid name not starting with x", id)
	}
	e, err := d.export(ctx, id, tenant, group, at, writable)
	if err != nil {
		return ExportInfo{}, err
	}
	d.mu.Lock()
	e.owned = true
	d.mu.Unlock()
	return d.info(e), nil
}

// ListenNBD serves one export's disks (names id/DISK) on a unix socket of
// its own at path, owned by uid:gid with mode 0660 (QEMU under libvirt
// runs as its own user), until stop is called or the site stops: a
// standby's QEMU reaches its own view there, and no other export of the
// site (other groups', other tenants', an operator's), which are answered
// as missing.
func (d *Site) ListenNBD(path string, uid, gid int, id string) (stop func() error, err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o711); err != nil {
		return nil, fmt.Errorf("replica: NBD socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("replica: NBD socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("replica: NBD socket: %w", err)
	}
	if err := os.Chmod(path, 0o660); err == nil {
		err = os.Chown(path, uid, gid)
	}
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("replica: NBD socket %s: %w", path, err)
	}
	srv := nbd.NewServer(onlyExport{cat: &d.exports, prefix: id + "/"}, nbd.Options{Logger: d.log.With("part", "standby-views", "export", id)})
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		ln.Close()
		os.Remove(path)
		return nil, errStopping
	}
	d.standby[srv] = struct{}{}
	d.mu.Unlock()
	done := make(chan struct{})
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer close(done)
		srv.Serve(ln) // ends at Shutdown
	}()
	return func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := srv.Shutdown(ctx)
		<-done
		d.mu.Lock()
		delete(d.standby, srv)
		d.mu.Unlock()
		os.Remove(path)
		if errors.Is(err, nbd.ErrServerClosed) {
			err = nil
		}
		return err
	}, nil
}

// onlyExport is the site's catalog narrowed to the disks of one export.
type onlyExport struct {
	cat    nbd.Catalog
	prefix string
}

func (o onlyExport) Lookup(name string) (nbd.Export, bool) {
	if !strings.HasPrefix(name, o.prefix) {
		return nil, false
	}
	return o.cat.Lookup(name)
}

func (o onlyExport) Names() []string {
	var out []string
	for _, n := range o.cat.Names() {
		if strings.HasPrefix(n, o.prefix) {
			out = append(out, n)
		}
	}
	return out
}

// PointAt resolves a target of a group into its restore point, the
// group's membership there and every VM's definition in effect at it. A
// target that is no restore point is refused naming the nearest valid
// points on either side.
func (d *Site) PointAt(ctx context.Context, tenant, group string, at journal.Target) (journal.Point, record.Declaration, []journal.DefinitionAt, error) {
	j, err := d.existing(ctx, tenant, group)
	if err != nil {
		return journal.Point{}, record.Declaration{}, nil, err
	}
	v, err := j.View(ctx, at)
	if err != nil {
		err = fmt.Errorf("group %s/%s: %w", tenant, group, err)
		if errors.Is(err, journal.ErrNoPoint) {
			if near := d.nearest(ctx, j, at); near != "" {
				err = fmt.Errorf("%w; %s", err, near)
			}
		}
		return journal.Point{}, record.Declaration{}, nil, err
	}
	defer v.Close()
	decl, ok := v.Members()
	if !ok {
		return journal.Point{}, record.Declaration{}, nil, fmt.Errorf("group %s/%s: its host declared no membership by seq %d: no VM to start", tenant, group, v.Point().Seq)
	}
	return v.Point(), decl, j.Definitions(v.Point().Seq), nil
}

// nearest names the valid restore points closest to a target that is
// none: the window's boundaries around the gap holding it.
func (d *Site) nearest(ctx context.Context, j *journal.Journal, at journal.Target) string {
	points, w, err := j.Points(ctx)
	if err != nil {
		return ""
	}
	if w.LastSeq == 0 {
		if len(points) == 0 {
			return "the group has no restore point yet (never in sync)"
		}
		return fmt.Sprintf("the newest restore point is seq %d (%s)", points[len(points)-1].Seq, points[len(points)-1].Time.UTC().Format("2006-01-02T15:04:05.000Z"))
	}
	s := at.Seq
	if s == 0 {
		return fmt.Sprintf("the window holds seq %d to %d", w.FirstSeq, w.LastSeq)
	}
	for _, g := range w.Gaps {
		if s >= g.FromSeq && s <= g.ToSeq {
			var parts []string
			if g.FromSeq > w.FirstSeq {
				parts = append(parts, fmt.Sprintf("seq %d before it", g.FromSeq-1))
			}
			if g.ToSeq < w.LastSeq {
				parts = append(parts, fmt.Sprintf("seq %d after it", g.ToSeq+1))
			}
			if len(parts) == 0 {
				return fmt.Sprintf("no restore point around it: seq %d to %d are no points", g.FromSeq, g.ToSeq)
			}
			return fmt.Sprintf("nearest valid points: %s", strings.Join(parts, ", "))
		}
	}
	if s > w.LastSeq {
		return fmt.Sprintf("the newest restore point is seq %d", w.LastSeq)
	}
	return fmt.Sprintf("the window holds seq %d to %d", w.FirstSeq, w.LastSeq)
}
