package nbd_test

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qcdp/qcdp/nbd"
)

// Fuzzing the server's decoders: whole client byte streams go in through a
// unix socketpair; the server must never panic, hang, or allocate far beyond
// what the input and the (small) export justify.

const fuzzExportSize = 64 << 10

// pairListener hands the server one end of a socketpair per Accept.
type pairListener struct {
	ch     chan net.Conn
	done   chan struct{}
	closed sync.Once
}

func (l *pairListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pairListener) Close() error   { l.closed.Do(func() { close(l.done) }); return nil }
func (l *pairListener) Addr() net.Addr { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }

// notifyConn tells when the server has closed its end.
type notifyConn struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *notifyConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.closed) })
	return err
}

type fuzzServer struct{ ln *pairListener }

func newFuzzServer(f *testing.F) *fuzzServer {
	var cat nbd.Exports
	cat.Add("rw", &memExport{data: make([]byte, fuzzExportSize)})
	cat.Add("wo", &recordExport{size: fuzzExportSize})
	cat.Add("ro", nbd.NewReaderExport(bytes.NewReader(make([]byte, fuzzExportSize)), fuzzExportSize, nil))
	ln := &pairListener{ch: make(chan net.Conn), done: make(chan struct{})}
	srv := nbd.NewServer(&cat, nbd.Options{
		Logger:           slog.New(slog.NewTextHandler(io.Discard, nil)),
		HandshakeTimeout: 5 * time.Second,
	})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	f.Cleanup(func() {
		srv.Shutdown(f.Context())
		<-served
	})
	return &fuzzServer{ln: ln}
}

func socketpair(t *testing.T) (server, client net.Conn) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socketpair: %v", err)
	}
	conn := func(fd int) net.Conn {
		f := os.NewFile(uintptr(fd), "socketpair")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			t.Fatalf("socketpair conn: %v", err)
		}
		return c
	}
	return conn(fds[0]), conn(fds[1])
}

// feed plays input as a whole client connection: it writes everything, shuts
// its write side, drains the replies, and waits for the server to close.
func (s *fuzzServer) feed(t *testing.T, input []byte) {
	srvEnd, cli := socketpair(t)
	defer cli.Close()
	nc := &notifyConn{Conn: srvEnd, closed: make(chan struct{})}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	s.ln.ch <- nc
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		io.Copy(io.Discard, cli)
	}()
	cli.SetWriteDeadline(time.Now().Add(5 * time.Second))
	cli.Write(input) // the server may close early: that is allowed
	cli.(*net.UnixConn).CloseWrite()
	select {
	case <-nc.closed:
	case <-time.After(10 * time.Second):
		t.Fatalf("server still holds the connection 10 s after the client's input ended (%d bytes)", len(input))
	}
	<-drained
	runtime.ReadMemStats(&after)
	// Per connection: two 256 KiB buffers, option data up to 64 KiB, and at
	// most one export-sized buffer per request the input can hold.
	bound := uint64(8<<20) + uint64(len(input)/28+1)*fuzzExportSize
	if grown := after.TotalAlloc - before.TotalAlloc; grown > bound {
		t.Fatalf("allocated %d bytes for a %d-byte input (bound %d)", grown, len(input), bound)
	}
}

// Client byte sequences as QEMU 7.2 and libnbd send them.
func clientFlags() []byte { return binary.BigEndian.AppendUint32(nil, 3) }

func qemuNegotiation(export string) []byte {
	b := clientFlags()
	b = append(b, optBytes(wOptStructured, nil)...)
	b = append(b, optBytes(wOptSetMeta, metaData(export, "base:allocation"))...)
	b = append(b, optBytes(wOptGo, nameData(export, 3))...)
	return b
}

func FuzzHandshake(f *testing.F) {
	seeds := [][]byte{
		qemuNegotiation("rw"),
		append(clientFlags(), optBytes(wOptExtendedHeader, nil)...),
		append(append(clientFlags(), optBytes(wOptList, nil)...), optBytes(wOptAbort, nil)...),
		append(clientFlags(), optBytes(wOptInfo, nameData("rw", 0, 1, 2, 3))...),
		append(clientFlags(), optBytes(wOptListMeta, metaData("rw"))...),
		append(clientFlags(), optBytes(wOptListMeta, metaData("wo", "base:", "qemu:dirty-bitmap:b0"))...),
		append(clientFlags(), optBytes(wOptExportName, []byte("wo"))...),
		append(clientFlags(), optBytes(wOptStartTLS, nil)...),
		append(clientFlags(), optBytes(wOptGo, nameData("nope"))...),
		binary.BigEndian.AppendUint32(nil, 0),
		append(clientFlags(), 'I', 'H', 'A', 'V', 'E', 'O', 'P', 'T', 0, 0, 0, 7, 0xff, 0xff, 0xff, 0xff),
		append(qemuNegotiation("rw"), reqBytes(0, wCmdRead, 1, 0, 512, nil)...),
		append(qemuNegotiation("ro"), reqBytes(0, wCmdFlush, 1, 0, 0, nil)...),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	srv := newFuzzServer(f)
	f.Fuzz(func(t *testing.T, input []byte) {
		srv.feed(t, input)
	})
}

func FuzzRequests(f *testing.F) {
	var qemu []byte // a QEMU-like session: probe, writes, zeroes, flush, status
	qemu = append(qemu, reqBytes(0, wCmdRead, 1, 0, 512, nil)...)
	qemu = append(qemu, reqBytes(0, wCmdBlock, 2, 0, fuzzExportSize, nil)...)
	qemu = append(qemu, reqBytes(0, wCmdWrite, 3, 100, 100, pattern(1, 100))...)
	qemu = append(qemu, reqBytes(wFlagFUA, wCmdWrite, 4, 4096, 512, pattern(2, 512))...)
	qemu = append(qemu, reqBytes(wFlagFast, wCmdZeroes, 5, 8192, 4096, nil)...)
	qemu = append(qemu, reqBytes(wFlagNoHole, wCmdZeroes, 6, 8192, 4096, nil)...)
	qemu = append(qemu, reqBytes(0, wCmdTrim, 7, 0, 4096, nil)...)
	qemu = append(qemu, reqBytes(0, wCmdCache, 8, 0, 4096, nil)...)
	qemu = append(qemu, reqBytes(0, wCmdFlush, 9, 0, 0, nil)...)
	qemu = append(qemu, reqBytes(wFlagReqOne, wCmdBlock, 10, 0, 4096, nil)...)
	qemu = append(qemu, reqBytes(wFlagDF, wCmdRead, 11, 60000, 5536, nil)...)
	qemu = append(qemu, reqBytes(0, wCmdDisc, 12, 0, 0, nil)...)
	seeds := [][]byte{
		qemu,
		reqBytes(0, wCmdWrite, 1, fuzzExportSize-1, 2, []byte{1, 2}),
		reqBytes(0, wCmdWrite, 1, 0, 64<<20, nil),
		reqBytes(0, wCmdRead, 1, ^uint64(0), 1, nil),
		reqBytes(0, 0xffff, 1, 0, 0, nil),
		{0xde, 0xad, 0xbe, 0xef},
	}
	for _, s := range seeds {
		f.Add(false, s)
		f.Add(true, s)
	}
	srv := newFuzzServer(f)
	rw := qemuNegotiation("rw")
	wo := qemuNegotiation("wo")
	f.Fuzz(func(t *testing.T, writeOnly bool, input []byte) {
		prefix := rw
		if writeOnly {
			prefix = wo
		}
		srv.feed(t, append(append([]byte(nil), prefix...), input...))
	})
}
