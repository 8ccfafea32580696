package chaos

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Condition is what a Link does to the bytes between the host and the
// replica. The zero Condition forwards everything at once.
type Condition struct {
	// Cut resets every connection and refuses new ones (a peer that is
	// gone, a firewall that rejects).
	Cut bool
	// Hold forwards nothing but keeps the connections open (a partition:
	// the bytes wait, as TCP's retransmissions would, until it heals).
	Hold bool
	// Delay holds every chunk this long after it was read, each way.
	Delay time.Duration
	// Rate caps each direction of each connection, bytes per second; 0
	// is no cap.
	Rate int64
}

// Link is the suite's own fault-injecting TCP proxy: the host daemon dials
// it and it dials the replica. Set changes its Condition for the
// connections open now and those to come.
type Link struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	cond    Condition
	changed chan struct{} // closed and replaced by every Set
	conns   map[net.Conn]struct{}
	closed  bool
	wg      sync.WaitGroup

	accepted, resets atomic.Int64
	forwarded        atomic.Int64 // bytes
}

const (
	linkChunk = 32 << 10
	linkQueue = 256 // chunks per direction: a full queue stops the reads, as TCP's window would
)

// NewLink listens on a loopback port and forwards to target.
func NewLink(target string) (*Link, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	l := &Link{ln: ln, target: target, changed: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	l.wg.Add(1)
	go l.accept()
	return l, nil
}

// Addr is what the host dials.
func (l *Link) Addr() string { return l.ln.Addr().String() }

// Set changes the condition; a Cut resets every open connection at once.
func (l *Link) Set(c Condition) {
	l.mu.Lock()
	l.cond = c
	close(l.changed)
	l.changed = make(chan struct{})
	var open []net.Conn
	if c.Cut {
		for conn := range l.conns {
			open = append(open, conn)
		}
	}
	l.mu.Unlock()
	for _, conn := range open {
		reset(conn)
	}
	l.resets.Add(int64(len(open) / 2)) // each connection is a pair
}

// Condition is the condition now.
func (l *Link) Condition() Condition {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.cond
}

// Stats counts connections accepted, connections reset by a Cut (or
// refused during one) and bytes forwarded.
func (l *Link) Stats() (accepted, resets, forwarded int64) {
	return l.accepted.Load(), l.resets.Load(), l.forwarded.Load()
}

// Close stops listening and closes every connection.
func (l *Link) Close() error {
	err := l.ln.Close()
	l.mu.Lock()
	l.closed = true
	for c := range l.conns {
		c.Close()
	}
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
	l.wg.Wait()
	return err
}

// reset closes c with an RST, as a rejecting firewall or a dead peer's
// kernel would answer.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	c.Close()
}

func (l *Link) accept() {
	defer l.wg.Done()
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.accepted.Add(1)
		if l.Condition().Cut {
			l.resets.Add(1)
			reset(c)
			continue
		}
		up, err := net.DialTimeout("tcp", l.target, 5*time.Second)
		if err != nil {
			reset(c)
			continue
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			c.Close()
			up.Close()
			return
		}
		l.conns[c], l.conns[up] = struct{}{}, struct{}{}
		l.wg.Add(1)
		l.mu.Unlock()
		go func() {
			defer l.wg.Done()
			var dirs sync.WaitGroup
			dirs.Add(2)
			go func() { defer dirs.Done(); l.pipe(up, c) }()
			go func() { defer dirs.Done(); l.pipe(c, up) }()
			dirs.Wait()
			c.Close()
			up.Close()
			l.mu.Lock()
			delete(l.conns, c)
			delete(l.conns, up)
			l.mu.Unlock()
		}()
	}
}

type chunk struct {
	b  []byte
	at time.Time // when it was read
}

var errCut = errors.New("chaos: link cut")

// pipe copies src to dst under the link's condition. When either side
// fails, or a Cut comes, both connections end; a clean EOF is passed on
// as a half close.
func (l *Link) pipe(dst, src net.Conn) {
	q := make(chan chunk, linkQueue)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range q {
			if err := l.deliver(dst, c); err != nil {
				if errors.Is(err, errCut) {
					reset(dst)
				}
				src.Close()
				for range q { // the reader fails on the closed src
				}
				return
			}
		}
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	buf := make([]byte, linkChunk)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			q <- chunk{b: append([]byte(nil), buf[:n]...), at: time.Now()}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				dst.Close()
			}
			break
		}
	}
	close(q)
	<-done
}

// deliver writes one chunk when the condition lets it: not while held,
// not before its delay is over, no faster than the rate.
func (l *Link) deliver(dst net.Conn, c chunk) error {
	b := c.b
	for len(b) > 0 {
		l.mu.Lock()
		cond, changed, closed := l.cond, l.changed, l.closed
		l.mu.Unlock()
		if closed {
			return net.ErrClosed
		}
		if cond.Cut {
			return errCut
		}
		if cond.Hold {
			<-changed
			continue
		}
		if wait := time.Until(c.at.Add(cond.Delay)); wait > 0 {
			if !sleep(wait, changed) {
				continue
			}
		}
		n := len(b)
		if cond.Rate > 0 {
			n = int(min(int64(n), max(cond.Rate/20, 512))) // about 20 slices a second
		}
		if _, err := dst.Write(b[:n]); err != nil {
			return err
		}
		l.forwarded.Add(int64(n))
		b = b[n:]
		if cond.Rate > 0 {
			sleep(time.Duration(int64(n)*int64(time.Second)/cond.Rate), changed)
		}
	}
	return nil
}

// sleep waits d; it returns false when changed closed first.
func sleep(d time.Duration, changed <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-changed:
		return false
	}
}
