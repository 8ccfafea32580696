package sender_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica/journal"
	"github.com/qcdp/qcdp/replica/receiver"
	"github.com/qcdp/qcdp/shipper/sender"
	"github.com/qcdp/qcdp/shipper/spool"
	"github.com/qcdp/qcdp/stream/streamtest"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

const policy = `
[replica]
storage_root = "STORAGE"
ca = "/x/ca.pem"
cert = "/x/r.pem"
key = "/x/r-key.pem"
[[tenant]]
name = "acme"
hosts = ["*"]
groups = ["g1", "web-*"]
`

// genRecord is the record of seq: data of varied sizes (some all zero,
// some compressible, some not), zeroes, trims and markers.
func genRecord(seq uint64, size int) record.Record {
	rng := rand.New(rand.NewPCG(seq, 11))
	r := record.Record{Seq: seq, Time: time.Now().UnixNano(), Disk: []string{"vda", "vdb"}[seq%2]}
	switch k := rng.IntN(20); {
	case k == 0:
		r.Kind, r.Offset, r.Length = record.Zero, uint64(rng.IntN(1024))*512, 4096
	case k == 1:
		r.Kind, r.Disk, r.Marker, r.Name = record.Marker, "", record.CrashConsistent, fmt.Sprintf("p%d", seq)
	case k < 4:
		r.Kind, r.Offset, r.Length, r.Payload = record.Data, uint64(rng.IntN(1024))*512, uint64(size), make([]byte, size)
	default:
		p := make([]byte, size)
		for i := range p {
			if k < 12 {
				p[i] = byte(rng.Uint32()) // incompressible
			} else {
				p[i] = byte(i / 64) // compressible
			}
		}
		r.Kind, r.Offset, r.Length, r.Payload = record.Data, uint64(rng.IntN(1024))*512, uint64(size), p
	}
	return r
}

// checkedJournal is the real journal, watched: every record appended must
// be the next seq (none twice, none skipped) and equal what was spooled.
type checkedJournal struct {
	*journal.Journal
	site *site
}

func (c checkedJournal) Append(ctx context.Context, recs []record.Record) error {
	if err := c.Journal.Append(ctx, recs); err != nil {
		return err
	}
	s := c.site
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.afterAppend != nil {
		defer s.afterAppend()
	}
	for _, r := range recs {
		if r.Seq != s.applied+1 {
			s.t.Errorf("journal got seq %d after %d", r.Seq, s.applied)
		}
		s.applied = r.Seq
		if s.size == 0 {
			continue // the records are not genRecord's: order only
		}
		want := genRecord(r.Seq, s.size)
		if want.Kind == record.Data && !bytes.ContainsFunc(want.Payload, func(r rune) bool { return r != 0 }) {
			want.Kind, want.Payload = record.Zero, nil
		}
		if r.Kind != want.Kind || r.Disk != want.Disk || r.Offset != want.Offset || r.Length != want.Length ||
			r.Name != want.Name || !bytes.Equal(r.Payload, want.Payload) {
			s.t.Errorf("seq %d: journal got %v %s@%d+%d, want %v %s@%d+%d", r.Seq, r.Kind, r.Disk, r.Offset, r.Length, want.Kind, want.Disk, want.Offset, want.Length)
		}
	}
	return nil
}

// site is a replica daemon: a receiver over real journals in a temp dir,
// behind a listener that can cut every connection.
type site struct {
	t    testing.TB
	pki  *streamtest.PKI
	cfg  *configs.Replica
	root string
	size int // of genRecord's payloads; 0: the records are not genRecord's

	srv  *receiver.Server
	ln   *cutListener
	addr string
	done chan error

	mu      sync.Mutex
	applied uint64
	// afterAppend, when set, runs after each journal append, before its
	// Ack is sent (with mu held).
	afterAppend func()
	// fence, when set, is why the group failed over: Hellos are refused
	// with stream.CodeFailedOver (receiver.Server.Fenced).
	fence atomic.Pointer[string]
}

func newSite(t testing.TB, size int) *site {
	root := t.TempDir()
	cfg, err := configs.ParseReplica("replica.toml", []byte(strings.Replace(policy, "STORAGE", root, 1)))
	if err != nil {
		t.Fatal(err)
	}
	s := &site{t: t, pki: streamtest.New(t), cfg: cfg, root: root, size: size}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *site) start() {
	s.t.Helper()
	addr := s.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		s.t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	s.ln = &cutListener{Listener: ln, conns: map[net.Conn]struct{}{}}
	s.srv = &receiver.Server{
		TLS:    s.pki.Server,
		Config: s.cfg,
		Logger: quiet,
		Fenced: func(tenant, group string) error {
			if why := s.fence.Load(); why != nil {
				return errors.New(*why)
			}
			return nil
		},
		OpenJournal: func(ctx context.Context, tenant, group string) (receiver.Journal, error) {
			dir, err := s.cfg.JournalDir(tenant, group)
			if err != nil {
				return nil, err
			}
			j, err := journal.Open(ctx, journal.Options{Dir: dir, Group: group, Logger: quiet})
			if err != nil {
				return nil, err
			}
			return checkedJournal{j, s}, nil
		},
	}
	s.done = make(chan error, 1)
	go func() { s.done <- s.srv.Serve(s.ln) }()
}

func (s *site) stop() {
	if s.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.t.Errorf("shutdown: %v", err)
	}
	if err := <-s.done; !errors.Is(err, receiver.ErrServerClosed) {
		s.t.Errorf("serve: %v", err)
	}
	s.srv = nil
}

// durable opens the group's journal (the receiver stopped) and returns
// its last seq.
func (s *site) durable(group string) uint64 {
	dir, _ := s.cfg.JournalDir("acme", group)
	j, err := journal.Open(context.Background(), journal.Options{Dir: dir, Group: group, Logger: quiet})
	if err != nil {
		s.t.Fatal(err)
	}
	defer j.Close()
	return j.LastSeq()
}

// cutListener can close every connection it accepted, as a network fault
// would, and counts the bytes read from them.
type cutListener struct {
	net.Listener
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	read  atomic.Int64
	cuts  atomic.Int64
}

func (l *cutListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	cc := &countConn{Conn: c, n: &l.read}
	l.conns[cc] = struct{}{}
	return cc, nil
}

func (l *cutListener) cut() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for c := range l.conns {
		c.Close()
		delete(l.conns, c)
		n++
	}
	l.cuts.Add(int64(n))
	return n
}

type countConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func openSpool(t testing.TB, group string) *spool.Spool {
	sp, err := spool.Open(context.Background(), spool.Options{Dir: t.TempDir(), Group: group, SegmentBytes: 4 << 20, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	return sp
}

func appendN(t testing.TB, sp *spool.Spool, n, size int) {
	for i := 0; i < n; i++ {
		r := genRecord(sp.LastSeq()+1, size)
		if err := sp.Append(&r); err != nil {
			t.Fatal(err)
		}
	}
}

type running struct {
	s      *sender.Sender
	cancel context.CancelFunc
	done   chan error
}

func startSender(t testing.TB, st *site, sp *spool.Spool, mod func(*sender.Options)) *running {
	opts := sender.Options{Spool: sp, Addr: st.addr, TLS: st.pki.Client("acme", "kvm1"), Host: "kvm1",
		BatchBytes: 256 << 10, MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond, Logger: quiet}
	if mod != nil {
		mod(&opts)
	}
	s, err := sender.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{s: s, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- s.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *running) stop(t testing.TB) {
	if r.cancel == nil {
		return
	}
	r.cancel()
	if err := <-r.done; err != nil {
		t.Errorf("Run: %v", err)
	}
	r.cancel = nil
}

// waitAcked waits (event-driven where it can: spool.Wait cannot wait for
// acks, so this checks at each ack the sender reports through Stats, with
// a short tick) until the spool's every record is acknowledged.
func waitAcked(t testing.TB, sp *spool.Spool, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for sp.Acked() < sp.LastSeq() {
		if time.Now().After(deadline) {
			t.Fatalf("acked %d of %d after %v", sp.Acked(), sp.LastSeq(), timeout)
		}
		<-tick.C
	}
}

func TestEndToEnd(t *testing.T) {
	st := newSite(t, 3000)
	sp := openSpool(t, "g1")
	appendN(t, sp, 500, 3000) // before the sender starts
	r := startSender(t, st, sp, nil)
	appendN(t, sp, 1500, 3000)
	waitAcked(t, sp, 20*time.Second)
	stats := r.s.Stats()
	if stats.LastAcked != 2000 || stats.RPO != 0 || !stats.Connected {
		t.Errorf("stats %+v", stats)
	}
	if stats.Ratio() <= 1.2 || stats.Zeroes == 0 {
		t.Errorf("compression ratio %.2f, %d zero payloads", stats.Ratio(), stats.Zeroes)
	}
	r.stop(t)
	st.stop()
	if got := st.durable("g1"); got != 2000 || st.applied != 2000 {
		t.Fatalf("journal at %d (applied %d), want 2000", got, st.applied)
	}
	t.Logf("sent %d bytes for %d raw (ratio %.2f), %d batches", stats.BytesSent, stats.BytesRaw, stats.Ratio(), stats.Batches)
}

// Connections cut at random moments under load: every record arrives once,
// in order, and the journal ends equal to the spool.
func TestCutConnections(t *testing.T) {
	st := newSite(t, 2000)
	sp := openSpool(t, "g1")
	r := startSender(t, st, sp, nil)
	const total = 6000
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		for sp.LastSeq() < total {
			appendN(t, sp, 50, 2000)
			time.Sleep(time.Millisecond) // pace the load: the sender sees many small batches
		}
	}()
	rng := rand.New(rand.NewPCG(1, 2))
	cuts := 0
	for sp.LastSeq() < total || sp.Acked() < total && cuts < 40 {
		time.Sleep(time.Duration(rng.IntN(15)) * time.Millisecond)
		cuts += st.ln.cut()
	}
	<-writerDone
	waitAcked(t, sp, 20*time.Second)
	if cuts < 10 {
		t.Errorf("only %d cuts", cuts)
	}
	stats := r.s.Stats()
	r.stop(t)
	st.stop()
	if got := st.durable("g1"); got != total || st.applied != total {
		t.Fatalf("journal at %d (applied %d), want %d", got, st.applied, total)
	}
	t.Logf("%d cuts, %d reconnects, %d batches", cuts, stats.Reconnects, stats.Batches)
}

// The replica daemon restarts mid-stream (a new Server over the same
// journal directories, on the same address).
func TestReceiverRestart(t *testing.T) {
	st := newSite(t, 1000)
	sp := openSpool(t, "g1")
	startSender(t, st, sp, nil)
	for i := 0; i < 5; i++ {
		appendN(t, sp, 400, 1000)
		st.stop()
		st.start()
	}
	appendN(t, sp, 400, 1000)
	waitAcked(t, sp, 20*time.Second)
	st.stop()
	if got := st.durable("g1"); got != 2400 || st.applied != 2400 {
		t.Fatalf("journal at %d (applied %d), want 2400", got, st.applied)
	}
}

// RPO is 0 when idle, grows while the replica is down (records pile up
// unsent), and returns to 0 once they are durable.
func TestRPO(t *testing.T) {
	st := newSite(t, 100)
	sp := openSpool(t, "g1")
	r := startSender(t, st, sp, nil)
	appendN(t, sp, 10, 100)
	waitAcked(t, sp, 10*time.Second)
	if rpo := r.s.RPO(time.Now()); rpo != 0 {
		t.Fatalf("idle RPO %v", rpo)
	}
	st.stop()
	appendN(t, sp, 10, 100)
	t0 := time.Now()
	first := r.s.RPO(t0)
	later := r.s.RPO(t0.Add(2 * time.Second))
	if first < 0 || later-first != 2*time.Second {
		t.Fatalf("RPO with the replica down: %v, then %v two seconds later", first, later)
	}
	if st := r.s.Stats(); st.RPO <= 0 {
		t.Fatalf("stats with the replica down: %+v", st)
	}
	st.start()
	waitAcked(t, sp, 10*time.Second)
	if rpo := r.s.RPO(time.Now()); rpo != 0 {
		t.Fatalf("RPO after catching up %v", rpo)
	}
}

// The rate limit holds over more than two seconds: never more than 15% over
// it (plus one batch), and not far under it. The lower bound is loose: a
// starved CI machine may send slower, never faster.
func TestRateLimit(t *testing.T) {
	const rate = 2 << 20
	st := newSite(t, 64<<10)
	sp := openSpool(t, "g1")
	appendN(t, sp, 100, 64<<10) // 6.4 MB, a third of it incompressible
	startSender(t, st, sp, func(o *sender.Options) { o.RateLimit = rate; o.NoCompress = true })
	// Measure from the first byte to 2.5 s later.
	deadline := time.Now().Add(5 * time.Second)
	for st.ln.read.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	start, b0 := time.Now(), st.ln.read.Load()
	time.Sleep(2500 * time.Millisecond)
	elapsed := time.Since(start).Seconds()
	got := float64(st.ln.read.Load()-b0) / elapsed
	if got > 1.15*rate+(64<<10)/elapsed || got < 0.6*rate {
		t.Fatalf("%.0f bytes/s with a limit of %d", got, rate)
	}
	t.Logf("%.2f MB/s with a limit of %.2f MB/s", got/1e6, float64(rate)/1e6)
}

// TestReconnectIsPromptAndClearsError: with the default backoff, a replica
// that was down for 3.5 s is streamed to again within about two seconds of
// its return (the review saw 8 s), and the status no longer shows the
// error of the outage once the stream is back.
func TestReconnectIsPromptAndClearsError(t *testing.T) {
	st := newSite(t, 1000)
	sp := openSpool(t, "g1")
	r := startSender(t, st, sp, func(o *sender.Options) { o.MinBackoff, o.MaxBackoff = 0, 0 }) // the defaults
	appendN(t, sp, 10, 1000)
	waitAcked(t, sp, 10*time.Second)
	st.stop()
	appendN(t, sp, 10, 1000)
	time.Sleep(3500 * time.Millisecond) // the outage itself
	if r.s.Stats().LastError == "" {
		t.Fatal("no last_error during the outage")
	}
	back := time.Now()
	st.start()
	waitAcked(t, sp, 10*time.Second)
	if d := time.Since(back); d > sender.DefaultMaxBackoff+time.Second {
		t.Fatalf("streamed again %v after the replica came back, want within %v", d, sender.DefaultMaxBackoff+time.Second)
	}
	if e := r.s.Stats().LastError; e != "" {
		t.Fatalf("last_error %q still shown after the stream came back", e)
	}
}
