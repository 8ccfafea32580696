package nbd_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/nbd"
)

// Wire values straight from NetworkBlockDevice proto.md, kept apart from the
// server's own constants so the tests check the server against the spec.
const (
	wNBDMagic      = 0x4e42444d41474943
	wOptsMagic     = 0x49484156454F5054
	wOptReplyMagic = 0x0003e889045565a9
	wReqMagic      = 0x25609513
	wSimpleMagic   = 0x67446698
	wStructMagic   = 0x668e33ef

	wOptExportName     = 1
	wOptAbort          = 2
	wOptList           = 3
	wOptStartTLS       = 5
	wOptInfo           = 6
	wOptGo             = 7
	wOptStructured     = 8
	wOptListMeta       = 9
	wOptSetMeta        = 10
	wOptExtendedHeader = 11

	wRepAck      = 1
	wRepServer   = 2
	wRepInfo     = 3
	wRepMeta     = 4
	wRepErrUnsup = 1<<31 + 1
	wRepErrInval = 1<<31 + 3
	wRepErrUnkn  = 1<<31 + 6
	wRepErrBig   = 1<<31 + 9

	wCmdRead   = 0
	wCmdWrite  = 1
	wCmdDisc   = 2
	wCmdFlush  = 3
	wCmdTrim   = 4
	wCmdCache  = 5
	wCmdZeroes = 6
	wCmdBlock  = 7

	wFlagFUA    = 1 << 0
	wFlagNoHole = 1 << 1
	wFlagDF     = 1 << 2
	wFlagReqOne = 1 << 3
	wFlagFast   = 1 << 4

	wReplyFlagDone   = 1
	wReplyNone       = 0
	wReplyOffsetData = 1
	wReplyOffsetHole = 2
	wReplyBlockState = 5

	wEPERM   = 1
	wEIO     = 5
	wEINVAL  = 22
	wENOSPC  = 28
	wENOTSUP = 95
)

// ---- tools: what the interop tests need and how to get it ----

var aptUpdate sync.Once

// needTools makes sure each binary is on PATH, installing its Debian package
// when running as root, and skips the test with the reason otherwise.
func needTools(t testing.TB, binPkg map[string]string) {
	t.Helper()
	for bin, pkg := range binPkg {
		if _, err := exec.LookPath(bin); err == nil {
			continue
		}
		if os.Geteuid() != 0 {
			t.Skipf("needs %s (Debian package %s): run as root to install it, or apt-get install %s", bin, pkg, pkg)
		}
		aptUpdate.Do(func() {
			if out, err := exec.Command("apt-get", "update").CombinedOutput(); err != nil {
				t.Logf("apt-get update: %v\n%s", err, out)
			}
		})
		cmd := exec.Command("apt-get", "install", "-y", "--no-install-recommends", pkg)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("install %s for %s: %v\n%s", pkg, bin, err, out)
		}
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s still missing after installing %s", bin, pkg)
		}
	}
}

// needPythonNBD makes sure Debian's python3 has the nbd module (nbdsh).
func needPythonNBD(t testing.TB) {
	t.Helper()
	needTools(t, map[string]string{"nbdsh": "libnbd-bin", "/usr/bin/python3": "python3"})
	if exec.Command("/usr/bin/python3", "-c", "import nbd").Run() == nil {
		return
	}
	needTools(t, map[string]string{"__python3-libnbd__": "python3-libnbd"})
}

// toolEnv runs Debian's python3 for nbdsh, not a pyenv one without nbd.
func toolEnv() []string {
	return append(os.Environ(), "PATH=/usr/bin:/bin:"+os.Getenv("PATH"), "LIBNBD_DEBUG=0")
}

// run runs a tool with a deadline and returns its output and exit code.
func run(t testing.TB, timeout time.Duration, name string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = toolEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s %q: timed out after %v\nstderr: %s", name, args, timeout, errb.String())
	}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("%s %q: %v", name, args, err)
	}
	return out.String(), errb.String(), code
}

// mustRun is run that fails the test unless the tool exits 0.
func mustRun(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, errs, code := run(t, 30*time.Second, name, args...)
	if code != 0 {
		t.Fatalf("%s %q: exit %d\nstdout: %s\nstderr: %s", name, args, code, out, errs)
	}
	return out
}

// ---- server and exports ----

// startServer serves cat on a unix socket in a temp dir until the test ends.
func startServer(t testing.TB, cat nbd.Catalog) (*nbd.Server, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatalf("listen %s: %v", sock, err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	srv := nbd.NewServer(cat, nbd.Options{Logger: log, HandshakeTimeout: 10 * time.Second})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, nbd.ErrServerClosed) {
			t.Errorf("serve returned %v, want ErrServerClosed", err)
		}
	})
	return srv, sock
}

func uri(sock, export string) string { return "nbd+unix:///" + export + "?socket=" + sock }

// openFile opens path with nbd.OpenFile and closes it when the test ends.
func openFile(t testing.TB, path string, readOnly bool) nbd.Export {
	t.Helper()
	e, c, err := nbd.OpenFile(path, readOnly)
	if err != nil {
		t.Fatalf("open export %s: %v", path, err)
	}
	t.Cleanup(func() { c.Close() })
	return e
}

// chunk is known data at a known offset of a sparse test file.
type chunk struct {
	off  int64
	data []byte
}

// pattern returns n bytes that differ at every offset and between seeds.
func pattern(seed byte, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7+i>>8) ^ seed | 1
	}
	return p
}

// sparseFile writes a sparse file of size bytes holding chunks.
func sparseFile(t testing.TB, size int64, chunks ...chunk) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.raw")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for _, c := range chunks {
		if _, err := f.WriteAt(c.data, c.off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return path
}

// zeroFile creates an all-hole file of size bytes.
func zeroFile(t testing.TB, size int64) string { return sparseFile(t, size) }

// op is one request a recordExport saw.
type op struct {
	kind   string // write, zero, trim, flush
	off    int64
	length int64
	data   []byte
}

// recordExport is a capture-like export: it keeps every write, zero, trim and
// flush in arrival order and cannot be read.
type recordExport struct {
	size int64
	mu   sync.Mutex
	ops  []op
}

func (e *recordExport) Size() int64 { return e.size }

func (e *recordExport) WriteAt(_ context.Context, p []byte, off int64) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ops = append(e.ops, op{kind: "write", off: off, length: int64(len(p)), data: bytes.Clone(p)})
	return nil
}

func (e *recordExport) Zero(_ context.Context, off, length int64, _ nbd.ZeroFlags) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ops = append(e.ops, op{kind: "zero", off: off, length: length})
	return nil
}

func (e *recordExport) Trim(_ context.Context, off, length int64) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ops = append(e.ops, op{kind: "trim", off: off, length: length})
	return nil
}

func (e *recordExport) Flush(context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.ops = append(e.ops, op{kind: "flush"})
	return nil
}

func (e *recordExport) snapshot() []op {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]op(nil), e.ops...)
}

// replay applies the recorded ops in order to a zeroed image.
func (e *recordExport) replay() []byte {
	img := make([]byte, e.size)
	for _, o := range e.snapshot() {
		switch o.kind {
		case "write":
			copy(img[o.off:], o.data)
		case "zero", "trim":
			clear(img[o.off : o.off+o.length])
		}
	}
	return img
}

// memExport is a readable and writable in-memory export whose reads at
// slowOff wait for delay, so replies to pipelined reads come back out of order.
type memExport struct {
	mu      sync.RWMutex
	data    []byte
	slowOff map[int64]bool
	delay   time.Duration
}

func (e *memExport) Size() int64 { return int64(len(e.data)) }

func (e *memExport) ReadAt(ctx context.Context, p []byte, off int64) error {
	if e.slowOff[off] {
		select {
		case <-time.After(e.delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	e.mu.RLock()
	defer e.mu.RUnlock()
	copy(p, e.data[off:])
	return nil
}

func (e *memExport) WriteAt(_ context.Context, p []byte, off int64) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	copy(e.data[off:], p)
	return nil
}

func (e *memExport) Flush(context.Context) error { return nil }

// ---- raw client: speaks the wire protocol byte by byte ----

type rawClient struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
}

const rawTimeout = 10 * time.Second

// dialRaw connects and reads the server greeting.
func dialRaw(t testing.TB, sock string) *rawClient {
	t.Helper()
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	t.Cleanup(func() { nc.Close() })
	c := &rawClient{t: t, nc: nc, br: bufio.NewReader(nc)}
	var g [18]byte
	c.readFull(g[:])
	if m := binary.BigEndian.Uint64(g[:]); m != wNBDMagic {
		t.Fatalf("greeting magic %#x", m)
	}
	if m := binary.BigEndian.Uint64(g[8:]); m != wOptsMagic {
		t.Fatalf("greeting IHAVEOPT %#x", m)
	}
	if f := binary.BigEndian.Uint16(g[16:]); f&1 == 0 {
		t.Fatalf("server flags %#x lack fixed newstyle", f)
	}
	return c
}

// newstyle dials and sends the client flags (fixed newstyle, no zeroes).
func newstyle(t testing.TB, sock string) *rawClient {
	c := dialRaw(t, sock)
	c.write(binary.BigEndian.AppendUint32(nil, 3))
	return c
}

func (c *rawClient) write(b []byte) {
	c.t.Helper()
	c.nc.SetWriteDeadline(time.Now().Add(rawTimeout))
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write to server: %v", err)
	}
}

func (c *rawClient) readFull(b []byte) {
	c.t.Helper()
	if err := c.tryReadFull(b); err != nil {
		c.t.Fatalf("read from server: %v", err)
	}
}

func (c *rawClient) tryReadFull(b []byte) error {
	c.nc.SetReadDeadline(time.Now().Add(rawTimeout))
	_, err := io.ReadFull(c.br, b)
	return err
}

// expectClosed asserts the server closes the connection without another byte.
func (c *rawClient) expectClosed() {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(rawTimeout))
	b, err := c.br.ReadByte()
	if err == nil {
		c.t.Fatalf("server sent %#x, want the connection closed", b)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("connection still open after %v, want it closed", rawTimeout)
	}
}

func optBytes(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, wOptsMagic)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (c *rawClient) readOptReply() (optReply, error) {
	var h [20]byte
	if err := c.tryReadFull(h[:]); err != nil {
		return optReply{}, err
	}
	if m := binary.BigEndian.Uint64(h[:]); m != wOptReplyMagic {
		return optReply{}, fmt.Errorf("option reply magic %#x", m)
	}
	r := optReply{opt: binary.BigEndian.Uint32(h[8:]), typ: binary.BigEndian.Uint32(h[12:])}
	n := binary.BigEndian.Uint32(h[16:])
	if n > 1<<20 {
		return r, fmt.Errorf("option reply of %d bytes", n)
	}
	r.data = make([]byte, n)
	return r, c.tryReadFull(r.data)
}

// option sends one option and reads its replies up to an ACK or an error.
func (c *rawClient) option(opt uint32, data []byte) []optReply {
	c.t.Helper()
	c.write(optBytes(opt, data))
	var out []optReply
	for {
		r, err := c.readOptReply()
		if err != nil {
			c.t.Fatalf("option %d: %v", opt, err)
		}
		if r.opt != opt {
			c.t.Fatalf("reply for option %d, want %d", r.opt, opt)
		}
		out = append(out, r)
		if r.typ == wRepAck || r.typ&(1<<31) != 0 {
			return out
		}
	}
}

func nameData(name string, nInfo ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(nInfo)))
	for _, i := range nInfo {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

func metaData(export string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	b = append(b, export...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// session is what a raw client settled.
type session struct {
	size       uint64
	tflags     uint16
	structured bool
}

// goExport negotiates into transmission: structured replies and
// base:allocation when structured, then GO.
func (c *rawClient) goExport(name string, structured bool) session {
	c.t.Helper()
	s := session{structured: structured}
	if structured {
		if r := c.option(wOptStructured, nil); r[len(r)-1].typ != wRepAck {
			c.t.Fatalf("structured reply refused: %#x", r[len(r)-1].typ)
		}
		if r := c.option(wOptSetMeta, metaData(name, "base:allocation")); r[len(r)-1].typ != wRepAck || len(r) != 2 {
			c.t.Fatalf("set meta context: %+v", r)
		}
	}
	reps := c.option(wOptGo, nameData(name))
	if last := reps[len(reps)-1]; last.typ != wRepAck {
		c.t.Fatalf("GO %q: reply %#x %q", name, last.typ, last.data)
	}
	for _, r := range reps {
		if r.typ == wRepInfo && binary.BigEndian.Uint16(r.data) == 0 {
			s.size = binary.BigEndian.Uint64(r.data[2:])
			s.tflags = binary.BigEndian.Uint16(r.data[10:])
		}
	}
	return s
}

func reqBytes(flags, typ uint16, handle, off uint64, length uint32, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, wReqMagic)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	b = binary.BigEndian.AppendUint64(b, off)
	b = binary.BigEndian.AppendUint32(b, length)
	return append(b, payload...)
}

// reply is one answered request, simple or structured (chunks merged).
type reply struct {
	handle  uint64
	errno   uint32
	data    []byte   // READ payload, placed relative to the request offset by the caller
	offsets []uint64 // offset of each data chunk
	chunks  [][]byte
	extents []uint32 // block status descriptors (length, flags)...
}

// readReply reads one whole reply. For structured sessions it reads chunks
// until the one flagged DONE. readLen is the payload length of a simple READ
// reply for each handle (0 for others).
func (c *rawClient) readReply(s session, readLen func(handle uint64) int) (reply, error) {
	var r reply
	for {
		var m [4]byte
		if err := c.tryReadFull(m[:]); err != nil {
			return r, err
		}
		switch binary.BigEndian.Uint32(m[:]) {
		case wSimpleMagic:
			var h [12]byte
			if err := c.tryReadFull(h[:]); err != nil {
				return r, err
			}
			r.errno = binary.BigEndian.Uint32(h[:])
			r.handle = binary.BigEndian.Uint64(h[4:])
			if r.errno == 0 && readLen != nil {
				if n := readLen(r.handle); n > 0 {
					r.data = make([]byte, n)
					err := c.tryReadFull(r.data)
					return r, err
				}
			}
			return r, nil
		case wStructMagic:
			var h [16]byte
			if err := c.tryReadFull(h[:]); err != nil {
				return r, err
			}
			flags := binary.BigEndian.Uint16(h[0:])
			typ := binary.BigEndian.Uint16(h[2:])
			r.handle = binary.BigEndian.Uint64(h[4:])
			n := binary.BigEndian.Uint32(h[12:])
			if n > 64<<20 {
				return r, fmt.Errorf("structured chunk of %d bytes", n)
			}
			body := make([]byte, n)
			if err := c.tryReadFull(body); err != nil {
				return r, err
			}
			switch {
			case typ == wReplyOffsetData:
				r.offsets = append(r.offsets, binary.BigEndian.Uint64(body))
				r.chunks = append(r.chunks, body[8:])
			case typ == wReplyOffsetHole:
				r.offsets = append(r.offsets, binary.BigEndian.Uint64(body))
				r.chunks = append(r.chunks, make([]byte, binary.BigEndian.Uint32(body[8:])))
			case typ == wReplyBlockState:
				for i := 4; i+8 <= len(body); i += 4 {
					r.extents = append(r.extents, binary.BigEndian.Uint32(body[i:]))
				}
			case typ&(1<<15) != 0:
				r.errno = binary.BigEndian.Uint32(body)
			}
			if flags&wReplyFlagDone != 0 {
				return r, nil
			}
		default:
			return r, fmt.Errorf("reply magic %#x", binary.BigEndian.Uint32(m[:]))
		}
	}
}

// do sends one request and reads its reply.
func (c *rawClient) do(s session, flags, typ uint16, off uint64, length uint32, payload []byte) reply {
	c.t.Helper()
	const h = 0xfeed
	c.write(reqBytes(flags, typ, h, off, length, payload))
	r, err := c.readReply(s, func(uint64) int {
		if typ == wCmdRead {
			return int(length)
		}
		return 0
	})
	if err != nil {
		c.t.Fatalf("request %d at %d+%d: %v", typ, off, length, err)
	}
	if r.handle != h {
		c.t.Fatalf("reply handle %#x, want %#x", r.handle, h)
	}
	return r
}

// payload reassembles a READ reply's data for a request at off.
func (r reply) payload(off uint64, length uint32) []byte {
	if r.data != nil {
		return r.data
	}
	buf := make([]byte, length)
	for i, ch := range r.chunks {
		copy(buf[r.offsets[i]-off:], ch)
	}
	return buf
}
