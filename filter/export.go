package filter

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/qcdp/qcdp/libnbd"
	"github.com/qcdp/qcdp/qmp"
)

// QEMU has one NBD server per process. A resync starts it on
// Config.NBDSocket while any disk of the VM needs it and stops it after
// the last one: libvirt needs it free for its own backups. A server
// already running that answers on NBDSocket is an earlier daemon's (it
// died mid-resync) and is taken over; one that does not is someone
// else's, and the resync waits for it to stop.
var nbdServers = struct {
	sync.Mutex
	m map[*qmp.Client]*nbdServer
}{m: map[*qmp.Client]*nbdServer{}}

type nbdServer struct {
	users int
}

// acquireServer makes sure QEMU's NBD server listens on NBDSocket.
func (c *Capture) acquireServer(ctx context.Context) error {
	d, path := c.cfg.Disk, c.cfg.NBDSocket
	if path == "" {
		return fmt.Errorf("filter: disk %s: no NBD socket for resync exports", d)
	}
	nbdServers.Lock()
	defer nbdServers.Unlock()
	if s, ok := nbdServers.m[c.q]; ok {
		s.users++
		return nil
	}
	err := c.q.Execute(ctx, "nbd-server-start", map[string]any{
		"addr": map[string]any{"type": "unix", "data": map[string]any{"path": path}}}, nil)
	if err != nil && strings.Contains(err.Error(), "already running") {
		conn, derr := net.DialTimeout("unix", path, time.Second)
		if derr != nil {
			return fmt.Errorf("filter: disk %s: QEMU's NBD server is in use by another program (a libvirt backup?): the resync waits for it: %w", d, err)
		}
		conn.Close()
		err = nil // an earlier daemon's: ours now
	}
	if err != nil {
		return fmt.Errorf("filter: disk %s: start QEMU's NBD server on %s: %w", d, path, err)
	}
	nbdServers.m[c.q] = &nbdServer{users: 1}
	return nil
}

// releaseServer stops QEMU's NBD server after its last user.
func (c *Capture) releaseServer(ctx context.Context) {
	nbdServers.Lock()
	defer nbdServers.Unlock()
	s, ok := nbdServers.m[c.q]
	if !ok {
		return
	}
	if s.users--; s.users > 0 {
		return
	}
	delete(nbdServers.m, c.q)
	if err := c.q.Execute(ctx, "nbd-server-stop", nil, nil); err != nil && !qmp.IsClass(err, qmp.ClassGenericError) {
		c.log.Warn("stop QEMU's NBD server", "err", err)
	}
}

// withExport exports the disk's filter node read-only from QEMU's NBD
// server, with bitmap ("" for none) as a meta context, runs fn on a
// libnbd connection to it, and removes the export (and the server, after
// its last user) whatever fn returned.
func (c *Capture) withExport(ctx context.Context, bitmap string, fn func(h *libnbd.Handle) error) (err error) {
	d := c.cfg.Disk
	if err := c.acquireServer(ctx); err != nil {
		return err
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if derr := c.delExport(dctx); derr != nil && err == nil {
			err = derr
		}
		c.releaseServer(dctx)
	}()
	name := ResyncExport(d)
	c.dropExport(ctx) // a daemon that died mid-resync may have left it
	args := map[string]any{"type": "nbd", "id": name, "node-name": FilterNode(d), "name": name, "writable": false}
	if bitmap != "" {
		args["bitmaps"] = []string{bitmap}
	}
	if err := c.q.Execute(ctx, "block-export-add", args, nil); err != nil {
		return fmt.Errorf("filter: disk %s: export %s for the resync: %w", d, FilterNode(d), err)
	}
	h, err := c.openExport(ctx, bitmap)
	if err != nil {
		return err
	}
	defer h.Close()
	return fn(h)
}

// openExport connects to the disk's resync export, with bitmap's meta
// context unless bitmap is "".
func (c *Capture) openExport(ctx context.Context, bitmap string) (*libnbd.Handle, error) {
	d := c.cfg.Disk
	h, err := libnbd.New()
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*libnbd.Handle, error) {
		h.Close()
		return nil, err
	}
	if err := h.SetExportName(ResyncExport(d)); err != nil {
		return fail(err)
	}
	meta := "qemu:dirty-bitmap:" + bitmap
	if bitmap != "" {
		if err := h.AddMetaContext(meta); err != nil {
			return fail(err)
		}
	}
	if err := h.ConnectUnix(ctx, c.cfg.NBDSocket); err != nil {
		return fail(fmt.Errorf("filter: disk %s: connect to QEMU's NBD server: %w", d, err))
	}
	if bitmap != "" {
		if ok, err := h.CanMetaContext(meta); err != nil || !ok {
			return fail(fmt.Errorf("filter: disk %s: QEMU's export offers no %s (%v)", d, meta, err))
		}
	}
	return h, nil
}

// delExport removes the disk's resync export and waits until it is gone.
func (c *Capture) delExport(ctx context.Context) error {
	name := ResyncExport(c.cfg.Disk)
	err := c.q.Execute(ctx, "block-export-del", map[string]any{"id": name, "mode": "hard"}, nil)
	if err != nil && !qmp.IsClass(err, qmp.ClassGenericError) {
		return fmt.Errorf("filter: disk %s: remove the resync export: %w", c.cfg.Disk, err)
	}
	c.waitExportGone(ctx, name)
	return nil
}
