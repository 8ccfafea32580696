package filter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

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
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		sock, derr := c.dialQEMU(dctx)
		cancel()
		if derr != nil {
			return fmt.Errorf("filter: disk %s: QEMU's NBD server is in use by another program (a libvirt backup?): the resync waits for it: %w (%w)", d, err, derr)
		}
		unix.Close(sock)
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
	sock, err := c.dialQEMU(ctx)
	if err != nil {
		return fail(err)
	}
	if err := h.ConnectSocket(ctx, sock); err != nil {
		return fail(fmt.Errorf("filter: disk %s: connect to QEMU's NBD server: %w", d, err))
	}
	if bitmap != "" {
		if ok, err := h.CanMetaContext(meta); err != nil || !ok {
			return fail(fmt.Errorf("filter: disk %s: QEMU's export offers no %s (%v)", d, meta, err))
		}
	}
	return h, nil
}

// dialQEMU connects to NBDSocket and returns the socket (the caller owns
// it) once the kernel says the listener is the VM's QEMU (Config.QEMU):
// the socket's directory is writable by QEMU's user, which every QEMU
// under libvirt shares, so another VM's QEMU could have put its own server
// there, and the resync would copy what it says into this disk's replica.
func (c *Capture) dialQEMU(ctx context.Context) (int, error) {
	d := c.cfg.Disk
	conn, err := (&net.Dialer{}).DialContext(ctx, "unix", c.cfg.NBDSocket)
	if err != nil {
		return -1, fmt.Errorf("filter: disk %s: connect to QEMU's NBD server: %w", d, err)
	}
	defer conn.Close()
	raw, err := conn.(*net.UnixConn).SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("filter: disk %s: %w", d, err)
	}
	var cred *unix.Ucred
	var cerr error
	sock := -1
	err = raw.Control(func(fd uintptr) {
		if cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); cerr == nil {
			sock, cerr = unix.Dup(int(fd))
		}
	})
	if err = errors.Join(err, cerr); err != nil {
		return -1, fmt.Errorf("filter: disk %s: QEMU's NBD socket %s: %w", d, c.cfg.NBDSocket, err)
	}
	if want := c.cfg.QEMU; want > 0 && int(cred.Pid) != want {
		unix.Close(sock)
		return -1, fmt.Errorf("filter: disk %s: %w: %s is served by pid %d, not by the VM's QEMU (pid %d)",
			d, ErrForeignServer, c.cfg.NBDSocket, cred.Pid, want)
	}
	return sock, nil
}

// ErrForeignServer is a resync socket served by another process than the
// VM's QEMU: nothing is read from it.
var ErrForeignServer = errors.New("filter: the NBD socket is not the VM's QEMU's")

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
