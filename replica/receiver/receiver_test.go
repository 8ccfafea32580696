package receiver_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica/journal"
	"github.com/qcdp/qcdp/replica/receiver"
	"github.com/qcdp/qcdp/stream"
	"github.com/qcdp/qcdp/stream/streamtest"
)

// logBuf collects the server's log, to check that refusals are logged.
type logBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type replica struct {
	addr string
	pki  *streamtest.PKI
	log  *logBuf
	root string
	srv  *receiver.Server

	mu    sync.Mutex
	times []int64                    // capture times of every record appended, in order
	gates map[string]<-chan struct{} // by group: its appends wait until the channel is closed
}

// hold makes the appends to a group wait until the channel is closed.
func (r *replica) hold(group string, until <-chan struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.gates == nil {
		r.gates = map[string]<-chan struct{}{}
	}
	r.gates[group] = until
}

// recording is a journal that notes the capture times appended to it.
type recording struct {
	*journal.Journal
	r *replica
}

func (j recording) Append(ctx context.Context, recs []record.Record) error {
	j.r.mu.Lock()
	gate := j.r.gates[j.Group()]
	j.r.mu.Unlock()
	if gate != nil {
		<-gate
	}
	if err := j.Journal.Append(ctx, recs); err != nil {
		return err
	}
	j.r.mu.Lock()
	for _, rec := range recs {
		j.r.times = append(j.r.times, rec.Time)
	}
	j.r.mu.Unlock()
	return nil
}

func start(t testing.TB) *replica { return startWith(t, nil) }

// startWith starts a replica whose server set sets up before it serves.
func startWith(t testing.TB, set func(*receiver.Server)) *replica {
	root := t.TempDir()
	cfg, err := configs.ParseReplica("replica.toml", []byte(`
[replica]
storage_root = "`+root+`"
ca = "/x/ca.pem"
cert = "/x/r.pem"
key = "/x/k.pem"
[[tenant]]
name = "alpha"
hosts = ["kvm-a*"]
groups = ["web", "db-*"]
[[tenant]]
name = "beta"
hosts = ["*"]
groups = ["payroll"]
`))
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{pki: streamtest.New(t), log: &logBuf{}, root: root}
	srv := &receiver.Server{
		TLS:    r.pki.Server,
		Config: cfg,
		Logger: slog.New(slog.NewTextHandler(r.log, nil)),
		OpenJournal: func(ctx context.Context, tenant, group string) (receiver.Journal, error) {
			dir, err := cfg.JournalDir(tenant, group)
			if err != nil {
				return nil, err
			}
			j, err := journal.Open(ctx, journal.Options{Dir: dir, Group: group, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				return nil, err
			}
			return recording{j, r}, nil
		},
	}
	r.srv = srv
	if set != nil {
		set(srv)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		if err := srv.Shutdown(context.Background()); err != nil {
			t.Error(err)
		}
		if err := <-done; !errors.Is(err, receiver.ErrServerClosed) {
			t.Error(err)
		}
	})
	return r
}

// client is a host speaking the protocol by hand, from one spool.
type client struct {
	c     *tls.Conn
	fr    *stream.Reader
	spool stream.SpoolID
}

// testSpool is the spool the clients stream from unless a test says.
var testSpool = stream.SpoolID{ID: [16]byte{0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 1, 2, 3, 4, 5, 6, 7, 8}, Created: 1700000000000000000, Epoch: 1}

func dial(t testing.TB, r *replica, cfg *tls.Config) (*client, error) {
	c, err := tls.Dial("tcp", r.addr, cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return &client{c: c, fr: stream.NewReader(bufio.NewReader(c)), spool: testSpool}, nil
}

// hello sends a Hello from a spool that vouches for all it holds and
// returns the answer: the durable seq or the refusal.
func (c *client) hello(group string, last uint64) (uint64, error) {
	return c.helloIntact(group, last, last)
}

func (c *client) helloIntact(group string, last, intact uint64) (uint64, error) {
	b, err := stream.AppendHello(nil, stream.HelloMsg{Group: group, Host: "h", LastSeq: last, Spool: c.spool, Intact: intact})
	if err != nil {
		return 0, err
	}
	if _, err := c.c.Write(b); err != nil {
		return 0, err
	}
	return c.answer()
}

func (c *client) answer() (uint64, error) {
	f, err := c.fr.Next()
	if err != nil {
		return 0, err
	}
	switch f.Type {
	case stream.Refuse:
		re, err := stream.DecodeRefuse(f)
		if err != nil {
			return 0, err
		}
		return 0, re
	case stream.Welcome:
		w, err := stream.DecodeWelcome(f)
		if err == nil && (w.Spool != c.spool.ID || w.Epoch != c.spool.Epoch) {
			err = fmt.Errorf("welcomed as spool %x epoch %d, not %s epoch %d", w.Spool, w.Epoch, c.spool, c.spool.Epoch)
		}
		return w.Durable, err
	case stream.Ack:
		return stream.DecodeAck(f)
	}
	return 0, errors.New("unexpected " + f.Type.String())
}

func (c *client) batch(t *testing.T, first uint64, n int) {
	e := stream.NewBatchEncoder(true)
	for i := 0; i < n; i++ {
		r := record.Record{Seq: first + uint64(i), Kind: record.Data, Disk: "vda", Length: 3, Payload: []byte{1, 2, 3}}
		if err := e.Add(&r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.c.Write(e.Frame()); err != nil {
		t.Fatal(err)
	}
}

func refusal(t *testing.T, err error, code stream.Code) *stream.RefusedError {
	t.Helper()
	var re *stream.RefusedError
	if !errors.As(err, &re) || re.Code != code {
		t.Fatalf("got %v, want a refusal with code %v", err, code)
	}
	return re
}

func TestStreamAndResume(t *testing.T) {
	r := start(t)
	c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if err != nil {
		t.Fatal(err)
	}
	if d, err := c.hello("web", 10); err != nil || d != 0 {
		t.Fatalf("welcome %d %v", d, err)
	}
	c.batch(t, 1, 10)
	if a, err := c.answer(); err != nil || a != 10 {
		t.Fatalf("ack %d %v", a, err)
	}
	c.c.Close()
	c, _ = dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if d, err := c.hello("web", 20); err != nil || d != 10 {
		t.Fatalf("welcome after reconnect %d %v", d, err)
	}
	c.batch(t, 6, 10) // 6..10 again, then 11..15: trimmed, not applied twice
	if a, err := c.answer(); err != nil || a != 15 {
		t.Fatalf("ack %d %v", a, err)
	}
	c.batch(t, 17, 2) // 16 is missing
	refusal(t, func() error { _, err := c.answer(); return err }(), stream.CodeProtocol)
}

// A host of another protocol version is refused with a message naming
// both: an old host (stream v1, whose Hello names no spool) and a newer one.
func TestUnknownVersionRefused(t *testing.T) {
	r := start(t)
	for _, v := range []byte{1, 7} {
		c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
		if err != nil {
			t.Fatal(err)
		}
		var b []byte
		if v == 1 {
			// A v1 Hello: last seq, name lengths, group, host.
			b = append(make([]byte, stream.HeaderLen), 9, 0, 0, 0, 0, 0, 0, 0, 3, 1, 0, 0, 'w', 'e', 'b', 'h')
			b[8] = byte(stream.Hello)
		} else {
			b, _ = stream.AppendHello(nil, stream.HelloMsg{Group: "web", Host: "h", Spool: testSpool})
		}
		b[9] = v // version
		streamtest.Reseal(b)
		c.c.Write(b)
		_, err = c.answer()
		re := refusal(t, err, stream.CodeVersion)
		if want := fmt.Sprintf("replica speaks stream v%d, host sent v%d", stream.Version, v); re.Message != want {
			t.Fatalf("message %q, want %q", re.Message, want)
		}
	}
}

func TestIsolation(t *testing.T) {
	r := start(t)
	cases := []struct {
		name         string
		tenant, host string
		group        string
		code         stream.Code
	}{
		{"tenant A asks for tenant B's group", "alpha", "kvm-a1", "payroll", stream.CodeDenied},
		{"tenant B asks for tenant A's group", "beta", "kvm-b1", "web", stream.CodeDenied},
		{"host not listed for its tenant", "alpha", "kvm-b1", "web", stream.CodeDenied},
		{"unknown tenant", "gamma", "kvm-a1", "web", stream.CodeDenied},
		{"path-like group", "alpha", "kvm-a1", "../x", stream.CodeBadRequest},
		{"dot dot", "alpha", "kvm-a1", "..", stream.CodeBadRequest},
		{"slash", "alpha", "kvm-a1", "db-1/../../beta/payroll", stream.CodeBadRequest},
		{"hidden", "alpha", "kvm-a1", ".db-x", stream.CodeBadRequest},
		{"tenant path in the cert", "../beta", "kvm-a1", "web", stream.CodeDenied},
	}
	for _, tc := range cases {
		c, err := dial(t, r, r.pki.Client(tc.tenant, tc.host))
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.hello(tc.group, 0)
		refusal(t, err, tc.code)
	}
	if !strings.Contains(r.log.String(), `tenant=alpha host=kvm-a1 group=payroll`) {
		t.Errorf("refusal not logged:\n%s", r.log.String())
	}
	// Allowed: a pattern match.
	c, _ := dial(t, r, r.pki.Client("alpha", "kvm-a2"))
	if _, err := c.hello("db-7", 0); err != nil {
		t.Fatal(err)
	}
}

func TestBadCertificates(t *testing.T) {
	r := start(t)
	for name, cfg := range map[string]*tls.Config{
		"expired":    r.pki.Expired("alpha", "kvm-a1"),
		"unknown CA": r.pki.Stranger("alpha", "kvm-a1"),
		"no cert":    {MinVersion: tls.VersionTLS13, RootCAs: r.pki.Pool, ServerName: r.pki.ServerName},
		"TLS 1.2":    {MaxVersion: tls.VersionTLS12, RootCAs: r.pki.Pool, ServerName: r.pki.ServerName, Certificates: r.pki.Client("alpha", "kvm-a1").Certificates},
	} {
		c, err := dial(t, r, cfg)
		if err == nil {
			// TLS 1.3 reports a refused client certificate at the first read.
			_, err = c.hello("web", 0)
		}
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// A second connection for a group replaces the first, which is told so.
func TestReplace(t *testing.T) {
	r := start(t)
	old, _ := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if _, err := old.hello("web", 5); err != nil {
		t.Fatal(err)
	}
	old.batch(t, 1, 5)
	if a, err := old.answer(); err != nil || a != 5 {
		t.Fatalf("ack %d %v", a, err)
	}
	c, _ := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if d, err := c.hello("web", 5); err != nil || d != 5 {
		t.Fatalf("welcome %d %v", d, err)
	}
	refusal(t, func() error { _, err := old.answer(); return err }(), stream.CodeReplaced)
	// A host that lost its spool is told the replica is ahead.
	c2, _ := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	_, err := c2.hello("web", 2)
	refusal(t, err, stream.CodeDiverged)
}
