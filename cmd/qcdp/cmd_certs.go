package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/stream"
)

// certsOptions are the flags of `qcdp certs`.
type certsOptions struct {
	dir     string
	ca      bool
	host    string
	tenant  string
	replica string
	san     string
	days    int
	json    bool
}

func newCertsCommand() *cobra.Command {
	var opts certsOptions
	cmd := &cobra.Command{
		Use:   "certs --dir DIR (--ca | --host NAME --tenant T | --replica NAME [--san a,b])",
		Short: "create a CA and host and replica certificates (a test or small install)",
		Long: `Creates an ECDSA P-256 CA and the certificates of hosts (client auth; OU = tenant,
CN = host) and replicas (server auth, SANs) signed by it, for a test or a small
install. Keys are written 0600; existing files are never overwritten.`,
		Example: `  qcdp certs --dir /etc/qcdp/tls --ca
  qcdp certs --dir /etc/qcdp/tls --host kvm1 --tenant acme
  qcdp certs --dir /etc/qcdp/tls --replica dr1 --san dr1.example.com,192.0.2.10`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := opts.check(); err != nil {
				return err
			}
			return runCerts(cmd.Context(), opts, cmd.OutOrStdout())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&opts.dir, "dir", "", "`DIR` of the CA and the certificates (required)")
	fs.BoolVar(&opts.ca, "ca", false, "create the CA: DIR/ca.pem and DIR/ca-key.pem")
	fs.StringVar(&opts.host, "host", "", "create a host (client) certificate for this host `NAME`: DIR/NAME.pem, DIR/NAME-key.pem")
	fs.StringVar(&opts.tenant, "tenant", "", "the host certificate's `TENANT` (with --host)")
	fs.StringVar(&opts.replica, "replica", "", "create a replica (server) certificate `NAME`: DIR/NAME.pem, DIR/NAME-key.pem")
	fs.StringVar(&opts.san, "san", "", "with --replica: `NAMES`, comma-separated DNS names and IP addresses hosts dial (default: the name)")
	fs.IntVar(&opts.days, "days", 0, "validity in `DAYS` (default: CA 3650, others 825)")
	addJSONFlag(fs, &opts.json)
	cmd.MarkFlagDirname("dir")
	return cmd
}

// check refuses a combination of flags that names no one certificate.
func (opts certsOptions) check() error {
	n := 0
	for _, set := range []bool{opts.ca, opts.host != "", opts.replica != ""} {
		if set {
			n++
		}
	}
	switch {
	case opts.dir == "":
		return usagef("--dir is required")
	case n != 1:
		return usagef("give exactly one of --ca, --host, --replica")
	case opts.host != "" && opts.tenant == "":
		return usagef("--host needs --tenant")
	case opts.host == "" && opts.tenant != "":
		return usagef("--tenant goes with --host")
	case opts.replica == "" && opts.san != "":
		return usagef("--san goes with --replica")
	case opts.days < 0:
		return usagef("--days %d: validity cannot be negative", opts.days)
	}
	if opts.tenant != "" {
		if err := configs.ValidName(opts.tenant); err != nil {
			return usagef("--tenant: %w", err)
		}
	}
	// The name becomes a file name.
	for flag, name := range map[string]string{"host": opts.host, "replica": opts.replica} {
		if name == "" {
			continue
		}
		if err := configs.ValidName(strings.ReplaceAll(name, ":", "_")); err != nil {
			return usagef("--%s: %w", flag, err)
		}
	}
	return nil
}

func runCerts(_ context.Context, opts certsOptions, out io.Writer) error {
	now := time.Now().Add(-5 * time.Minute) // tolerate clocks a little behind
	days := opts.days
	if opts.ca {
		if days == 0 {
			days = 3650
		}
		cert, key, err := stream.NewCA("qcdp CA", now, now.AddDate(0, 0, days))
		if err != nil {
			return err
		}
		return writePair(out, opts, "ca", cert, key)
	}
	if days == 0 {
		days = 825
	}
	caCert, err := os.ReadFile(filepath.Join(opts.dir, "ca.pem"))
	if err != nil {
		return fmt.Errorf("%w (create the CA first: qcdp certs --dir %s --ca)", err, opts.dir)
	}
	caKey, err := os.ReadFile(filepath.Join(opts.dir, "ca-key.pem"))
	if err != nil {
		return fmt.Errorf("%w", err)
	}
	req := stream.CertRequest{NotBefore: now, NotAfter: now.AddDate(0, 0, days)}
	name := opts.host
	if opts.host != "" {
		req.CommonName, req.Tenant = opts.host, opts.tenant
	} else {
		name = opts.replica
		req.CommonName, req.Server = opts.replica, true
		sans := opts.san
		if sans == "" {
			sans = opts.replica
		}
		for _, s := range strings.Split(sans, ",") {
			s = strings.TrimSpace(s)
			if ip := net.ParseIP(s); ip != nil {
				req.IPs = append(req.IPs, ip)
			} else if s != "" {
				req.DNSNames = append(req.DNSNames, s)
			}
		}
	}
	cert, key, err := stream.Issue(caCert, caKey, req)
	if err != nil {
		return err
	}
	return writePair(out, opts, name, cert, key)
}

// writePair writes DIR/NAME.pem and DIR/NAME-key.pem, 0600, refusing to
// overwrite either.
func writePair(out io.Writer, opts certsOptions, name string, cert, key []byte) error {
	dir := opts.dir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("%w", err)
	}
	certPath, keyPath := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	for _, p := range []string{certPath, keyPath} {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("%s exists; not overwriting it", p)
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("%w", err)
		}
	}
	if err := writeNew(keyPath, key); err != nil {
		return err
	}
	if err := writeNew(certPath, cert); err != nil {
		os.Remove(keyPath)
		return err
	}
	if opts.json {
		return printJSON(out, struct {
			Cert string `json:"cert"`
			Key  string `json:"key"`
		}{certPath, keyPath})
	}
	fmt.Fprintf(out, "wrote %s and %s\n", certPath, keyPath)
	return nil
}

func writeNew(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("%w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return f.Close()
}
