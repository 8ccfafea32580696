package libnbd_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/qcdp/qcdp/libnbd"
	"github.com/qcdp/qcdp/nbd"
)

// These tests drive qcdp's own NBD server with libnbd's client, which
// checks both sides: the wrapper, and the server against a client it did
// not write.

const size = 4 << 20

type slowExport struct{ delay time.Duration }

func (slowExport) Size() int64 { return size }

func (e slowExport) ReadAt(ctx context.Context, p []byte, _ int64) error {
	select {
	case <-time.After(e.delay):
		clear(p)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

type writeOnly struct{}

func (writeOnly) Size() int64                                  { return size }
func (writeOnly) WriteAt(context.Context, []byte, int64) error { return nil }
func (writeOnly) Flush(context.Context) error                  { return nil }

type env struct {
	sock string
	path string // backing file of "w" and "r"
}

func pat(seed byte, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*31+i>>9) ^ seed | 0x80
	}
	return p
}

// serve starts qcdp's server with "w" (writable sparse file: data at
// [64K,128K) and [2M,2M+4K)), "r" (the same file read-only), "wo"
// (write-only) and "slow" (reads take seconds).
func serve(t *testing.T) env {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "disk.raw")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.WriteAt(pat(1, 64<<10), 64<<10)
	f.WriteAt(pat(2, 4096), 2<<20)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	var cat nbd.Exports
	for name, ro := range map[string]bool{"w": false, "r": true} {
		e, c, err := nbd.OpenFile(path, ro)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		cat.Add(name, e)
	}
	cat.Add("wo", writeOnly{})
	cat.Add("slow", slowExport{delay: 1500 * time.Millisecond})
	sock := filepath.Join(dir, "nbd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := nbd.NewServer(&cat, nbd.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	})
	return env{sock: sock, path: path}
}

func connect(t *testing.T, e env, export string) *libnbd.Handle {
	t.Helper()
	h, err := libnbd.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	if err := h.SetExportName(export); err != nil {
		t.Fatal(err)
	}
	if err := h.AddMetaContext(libnbd.ContextBaseAllocation); err != nil {
		t.Fatal(err)
	}
	if err := h.RequestStructuredReplies(true); err != nil {
		t.Fatal(err)
	}
	if err := h.ConnectUnix(context.Background(), e.sock); err != nil {
		t.Fatalf("connect to %q: %v", export, err)
	}
	return h
}

type run struct {
	off, length uint64
	flags       uint64
}

// allExtents walks block status over the whole export.
func allExtents(t *testing.T, h *libnbd.Handle) []run {
	t.Helper()
	var out []run
	for pos := uint64(0); pos < size; {
		start := pos
		err := h.BlockStatus(context.Background(), size-pos, pos, 0, func(ctx string, off uint64, ents []libnbd.Extent) error {
			if ctx != libnbd.ContextBaseAllocation {
				t.Errorf("context %q", ctx)
			}
			if off != start {
				t.Errorf("extents from %d, asked from %d", off, start)
			}
			for _, x := range ents {
				if n := len(out); n > 0 && out[n-1].flags == x.Flags && out[n-1].off+out[n-1].length == pos {
					out[n-1].length += x.Length
				} else {
					out = append(out, run{pos, x.Length, x.Flags})
				}
				pos += x.Length
			}
			return nil
		})
		if err != nil {
			t.Fatalf("block status at %d: %v", start, err)
		}
		if pos == start {
			t.Fatalf("block status at %d made no progress", start)
		}
	}
	return out
}

func TestReadWriteZeroBlockStatus(t *testing.T) {
	e := serve(t)
	h := connect(t, e, "w")
	ctx := context.Background()
	if n, err := h.Size(); err != nil || n != size {
		t.Fatalf("size %d, %v", n, err)
	}
	if ok, err := h.CanMetaContext(libnbd.ContextBaseAllocation); err != nil || !ok {
		t.Fatalf("base:allocation not negotiated: %v %v", ok, err)
	}
	if ro, err := h.IsReadOnly(); err != nil || ro {
		t.Fatalf("writable export read-only: %v %v", ro, err)
	}
	hole := uint64(libnbd.StateHole | libnbd.StateZero)
	want := []run{{0, 64 << 10, hole}, {64 << 10, 64 << 10, 0}, {128 << 10, 2<<20 - 128<<10, hole}, {2 << 20, 4096, 0}, {2<<20 + 4096, size - 2<<20 - 4096, hole}}
	if got := allExtents(t, h); !equalRuns(got, want) {
		t.Fatalf("extents %v, want %v", got, want)
	}

	got := make([]byte, 64<<10)
	if err := h.Pread(ctx, got, 64<<10); err != nil || !bytes.Equal(got, pat(1, 64<<10)) {
		t.Fatalf("pread known data: %v (equal %v)", err, bytes.Equal(got, pat(1, 64<<10)))
	}
	tests := []struct {
		name  string
		off   uint64
		data  []byte
		flags libnbd.Flags
	}{
		{"plain", 1 << 20, pat(3, 8192), 0},
		{"fua", 3 << 20, pat(4, 4096), libnbd.FUA},
		{"odd 100 bytes", 1<<20 + 8192 + 17, pat(5, 100), 0},
	}
	for _, tc := range tests {
		if err := h.Pwrite(ctx, tc.data, tc.off, tc.flags); err != nil {
			t.Fatalf("%s: pwrite: %v", tc.name, err)
		}
		back := make([]byte, len(tc.data))
		if err := h.Pread(ctx, back, tc.off); err != nil || !bytes.Equal(back, tc.data) {
			t.Fatalf("%s: read back: %v", tc.name, err)
		}
	}
	if err := h.Zero(ctx, 4096, 1<<20, 0); err != nil {
		t.Fatalf("zero: %v", err)
	}
	if err := h.Zero(ctx, 100, 1<<20+8192+17, libnbd.NoHole|libnbd.FUA); err != nil {
		t.Fatalf("zero no-hole fua: %v", err)
	}
	if err := h.Flush(ctx); err != nil {
		t.Fatalf("flush: %v", err)
	}
	disk, err := os.ReadFile(e.path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(disk[1<<20:1<<20+4096], make([]byte, 4096)) || !bytes.Equal(disk[1<<20+4096:1<<20+8192], pat(3, 8192)[4096:]) {
		t.Errorf("zeroed range wrong in the file")
	}
	if !bytes.Equal(disk[3<<20:3<<20+4096], pat(4, 4096)) {
		t.Errorf("FUA write not in the file")
	}
	// The zeroed 4 KiB is a hole again; the rest of the write is data.
	ext := allExtents(t, h)
	if !containsRun(ext, run{1 << 20, 4096, hole}) {
		t.Errorf("zeroed range not reported as a hole: %v", ext)
	}
}

func TestConnectURIAndReadOnly(t *testing.T) {
	e := serve(t)
	h, err := libnbd.New()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.ConnectURI(context.Background(), "nbd+unix:///r?socket="+e.sock); err != nil {
		t.Fatalf("connect uri: %v", err)
	}
	if ro, err := h.IsReadOnly(); err != nil || !ro {
		t.Fatalf("read-only export not read-only: %v %v", ro, err)
	}
	head := make([]byte, 16)
	if err := h.Pread(context.Background(), head, 64<<10); err != nil || !bytes.Equal(head, pat(1, 16)) {
		t.Fatalf("read: %v", err)
	}
	err = h.Pwrite(context.Background(), []byte("x"), 0, 0)
	var le *libnbd.Error
	if !errors.As(err, &le) || !errors.Is(err, syscall.EPERM) || le.Op != "nbd_pwrite" || le.Msg == "" {
		t.Fatalf("write to read-only export: %v, want *Error nbd_pwrite with EPERM", err)
	}
	if err := h.Zero(context.Background(), 512, 0, 0); !errors.Is(err, syscall.EPERM) && !errors.Is(err, syscall.EINVAL) {
		t.Errorf("zero on read-only export: %v, want EPERM or EINVAL", err)
	}
}

func TestServerErrorsReachCaller(t *testing.T) {
	e := serve(t)
	h := connect(t, e, "wo")
	// The server answers ENOTSUP (the client cannot know before asking).
	err := h.Pread(context.Background(), make([]byte, 512), 0)
	var le *libnbd.Error
	if !errors.As(err, &le) || !errors.Is(err, syscall.ENOTSUP) {
		t.Fatalf("read of write-only export: %v, want ENOTSUP", err)
	}
	// The connection survives the error.
	if err := h.Pwrite(context.Background(), []byte("ok"), 0, libnbd.FUA); err != nil {
		t.Fatalf("write after error: %v", err)
	}
}

func TestBlockStatusCallbackError(t *testing.T) {
	e := serve(t)
	h := connect(t, e, "r")
	stop := errors.New("enough")
	err := h.BlockStatus(context.Background(), size, 0, libnbd.ReqOne, func(string, uint64, []libnbd.Extent) error { return stop })
	if !errors.Is(err, stop) {
		t.Fatalf("callback error: got %v", err)
	}
	// The handle still works.
	if err := h.Pread(context.Background(), make([]byte, 8), 0); err != nil {
		t.Fatalf("pread after callback error: %v", err)
	}
}

func TestCancelAndClose(t *testing.T) {
	e := serve(t)
	h := connect(t, e, "slow")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := h.Pread(ctx, make([]byte, 512), 0)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("cancelled pread: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("cancelled pread returned after %v", d)
	}
	if err := h.Flush(context.Background()); !errors.Is(err, libnbd.ErrShutDown) {
		t.Errorf("call after cancellation: %v, want ErrShutDown", err)
	}
	h.Close()
	if err := h.Pread(context.Background(), make([]byte, 1), 0); !errors.Is(err, libnbd.ErrClosed) {
		t.Errorf("call after close: %v, want ErrClosed", err)
	}
	if err := h.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

func TestConnectFailure(t *testing.T) {
	h, err := libnbd.New()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	err = h.ConnectUnix(context.Background(), filepath.Join(t.TempDir(), "none.sock"))
	var le *libnbd.Error
	if !errors.As(err, &le) || !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("connect to a missing socket: %v, want ENOENT", err)
	}
	e := serve(t)
	h2, _ := libnbd.New()
	defer h2.Close()
	h2.SetExportName("no-such-export")
	if err := h2.ConnectUnix(context.Background(), e.sock); !errors.As(err, &le) {
		t.Fatalf("connect to an unknown export: %v, want *Error", err)
	}
}

func equalRuns(a, b []run) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func containsRun(rs []run, want run) bool {
	for _, r := range rs {
		if r.off <= want.off && want.off+want.length <= r.off+r.length && r.flags == want.flags {
			return true
		}
	}
	return false
}
