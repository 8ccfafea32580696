// Package streamtest gives tests of the stream's two ends a throwaway PKI:
// a CA, a replica certificate for 127.0.0.1, host certificates of any
// tenant, and the broken ones (expired, of another CA).
package streamtest

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"github.com/qcdp/qcdp/stream"
)

// PKI is a test CA with a replica certificate for 127.0.0.1 and "localhost".
type PKI struct {
	t             testing.TB
	CACert, CAKey []byte
	Pool          *x509.CertPool
	Server        *tls.Config // the replica's
	ServerName    string
}

// New makes a PKI.
func New(t testing.TB) *PKI {
	t.Helper()
	now := time.Now()
	caCert, caKey, err := stream.NewCA("test CA", now.Add(-time.Hour), now.Add(24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	p := &PKI{t: t, CACert: caCert, CAKey: caKey, Pool: x509.NewCertPool(), ServerName: "127.0.0.1"}
	p.Pool.AppendCertsFromPEM(caCert)
	cert := p.issue(caCert, caKey, stream.CertRequest{CommonName: "replica", Server: true, DNSNames: []string{"localhost"},
		IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour)})
	p.Server = stream.ServerTLS(p.Pool, cert)
	return p
}

func (p *PKI) issue(caCert, caKey []byte, req stream.CertRequest) tls.Certificate {
	p.t.Helper()
	c, k, err := stream.Issue(caCert, caKey, req)
	if err != nil {
		p.t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(c, k)
	if err != nil {
		p.t.Fatal(err)
	}
	return cert
}

// Client returns a host's TLS configuration: a certificate of tenant for
// host, valid now.
func (p *PKI) Client(tenant, host string) *tls.Config {
	now := time.Now()
	cert := p.issue(p.CACert, p.CAKey, stream.CertRequest{CommonName: host, Tenant: tenant, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)})
	return stream.ClientTLS(p.Pool, cert, p.ServerName)
}

// Expired returns a host configuration whose certificate expired an hour ago.
func (p *PKI) Expired(tenant, host string) *tls.Config {
	now := time.Now()
	cert := p.issue(p.CACert, p.CAKey, stream.CertRequest{CommonName: host, Tenant: tenant, NotBefore: now.Add(-2 * time.Hour), NotAfter: now.Add(-time.Hour)})
	return stream.ClientTLS(p.Pool, cert, p.ServerName)
}

// Stranger returns a host configuration whose certificate another CA signed.
func (p *PKI) Stranger(tenant, host string) *tls.Config {
	now := time.Now()
	caCert, caKey, err := stream.NewCA("other CA", now.Add(-time.Hour), now.Add(time.Hour))
	if err != nil {
		p.t.Fatal(err)
	}
	cert := p.issue(caCert, caKey, stream.CertRequest{CommonName: host, Tenant: tenant, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)})
	return stream.ClientTLS(p.Pool, cert, p.ServerName)
}
