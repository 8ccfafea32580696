package shipper

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/qcdp/qcdp/libnbd"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/shipper/spool"
)

func groupOptions(t *testing.T, dir string) GroupOptions {
	return GroupOptions{
		Spool:  spool.Options{Dir: filepath.Join(dir, "spool"), Group: "g1", SegmentBytes: 64 << 10},
		Socket: filepath.Join(dir, "g1.sock"), SocketMode: 0o600, SocketGID: -1,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

// TestGroupServesIntoSpool: a write through a real NBD client (libnbd) to a
// served group's export is in its spool, in order, when it is answered;
// Shutdown ends Serve with ErrGroupClosed, removes the socket, and the
// spool reopens with every write.
func TestGroupServesIntoSpool(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	opts := groupOptions(t, dir)
	g, err := OpenGroup(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Export("vda", 1<<20); err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- g.Serve(ctx) }()
	if fi, err := os.Stat(opts.Socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %s: mode %v, %v; want 0600 (root only without a QEMU group)", opts.Socket, fi.Mode(), err)
	}

	h, err := libnbd.New()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.SetExportName("vda"); err != nil {
		t.Fatal(err)
	}
	if err := h.ConnectUnix(ctx, opts.Socket); err != nil {
		t.Fatal(err)
	}
	p1, p2 := bytes.Repeat([]byte{1}, 4096), bytes.Repeat([]byte{2}, 512)
	if err := h.Pwrite(ctx, p1, 8192, 0); err != nil {
		t.Fatal(err)
	}
	if err := h.Pwrite(ctx, p2, 100, 0); err != nil {
		t.Fatal(err)
	}
	if got := g.Spool().LastSeq(); got != 2 {
		t.Fatalf("after two answered writes the spool's last seq is %d, want 2", got)
	}
	h.Close()

	if err := g.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; !errors.Is(err, ErrGroupClosed) {
		t.Fatalf("Serve after Shutdown: %v, want ErrGroupClosed", err)
	}
	if _, err := os.Lstat(opts.Socket); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind after Shutdown: %v", err)
	}
	if err := g.Shutdown(ctx); err != nil {
		t.Fatalf("second Shutdown: %v", err)
	}

	sp, err := spool.Open(ctx, opts.Spool)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	var recs []record.Record
	c := sp.Cursor(1)
	defer c.Close()
	for {
		r, err := c.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		r.Payload = bytes.Clone(r.Payload) // the cursor reuses its buffer
		recs = append(recs, r)
	}
	want := []struct {
		off int64
		p   []byte
	}{{8192, p1}, {100, p2}}
	if len(recs) != len(want) {
		t.Fatalf("spool holds %d records, want %d", len(recs), len(want))
	}
	for i, w := range want {
		r := recs[i]
		if r.Kind != record.Data || r.Disk != "vda" || int64(r.Offset) != w.off || !bytes.Equal(r.Payload, w.p) {
			t.Fatalf("record %d: %v %s @%d (%d bytes), want data vda @%d (%d bytes)", i, r.Kind, r.Disk, r.Offset, len(r.Payload), w.off, len(w.p))
		}
	}
}

// TestGroupSocketTakeover: a group never takes over a socket another server
// answers on, and replaces a stale socket file nobody serves (a killed
// daemon's), which QEMU reconnects to.
func TestGroupSocketTakeover(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := groupOptions(t, dir)

	live, err := net.Listen("unix", opts.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if g, err := OpenGroup(ctx, opts); err == nil {
		g.Shutdown(ctx)
		t.Fatal("OpenGroup took over a socket another server listens on")
	}
	// The refused group must not have left its spool locked or the other
	// server's socket removed.
	if c, err := net.Dial("unix", opts.Socket); err != nil {
		t.Fatalf("the live server's socket was disturbed: %v", err)
	} else {
		c.Close()
	}
	// A stale socket: the listener closes without removing its file.
	live.(*net.UnixListener).SetUnlinkOnClose(false)
	live.Close()
	if _, err := os.Lstat(opts.Socket); err != nil {
		t.Fatal(err)
	}
	g, err := OpenGroup(ctx, opts)
	if err != nil {
		t.Fatalf("OpenGroup over a stale socket: %v", err)
	}
	if err := g.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestGroupExportsAndServeOnce: an export of the same size is kept (a VM
// restart keeps its export), one of another size replaces it; Serve runs
// once, and a group shut down unserved closes cleanly.
func TestGroupExportsAndServeOnce(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opts := groupOptions(t, t.TempDir())
	opts.Socket = "" // the caller writes into the exports itself
	g, err := OpenGroup(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	a, err := g.Export("vda", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := g.Export("vda", 1<<20); b != a {
		t.Fatal("an export of the same disk and size was not kept")
	}
	c, err := g.Export("vda", 2<<20)
	if err != nil || c == a || c.Size() != 2<<20 {
		t.Fatalf("resized export: %v (same: %v)", err, c == a)
	}
	if err := c.WriteAt(ctx, make([]byte, 512), 1<<20); err != nil {
		t.Fatalf("write past the old size into the resized export: %v", err)
	}
	served := make(chan error, 1)
	go func() { served <- g.Serve(ctx) }()
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve after its ctx ended: %v, want nil", err)
	}
	if err := g.Serve(context.Background()); !errors.Is(err, ErrGroupClosed) {
		t.Fatalf("second Serve: %v, want ErrGroupClosed", err)
	}
	if err := g.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}

	g2, err := OpenGroup(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if got := g2.Spool().LastSeq(); got != 1 {
		t.Fatalf("reopened spool's last seq %d, want 1", got)
	}
	if err := g2.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown of a group never served: %v", err)
	}
}
