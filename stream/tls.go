package stream

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"time"
)

// ErrIdentity is a peer certificate that does not name a host and a tenant.
var ErrIdentity = errors.New("stream: certificate identity")

// Identity is who a host certificate says its holder is.
type Identity struct {
	Tenant string // the certificate's only Subject OrganizationalUnit
	Host   string // the certificate's Subject CommonName
}

// Identify returns the identity of a verified host certificate: its
// CommonName is the host, its one OrganizationalUnit the tenant.
func Identify(cert *x509.Certificate) (Identity, error) {
	if cert == nil {
		return Identity{}, fmt.Errorf("%w: no certificate", ErrIdentity)
	}
	ou := cert.Subject.OrganizationalUnit
	switch {
	case len(ou) != 1 || ou[0] == "":
		return Identity{}, fmt.Errorf("%w: %q has %d organizational units; a host certificate names exactly one tenant",
			ErrIdentity, cert.Subject.CommonName, len(ou))
	case cert.Subject.CommonName == "":
		return Identity{}, fmt.Errorf("%w: no common name (the host name)", ErrIdentity)
	}
	return Identity{Tenant: ou[0], Host: cert.Subject.CommonName}, nil
}

// ServerTLS returns the replica's TLS settings: TLS 1.3 only, and a client
// certificate signed by ca required and verified.
func ServerTLS(ca *x509.CertPool, cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca,
	}
}

// ClientTLS returns a host's TLS settings for a replica: TLS 1.3 only, the
// replica's certificate verified against ca for serverName (a DNS name or
// IP address in its SANs), and the host's certificate presented.
func ClientTLS(ca *x509.CertPool, cert tls.Certificate, serverName string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      ca,
		ServerName:   serverName,
	}
}

// LoadServerTLS reads PEM files and returns ServerTLS.
func LoadServerTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	ca, cert, err := load(caFile, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return ServerTLS(ca, cert), nil
}

// LoadClientTLS reads PEM files and returns ClientTLS. serverName is the
// host part of the replica's address.
func LoadClientTLS(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	ca, cert, err := load(caFile, certFile, keyFile)
	if err != nil {
		return nil, err
	}
	return ClientTLS(ca, cert, serverName), nil
}

func load(caFile, certFile, keyFile string) (*x509.CertPool, tls.Certificate, error) {
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("stream: CA: %w", err)
	}
	ca := x509.NewCertPool()
	if !ca.AppendCertsFromPEM(b) {
		return nil, tls.Certificate{}, fmt.Errorf("stream: CA %s: no PEM certificate", caFile)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("stream: certificate %s, key %s: %w", certFile, keyFile, err)
	}
	return ca, cert, nil
}

// CertRequest describes a certificate for Issue.
type CertRequest struct {
	CommonName string   // host certificates: the host name; replica certificates: the replica name
	Tenant     string   // host certificates: the tenant (the one OrganizationalUnit)
	Server     bool     // a replica's server certificate (else a host's client certificate)
	DNSNames   []string // server certificates: names the hosts dial
	IPs        []net.IP // server certificates: addresses the hosts dial
	NotBefore  time.Time
	NotAfter   time.Time
}

// NewCA returns a new self-signed ECDSA P-256 CA certificate and its key,
// PEM encoded.
func NewCA(cn string, notBefore, notAfter time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"qcdp"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	return sign(tmpl, tmpl, key, key)
}

// Issue returns a new ECDSA P-256 leaf certificate signed by the CA, and
// its key, PEM encoded.
func Issue(caCertPEM, caKeyPEM []byte, req CertRequest) (certPEM, keyPEM []byte, err error) {
	ca, err := tls.X509KeyPair(caCertPEM, caKeyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("stream: CA: %w", err)
	}
	caCert, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		return nil, nil, fmt.Errorf("stream: CA: %w", err)
	}
	if !caCert.IsCA {
		return nil, nil, fmt.Errorf("stream: %q is not a CA certificate", caCert.Subject.CommonName)
	}
	if req.CommonName == "" || !req.Server && req.Tenant == "" {
		return nil, nil, fmt.Errorf("stream: a certificate needs a common name, and a host certificate a tenant")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: req.CommonName, Organization: []string{"qcdp"}},
		NotBefore:   req.NotBefore,
		NotAfter:    req.NotAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if req.Server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames, tmpl.IPAddresses = req.DNSNames, req.IPs
	} else {
		tmpl.Subject.OrganizationalUnit = []string{req.Tenant}
	}
	return sign(tmpl, caCert, key, ca.PrivateKey)
}

func sign(tmpl, parent *x509.Certificate, key *ecdsa.PrivateKey, signer any) ([]byte, []byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		return nil, nil, fmt.Errorf("stream: sign %q: %w", tmpl.Subject.CommonName, err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
}
