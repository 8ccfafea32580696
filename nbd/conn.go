package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/qcdp/qcdp/proc"
)

const (
	readBufSize  = 256 << 10
	writeBufSize = 256 << 10
)

// request is one decoded transmission request.
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	offset uint64
	length uint32
}

// conn is one client connection. Its request loop reads requests in order and
// runs writes inline (so a logging export sees the client's order); reads,
// block status and flushes run on goroutines the loop owns and waits for.
type conn struct {
	srv *Server
	nc  net.Conn
	br  *bufio.Reader
	log *slog.Logger

	wmu  sync.Mutex // guards bw and werr
	bw   *bufio.Writer
	werr error

	peer     Peer // set before negotiation
	sess     *session
	inflight chan struct{} // semaphore for dispatched requests
	workers  sync.WaitGroup
	payload  []byte // reused for WRITE payloads not fully buffered
	pending  []byte // replies of inline requests not yet flushed

	budgetMu   sync.Mutex
	budgetCond *sync.Cond
	readBytes  int64 // bytes of READ buffers in flight
}

// readBudget bounds the READ buffers one connection holds at once, so a
// client pipelining large reads cannot make the server allocate without
// limit. One request may always run, whatever its size.
const readBudget = 64 << 20

func (c *conn) acquireRead(n int64) {
	c.budgetMu.Lock()
	for c.readBytes > 0 && c.readBytes+n > readBudget {
		c.budgetCond.Wait()
	}
	c.readBytes += n
	c.budgetMu.Unlock()
}

func (c *conn) releaseRead(n int64) {
	c.budgetMu.Lock()
	c.readBytes -= n
	c.budgetMu.Unlock()
	c.budgetCond.Broadcast()
}

func newConn(s *Server, nc net.Conn) *conn {
	c := &conn{
		srv:      s,
		nc:       nc,
		br:       bufio.NewReaderSize(nc, readBufSize),
		bw:       bufio.NewWriterSize(nc, writeBufSize),
		log:      s.log.With("remote", remoteName(nc)),
		inflight: make(chan struct{}, s.opts.MaxInFlight),
	}
	c.budgetCond = sync.NewCond(&c.budgetMu)
	return c
}

// peerOf returns who connected nc; a peer the kernel does not name (not a
// unix socket, or gone already) has no credentials.
func peerOf(nc net.Conn) Peer {
	p := Peer{Addr: remoteName(nc)}
	if cred, err := proc.PeerOf(nc); err == nil {
		p.Cred, p.HasCred = cred, true
	}
	return p
}

func remoteName(nc net.Conn) string {
	if a := nc.RemoteAddr(); a != nil && a.String() != "" {
		return a.String()
	}
	return nc.LocalAddr().Network()
}

// serve runs the connection to its end.
func (c *conn) serve(ctx context.Context) {
	defer c.nc.Close()
	if d := c.srv.opts.HandshakeTimeout; d > 0 {
		c.nc.SetDeadline(time.Now().Add(d))
	}
	if c.srv.shuttingDown() { // Shutdown may have set a deadline just before
		return
	}
	c.peer = peerOf(c.nc)
	sess, err := c.negotiate()
	if err != nil {
		// A refusal was logged with its reason where it was decided.
		if !errors.Is(err, ErrAborted) && !errors.Is(err, io.EOF) && !errors.Is(err, ErrNotAllowed) {
			c.log.Info("nbd negotiation ended", "err", err)
		}
		return
	}
	c.nc.SetDeadline(time.Time{})
	if c.srv.shuttingDown() {
		return
	}
	c.sess = sess
	c.log = c.log.With("export", sess.name)
	c.log.Debug("nbd transmission", "structured", sess.structured, "base_allocation", sess.baseAlloc)
	ctx, cancel := context.WithCancel(ctx)
	err = c.transmit(ctx)
	if err != nil {
		// The client is gone or broke the protocol: nobody will read what
		// is still in flight.
		cancel()
	}
	c.workers.Wait()
	cancel()
	c.flushPending()
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !c.srv.shuttingDown() {
		c.log.Info("nbd connection closed", "err", err)
	}
}

// transmit is the request loop.
func (c *conn) transmit(ctx context.Context) error {
	for {
		if c.br.Buffered() < requestHeaderLen {
			// About to wait for the client: send what the inline requests answered.
			if err := c.flushPending(); err != nil {
				return err
			}
		}
		hdr, err := c.br.Peek(requestHeaderLen)
		if err != nil {
			return err
		}
		if m := binary.BigEndian.Uint32(hdr); m != requestMagic {
			return fmt.Errorf("%w: request magic %#x", ErrBadMagic, m)
		}
		r := request{
			flags:  binary.BigEndian.Uint16(hdr[4:]),
			typ:    binary.BigEndian.Uint16(hdr[6:]),
			handle: binary.BigEndian.Uint64(hdr[8:]),
			offset: binary.BigEndian.Uint64(hdr[16:]),
			length: binary.BigEndian.Uint32(hdr[24:]),
		}
		c.br.Discard(requestHeaderLen)
		if c.srv.shuttingDown() {
			if r.typ == cmdWrite {
				if err := c.discard(r.length); err != nil {
					return err
				}
			}
			c.replyError(r, ESHUTDOWN, "server shutting down")
			continue
		}
		done, err := c.handle(ctx, r)
		if err != nil || done {
			return err
		}
	}
}

// handle checks one request and runs or dispatches it. done is true after
// NBD_CMD_DISC.
func (c *conn) handle(ctx context.Context, r request) (done bool, err error) {
	e := c.sess.export
	if msg, errno := c.check(r); errno != 0 {
		if r.typ == cmdWrite {
			if r.length > MaxPayload {
				c.replyError(r, errno, msg)
				return false, fmt.Errorf("%w: write of %d bytes exceeds %d", ErrProtocol, r.length, MaxPayload)
			}
			if err := c.discard(r.length); err != nil {
				return false, err
			}
		}
		c.replyError(r, errno, msg)
		return false, nil
	}
	off, length := int64(r.offset), int64(r.length)
	switch r.typ {
	case cmdWrite:
		p, aliased, err := c.readPayload(r.length)
		if err != nil {
			return false, err
		}
		werr := e.(Writer).WriteAt(ctx, p, off)
		if aliased {
			c.br.Discard(len(p))
		}
		c.finishWrite(ctx, r, werr)
	case cmdWriteZeroes:
		flags := ZeroFlags{NoHole: r.flags&cmdFlagNoHole != 0, Fast: r.flags&cmdFlagFastZero != 0}
		c.finishWrite(ctx, r, e.(Zeroer).Zero(ctx, off, length, flags))
	case cmdTrim:
		c.finishWrite(ctx, r, e.(Trimmer).Trim(ctx, off, length))
	case cmdCache:
		c.replyOK(r)
	case cmdDisc:
		return true, nil
	case cmdRead, cmdFlush, cmdBlockStatus:
		c.dispatch(ctx, r)
	}
	return false, nil
}

// check validates a request against the export and the negotiated session
// before any payload is read. It returns a message and the error to send.
func (c *conn) check(r request) (string, Errno) {
	e := c.sess.export
	size := uint64(e.Size())
	end := r.offset + uint64(r.length)
	inBounds := end >= r.offset && end <= size
	var allowed uint16
	switch r.typ {
	case cmdRead:
		allowed = cmdFlagFUA | cmdFlagDF
		if _, ok := e.(Reader); !ok {
			return "export is write-only", ENOTSUP
		}
	case cmdWrite:
		allowed = cmdFlagFUA
		if _, ok := e.(Writer); !ok {
			return "export is read-only", EPERM
		}
	case cmdWriteZeroes:
		allowed = cmdFlagFUA | cmdFlagNoHole | cmdFlagFastZero
		if _, ok := e.(Writer); !ok {
			return "export is read-only", EPERM
		}
		if _, ok := e.(Zeroer); !ok {
			return "write zeroes not supported", EINVAL
		}
	case cmdTrim:
		allowed = cmdFlagFUA
		if _, ok := e.(Writer); !ok {
			return "export is read-only", EPERM
		}
		if _, ok := e.(Trimmer); !ok {
			return "trim not supported", EINVAL
		}
	case cmdFlush:
		if _, ok := e.(Flusher); !ok {
			return "flush not supported", EINVAL
		}
		if r.offset != 0 || r.length != 0 {
			return "flush takes no range", EINVAL
		}
		return "", 0
	case cmdBlockStatus:
		allowed = cmdFlagReqOne
		if !c.sess.baseAlloc {
			return "no metadata context negotiated", EINVAL
		}
		if r.length == 0 {
			return "block status of zero length", EINVAL
		}
	case cmdCache:
	case cmdDisc:
		return "", 0
	default:
		return fmt.Sprintf("unknown command %d", r.typ), EINVAL
	}
	if r.flags&^allowed != 0 {
		return fmt.Sprintf("flags %#x not valid for command %d", r.flags, r.typ), EINVAL
	}
	if r.flags&cmdFlagFUA != 0 {
		if _, ok := e.(Flusher); !ok && r.typ != cmdRead {
			return "fua not supported", EINVAL
		}
	}
	if (r.typ == cmdRead || r.typ == cmdWrite) && r.length > MaxPayload {
		return fmt.Sprintf("request of %d bytes exceeds %d", r.length, MaxPayload), EINVAL
	}
	if !inBounds {
		msg := fmt.Sprintf("range %d+%d beyond export size %d", r.offset, r.length, size)
		if r.typ == cmdWrite || r.typ == cmdWriteZeroes {
			return msg, ENOSPC
		}
		return msg, EINVAL
	}
	return "", 0
}

// readPayload returns the WRITE payload: an alias of the read buffer when it
// is already there (aliased: the caller discards it after use), else a copy
// into the connection's reusable buffer, sized by the checked length.
func (c *conn) readPayload(n uint32) (p []byte, aliased bool, err error) {
	if int(n) <= c.br.Buffered() {
		p, err = c.br.Peek(int(n))
		return p, true, err
	}
	if cap(c.payload) < int(n) {
		c.payload = make([]byte, n)
	}
	p = c.payload[:n]
	if _, err := io.ReadFull(c.br, p); err != nil {
		return nil, false, fmt.Errorf("nbd: read write payload of %d bytes: %w", n, err)
	}
	return p, false, nil
}

func (c *conn) discard(n uint32) error {
	if _, err := c.br.Discard(int(n)); err != nil {
		return fmt.Errorf("nbd: discard payload of %d bytes: %w", n, err)
	}
	return nil
}

// finishWrite answers an inline write-like request; FUA moves the answer to a
// worker that flushes first, so the request loop never waits on a disk.
func (c *conn) finishWrite(ctx context.Context, r request, err error) {
	c.srv.countWrite(r.typ, r.length, err)
	if err != nil {
		c.replyError(r, errnoOf(err), err.Error())
		return
	}
	if r.flags&cmdFlagFUA != 0 {
		c.dispatch(ctx, request{typ: cmdFlush, handle: r.handle})
		return
	}
	c.queueSimple(r.handle, 0)
}

// dispatch runs a request on a goroutine the connection owns. The request
// loop waits here when the connection has too much in flight.
func (c *conn) dispatch(ctx context.Context, r request) {
	c.inflight <- struct{}{}
	if r.typ == cmdRead {
		c.acquireRead(int64(r.length))
	}
	c.workers.Add(1)
	go func() {
		defer c.workers.Done()
		defer func() { <-c.inflight }()
		if r.typ == cmdRead {
			defer c.releaseRead(int64(r.length))
		}
		c.run(ctx, r)
	}()
}

func (c *conn) run(ctx context.Context, r request) {
	e := c.sess.export
	switch r.typ {
	case cmdFlush:
		if err := e.(Flusher).Flush(ctx); err != nil {
			c.replyError(r, errnoOf(err), err.Error())
			return
		}
		c.replyOK(r)
	case cmdRead:
		c.read(ctx, r)
	case cmdBlockStatus:
		c.blockStatus(ctx, r)
	}
}

func (c *conn) read(ctx context.Context, r request) {
	if r.length == 0 {
		c.replyOK(r)
		return
	}
	buf := getBuf(int(r.length))
	defer putBuf(buf)
	p := buf[:r.length]
	err := c.sess.export.(Reader).ReadAt(ctx, p, int64(r.offset))
	c.srv.countRead(r.length, err)
	if err != nil {
		c.replyError(r, errnoOf(err), err.Error())
		return
	}
	if !c.sess.structured {
		var h [16]byte
		putSimple(h[:], r.handle, 0)
		c.send(h[:], p)
		return
	}
	var h [28]byte
	putChunkHeader(h[:], replyFlagDone, replyTypeOffsetData, r.handle, uint32(8+len(p)))
	binary.BigEndian.PutUint64(h[20:], r.offset)
	c.send(h[:], p)
}

func (c *conn) blockStatus(ctx context.Context, r request) {
	e := c.sess.export
	off, length := int64(r.offset), int64(r.length)
	var exts []Extent
	if x, ok := e.(Extenter); ok {
		var err error
		exts, err = x.Extents(ctx, off, length)
		if err != nil {
			c.replyError(r, errnoOf(err), err.Error())
			return
		}
	}
	if len(exts) == 0 {
		exts = []Extent{{Length: length}} // no allocation info: all data
	}
	body := binary.BigEndian.AppendUint32(make([]byte, 20, 20+8*min(len(exts), maxExtents)+4), metaBaseAllocID)
	var covered int64
	for _, x := range exts {
		if covered >= length || len(body) >= 24+8*maxExtents {
			break
		}
		l := min(x.Length, length-covered)
		if l <= 0 {
			break
		}
		var st uint32
		if x.Hole {
			st |= stateHole
		}
		if x.Zero {
			st |= stateZero
		}
		body = binary.BigEndian.AppendUint32(body, uint32(l))
		body = binary.BigEndian.AppendUint32(body, st)
		covered += l
		if r.flags&cmdFlagReqOne != 0 {
			break
		}
	}
	putChunkHeader(body, replyFlagDone, replyTypeBlockState, r.handle, uint32(len(body)-20))
	c.send(body)
}

// replyOK answers success from a worker.
func (c *conn) replyOK(r request) {
	var h [16]byte
	putSimple(h[:], r.handle, 0)
	if r.typ == cmdRead && c.sess.structured {
		var s [20]byte
		putChunkHeader(s[:], replyFlagDone, replyTypeNone, r.handle, 0)
		c.send(s[:])
		return
	}
	c.send(h[:])
}

// replyError answers an error: structured with a message where negotiated,
// else a simple reply (for READ without payload, as the protocol allows).
func (c *conn) replyError(r request, errno Errno, msg string) {
	c.srv.countError()
	if len(msg) > maxString {
		msg = msg[:maxString]
	}
	if c.sess == nil || !c.sess.structured {
		var h [16]byte
		putSimple(h[:], r.handle, uint32(errno))
		c.send(h[:])
		return
	}
	b := make([]byte, 26, 26+len(msg))
	putChunkHeader(b, replyFlagDone, replyTypeError, r.handle, uint32(6+len(msg)))
	binary.BigEndian.PutUint32(b[20:], uint32(errno))
	binary.BigEndian.PutUint16(b[24:], uint16(len(msg)))
	c.send(append(b, msg...))
}

// queueSimple adds a simple reply of an inline request to the batch sent
// when the loop next waits for the client.
func (c *conn) queueSimple(handle uint64, errno uint32) {
	var h [16]byte
	putSimple(h[:], handle, errno)
	c.pending = append(c.pending, h[:]...)
	if len(c.pending) >= 4096 {
		c.flushPending()
	}
}

func (c *conn) flushPending() error {
	if len(c.pending) == 0 {
		return nil
	}
	err := c.send(c.pending)
	c.pending = c.pending[:0]
	return err
}

// send writes the parts of one reply atomically and flushes.
func (c *conn) send(parts ...[]byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	for _, p := range parts {
		if _, err := c.bw.Write(p); err != nil {
			c.werr = err
			return err
		}
	}
	if err := c.bw.Flush(); err != nil {
		c.werr = fmt.Errorf("nbd: send reply: %w", err)
		c.nc.Close() // the client can no longer be answered in order
	}
	return c.werr
}

func putSimple(b []byte, handle uint64, errno uint32) {
	binary.BigEndian.PutUint32(b[0:], simpleMagic)
	binary.BigEndian.PutUint32(b[4:], errno)
	binary.BigEndian.PutUint64(b[8:], handle)
}

func putChunkHeader(b []byte, flags, typ uint16, handle uint64, length uint32) {
	binary.BigEndian.PutUint32(b[0:], structureMagic)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], handle)
	binary.BigEndian.PutUint32(b[16:], length)
}

// Read buffers come from size-class pools: powers of two from 4 KiB to MaxPayload.
var bufPools [14]sync.Pool

func bufClass(n int) int {
	c := 0
	for size := 4096; size < n; size <<= 1 {
		c++
	}
	return c
}

func getBuf(n int) []byte {
	c := bufClass(n)
	if b, ok := bufPools[c].Get().(*[]byte); ok {
		return *b
	}
	return make([]byte, 4096<<c)
}

func putBuf(b []byte) {
	c := bufClass(cap(b))
	if 4096<<c != cap(b) {
		return
	}
	bufPools[c].Put(&b)
}
