package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/replica/journal"
	"github.com/qcdp/qcdp/replica/receiver"
	"github.com/qcdp/qcdp/stream"
)

// replicaOptions are the flags of `qcdp replica`.
type replicaOptions struct {
	config string
}

func replicaCommand(ctx context.Context, args []string, out io.Writer) error {
	var opts replicaOptions
	fs := newFlags("replica", out)
	fs.StringVar(&opts.config, "config", "/etc/qcdp/replica.toml", "policy file")
	fs.Usage = func() {
		fmt.Fprintln(out, "usage: qcdp replica [--config /etc/qcdp/replica.toml]")
		fmt.Fprintln(out, "\nThe replica daemon: receives the protection groups' streams from hosts (TLS 1.3,")
		fmt.Fprintln(out, "mutual certificates, tenants as the policy says) into journals under storage_root.")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	return runReplica(ctx, opts, out)
}

func runReplica(ctx context.Context, opts replicaOptions, out io.Writer) error {
	cfg, err := configs.LoadReplica(opts.config)
	if err != nil {
		return err // names the file, line and key
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	tlsCfg, err := stream.LoadServerTLS(cfg.CA, cfg.Cert, cfg.Key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.StorageRoot, 0o750); err != nil {
		return fmt.Errorf("replica: storage root: %w", err)
	}
	srv := &receiver.Server{
		TLS:    tlsCfg,
		Config: cfg,
		Logger: log,
		OpenJournal: func(ctx context.Context, tenant, group string) (receiver.Journal, error) {
			dir, err := cfg.JournalDir(tenant, group)
			if err != nil {
				return nil, err
			}
			return journal.Open(ctx, journal.Options{
				Dir: dir, Group: group, Retention: journalRetention(cfg.RetentionFor(tenant)),
				Logger: log.With("tenant", tenant),
			})
		},
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("replica: %w", err)
	}
	fmt.Fprintf(out, "qcdp replica: policy %s, %d tenant(s), listening on %s, journals in %s\n",
		opts.config, len(cfg.Tenants), ln.Addr(), cfg.StorageRoot)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-served:
	}
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	shutErr := srv.Shutdown(sctx)
	if serveErr == nil {
		serveErr = <-served
	}
	if errors.Is(serveErr, receiver.ErrServerClosed) {
		serveErr = nil
	}
	fmt.Fprintln(out, "qcdp replica: stopped")
	return errors.Join(serveErr, shutErr)
}

func journalRetention(r configs.Retention) journal.Retention {
	jr := journal.Retention{Window: r.Window, WindowBytes: r.WindowBytes, Bookmarks: r.Bookmarks}
	for _, s := range r.LongTerm {
		jr.Schedules = append(jr.Schedules, journal.Schedule{Every: s.Every, Keep: s.Keep})
	}
	return jr
}
