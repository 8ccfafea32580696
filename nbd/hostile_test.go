package nbd_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/nbd"
)

// Hostile and broken clients, spoken byte by byte. Every case checks the
// exact answer, or that only the bad connection closed while a bystander
// connection opened before it keeps working.

const hostileSize = 1 << 20

type hostileEnv struct {
	sock string
	srv  *nbd.Server
	mem  *memExport
}

// newHostileEnv serves "rw" (readable, writable, flushable; no zero or
// trim), "ro" (read-only) and "wo" (write-only recorder).
func newHostileEnv(t *testing.T) *hostileEnv {
	t.Helper()
	mem := &memExport{data: pattern(3, hostileSize)}
	var cat nbd.Exports
	cat.Add("rw", mem)
	cat.Add("ro", nbd.NewReaderExport(bytes.NewReader(pattern(4, hostileSize)), hostileSize, nil))
	cat.Add("wo", &recordExport{size: hostileSize})
	srv, sock := startServer(t, &cat)
	return &hostileEnv{sock: sock, srv: srv, mem: mem}
}

// bystander opens a working session now; the returned check proves it still
// works later.
func (env *hostileEnv) bystander(t *testing.T) func() {
	t.Helper()
	c := newstyle(t, env.sock)
	s := c.goExport("ro", true)
	want := pattern(4, hostileSize)[512:1024]
	return func() {
		t.Helper()
		r := c.do(s, 0, wCmdRead, 512, 512, nil)
		if r.errno != 0 || !bytes.Equal(r.payload(512, 512), want) {
			t.Fatalf("bystander connection broken: errno %d", r.errno)
		}
	}
}

func TestHostileNegotiation(t *testing.T) {
	env := newHostileEnv(t)
	tests := []struct {
		name string
		// run drives a fresh connection (greeting already read).
		run func(t *testing.T, c *rawClient)
	}{
		{"client flags without fixed newstyle", func(t *testing.T, c *rawClient) {
			c.write(binary.BigEndian.AppendUint32(nil, 0))
			c.expectClosed()
		}},
		{"unknown client flag", func(t *testing.T, c *rawClient) {
			c.write(binary.BigEndian.AppendUint32(nil, 1|1<<7))
			c.expectClosed()
		}},
		{"garbage instead of IHAVEOPT", func(t *testing.T, c *rawClient) {
			c.write(binary.BigEndian.AppendUint32(nil, 3))
			c.write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
			c.expectClosed()
		}},
		{"export name of an unknown export closes", func(t *testing.T, c *rawClient) {
			c.write(binary.BigEndian.AppendUint32(nil, 3))
			c.write(optBytes(wOptExportName, []byte("nope")))
			c.expectClosed()
		}},
		{"abort is acknowledged then closed", func(t *testing.T, c *rawClient) {
			c.write(binary.BigEndian.AppendUint32(nil, 3))
			r := c.option(wOptAbort, nil)
			if r[0].typ != wRepAck {
				t.Fatalf("abort reply %#x, want ACK", r[0].typ)
			}
			c.expectClosed()
		}},
		{"export name of a known export enters transmission", func(t *testing.T, c *rawClient) {
			c.write(binary.BigEndian.AppendUint32(nil, 3)) // no zeroes: 10 bytes back
			c.write(optBytes(wOptExportName, []byte("rw")))
			var b [10]byte
			c.readFull(b[:])
			if size := binary.BigEndian.Uint64(b[:]); size != hostileSize {
				t.Fatalf("size %d", size)
			}
			r := c.do(session{}, 0, wCmdRead, 0, 16, nil)
			if r.errno != 0 || !bytes.Equal(r.data, pattern(3, 16)) {
				t.Fatalf("read after EXPORT_NAME: errno %d", r.errno)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			check := env.bystander(t)
			tc.run(t, dialRaw(t, env.sock))
			check()
		})
	}
}

// TestHostileOptions: each bad option gets the exact error reply and
// negotiation continues: a GO afterwards on the same connection works.
func TestHostileOptions(t *testing.T) {
	env := newHostileEnv(t)
	longName := strings.Repeat("n", 5000)
	tests := []struct {
		name    string
		opt     uint32
		data    []byte
		pre     []uint32 // options sent first (no data), e.g. structured reply
		wantErr uint32
	}{
		{"extended headers unsupported", wOptExtendedHeader, nil, nil, wRepErrUnsup},
		{"STARTTLS unsupported", wOptStartTLS, nil, nil, wRepErrUnsup},
		{"unknown option 0x7fff", 0x7fff, []byte("xyz"), nil, wRepErrUnsup},
		{"list with data", wOptList, []byte{1}, nil, wRepErrInval},
		{"structured reply with data", wOptStructured, []byte{0}, nil, wRepErrInval},
		{"GO shorter than a name length", wOptGo, []byte{0, 0}, nil, wRepErrInval},
		{"GO name length beyond data", wOptGo, append(binary.BigEndian.AppendUint32(nil, 100), "rw\x00\x00"...), nil, wRepErrInval},
		{"GO without info count", wOptGo, append(binary.BigEndian.AppendUint32(nil, 2), "rw"...), nil, wRepErrInval},
		{"GO info count larger than data", wOptGo, nameData("rw", 1)[:len(nameData("rw", 1))-2], nil, wRepErrInval},
		{"GO trailing bytes", wOptGo, append(nameData("rw"), 0, 0), nil, wRepErrInval},
		{"GO name over 4096 bytes", wOptGo, nameData(longName), nil, wRepErrInval},
		{"GO unknown export", wOptGo, nameData("nope"), nil, wRepErrUnkn},
		{"INFO unknown export", wOptInfo, nameData("nope", 3), nil, wRepErrUnkn},
		{"SET_META_CONTEXT before STRUCTURED_REPLY", wOptSetMeta, metaData("rw", "base:allocation"), nil, wRepErrInval},
		{"SET_META_CONTEXT malformed", wOptSetMeta, metaData("rw", "base:allocation")[:12], []uint32{wOptStructured}, wRepErrInval},
		{"LIST_META_CONTEXT query count too big", wOptListMeta, append(binary.BigEndian.AppendUint32(nil, 0), 0, 0, 0, 9), nil, wRepErrInval},
		{"SET_META_CONTEXT unknown export", wOptSetMeta, metaData("nope", "base:allocation"), []uint32{wOptStructured}, wRepErrUnkn},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			check := env.bystander(t)
			c := newstyle(t, env.sock)
			for _, p := range tc.pre {
				if r := c.option(p, nil); r[len(r)-1].typ != wRepAck {
					t.Fatalf("option %d: %#x", p, r[len(r)-1].typ)
				}
			}
			reps := c.option(tc.opt, tc.data)
			if got := reps[len(reps)-1].typ; got != tc.wantErr || len(reps) != 1 {
				t.Fatalf("option %d: replies %+v, want exactly one %#x", tc.opt, reps, tc.wantErr)
			}
			s := c.goExport("rw", true) // negotiation goes on
			if r := c.do(s, 0, wCmdRead, 4096, 8, nil); r.errno != 0 || !bytes.Equal(r.payload(4096, 8), env.mem.data[4096:4104]) {
				t.Fatalf("read after recovering from a bad option: errno %d", r.errno)
			}
			check()
		})
	}
}

// TestHostileHugeOption announces 1 GiB of option data. The server must
// answer NBD_REP_ERR_TOO_BIG (after skipping the data) or close, and must
// never allocate it.
func TestHostileHugeOption(t *testing.T) {
	env := newHostileEnv(t)
	check := env.bystander(t)
	c := newstyle(t, env.sock)
	const huge = 1 << 30
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	h := binary.BigEndian.AppendUint64(nil, wOptsMagic)
	h = binary.BigEndian.AppendUint32(h, 0x7ffe)
	h = binary.BigEndian.AppendUint32(h, huge)
	c.write(h)
	sendErr := make(chan error, 1)
	go func() { // stream the data; stops early if the server closes
		chunk := make([]byte, 1<<20)
		c.nc.SetWriteDeadline(time.Now().Add(20 * time.Second))
		var err error
		for sent := 0; sent < huge && err == nil; sent += len(chunk) {
			_, err = c.nc.Write(chunk)
		}
		sendErr <- err
	}()
	c.nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	r, err := c.readOptReply()
	<-sendErr
	runtime.ReadMemStats(&after)
	if grown := after.TotalAlloc - before.TotalAlloc; grown > 64<<20 {
		t.Errorf("allocated %d MiB while handling a 1 GiB option", grown>>20)
	}
	switch {
	case err == nil && r.typ == wRepErrBig:
		s := c.goExport("rw", false) // negotiation goes on
		if rr := c.do(s, 0, wCmdRead, 0, 8, nil); rr.errno != 0 {
			t.Fatalf("read after TOO_BIG: errno %d", rr.errno)
		}
	case err != nil:
		t.Logf("server closed instead of answering: %v", err)
	default:
		t.Fatalf("reply %#x to a 1 GiB option, want NBD_REP_ERR_TOO_BIG or close", r.typ)
	}
	check()
}

// transmission opens a structured session on export (or a simple one).
func (env *hostileEnv) transmission(t *testing.T, export string, structured bool) (*rawClient, session) {
	t.Helper()
	c := newstyle(t, env.sock)
	return c, c.goExport(export, structured)
}

func TestHostileTransmission(t *testing.T) {
	env := newHostileEnv(t)
	const maxU64 = ^uint64(0)
	tests := []struct {
		name       string
		export     string
		structured bool
		flags, typ uint16
		off        uint64
		length     uint32
		payload    []byte
		wantErrno  uint32
	}{
		{"unknown command", "rw", true, 0, 99, 0, 0, nil, wEINVAL},
		{"read beyond end", "rw", true, 0, wCmdRead, hostileSize - 10, 11, nil, wEINVAL},
		{"read at end+1", "rw", false, 0, wCmdRead, hostileSize + 1, 1, nil, wEINVAL},
		{"write beyond end", "rw", true, 0, wCmdWrite, hostileSize - 100, 200, bytes.Repeat([]byte{0xee}, 200), wENOSPC},
		{"write beyond end simple", "rw", false, 0, wCmdWrite, hostileSize, 4096, bytes.Repeat([]byte{0xee}, 4096), wENOSPC},
		{"write to read-only export", "ro", true, 0, wCmdWrite, 0, 512, bytes.Repeat([]byte{0xee}, 512), wEPERM},
		{"read of write-only export", "wo", true, 0, wCmdRead, 0, 512, nil, wENOTSUP},
		{"block status without meta context", "rw", false, 0, wCmdBlock, 0, 4096, nil, wEINVAL},
		{"block status of zero length", "rw", true, 0, wCmdBlock, 0, 0, nil, wEINVAL},
		{"flush with length", "rw", true, 0, wCmdFlush, 0, 4096, nil, wEINVAL},
		{"flush with offset", "rw", true, 0, wCmdFlush, 512, 0, nil, wEINVAL},
		{"read with NO_HOLE", "rw", true, wFlagNoHole, wCmdRead, 0, 512, nil, wEINVAL},
		{"write with REQ_ONE", "rw", true, wFlagReqOne, wCmdWrite, 0, 16, make([]byte, 16), wEINVAL},
		{"block status with FUA", "rw", true, wFlagFUA, wCmdBlock, 0, 4096, nil, wEINVAL},
		{"write with undefined flag", "rw", true, 1 << 9, wCmdWrite, 0, 16, make([]byte, 16), wEINVAL},
		{"read offset+length overflows", "rw", true, 0, wCmdRead, maxU64, 2, nil, wEINVAL},
		{"read offset 2^64-1", "rw", false, 0, wCmdRead, maxU64, 1, nil, wEINVAL},
		{"write offset+length overflows", "rw", true, 0, wCmdWrite, maxU64 - 1, 4, make([]byte, 4), wENOSPC},
		{"cache beyond end", "rw", true, 0, wCmdCache, hostileSize, 1, nil, wEINVAL},
		{"write zeroes unsupported", "rw", true, 0, wCmdZeroes, 0, 4096, nil, wEINVAL},
		{"trim unsupported", "rw", true, 0, wCmdTrim, 0, 4096, nil, wEINVAL},
		{"trim on read-only export", "ro", true, 0, wCmdTrim, 0, 4096, nil, wEPERM},
		{"write zeroes on read-only export", "ro", true, 0, wCmdZeroes, 0, 4096, nil, wEPERM},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := bytes.Clone(env.mem.data)
			c, s := env.transmission(t, tc.export, tc.structured)
			r := c.do(s, tc.flags, tc.typ, tc.off, tc.length, tc.payload)
			if r.errno != tc.wantErrno {
				t.Errorf("errno %d, want %d", r.errno, tc.wantErrno)
			}
			if !bytes.Equal(before, env.mem.data) {
				t.Errorf("a refused request changed the export")
			}
			// The connection is still usable: a refused WRITE's payload was
			// read and discarded, not parsed as requests.
			if tc.export == "wo" {
				if w := c.do(s, 0, wCmdWrite, 0, 3, []byte("abc")); w.errno != 0 {
					t.Fatalf("write after the refused request: errno %d", w.errno)
				}
				return
			}
			want := before[100:612]
			if tc.export == "ro" {
				want = pattern(4, hostileSize)[100:612]
			}
			if rr := c.do(s, 0, wCmdRead, 100, 512, nil); rr.errno != 0 || !bytes.Equal(rr.payload(100, 512), want) {
				t.Fatalf("read after the refused request: errno %d", rr.errno)
			}
		})
	}
}

func TestHostileTransmissionClose(t *testing.T) {
	env := newHostileEnv(t)
	tests := []struct {
		name      string
		req       []byte
		wantErrno uint32 // 0: closed without a reply
	}{
		{"bad request magic", append([]byte{0xde, 0xad, 0xbe, 0xef}, make([]byte, 24)...), 0},
		{"reply magic as request", binary.BigEndian.AppendUint32(make([]byte, 0, 28), wSimpleMagic), 0},
		{"write larger than 32 MiB", reqBytes(0, wCmdWrite, 0xfeed, 0, 32<<20+1, nil), wEINVAL},
		{"read-only write larger than 32 MiB", reqBytes(0, wCmdWrite, 0xfeed, 0, 64<<20, nil), wEINVAL},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			check := env.bystander(t)
			c, s := env.transmission(t, "rw", true)
			req := tc.req
			if len(req) < 28 {
				req = append(req, make([]byte, 28-len(req))...)
			}
			c.write(req)
			if tc.wantErrno != 0 {
				r, err := c.readReply(s, nil)
				if err != nil || r.handle != 0xfeed || r.errno != tc.wantErrno {
					t.Fatalf("reply %+v err %v, want errno %d for handle 0xfeed", r, err, tc.wantErrno)
				}
			}
			c.expectClosed()
			check()
		})
	}
}

// TestHostileFlushWithoutFlusher sends FLUSH to an export that cannot flush
// (the read-only export; the client must not send it, but a hostile one
// does). It runs in a child process because a server panic would take the
// whole test binary down with it.
func TestHostileFlushWithoutFlusher(t *testing.T) {
	if os.Getenv("QCDP_NBD_CHILD") == t.Name() {
		env := newHostileEnv(t)
		c, s := env.transmission(t, "ro", true)
		if r := c.do(s, 0, wCmdFlush, 0, 0, nil); r.errno != wEINVAL {
			t.Fatalf("FLUSH on an export without Flusher: errno %d, want %d", r.errno, wEINVAL)
		}
		if r := c.do(s, wFlagFUA, wCmdRead, 0, 8, nil); r.errno != 0 {
			t.Fatalf("read after FLUSH: errno %d", r.errno)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "QCDP_NBD_CHILD="+t.Name())
	out, err := cmd.CombinedOutput()
	if err != nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		t.Fatalf("server did not survive FLUSH to a read-only export: %v\n%s", err, strings.Join(lines[:min(len(lines), 25)], "\n"))
	}
}

func TestShutdownIdleClient(t *testing.T) {
	env := newHostileEnv(t)
	c, s := env.transmission(t, "rw", true)
	if r := c.do(s, 0, wCmdRead, 0, 8, nil); r.errno != 0 {
		t.Fatalf("read: %d", r.errno)
	}
	negotiating := newstyle(t, env.sock) // a second client idle mid-negotiation
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	if err := env.srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with idle clients: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("shutdown took %v with idle clients", d)
	}
	c.expectClosed()
	negotiating.expectClosed()
	if st := env.srv.Stats(); st.Connections != 0 {
		t.Errorf("%d connections open after shutdown", st.Connections)
	}
}

// TestShutdownHungClient: a client that pipelines large reads and never
// reads the replies blocks the server's writes; Shutdown with a deadline
// must still close it and return.
func TestShutdownHungClient(t *testing.T) {
	env := newHostileEnv(t)
	c, _ := env.transmission(t, "rw", true)
	var batch []byte
	for i := range 64 {
		batch = append(batch, reqBytes(0, wCmdRead, uint64(i), 0, hostileSize, nil)...)
	}
	c.write(batch)
	// Wait until the server is stuck sending: its socket buffer is full.
	deadline := time.Now().Add(5 * time.Second)
	for env.srv.Stats().Reads < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := env.srv.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("shutdown with a hung client: %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("shutdown took %v with a hung client", d)
	}
	// The client sees the end of the stream after what was buffered.
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, rerr := c.br.WriteTo(discard{})
	if rerr != nil && !isEOFish(rerr) {
		t.Errorf("hung client's connection not closed: %v after %d bytes", rerr, n)
	}
	if n >= 64*hostileSize {
		t.Errorf("all %d replies were sent; the client was not hung", 64)
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func isEOFish(err error) bool {
	return err == nil || strings.Contains(err.Error(), "reset by peer") || errors.Is(err, os.ErrClosed)
}
