package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica/journal"
	"github.com/qcdp/qcdp/replica/receiver"
	"github.com/qcdp/qcdp/shipper"
	"github.com/qcdp/qcdp/shipper/sender"
	"github.com/qcdp/qcdp/shipper/spool"
	"github.com/qcdp/qcdp/stream"
)

// The two ends of a stream in this process, as the daemons wire them: a
// replica site (receiver.Server over real journals, mTLS) and a host side
// (spool, sequencer, sender). The replica's goroutines carry the pprof
// label side=replica and the sender's side=host, so a -cpuprofile splits
// the CPU between them (go tool pprof -tagfocus side=replica). The ingest
// rows fill the spool here but send it from a child process
// (ingest_sender.go).

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// pki is an in-process CA with the replica's server certificate and one
// host certificate of tenant "bench". The PEM forms of the host's side are
// kept for a sender in another process (writeHost).
type pki struct {
	server *tls.Config
	pool   *x509.CertPool
	host   tls.Certificate

	caPEM, hostPEM, hostKeyPEM []byte
}

// newPKI issues a replica certificate valid for ips.
func newPKI(ips ...net.IP) (*pki, error) {
	now := time.Now()
	nb, na := now.Add(-time.Hour), now.Add(24*time.Hour)
	caCert, caKey, err := stream.NewCA("qcdp bench CA", nb, na)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caCert)
	pair := func(req stream.CertRequest) (tls.Certificate, []byte, []byte, error) {
		c, k, err := stream.Issue(caCert, caKey, req)
		if err != nil {
			return tls.Certificate{}, nil, nil, err
		}
		pair, err := tls.X509KeyPair(c, k)
		return pair, c, k, err
	}
	srv, _, _, err := pair(stream.CertRequest{CommonName: "replica", Server: true, IPs: ips, NotBefore: nb, NotAfter: na})
	if err != nil {
		return nil, err
	}
	host, hostPEM, hostKeyPEM, err := pair(stream.CertRequest{CommonName: "bench-host", Tenant: "bench", NotBefore: nb, NotAfter: na})
	if err != nil {
		return nil, err
	}
	return &pki{server: stream.ServerTLS(pool, srv), pool: pool, host: host,
		caPEM: caCert, hostPEM: hostPEM, hostKeyPEM: hostKeyPEM}, nil
}

// writeHost writes the CA certificate and the host's certificate and key
// as PEM files into dir, for stream.LoadClientTLS.
func (p *pki) writeHost(dir string) (ca, cert, key string, err error) {
	ca, cert, key = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "host.pem"), filepath.Join(dir, "host-key.pem")
	for _, f := range []struct {
		path string
		pem  []byte
	}{{ca, p.caPEM}, {cert, p.hostPEM}, {key, p.hostKeyPEM}} {
		if err := os.WriteFile(f.path, f.pem, 0o600); err != nil {
			return "", "", "", err
		}
	}
	return ca, cert, key, nil
}

// client is the host's TLS configuration for a replica at ip.
func (p *pki) client(ip net.IP) *tls.Config { return stream.ClientTLS(p.pool, p.host, ip.String()) }

// site is a replica daemon's receiving half: a receiver.Server whose
// journals live under root, opened as the daemon opens them. durable
// reports, after every append, the highest durable seq of any group.
type site struct {
	srv  *receiver.Server
	addr string
	done chan error

	mu      sync.Mutex
	last    uint64
	waitFor uint64
	reached chan struct{} // closed when last >= waitFor
}

// startSite serves the receiver on ln (closed by the site's stop).
func startSite(ctx context.Context, p *pki, root string, ln net.Listener) (*site, error) {
	cfg, err := configs.ParseReplica("bench-replica.toml", []byte(fmt.Sprintf(`
[replica]
storage_root = %q
ca = "/unused/ca.pem"
cert = "/unused/replica.pem"
key = "/unused/replica-key.pem"
[[tenant]]
name = "bench"
hosts = ["bench-host"]
groups = ["*"]
`, root)))
	if err != nil {
		return nil, fmt.Errorf("replica policy: %w", err)
	}
	s := &site{addr: ln.Addr().String(), done: make(chan error, 1)}
	s.srv = &receiver.Server{
		TLS: p.server, Config: cfg, Logger: quietLog,
		OpenJournal: func(ctx context.Context, tenant, group string) (receiver.Journal, error) {
			dir, err := cfg.JournalDir(tenant, group)
			if err != nil {
				return nil, err
			}
			j, err := journal.Open(ctx, journal.Options{Dir: dir, Group: group, Logger: quietLog})
			if err != nil {
				return nil, err
			}
			return &watched{Journal: j, s: s}, nil
		},
	}
	pprof.Do(ctx, pprof.Labels("side", "replica"), func(context.Context) {
		go func() { s.done <- s.srv.Serve(ln) }()
	})
	return s, nil
}

// watched is a journal that tells its site what became durable.
type watched struct {
	*journal.Journal
	s *site
}

func (w *watched) Append(ctx context.Context, recs []record.Record) error {
	if err := w.Journal.Append(ctx, recs); err != nil {
		return err
	}
	s := w.s
	s.mu.Lock()
	s.last = max(s.last, w.Journal.LastSeq())
	if s.reached != nil && s.last >= s.waitFor {
		close(s.reached)
		s.reached = nil
	}
	s.mu.Unlock()
	return nil
}

// waitDurable waits until the replica holds seq durably.
func (s *site) waitDurable(ctx context.Context, seq uint64) error {
	s.mu.Lock()
	if s.last >= seq {
		s.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	s.waitFor, s.reached = seq, ch
	s.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		last := s.last
		s.reached = nil
		s.mu.Unlock()
		return fmt.Errorf("replica durable up to seq %d, waiting for %d: %w", last, seq, ctx.Err())
	}
}

func (s *site) stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if serr := <-s.done; !errors.Is(serr, receiver.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}

// host is a protection group's host side: a shipper.Group with the
// capture export of disk vda (written into directly, as the NBD server
// does for QEMU) and, with a replica, its sender once serve is called.
type host struct {
	g      *shipper.Group
	disk   *shipper.CaptureExport
	served chan error // nil until serve
}

// diskArea bounds the offsets the bench writes at.
const diskArea = 1 << 30

// openHost opens the group's spool in dir; replica, if not nil, is where
// serve ships it.
func openHost(ctx context.Context, dir, group string, replica *sender.Options) (*host, error) {
	g, err := shipper.OpenGroup(ctx, shipper.GroupOptions{
		Spool: spool.Options{Dir: dir, Group: group}, Replica: replica, Logger: quietLog})
	if err != nil {
		return nil, err
	}
	disk, err := g.Export("vda", diskArea)
	if err != nil {
		g.Shutdown(ctx)
		return nil, err
	}
	return &host{g: g, disk: disk}, nil
}

// serve starts the group's sender, labelled for the bench's profiles.
func (h *host) serve(ctx context.Context) {
	h.served = make(chan error, 1)
	pprof.Do(ctx, pprof.Labels("side", "host"), func(ctx context.Context) {
		go func() { h.served <- h.g.Serve(context.WithoutCancel(ctx)) }()
	})
}

func (h *host) close() error {
	err := h.g.Shutdown(context.Background())
	if h.served != nil {
		if serr := <-h.served; !errors.Is(serr, shipper.ErrGroupClosed) {
			err = errors.Join(err, serr)
		}
	}
	return err
}

// payloads makes 4 KiB write payloads as the Go benchmarks of the stream
// do: the first half of each is random (ChaCha8), the second half the
// repeating pattern i%7, so zstd gets about 2:1. A writer cycles through
// them; there are enough that no batch repeats one.
type payloads struct {
	bufs [][]byte
	i    int
}

func newPayloads(n, size int) *payloads {
	rng := rand.NewChaCha8([32]byte{'r', 'e', 'p', 'l', 'i', 'c', 'a'})
	p := &payloads{}
	for range n {
		b := make([]byte, size)
		rng.Read(b[:size/2])
		for i := size / 2; i < size; i++ {
			b[i] = byte(i % 7)
		}
		p.bufs = append(p.bufs, b)
	}
	return p
}

func (p *payloads) next() []byte {
	b := p.bufs[p.i]
	p.i = (p.i + 1) % len(p.bufs)
	return b
}

// write4k writes n 4 KiB writes into the host's capture export, as the
// NBD server does for QEMU, at consecutive offsets wrapping in diskArea.
// off is the offset of the first; it returns the next.
func (h *host) write4k(ctx context.Context, p *payloads, off int64, n int) (int64, error) {
	for range n {
		if err := h.disk.WriteAt(ctx, p.next(), off); err != nil {
			return off, err
		}
		off = (off + 4096) % diskArea
	}
	return off, nil
}
