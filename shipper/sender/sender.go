package sender

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/shipper/spool"
	"github.com/qcdp/qcdp/stream"
)

// Errors.
var (
	// ErrDiverged: the replica holds records the spool does not have, or
	// records of another spool (the spool was lost or recreated, another
	// host uses the same group name, or the spool lost records in a
	// crash); the group needs a resync. A refusal with
	// stream.CodeDiverged says the same from the replica's side.
	ErrDiverged = errors.New("sender: replica and spool diverged")
	// ErrAckBeyond: the replica acknowledged a seq never sent.
	ErrAckBeyond = errors.New("sender: ack beyond what was sent")
	// ErrFailedOver: the replica refuses the group's stream because the
	// group failed over at the recovery site (stream.CodeFailedOver).
	ErrFailedOver = errors.New("sender: the group has failed over at the recovery site")
)

// Defaults for Options left zero.
const (
	DefaultBatchBytes  = 4 << 20
	DefaultKeepAlive   = 15 * time.Second
	DefaultIdleTimeout = 60 * time.Second
	DefaultDialTimeout = 10 * time.Second
	DefaultMinBackoff  = 100 * time.Millisecond
	// DefaultMaxBackoff keeps the wait between reconnects short: a replica
	// that comes back is streamed to again within about this long (a
	// dial attempt every two seconds costs a down replica nothing).
	DefaultMaxBackoff = 2 * time.Second
	// FailedOverRetry caps the wait between Hellos while the replica
	// refuses the group as failed over, whatever MaxBackoff says: a
	// failover undone at the recovery site is seen within about this long.
	FailedOverRetry = 30 * time.Second
)

// Options configure a Sender.
type Options struct {
	Spool *spool.Spool // the group's spool; the group name is its Group()
	Addr  string       // the replica daemon, "host:port"
	// TLS is the host's client configuration (stream.ClientTLS): TLS 1.3
	// with the host's certificate. New refuses anything weaker.
	TLS *tls.Config
	// Host is the host's name, sent in the Hello for the replica's logs
	// (default os.Hostname is not read: the certificate is what counts).
	Host string
	// RateLimit bounds the bytes per second put on the wire (token
	// bucket); 0 means no limit.
	RateLimit int64
	// BatchBytes bounds the raw bytes of one batch (default 4 MiB, at most
	// stream.MaxBatchRaw). A batch holds what is available up to it.
	BatchBytes int
	// NoCompress sends batches uncompressed (for links where CPU is
	// dearer than bandwidth, and benchmarks).
	NoCompress bool
	// KeepAlive is how long an idle stream waits before a Ping; the
	// stream is dropped when the replica says nothing for IdleTimeout.
	KeepAlive   time.Duration
	IdleTimeout time.Duration
	DialTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between reconnects.
	MinBackoff, MaxBackoff time.Duration
	Logger                 *slog.Logger
}

// Stats are a sender's figures.
type Stats struct {
	Group      string        `json:"group"`
	Connected  bool          `json:"connected"`
	RPO        time.Duration `json:"rpo_ns"`
	LastSent   uint64        `json:"last_sent"`  // highest seq put on the wire
	LastAcked  uint64        `json:"last_acked"` // highest seq the replica holds durably
	BytesSent  int64         `json:"bytes_sent"` // frame bytes written, all connections
	BytesRaw   int64         `json:"bytes_raw"`  // encoded record bytes those batches held
	Batches    int64         `json:"batches"`
	Zeroes     int64         `json:"zero_payloads"` // all-zero Data payloads sent as Zero records
	Reconnects int64         `json:"reconnects"`
	LastError  string        `json:"last_error,omitempty"`
	// Diverged, when set, says why the replica and this spool diverged:
	// the stream is refused until an operator heals it (a resync), and
	// nothing is acknowledged to the spool meanwhile.
	Diverged string `json:"diverged,omitempty"`
	// FailedOver, when set, is the replica's word that the group failed
	// over at the recovery site (stream.CodeFailedOver): its stream is
	// refused until the recovery site undoes the failover. The sender
	// keeps saying Hello (at least every FailedOverRetry); it is cleared
	// when one is welcomed again.
	FailedOver string `json:"failed_over,omitempty"`
	// Spool is the identity the stream names (see package stream).
	Spool spool.Identity `json:"spool"`
}

// Ratio is the compression ratio, raw bytes per byte sent (1 when nothing
// was sent).
func (s Stats) Ratio() float64 {
	if s.BytesSent == 0 {
		return 1
	}
	return float64(s.BytesRaw) / float64(s.BytesSent)
}

// inflight is a batch sent and not yet acknowledged.
type inflight struct {
	first, last uint64
	time        int64 // capture time of its first record
}

// Sender ships one group's spool to its replica. Create it with New and
// run it with Run; Stats and RPO are safe to call at any time.
type Sender struct {
	opts  Options
	group string
	log   *slog.Logger

	mu        sync.Mutex
	connected bool
	welcomed  bool // the replica welcomed this spool at least once
	sent      uint64
	acked     uint64
	flight    []inflight // oldest first
	peekSeq   uint64     // a spool record's seq and capture time, for RPO
	peekTime  int64
	stats     Stats
	// changed is closed and replaced when acked grows or the group is
	// refused as failed over (WaitAcked).
	changed chan struct{}
}

// New checks opts and returns a Sender.
func New(opts Options) (*Sender, error) {
	if opts.Spool == nil {
		return nil, errors.New("sender: no spool")
	}
	group := opts.Spool.Group()
	if opts.TLS == nil || opts.TLS.MinVersion < tls.VersionTLS13 || len(opts.TLS.Certificates) == 0 && opts.TLS.GetClientCertificate == nil {
		return nil, fmt.Errorf("sender: group %s: TLS must be TLS 1.3 with a client certificate (stream.ClientTLS)", group)
	}
	if _, _, err := net.SplitHostPort(opts.Addr); err != nil {
		return nil, fmt.Errorf("sender: group %s: replica address %q: %w", group, opts.Addr, err)
	}
	if opts.RateLimit < 0 {
		return nil, fmt.Errorf("sender: group %s: negative rate limit", group)
	}
	if opts.BatchBytes <= 0 {
		opts.BatchBytes = DefaultBatchBytes
	}
	opts.BatchBytes = min(opts.BatchBytes, stream.MaxBatchRaw)
	if opts.RateLimit > 0 {
		// Keep frames small against the rate, so that the limit is smooth.
		opts.BatchBytes = max(min(opts.BatchBytes, int(opts.RateLimit/8)), 64<<10)
	}
	opts.KeepAlive = cmpOr(opts.KeepAlive, DefaultKeepAlive)
	opts.IdleTimeout = cmpOr(opts.IdleTimeout, DefaultIdleTimeout)
	opts.DialTimeout = cmpOr(opts.DialTimeout, DefaultDialTimeout)
	opts.MinBackoff = cmpOr(opts.MinBackoff, DefaultMinBackoff)
	opts.MaxBackoff = max(cmpOr(opts.MaxBackoff, DefaultMaxBackoff), opts.MinBackoff)
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Sender{opts: opts, group: group, log: opts.Logger.With("group", group, "replica", opts.Addr), changed: make(chan struct{})}
	s.acked = opts.Spool.Acked()
	s.sent = s.acked
	s.stats.Group = group
	return s, nil
}

func cmpOr(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Run ships the spool until ctx is done (then it returns nil) or the spool
// is closed or broken. Every other failure (the replica unreachable or
// refusing, the connection lost) is logged and retried with capped
// exponential backoff; Stats.LastError keeps the latest.
func (s *Sender) Run(ctx context.Context) error {
	backoff := s.opts.MinBackoff
	for {
		progressed, err := s.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, spool.ErrClosed) || errors.Is(err, spool.ErrBroken) {
			return fmt.Errorf("sender: group %s: %w", s.group, err)
		}
		if progressed {
			backoff = s.opts.MinBackoff // the replica answered: start over
		}
		var refused *stream.RefusedError
		isRefused := errors.As(err, &refused)
		failedOver := isRefused && refused.Code == stream.CodeFailedOver
		s.mu.Lock()
		s.stats.Reconnects++
		s.stats.LastError = err.Error()
		wasFailedOver := s.stats.FailedOver != ""
		switch {
		case isRefused && refused.Code == stream.CodeDiverged:
			s.stats.Diverged = refused.Message
		case errors.Is(err, ErrDiverged):
			s.stats.Diverged = err.Error()
		case failedOver:
			s.stats.FailedOver = refused.Message
			if !wasFailedOver {
				s.changedLocked()
			}
		}
		s.mu.Unlock()
		if failedOver {
			backoff = min(backoff, FailedOverRetry)
		}
		switch {
		case failedOver && !wasFailedOver:
			// Said once: the refusal stands until the recovery site
			// undoes the failover, and every Hello until then meets it.
			s.log.Error("sender: the group has failed over at the recovery site: its stream is refused; saying Hello again until the failover is undone there",
				"why", refused.Message, "retry_every", min(s.opts.MaxBackoff, FailedOverRetry))
		case failedOver:
			s.log.Debug("sender: stream refused: the group is still failed over", "err", err, "retry_in", backoff)
		case isRefused && refused.Code != stream.CodeReplaced && refused.Code != stream.CodeShutdown ||
			errors.Is(err, ErrDiverged) || errors.Is(err, stream.ErrVersion):
			s.log.Error("sender: stream refused", "err", err, "retry_in", backoff)
		default:
			s.log.Warn("sender: stream interrupted", "err", err, "retry_in", backoff)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, s.opts.MaxBackoff)
		if failedOver {
			backoff = min(backoff, FailedOverRetry)
		}
	}
}

// session runs one connection. progressed says whether the replica
// acknowledged anything new (which resets the backoff).
func (s *Sender) session(ctx context.Context) (progressed bool, err error) {
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: s.opts.DialTimeout, KeepAlive: s.opts.KeepAlive}, Config: s.opts.TLS}
	dctx, cancel := context.WithTimeout(ctx, s.opts.DialTimeout)
	c, err := d.DialContext(dctx, "tcp", s.opts.Addr)
	cancel()
	if err != nil {
		return false, fmt.Errorf("sender: group %s: dial %s: %w", s.group, s.opts.Addr, err)
	}
	defer c.Close()
	br := bufio.NewReaderSize(c, 64<<10)
	fr := stream.NewReader(br)
	durable, err := s.handshake(c, fr)
	if err != nil {
		return false, err
	}
	startAcked := s.Stats().LastAcked
	sctx, cancelSession := context.WithCancel(ctx)
	readErr := make(chan error, 1)
	go func() {
		err := s.readAcks(c, fr)
		cancelSession()
		readErr <- err
	}()
	s.mu.Lock()
	s.connected, s.welcomed = true, true
	undone := s.stats.FailedOver
	s.stats.LastError, s.stats.Diverged, s.stats.FailedOver = "", "", "" // what went wrong before is over
	s.mu.Unlock()
	if undone != "" {
		s.log.Info("sender: welcomed again: the recovery site undid the group's failover", "was", undone)
	}
	s.log.Info("sender: streaming", "durable", durable, "spool_last", s.opts.Spool.LastSeq())
	werr := s.write(sctx, c, durable)
	cancelSession()
	c.Close() // stops the reader
	rerr := <-readErr
	s.mu.Lock()
	s.connected = false
	progressed = s.acked > startAcked
	s.mu.Unlock()
	if ctx.Err() != nil {
		return progressed, ctx.Err()
	}
	// The first failure explains the rest: a refusal read by the reader
	// beats the write error it caused.
	var refused *stream.RefusedError
	switch {
	case errors.As(rerr, &refused), errors.Is(rerr, ErrAckBeyond):
		return progressed, rerr
	case werr != nil && !errors.Is(werr, context.Canceled):
		return progressed, werr
	case rerr != nil:
		return progressed, rerr
	}
	return progressed, werr
}

// handshake sends the Hello naming the spool, reads the Welcome and
// acknowledges to the spool what the replica holds. It returns the
// replica's durable seq.
//
// The acknowledgement deletes spool records this session has not sent:
// it is made only when the replica holds them from this very spool (the
// Welcome names the spool and epoch the Hello did: the replica refuses a
// journal bound to another spool) and the spool vouches for them still
// being the records it sent then (durable at most Intact). Anything else
// is ErrDiverged or a protocol error, and nothing is acknowledged.
func (s *Sender) handshake(c net.Conn, fr *stream.Reader) (uint64, error) {
	sp := s.opts.Spool
	id := sp.Identity()
	intact := sp.Intact() // before LastSeq: both only grow meanwhile
	last := sp.LastSeq()
	hello, err := stream.AppendHello(nil, stream.HelloMsg{Group: s.group, Host: s.opts.Host, LastSeq: last, Intact: intact,
		Spool: stream.SpoolID{ID: id.ID, Created: id.Created, Epoch: id.Epoch}})
	if err != nil {
		return 0, fmt.Errorf("sender: group %s: %w", s.group, err)
	}
	c.SetDeadline(time.Now().Add(s.opts.IdleTimeout))
	if _, err := c.Write(hello); err != nil {
		return 0, fmt.Errorf("sender: group %s: hello to %s: %w", s.group, s.opts.Addr, err)
	}
	f, err := fr.Next()
	if err != nil {
		return 0, fmt.Errorf("sender: group %s: handshake with %s: %w", s.group, s.opts.Addr, err)
	}
	c.SetDeadline(time.Time{})
	switch f.Type {
	case stream.Refuse:
		r, err := stream.DecodeRefuse(f)
		if err != nil {
			return 0, fmt.Errorf("sender: group %s: %w", s.group, err)
		}
		return 0, fmt.Errorf("sender: group %s: %s: %w%s", s.group, s.opts.Addr, r, versionAdvice(f, r))
	case stream.Welcome:
	default:
		return 0, fmt.Errorf("sender: group %s: %w: %v frame in answer to a hello", s.group, stream.ErrProtocol, f.Type)
	}
	if f.Version != stream.Version {
		// The host writes only its own version: a replica that agrees to
		// another (an older one) would refuse what follows.
		advice := ""
		if f.Version < stream.Version {
			advice = " (upgrade the replica first)"
		}
		return 0, fmt.Errorf("sender: group %s: replica %s welcomed this host in stream v%d, the host speaks v%d%s: %w",
			s.group, s.opts.Addr, f.Version, stream.Version, advice, stream.ErrVersion)
	}
	w, err := stream.DecodeWelcome(f)
	if err != nil {
		return 0, fmt.Errorf("sender: group %s: %w", s.group, err)
	}
	durable := w.Durable
	switch {
	case w.Spool != id.ID || w.Epoch != id.Epoch:
		return 0, fmt.Errorf("sender: group %s: %w: replica %s welcomed spool %x epoch %d, this is spool %s epoch %d",
			s.group, stream.ErrProtocol, s.opts.Addr, w.Spool, w.Epoch, id.ID, id.Epoch)
	case durable > last:
		return 0, fmt.Errorf("%w: group %s: replica %s holds up to seq %d, spool %s only up to %d: resync needed",
			ErrDiverged, s.group, s.opts.Addr, durable, id.ID, last)
	case durable > intact:
		return 0, fmt.Errorf("%w: group %s: replica %s holds up to seq %d, spool %s vouches only up to %d (it lost records it had): resync needed",
			ErrDiverged, s.group, s.opts.Addr, durable, id.ID, intact)
	}
	// Durable before anything past the old intact seq is sent.
	if err := sp.Welcomed(durable); err != nil {
		return 0, fmt.Errorf("sender: group %s: %w", s.group, err)
	}
	if err := s.acknowledge(durable); err != nil {
		return 0, err
	}
	s.mu.Lock()
	s.sent = durable // resend everything after it
	s.flight = s.flight[:0]
	s.mu.Unlock()
	return durable, nil
}

// versionAdvice says what to upgrade when the replica refused this host's
// protocol version; the Refuse frame is of the replica's version.
func versionAdvice(f stream.Frame, r *stream.RefusedError) string {
	switch {
	case r.Code != stream.CodeVersion:
		return ""
	case f.Version < stream.Version:
		return fmt.Sprintf(" (the replica speaks stream v%d, older than this host's v%d: upgrade the replica first)", f.Version, stream.Version)
	case f.Version > stream.Version:
		return fmt.Sprintf(" (the replica speaks stream v%d, newer than this host's v%d: upgrade this host)", f.Version, stream.Version)
	}
	return ""
}

// acknowledge records that the replica holds every record up to seq.
func (s *Sender) acknowledge(seq uint64) error {
	if err := s.opts.Spool.Ack(seq); err != nil {
		return fmt.Errorf("sender: group %s: ack seq %d to the spool: %w", s.group, seq, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if seq > s.acked {
		s.acked = seq
		s.changedLocked()
	}
	i := 0
	for i < len(s.flight) && s.flight[i].last <= s.acked {
		i++
	}
	s.flight = s.flight[i:]
	return nil
}

// readAcks reads the replica's frames until the connection ends.
func (s *Sender) readAcks(c net.Conn, fr *stream.Reader) error {
	for {
		c.SetReadDeadline(time.Now().Add(s.opts.IdleTimeout))
		f, err := fr.Next()
		if err != nil {
			return fmt.Errorf("sender: group %s: read from %s: %w", s.group, s.opts.Addr, err)
		}
		switch f.Type {
		case stream.Ack:
			if f.Version != stream.Version {
				return fmt.Errorf("sender: group %s: %w: a stream v%d ack in a stream v%d session", s.group, stream.ErrProtocol, f.Version, stream.Version)
			}
			seq, err := stream.DecodeAck(f)
			if err != nil {
				return fmt.Errorf("sender: group %s: %w", s.group, err)
			}
			s.mu.Lock()
			sent := s.sent
			s.mu.Unlock()
			if seq > sent {
				return fmt.Errorf("%w: group %s: replica %s acknowledged seq %d, sent up to %d", ErrAckBeyond, s.group, s.opts.Addr, seq, sent)
			}
			if err := s.acknowledge(seq); err != nil {
				return err
			}
		case stream.Refuse:
			r, err := stream.DecodeRefuse(f)
			if err != nil {
				return fmt.Errorf("sender: group %s: %w", s.group, err)
			}
			return fmt.Errorf("sender: group %s: %s: %w", s.group, s.opts.Addr, r)
		default:
			return fmt.Errorf("sender: group %s: %w: %v frame from the replica", s.group, stream.ErrProtocol, f.Type)
		}
	}
}

// write streams records after durable until ctx is done or a write fails.
func (s *Sender) write(ctx context.Context, c net.Conn, durable uint64) error {
	cur := s.opts.Spool.Cursor(durable + 1)
	defer cur.Close()
	enc := stream.NewBatchEncoder(!s.opts.NoCompress)
	bucket := newBucket(s.opts.RateLimit)
	next := durable + 1
	var carry *record.Record // a record that did not fit in the last batch
	for {
		enc.Reset()
		var firstTime int64
		if carry != nil {
			if err := enc.Add(carry); err != nil {
				return fmt.Errorf("sender: group %s: seq %d: %w", s.group, carry.Seq, err)
			}
			firstTime, carry = carry.Time, nil
		}
		for enc.Len() < s.opts.BatchBytes {
			r, err := cur.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				if errors.Is(err, spool.ErrGone) {
					// The replica lacks records this spool no longer
					// holds (its journal was moved aside or lost): the
					// stream cannot go on without a reset.
					return fmt.Errorf("%w: group %s: the replica holds up to seq %d, the spool no longer has seq %d (%v): move this spool aside too, or the replica's journal back", ErrDiverged, s.group, next-1, next, err)
				}
				return fmt.Errorf("sender: group %s: read spool at seq %d: %w", s.group, next, err)
			}
			next = r.Seq + 1
			if enc.Count() == 0 {
				firstTime = r.Time
			}
			if err := enc.Add(&r); errors.Is(err, stream.ErrBatchFull) {
				rc := r
				rc.Payload = append([]byte(nil), r.Payload...) // the cursor reuses its buffer
				carry = &rc
				break
			} else if err != nil {
				return fmt.Errorf("sender: group %s: seq %d: %w", s.group, r.Seq, err)
			}
		}
		if enc.Count() == 0 {
			if err := s.idle(ctx, c, bucket, next); err != nil {
				return err
			}
			continue
		}
		f := enc.Frame()
		s.mu.Lock()
		s.flight = append(s.flight, inflight{first: enc.First(), last: enc.Last(), time: firstTime})
		s.sent = enc.Last()
		s.mu.Unlock()
		if err := s.send(ctx, c, bucket, f); err != nil {
			return fmt.Errorf("sender: group %s: send seqs %d..%d: %w", s.group, enc.First(), enc.Last(), err)
		}
		s.mu.Lock()
		s.stats.BytesRaw += int64(enc.Len())
		s.stats.Batches++
		s.stats.Zeroes += int64(enc.ZeroPayloads())
		s.mu.Unlock()
	}
}

// idle waits for the spool to grow past next, sending a Ping every
// KeepAlive meanwhile.
func (s *Sender) idle(ctx context.Context, c net.Conn, b *bucket, next uint64) error {
	for {
		wctx, cancel := context.WithTimeout(ctx, s.opts.KeepAlive)
		err := s.opts.Spool.Wait(wctx, next)
		cancel()
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
			if err := s.send(ctx, c, b, stream.AppendPing(nil)); err != nil {
				return fmt.Errorf("sender: group %s: ping: %w", s.group, err)
			}
		default:
			return fmt.Errorf("sender: group %s: wait for seq %d: %w", s.group, next, err)
		}
	}
}

// send writes one frame within the rate limit.
func (s *Sender) send(ctx context.Context, c net.Conn, b *bucket, f []byte) error {
	if err := b.take(ctx, len(f)); err != nil {
		return err
	}
	c.SetWriteDeadline(time.Now().Add(s.opts.IdleTimeout))
	n, err := c.Write(f)
	s.mu.Lock()
	s.stats.BytesSent += int64(n)
	s.mu.Unlock()
	return err
}

// Stats returns the sender's figures now.
func (s *Sender) Stats() Stats {
	rpo := s.RPO(time.Now())
	id := s.opts.Spool.Identity()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Connected, st.LastSent, st.LastAcked, st.RPO, st.Spool = s.connected, max(s.sent, s.acked), s.acked, rpo, id
	return st
}

// RPO returns now minus the capture time of the oldest record not yet
// durable at the replica, 0 when every record is.
func (s *Sender) RPO(now time.Time) time.Duration {
	last := s.opts.Spool.LastSeq()
	s.mu.Lock()
	acked := s.acked
	var t int64
	switch {
	case last <= acked:
		s.mu.Unlock()
		return 0
	case len(s.flight) > 0 && s.flight[0].first <= acked+1:
		t = s.flight[0].time // exact when acks fall on batch ends, as the receiver's do
	case s.peekSeq == acked+1:
		t = s.peekTime
	default:
		s.mu.Unlock()
		// Not sent yet (the replica is unreachable, or the writer has not
		// woken): read the record's capture time from the spool.
		cur := s.opts.Spool.Cursor(acked + 1)
		r, err := cur.Next()
		cur.Close()
		if err != nil {
			return 0 // acknowledged meanwhile (ErrGone), or the spool closed
		}
		s.mu.Lock()
		s.peekSeq, s.peekTime, t = r.Seq, r.Time, r.Time
	}
	s.mu.Unlock()
	return max(now.Sub(time.Unix(0, t)), 0)
}

// changedLocked wakes WaitAcked's callers. Callers hold s.mu.
func (s *Sender) changedLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// WaitAcked waits until the replica holds every record up to seq durably.
// It fails with ErrFailedOver when the replica refuses the group as failed
// over meanwhile (or already did: seq may then never be acknowledged), and
// with ctx's error when ctx ends first.
func (s *Sender) WaitAcked(ctx context.Context, seq uint64) error {
	for {
		s.mu.Lock()
		acked, why, ch := s.acked, s.stats.FailedOver, s.changed
		s.mu.Unlock()
		switch {
		case acked >= seq:
			return nil
		case why != "":
			return fmt.Errorf("%w: group %s: seq %d not acknowledged (replica holds up to %d): %s", ErrFailedOver, s.group, seq, acked, why)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("sender: group %s: seq %d not acknowledged (replica holds up to %d): %w", s.group, seq, acked, ctx.Err())
		}
	}
}
