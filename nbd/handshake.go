package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Sentinel errors of negotiation. A connection that hits one is closed; the
// server and its other connections go on.
var (
	ErrBadMagic       = errors.New("nbd: bad magic")
	ErrBadClientFlags = errors.New("nbd: client did not accept fixed newstyle")
	ErrAborted        = errors.New("nbd: client aborted negotiation")
	ErrUnknownExport  = errors.New("nbd: unknown export")
	ErrNotAllowed     = errors.New("nbd: export refused to this peer")
	ErrProtocol       = errors.New("nbd: protocol violation")
)

// session is what negotiation settled for one connection.
type session struct {
	name       string
	export     Export
	structured bool
	baseAlloc  bool // base:allocation selected for this export
}

// negotiator runs the fixed-newstyle handshake of one connection.
type negotiator struct {
	c          *conn
	noZeroes   bool
	structured bool
	metaExport string // export the selected contexts belong to
	metaAlloc  bool
	buf        []byte
}

// negotiate runs option haggling until the client enters transmission with
// NBD_OPT_GO or NBD_OPT_EXPORT_NAME.
func (c *conn) negotiate() (*session, error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], nbdMagic)
	binary.BigEndian.PutUint64(hello[8:], optsMagic)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.bw.Write(hello[:]); err != nil {
		return nil, err
	}
	if err := c.bw.Flush(); err != nil {
		return nil, fmt.Errorf("nbd: send greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return nil, fmt.Errorf("nbd: read client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&clientFixedNewstyle == 0 || flags&^(clientFixedNewstyle|clientNoZeroes) != 0 {
		return nil, fmt.Errorf("%w (flags %#x)", ErrBadClientFlags, flags)
	}
	n := &negotiator{c: c, noZeroes: flags&clientNoZeroes != 0}
	for {
		s, err := n.option()
		if err != nil || s != nil {
			return s, err
		}
	}
}

// option reads and answers one option. It returns a session when the client
// enters transmission.
func (n *negotiator) option() (*session, error) {
	var h [16]byte
	if _, err := io.ReadFull(n.c.br, h[:]); err != nil {
		return nil, fmt.Errorf("nbd: read option header: %w", err)
	}
	if m := binary.BigEndian.Uint64(h[0:]); m != optsMagic {
		return nil, fmt.Errorf("%w: option magic %#x", ErrBadMagic, m)
	}
	opt := binary.BigEndian.Uint32(h[8:])
	length := binary.BigEndian.Uint32(h[12:])
	if length > maxOptionLen {
		if _, err := io.CopyN(io.Discard, n.c.br, int64(length)); err != nil {
			return nil, fmt.Errorf("nbd: discard option %d data: %w", opt, err)
		}
		return nil, n.reply(opt, repErrTooBig, []byte("option data too large"))
	}
	if cap(n.buf) < int(length) {
		n.buf = make([]byte, length)
	}
	data := n.buf[:length]
	if _, err := io.ReadFull(n.c.br, data); err != nil {
		return nil, fmt.Errorf("nbd: read option %d data: %w", opt, err)
	}
	if n.c.srv.shuttingDown() {
		if opt == optExportName {
			return nil, fmt.Errorf("nbd: export-name during shutdown")
		}
		if err := n.reply(opt, repErrShutdown, []byte("server shutting down")); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("nbd: negotiation during shutdown")
	}
	switch opt {
	case optExportName:
		return n.exportName(string(data))
	case optAbort:
		// The client may have gone already; the ack is a courtesy.
		_ = n.reply(opt, repAck, nil)
		return nil, ErrAborted
	case optList:
		return nil, n.list(opt, data)
	case optInfo, optGo:
		return n.infoGo(opt, data)
	case optStructuredReply:
		if len(data) != 0 {
			return nil, n.reply(opt, repErrInvalid, []byte("structured reply takes no data"))
		}
		n.structured = true
		return nil, n.reply(opt, repAck, nil)
	case optListMetaContext, optSetMetaContext:
		return nil, n.metaContext(opt, data)
	default:
		// STARTTLS, EXTENDED_HEADERS and anything newer: say no, go on.
		return nil, n.reply(opt, repErrUnsup, nil)
	}
}

// reply sends one option reply and flushes it.
func (n *negotiator) reply(opt, typ uint32, data []byte) error {
	var h [20]byte
	binary.BigEndian.PutUint64(h[0:], optReplyMagic)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], typ)
	binary.BigEndian.PutUint32(h[16:], uint32(len(data)))
	n.c.bw.Write(h[:])
	n.c.bw.Write(data)
	if err := n.c.bw.Flush(); err != nil {
		return fmt.Errorf("nbd: send reply to option %d: %w", opt, err)
	}
	return nil
}

func (n *negotiator) list(opt uint32, data []byte) error {
	if len(data) != 0 {
		return n.reply(opt, repErrInvalid, []byte("list takes no data"))
	}
	for _, name := range n.c.srv.cat.Names() {
		if e, ok := n.c.srv.cat.Lookup(name); !ok || !allows(e, n.c.peer) {
			continue // gone since Names, or not this peer's to know of
		}
		b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
		if err := n.reply(opt, repServer, append(b, name...)); err != nil {
			return err
		}
	}
	return n.reply(opt, repAck, nil)
}

// exportName is the old way in: no error can be sent, so an unknown or
// refused export closes the connection.
func (n *negotiator) exportName(name string) (*session, error) {
	e, ok := n.c.srv.cat.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("%w %q (export-name)", ErrUnknownExport, name)
	}
	if !n.allow(optExportName, name, e) {
		return nil, fmt.Errorf("%w: %q (export-name)", ErrNotAllowed, name)
	}
	b := make([]byte, 10, 134)
	binary.BigEndian.PutUint64(b[0:], uint64(e.Size()))
	binary.BigEndian.PutUint16(b[8:], transmissionFlags(e, n.structured))
	if !n.noZeroes {
		b = b[:134]
	}
	n.c.bw.Write(b)
	if err := n.c.bw.Flush(); err != nil {
		return nil, fmt.Errorf("nbd: send export %q: %w", name, err)
	}
	return n.session(name, e), nil
}

func (n *negotiator) session(name string, e Export) *session {
	return &session{name: name, export: e, structured: n.structured,
		baseAlloc: n.metaAlloc && n.metaExport == name}
}

// infoGo answers NBD_OPT_INFO and NBD_OPT_GO.
func (n *negotiator) infoGo(opt uint32, data []byte) (*session, error) {
	name, rest, ok := takeString(data)
	if !ok || len(rest) < 2 {
		return nil, n.reply(opt, repErrInvalid, []byte("malformed info request"))
	}
	nreq := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*nreq {
		return nil, n.reply(opt, repErrInvalid, []byte("info request count does not match length"))
	}
	e, ok := n.open(opt, name)
	if !ok {
		return nil, n.reply(opt, repErrUnknown, notOpen(name))
	}
	wantName := false
	for i := 0; i < nreq; i++ {
		if binary.BigEndian.Uint16(rest[2*i:]) == infoName {
			wantName = true
		}
	}
	info := make([]byte, 10)
	binary.BigEndian.PutUint16(info[0:], infoExport)
	binary.BigEndian.PutUint64(info[2:], uint64(e.Size()))
	info = binary.BigEndian.AppendUint16(info, transmissionFlags(e, n.structured))
	if err := n.reply(opt, repInfo, info); err != nil {
		return nil, err
	}
	if wantName {
		b := binary.BigEndian.AppendUint16(nil, infoName)
		if err := n.reply(opt, repInfo, append(b, name...)); err != nil {
			return nil, err
		}
	}
	// Always sent: a minimum of 1 keeps QEMU from read-modify-write.
	bs := binary.BigEndian.AppendUint16(nil, infoBlockSize)
	bs = binary.BigEndian.AppendUint32(bs, 1)
	bs = binary.BigEndian.AppendUint32(bs, preferredBlock)
	bs = binary.BigEndian.AppendUint32(bs, MaxPayload)
	if err := n.reply(opt, repInfo, bs); err != nil {
		return nil, err
	}
	if err := n.reply(opt, repAck, nil); err != nil {
		return nil, err
	}
	if opt == optInfo {
		return nil, nil
	}
	return n.session(name, e), nil
}

// metaContext answers NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
// The server knows one context, base:allocation.
func (n *negotiator) metaContext(opt uint32, data []byte) error {
	if opt == optSetMetaContext && !n.structured {
		return n.reply(opt, repErrInvalid, []byte("set meta context needs structured replies first"))
	}
	name, rest, ok := takeString(data)
	if !ok || len(rest) < 4 {
		return n.reply(opt, repErrInvalid, []byte("malformed meta context request"))
	}
	nq := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	var queries []string
	for i := uint32(0); i < nq; i++ {
		var q string
		q, rest, ok = takeString(rest)
		if !ok {
			return n.reply(opt, repErrInvalid, []byte("malformed meta context query"))
		}
		queries = append(queries, q)
	}
	if len(rest) != 0 {
		return n.reply(opt, repErrInvalid, []byte("trailing bytes after meta context queries"))
	}
	if _, ok := n.open(opt, name); !ok {
		return n.reply(opt, repErrUnknown, notOpen(name))
	}
	match := false
	for _, q := range queries {
		if q == MetaBaseAllocation || (opt == optListMetaContext && q == "base:") {
			match = true
		}
	}
	if opt == optListMetaContext && nq == 0 {
		match = true
	}
	if opt == optSetMetaContext {
		n.metaExport, n.metaAlloc = name, match
	}
	if match {
		var id uint32
		if opt == optSetMetaContext {
			id = metaBaseAllocID
		}
		b := binary.BigEndian.AppendUint32(nil, id)
		if err := n.reply(opt, repMetaContext, append(b, MetaBaseAllocation...)); err != nil {
			return err
		}
	}
	return n.reply(opt, repAck, nil)
}

// open looks name up for opt and reports whether this peer may open it.
// A refused export is answered exactly as a missing one (NBD_REP_ERR_UNKNOWN,
// the same text): a process that reaches a group's socket must not learn
// which disks the group's other VMs have by probing names. The refusal is
// logged and counted on this side (see allow).
func (n *negotiator) open(opt uint32, name string) (Export, bool) {
	e, found := n.c.srv.cat.Lookup(name)
	if !found || !n.allow(opt, name, e) {
		return nil, false
	}
	return e, true
}

// notOpen is the one answer to a missing or refused export.
func notOpen(name string) []byte {
	return []byte("no export " + quote(name) + " open to this client")
}

// allows reports whether e lets p open it (see Authorizer).
func allows(e Export, p Peer) bool {
	a, ok := e.(Authorizer)
	return !ok || a.Allow(p) == nil
}

// allow asks e whether this connection's peer may use it for opt, and logs
// and counts a refusal: who, which export, and why.
func (n *negotiator) allow(opt uint32, name string, e Export) bool {
	a, ok := e.(Authorizer)
	if !ok {
		return true
	}
	err := a.Allow(n.c.peer)
	if err == nil {
		return true
	}
	n.c.srv.refused.Add(1)
	n.c.log.Warn("nbd export refused to peer", "export", name, "option", optionName(opt), "peer", n.c.peer, "err", err)
	return false
}

func optionName(opt uint32) string {
	switch opt {
	case optExportName:
		return "EXPORT_NAME"
	case optInfo:
		return "INFO"
	case optGo:
		return "GO"
	case optListMetaContext:
		return "LIST_META_CONTEXT"
	case optSetMetaContext:
		return "SET_META_CONTEXT"
	}
	return fmt.Sprintf("option %d", opt)
}

// takeString reads a 32-bit length-prefixed string bounded by the protocol.
func takeString(b []byte) (string, []byte, bool) {
	if len(b) < 4 {
		return "", nil, false
	}
	l := binary.BigEndian.Uint32(b)
	if l > maxString || uint64(l) > uint64(len(b)-4) {
		return "", nil, false
	}
	return string(b[4 : 4+l]), b[4+l:], true
}

func quote(s string) string { return fmt.Sprintf("%q", s) }

// transmissionFlags says what the export can do, from the interfaces it has.
func transmissionFlags(e Export, structured bool) uint16 {
	f := tflagHasFlags | tflagSendCache | tflagCanMultiConn
	_, canWrite := e.(Writer)
	_, canFlush := e.(Flusher)
	if !canWrite {
		f |= tflagReadOnly
	}
	if canFlush {
		f |= tflagSendFlush
		if canWrite {
			f |= tflagSendFUA
		}
	}
	if _, ok := e.(Trimmer); ok && canWrite {
		f |= tflagSendTrim
	}
	if _, ok := e.(Zeroer); ok && canWrite {
		f |= tflagSendWriteZeroes | tflagSendFastZero
	}
	if structured {
		f |= tflagSendDF
	}
	return f
}
