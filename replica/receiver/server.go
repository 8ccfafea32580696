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
	// maxPending bounds the bytes of batches appended with one fsync.
	maxPending = 64 << 20
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

	mu       sync.Mutex
	closed   bool
	lns      map[net.Listener]struct{}
	conns    map[*session]struct{}
	groups   map[groupKey]*groupState
	wg       sync.WaitGroup // connection handlers
	baseCtx  context.Context
	cancel   context.CancelFunc
	initOnce sync.Once
}

type groupKey struct{ tenant, group string }

// groupState serialises the streams of one group.
type groupState struct {
	sem chan struct{} // capacity 1: held by the session that streams
	cur *session      // the newest session; older ones are being replaced (srv.mu)
	j   Journal       // open journal, or nil; owned by the holder of sem
	// lastTime is the capture time of the newest record appended or
	// pending; clock what was corrected. Owned by the holder of sem.
	lastTime  int64
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
	killed chan struct{} // closed when replaced or at Shutdown
	once   sync.Once
}

func (s *session) kill() {
	s.once.Do(func() {
		close(s.killed)
		s.raw.Close()
	})
}

func (srv *Server) init() {
	srv.initOnce.Do(func() {
		srv.lns = map[net.Listener]struct{}{}
		srv.conns = map[*session]struct{}{}
		srv.groups = map[groupKey]*groupState{}
		srv.baseCtx, srv.cancel = context.WithCancel(context.Background())
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
		s := &session{raw: c, conn: tls.Server(c, srv.TLS), peer: c.RemoteAddr().String(), killed: make(chan struct{})}
		srv.mu.Lock()
		if srv.closed {
			srv.mu.Unlock()
			c.Close()
			return ErrServerClosed
		}
		srv.conns[s] = struct{}{}
		srv.wg.Add(1)
		srv.mu.Unlock()
		go func() {
			defer srv.wg.Done()
			srv.handle(s)
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
func refuse(c net.Conn, code stream.Code, msg string) {
	c.SetWriteDeadline(time.Now().Add(time.Second))
	c.Write(stream.AppendRefuse(nil, code, msg))
}

// handle runs one connection: handshake, authorization, then the stream.
func (srv *Server) handle(s *session) {
	log := srv.Logger.With("peer", s.peer)
	tc := s.conn
	tc.SetDeadline(time.Now().Add(srv.HandshakeTimeout))
	ctx, cancel := context.WithTimeout(srv.baseCtx, srv.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
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
	br := bufio.NewReaderSize(tc, 1<<20)
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
	srv.stream(s, tc, br, fr, id, hello, log)
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

func (srv *Server) release(key groupKey, gs *groupState, s *session, held bool) {
	srv.mu.Lock()
	if gs.cur == s {
		gs.cur = nil
	}
	srv.mu.Unlock()
	if held {
		<-gs.sem
	}
}

func (srv *Server) now() time.Time {
	if srv.Now != nil {
		return srv.Now()
	}
	return time.Now()
}
