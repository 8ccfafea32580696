package replica

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/nbd"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica/journal"
	"github.com/qcdp/qcdp/stream"
)

// newDaemon starts a replica daemon on loopback with tenants "acme" (group
// "db") and "acme.db" (group "3"): names that would collide if export names
// were joined with dots.
func newDaemon(t *testing.T) *Site {
	t.Helper()
	d, _ := newDaemonWith(t, `
[[tenant]]
name = "acme"
hosts = ["*"]
groups = ["db"]

[[tenant]]
name = "acme.db"
hosts = ["*"]
groups = ["3"]
`)
	return d
}

// newDaemonWith starts a replica daemon on loopback with the policy's
// tables after [replica], and returns it with a maker of host TLS
// configurations for it.
func newDaemonWith(t *testing.T, policy string) (*Site, func(tenant, host string) *tls.Config) {
	t.Helper()
	d, hostTLS, stop := newDaemonStop(t, policy)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return d, hostTLS
}

// newDaemonStop is newDaemonWith whose caller stops the daemon: stop
// ends Serve and returns what it returned (once; later calls return nil).
func newDaemonStop(t *testing.T, policy string) (*Site, func(tenant, host string) *tls.Config, func() error) {
	t.Helper()
	dir := t.TempDir()
	now := time.Now()
	ca, caKey, err := stream.NewCA("test CA", now.Add(-time.Hour), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	cert, key, err := stream.Issue(ca, caKey, stream.CertRequest{CommonName: "dr", Server: true,
		DNSNames: []string{"localhost"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"ca.pem": ca, "dr.pem": cert, "dr-key.pem": key} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cfg, err := configs.ParseReplica("replica.toml", []byte(fmt.Sprintf(`[replica]
listen = "127.0.0.1:%d"
ca = %q
cert = %q
key = %q
storage_root = %q
control_socket = %q
nbd_socket = %q
`, port, filepath.Join(dir, "ca.pem"), filepath.Join(dir, "dr.pem"), filepath.Join(dir, "dr-key.pem"),
		filepath.Join(dir, "journals"), filepath.Join(dir, "ctl.sock"), filepath.Join(dir, "nbd.sock"))+policy))
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Serve(ctx) }()
	var once sync.Once
	stop := func() (err error) {
		once.Do(func() {
			cancel()
			err = <-done
		})
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	return d, func(tenant, host string) *tls.Config {
		c, k, err := stream.Issue(ca, caKey, stream.CertRequest{CommonName: host, Tenant: tenant, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		cert, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return stream.ClientTLS(pool, cert, "localhost")
	}, stop
}

// fill journals a group: one block per disk, then each disk's
// sync-complete marker.
func fill(t *testing.T, d *Site, tenant, group string, disks ...string) *journal.Journal {
	t.Helper()
	j, err := d.journal(context.Background(), tenant, group)
	if err != nil {
		t.Fatal(err)
	}
	var recs []record.Record
	add := func(r record.Record) {
		r.Seq, r.Time = j.LastSeq()+uint64(len(recs))+1, time.Now().UnixNano()
		recs = append(recs, r)
	}
	for i, disk := range disks {
		add(record.Record{Kind: record.Data, Disk: disk, Length: 4096, Payload: bytes.Repeat([]byte{byte(i + 1)}, 4096)})
	}
	for _, disk := range disks {
		add(record.Record{Kind: record.Marker, Marker: record.SyncComplete, Disk: disk})
	}
	if err := j.Append(context.Background(), recs); err != nil {
		t.Fatal(err)
	}
	return j
}

func TestExportNamesAndWithdrawal(t *testing.T) {
	d := newDaemon(t)
	ctx := context.Background()
	ja := fill(t, d, "acme", "db", "4.vda")
	fill(t, d, "acme.db", "3", "vda")

	ea, err := d.Export(ctx, "acme", "db", journal.Target{Seq: ja.LastSeq()}, false)
	if err != nil {
		t.Fatal(err)
	}
	eb, err := d.Export(ctx, "acme.db", "3", journal.Target{Seq: 2}, false) // its last seq
	if err != nil {
		t.Fatal(err)
	}
	if ea.Exports["4.vda"] == eb.Exports["vda"] {
		t.Fatalf("two tenants' exports share the NBD name %q", ea.Exports["4.vda"])
	}
	for name, want := range map[string]byte{ea.Exports["4.vda"]: 1, eb.Exports["vda"]: 1} {
		e, ok := d.exports.Lookup(name)
		if !ok {
			t.Fatalf("export %q not served", name)
		}
		p := make([]byte, 4096)
		if err := e.(nbd.Reader).ReadAt(ctx, p, 0); err != nil || p[0] != want {
			t.Fatalf("export %q reads %x (%v)", name, p[0], err)
		}
	}

	// The receiver closes a journal after a failed append: its group's
	// exports are withdrawn first, visibly, and the journal reopens.
	s := &shared{d: d, key: "acme/db", Journal: ja}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.exports.Lookup(ea.Exports["4.vda"]); ok {
		t.Fatal("an export of a closed journal is still served")
	}
	if err := d.Unexport(ea.ID); !errors.Is(err, ErrUnknownExport) {
		t.Fatalf("the withdrawn export is still listed: %v", err)
	}
	if _, ok := d.exports.Lookup(eb.Exports["vda"]); !ok {
		t.Fatal("another tenant's export was withdrawn too")
	}
	if _, err := d.journal(ctx, "acme", "db"); err != nil {
		t.Fatalf("reopen after close: %v", err)
	}
}

func TestRestoreRules(t *testing.T) {
	d := newDaemon(t)
	ctx := context.Background()
	j := fill(t, d, "acme", "db", "vda")
	at := journal.Target{Seq: j.LastSeq()}
	if _, err := d.Restore(ctx, "acme", "db", at, "vda", "relative.raw", "raw"); !errors.Is(err, ErrBadTarget) {
		t.Fatalf("restore to a relative path: %v", err)
	}
	out := filepath.Join(t.TempDir(), "vda.raw")
	if _, err := d.Restore(ctx, "acme", "db", at, "vda", out, "raw"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil || len(b) < 4096 || b[0] != 1 {
		t.Fatalf("restored image: %d bytes, %v", len(b), err)
	}
	if _, err := os.Stat(out + ".partial"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the partial file was left: %v", err)
	}
	if _, err := d.Restore(ctx, "acme", "db", at, "vda", out, "raw"); err == nil {
		t.Fatal("restore overwrote an existing image")
	}
}

// A disk is named by its stream name ("vm1.vdb") or, where no other VM of
// the group has one, by its target alone ("vdb"); a wrong or ambiguous
// name is refused with the names there are.
func TestRestoreDiskNames(t *testing.T) {
	d := newDaemon(t)
	ctx := context.Background()
	j := fill(t, d, "acme", "db", "vm1.vda", "vm2.vda", "vm1.vdb")
	at := journal.Target{Seq: j.LastSeq()}
	dir := t.TempDir()
	for _, c := range []struct {
		name, want string
		err        error
	}{
		{"vdb", "vm1.vdb", nil},
		{"vm2.vda", "vm2.vda", nil},
		{"vda", "", ErrAmbiguousDisk},
		{"vdc", "", ErrUnknownDisk},
		{"1.vdb", "", ErrUnknownDisk},
	} {
		r, err := d.Restore(ctx, "acme", "db", at, c.name, filepath.Join(dir, c.name+".raw"), "raw")
		if c.err == nil {
			if err != nil || r.Disk != c.want || r.Point.Seq != at.Seq {
				t.Errorf("restore %q: %+v %v, want disk %s", c.name, r, err, c.want)
			}
			continue
		}
		if !errors.Is(err, c.err) {
			t.Errorf("restore %q: %v, want %v", c.name, err, c.err)
			continue
		}
		for _, valid := range []string{"vm1.vda", "vm2.vda"} {
			if !strings.Contains(err.Error(), valid) {
				t.Errorf("restore %q: %q does not name %s", c.name, err, valid)
			}
		}
	}
}
