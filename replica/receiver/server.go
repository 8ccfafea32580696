package receiver

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica/journal"
	"github.com/qcdp/qcdp/stream"
)

// Errors.
var (
	ErrServerClosed = errors.New("receiver: server closed")
	ErrDenied       = errors.New("receiver: denied")
	// ErrLimit is a stream refused because its tenant is at a limit of
	// the replica policy. OpenJournal returns it (wrapped, its message
	// naming the limit) to refuse a group the tenant may not create; the
	// host is refused with CodeDenied and that message.
	ErrLimit = errors.New("receiver: over a limit of the replica policy")
	// errBusy is a stream that waited too long for room in the in-flight
	// budget.
	errBusy = errors.New("receiver: replica busy")
)

// Journal is what the receiver needs of a group's journal
// (*journal.Journal).
type Journal interface {
	// Append makes recs durable; recs[0].Seq must be LastSeq()+1.
	Append(ctx context.Context, recs []record.Record) error
	LastSeq() uint64
	// Origin returns the spool the journal is bound to (ok false: none
	// yet); BindOrigin durably records it.
	Origin() (o journal.Origin, ok bool, err error)
	BindOrigin(o journal.Origin) error
	Close() error
}

// Authorizer decides whether a host of a tenant may write a group
// (*configs.Replica).
type Authorizer interface {
	MayWrite(tenant, host, group string) error
}

// Defaults.
const (
	DefaultIdleTimeout      = 60 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultMaxInflight is the in-flight budget when MaxInflight is 0
	// (configs.DefaultMaxInflight, the policy's default).
	DefaultMaxInflight = configs.DefaultMaxInflight
	// maxPending bounds the bytes of batches appended with one fsync.
	maxPending = 64 << 20
	// readBuffer is each connection's read buffer.
	readBuffer = 64 << 10
)

// Server receives streams. Set the exported fields, then call Serve.
type Server struct {
	// TLS is the server's TLS configuration (see stream.ServerTLS). Serve
	// refuses a configuration that does not require TLS 1.3 and verified
	// client certificates.
	TLS *tls.Config
	// Config says which tenants and hosts may write which groups.
	Config Authorizer
	// OpenJournal opens the journal of a tenant's group; both names have
	// been validated. The server keeps a journal open while the group
	// streams and closes it when the stream ends and at Shutdown.
	OpenJournal func(ctx context.Context, tenant, group string) (Journal, error)
	Logger      *slog.Logger
	// IdleTimeout closes a connection that sends nothing (not even a Ping)
	// for this long; default DefaultIdleTimeout. HandshakeTimeout bounds
	// the TLS handshake and the Hello; default DefaultHandshakeTimeout.
	IdleTimeout      time.Duration
	HandshakeTimeout time.Duration
	// Now is the replica's clock (default time.Now), a seam for tests.
	Now func() time.Time
	// MaxInflight bounds the memory, in bytes, that all streams together
	// hold for data in flight: frames being read, batches being decoded
	// and decoded batches waiting for their journal append (each counted
	// by stream.FrameCost before anything is allocated for it); default
	// DefaultMaxInflight. A stream that needs more than is free waits for
	// it, at most IdleTimeout; a frame that alone needs more than
	// MaxInflight is refused (CodeProtocol).
	MaxInflight int64
	// MaxStreams returns how many connections the hosts of a tenant may
	// have open at once; 0, or a nil MaxStreams, is no limit. See the
	// package doc.
	MaxStreams func(tenant string) int
	// Hasher answers hash queries; nil refuses them (CodeUnavailable),
	// and a host then copies disks whole.
	Hasher Hasher
	// Fenced, when set, is asked after the policy at every Hello and hash
	// query: an error refuses the host with CodeFailedOver and its
	// message (a group that failed over takes no stream; see Stop).
	Fenced func(tenant, group string) error

	mu       sync.Mutex
	closed   bool
	lns      map[net.Listener]struct{}
	conns    map[*session]struct{}
	groups   map[groupKey]*groupState
	tenants  map[string]int // connections per tenant, from the TLS handshake on
	budget   *budget
	hashSem  chan struct{}  // hash queries being answered (hashes.go)
	wg       sync.WaitGroup // connection handlers
	baseCtx  context.Context
	cancel   context.CancelFunc
	initOnce sync.Once
}

type groupKey struct{ tenant, group string }

// groupState serialises the streams of one group.
type groupState struct {
	sem   chan struct{} // capacity 1: held by the session that streams
	cur   *session      // the newest session; older ones are being replaced (srv.mu)
	users int           // sessions holding or waiting for sem (srv.mu)
	j     Journal       // open journal, or nil; owned by the holder of sem
	// lastTime is the capture time of the newest record appended or
	// pending; clock what was corrected. Owned by the holder of sem.
	lastTime int64
	// lastHost is the host's own time of the newest record (before any
	// correction), lastAhead whether it was ahead and lowered: then the
	// next one ahead moves on from it at the host clock's pace.
	lastHost  int64
	lastAhead bool
	clock     ClockReport
	published ClockReport // a copy of clock for Clock (srv.mu)
	// bound is the spool the journal is known to be bound to (nil: not
	// known yet), refused the newest Hello refused as diverged (srv.mu).
	bound   *journal.Origin
	refused *Refusal
}

// MaxClockAhead is how far a host's capture times may run ahead of the
// replica's clock before they are lowered to it.
const MaxClockAhead = time.Minute

// ClockReport says how often a group's capture times had to be corrected:
// times that went back (a host clock stepped back) and times ahead of the
// replica's clock (a host clock running ahead).
type ClockReport struct {
	Back     int64         `json:"back"`
	MaxBack  time.Duration `json:"max_back_ns"`
	Ahead    int64         `json:"ahead"`
	MaxAhead time.Duration `json:"max_ahead_ns"`
}

// Clock reports the corrections made to a group's capture times since the
// server started (zero for a group that has not streamed).
func (srv *Server) Clock(tenant, group string) ClockReport {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if gs, ok := srv.groups[groupKey{tenant, group}]; ok {
		return gs.published
	}
	return ClockReport{}
}

type session struct {
	raw    net.Conn  // the TCP connection: kill closes it, which breaks any read or write
	conn   *tls.Conn // over raw
	peer   string
	killed chan struct{}      // closed when replaced or at Shutdown
	cancel context.CancelFunc // cancels the session's context, when killed
	once   sync.Once
}

func (s *session) kill() {
	s.once.Do(func() {
		close(s.killed)
		s.cancel()
		s.raw.Close()
	})
}

func (srv *Server) init() {
	srv.initOnce.Do(func() {
		srv.lns = map[net.Listener]struct{}{}
		srv.conns = map[*session]struct{}{}
		srv.groups = map[groupKey]*groupState{}
		srv.tenants = map[string]int{}
		srv.baseCtx, srv.cancel = context.WithCancel(context.Background())
		if srv.MaxInflight <= 0 {
			srv.MaxInflight = DefaultMaxInflight
		}
		srv.budget = newBudget(srv.MaxInflight)
		srv.hashSem = make(chan struct{}, maxHashQueries)
		if srv.Logger == nil {
			srv.Logger = slog.Default()
		}
		if srv.IdleTimeout <= 0 {
			srv.IdleTimeout = DefaultIdleTimeout
		}
		if srv.HandshakeTimeout <= 0 {
			srv.HandshakeTimeout = DefaultHandshakeTimeout
		}
	})
}

// Serve accepts connections on ln (a plain TCP listener: Serve does the
// TLS) until Shutdown, and then returns ErrServerClosed. It closes ln
// when it returns.
func (srv *Server) Serve(ln net.Listener) error {
	srv.init()
	if c := srv.TLS; c == nil || c.MinVersion < tls.VersionTLS13 || c.ClientAuth != tls.RequireAndVerifyClientCert || c.ClientCAs == nil {
		return errors.New("receiver: TLS must be TLS 1.3 with verified client certificates (stream.ServerTLS)")
	}
	if srv.Config == nil || srv.OpenJournal == nil {
		return errors.New("receiver: Config and OpenJournal are required")
	}
	defer ln.Close()
	srv.mu.Lock()
	if srv.closed {
		srv.mu.Unlock()
		return ErrServerClosed
	}
	srv.lns[ln] = struct{}{}
	srv.mu.Unlock()
	defer func() {
		srv.mu.Lock()
		delete(srv.lns, ln)
		srv.mu.Unlock()
	}()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			srv.mu.Lock()
			closed := srv.closed
			srv.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("receiver: accept on %s: %w", ln.Addr(), err)
			}
			// EMFILE and the like: back off, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			srv.Logger.Warn("receiver: accept", "err", err, "retry_in", delay)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-srv.baseCtx.Done():
				t.Stop()
			}
			continue
		}
		delay = 0
		ctx, cancel := context.WithCancel(srv.baseCtx)
		s := &session{raw: c, conn: tls.Server(c, srv.TLS), peer: c.RemoteAddr().String(), killed: make(chan struct{}), cancel: cancel}
		srv.mu.Lock()
		if srv.closed {
			srv.mu.Unlock()
			cancel()
			c.Close()
			return ErrServerClosed
		}
		srv.conns[s] = struct{}{}
		srv.wg.Add(1)
		srv.mu.Unlock()
		go func() {
			defer srv.wg.Done()
			srv.handle(ctx, s)
			s.kill()
			srv.mu.Lock()
			delete(srv.conns, s)
			srv.mu.Unlock()
		}()
	}
}

// Shutdown stops accepting, closes every connection (a batch being
// appended is finished first: the journal append is not interrupted) and
// waits for the handlers and closes the journals, or until ctx is done;
// then appends in progress are cancelled too.
func (srv *Server) Shutdown(ctx context.Context) error {
	srv.init()
	srv.mu.Lock()
	srv.closed = true
	for ln := range srv.lns {
		ln.Close()
	}
	for s := range srv.conns {
		s.kill()
	}
	srv.mu.Unlock()
	done := make(chan struct{})
	go func() { srv.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		srv.cancel()
		<-done
		err = ctx.Err()
	}
	srv.mu.Lock()
	groups := srv.groups
	srv.groups = map[groupKey]*groupState{}
	srv.mu.Unlock()
	var errs []error
	for key, gs := range groups {
		if gs.j != nil {
			if cerr := gs.j.Close(); cerr != nil {
				errs = append(errs, fmt.Errorf("receiver: close journal of %s/%s: %w", key.tenant, key.group, cerr))
			}
			gs.j = nil
		}
	}
	return errors.Join(append(errs, err)...)
}

// refuse sends a Refuse frame (best effort: the connection is closed next).
// Every peer reads a Refuse of any version; refuseIn writes it in the
// version of the host's Hello once that is known.
func refuse(c net.Conn, code stream.Code, msg string) { refuseIn(c, stream.Version, code, msg) }

func refuseIn(c net.Conn, v uint8, code stream.Code, msg string) {
	c.SetWriteDeadline(time.Now().Add(time.Second))
	c.Write(stream.AppendRefuseV(nil, v, code, msg))
}

// handle runs one connection: handshake, authorization, then the stream.
// ctx ends when the session is killed.
func (srv *Server) handle(ctx context.Context, s *session) {
	log := srv.Logger.With("peer", s.peer)
	tc := s.conn
	tc.SetDeadline(time.Now().Add(srv.HandshakeTimeout))
	hctx, cancel := context.WithTimeout(ctx, srv.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		log.Warn("receiver: TLS handshake failed", "err", err)
		return
	}
	id, err := stream.Identify(tc.ConnectionState().PeerCertificates[0])
	if err != nil {
		log.Warn("receiver: refused", "code", stream.CodeDenied, "err", err)
		refuse(tc, stream.CodeDenied, err.Error())
		return
	}
	log = log.With("tenant", id.Tenant, "host", id.Host)
	limit := srv.countConn(id.Tenant, 1)
	defer srv.countConn(id.Tenant, -1)
	if err := srv.overStreams(id.Tenant, "", limit); err != nil {
		log.Warn("receiver: refused", "code", stream.CodeUnavailable, "err", err)
		refuse(tc, stream.CodeUnavailable, err.Error())
		return
	}
	br := bufio.NewReaderSize(tc, readBuffer)
	fr := stream.NewReader(br)
	f, err := fr.Next()
	if err != nil {
		log.Warn("receiver: no hello", "err", err)
		if errors.Is(err, stream.ErrVersion) {
			refuse(tc, stream.CodeVersion, err.Error())
		} else {
			refuse(tc, stream.CodeProtocol, err.Error())
		}
		return
	}
	if f.Type == stream.HashQ {
		srv.hashes(ctx, tc, fr, id, f, limit, log)
		return
	}
	hello, err := stream.DecodeHello(f)
	if err != nil {
		code := stream.CodeBadRequest
		msg := err.Error()
		var ve *stream.VersionError
		if errors.As(err, &ve) {
			code, msg = stream.CodeVersion, fmt.Sprintf("replica speaks stream v%d, host sent v%d", ve.Local, ve.Peer)
		}
		log.Warn("receiver: refused", "code", code, "err", msg)
		refuse(tc, code, msg)
		return
	}
	log = log.With("group", hello.Group)
	if code, err := srv.authorize(id, hello.Group); err != nil {
		log.Warn("receiver: refused", "code", code, "err", err)
		refuse(tc, code, err.Error())
		return
	}
	if err := srv.overStreams(id.Tenant, hello.Group, limit); err != nil {
		log.Warn("receiver: refused", "code", stream.CodeUnavailable, "err", err)
		refuse(tc, stream.CodeUnavailable, err.Error())
		return
	}
	srv.stream(ctx, s, tc, br, fr, id, hello, log)
}

// countConn adds d to the connections of a tenant and returns its
// max_streams (0: no limit).
func (srv *Server) countConn(tenant string, d int) int {
	srv.mu.Lock()
	if srv.tenants[tenant] += d; srv.tenants[tenant] <= 0 {
		delete(srv.tenants, tenant)
	}
	srv.mu.Unlock()
	if srv.MaxStreams == nil {
		return 0
	}
	return max(srv.MaxStreams(tenant), 0)
}

// overStreams says whether a connection of a tenant, counted already, is
// one too many for its max_streams limit (0: none). Before its Hello
// (group ""), only a connection beyond twice the limit is; after it, one
// for a group that is streaming now is let in: it replaces that stream.
func (srv *Server) overStreams(tenant, group string, limit int) error {
	if limit == 0 {
		return nil
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	n := srv.tenants[tenant]
	gs := srv.groups[groupKey{tenant, group}]
	switch {
	case n <= limit:
		return nil
	case group == "" && n <= 2*limit:
		return nil
	case group != "" && gs != nil && gs.cur != nil:
		return nil
	}
	return fmt.Errorf("%w: tenant %q has %d other connections open; its max_streams is %d", ErrLimit, tenant, n-1, limit)
}

// authorize checks the group name, then the policy. Names are checked
// before anything builds a path from them (invariant 6).
func (srv *Server) authorize(id stream.Identity, group string) (stream.Code, error) {
	if err := record.ValidDiskName(group); err != nil {
		return stream.CodeBadRequest, fmt.Errorf("group: %w", err)
	}
	if err := configs.ValidName(group); err != nil {
		return stream.CodeBadRequest, fmt.Errorf("group: %w", err)
	}
	if err := configs.ValidName(id.Tenant); err != nil {
		return stream.CodeDenied, fmt.Errorf("%w: tenant of the certificate: %w", ErrDenied, err)
	}
	if err := srv.Config.MayWrite(id.Tenant, id.Host, group); err != nil {
		return stream.CodeDenied, fmt.Errorf("%w: host %q of tenant %q may not write group %q: %w", ErrDenied, id.Host, id.Tenant, group, err)
	}
	if srv.Fenced != nil {
		if err := srv.Fenced(id.Tenant, group); err != nil {
			return stream.CodeFailedOver, err
		}
	}
	return 0, nil
}

// claim makes s the group's streaming session: it replaces the one
// streaming now and waits for it to let go. It returns false if s was
// replaced or killed in the meantime.
func (srv *Server) claim(key groupKey, s *session) (*groupState, bool) {
	srv.mu.Lock()
	gs := srv.groups[key]
	if gs == nil {
		gs = &groupState{sem: make(chan struct{}, 1)}
		srv.groups[key] = gs
	}
	old := gs.cur
	gs.cur = s
	gs.users++
	srv.mu.Unlock()
	if old != nil {
		refuse(old.conn, stream.CodeReplaced, "a newer connection for this group took over")
		old.kill()
	}
	select {
	case gs.sem <- struct{}{}:
		return gs, true
	case <-s.killed:
		srv.release(key, gs, s, false)
		return nil, false
	}
}

// release lets go of the group. The state of a group that has nothing to
// keep (no journal open, nothing to report) is dropped with its last
// session, so that names refused before their journal opened (a tenant
// at max_groups) leave nothing behind.
func (srv *Server) release(key groupKey, gs *groupState, s *session, held bool) {
	if held {
		<-gs.sem
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if gs.cur == s {
		gs.cur = nil
	}
	// With no other user, nobody holds sem: gs.j can be read.
	if gs.users--; gs.users == 0 && gs.j == nil && gs.bound == nil && gs.refused == nil && gs.published == (ClockReport{}) &&
		srv.groups[key] == gs {
		delete(srv.groups, key)
	}
}

// Inflight returns the bytes of the in-flight budget held now and its
// size (MaxInflight).
func (srv *Server) Inflight() (held, size int64) {
	srv.init()
	return srv.budget.inUse(), srv.budget.size
}

func (srv *Server) now() time.Time {
	if srv.Now != nil {
		return srv.Now()
	}
	return time.Now()
}
