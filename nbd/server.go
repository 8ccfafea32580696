package nbd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("nbd: server closed")

// Options tune a Server. The zero value is usable.
type Options struct {
	Logger *slog.Logger
	// MaxInFlight bounds the requests one connection has dispatched at once
	// (reads, flushes, block status); default 64. QEMU sends at most 16.
	MaxInFlight int
	// HandshakeTimeout bounds negotiation; default 30 s.
	HandshakeTimeout time.Duration
}

// Stats are running totals over all connections.
type Stats struct {
	Connections  int64 // open now
	Accepted     int64
	Writes       int64 // WRITE, WRITE_ZEROES and TRIM answered with success
	BytesWritten int64 // WRITE payload bytes accepted
	Reads        int64
	BytesRead    int64
	Errors       int64 // error replies sent
	Refused      int64 // options refused because an export's Allow said no
}

// Server serves exports from a Catalog over any net.Listener (unix or TCP).
// Serve and Shutdown follow net/http.
type Server struct {
	cat  Catalog
	opts Options
	log  *slog.Logger

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	closing   atomic.Bool
	wg        sync.WaitGroup // connection goroutines

	ctx    context.Context // cancelled when Shutdown gives up waiting
	cancel context.CancelFunc

	accepted, open, writes, bytesWritten, reads, bytesRead, errs, refused atomic.Int64
}

// NewServer returns a server for the exports in cat.
func NewServer(cat Catalog, opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = 64
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = 30 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		cat: cat, opts: opts, log: opts.Logger,
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]struct{}{},
		ctx:       ctx, cancel: cancel,
	}
}

// Serve accepts connections on ln until Shutdown, then returns
// ErrServerClosed. Each connection is served on its own goroutine, owned by
// the server: Shutdown waits for it.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing.Load() {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.closing.Load() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("nbd accept", "err", err, "retry_in", backoff)
				time.Sleep(backoff)
				continue
			}
			return fmt.Errorf("nbd: accept on %s: %w", ln.Addr(), err)
		}
		backoff = 0
		c := newConn(s, nc)
		s.mu.Lock()
		if s.closing.Load() {
			s.mu.Unlock()
			nc.Close()
			return ErrServerClosed
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		s.accepted.Add(1)
		s.open.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				s.open.Add(-1)
			}()
			c.serve(s.ctx)
		}()
	}
}

// Shutdown stops accepting, answers new requests with ESHUTDOWN, lets
// in-flight requests finish and closes every connection. When ctx ends
// first, it cancels the exports' contexts, closes the connections hard and
// returns ctx.Err() once they are gone.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing.Store(true)
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		// Wake the request loop; it finishes what is in flight and closes.
		c.nc.SetReadDeadline(time.Now())
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.cancel()
		s.mu.Lock()
		for c := range s.conns {
			c.nc.Close()
		}
		s.mu.Unlock()
		<-done
		return ctx.Err()
	}
}

func (s *Server) shuttingDown() bool { return s.closing.Load() }

// Stats returns running totals.
func (s *Server) Stats() Stats {
	return Stats{
		Connections: s.open.Load(), Accepted: s.accepted.Load(),
		Writes: s.writes.Load(), BytesWritten: s.bytesWritten.Load(),
		Reads: s.reads.Load(), BytesRead: s.bytesRead.Load(),
		Errors: s.errs.Load(), Refused: s.refused.Load(),
	}
}

func (s *Server) countWrite(typ uint16, n uint32, err error) {
	if err != nil {
		return
	}
	s.writes.Add(1)
	if typ == cmdWrite {
		s.bytesWritten.Add(int64(n))
	}
}

func (s *Server) countRead(n uint32, err error) {
	if err == nil {
		s.reads.Add(1)
		s.bytesRead.Add(int64(n))
	}
}

func (s *Server) countError() { s.errs.Add(1) }
