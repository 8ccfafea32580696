package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"

	"github.com/qcdp/qcdp/cmd/qcdp/internal/ctlapi"
	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/failover"
	"github.com/qcdp/qcdp/replica"
)

// replicaOptions are the flags of `qcdp replica`.
type replicaOptions struct {
	config string
	check  bool
}

func newReplicaCommand() *cobra.Command {
	var opts replicaOptions
	cmd := &cobra.Command{
		Use:   "replica [--config FILE]",
		Short: "the replica daemon: receive groups' streams into journals",
		Long: `The replica daemon: receives the protection groups' streams from hosts (TLS 1.3,
mutual certificates, tenants as the policy says) into journals under
storage_root, and serves the control API that points, export, exports,
unexport, restore and verify use. It runs until SIGINT or SIGTERM.`,
		Example: "  qcdp replica --config /etc/qcdp/replica.toml   # example: configs/examples/replica.toml\n  qcdp replica --config /etc/qcdp/replica.toml --check",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runReplica(cmd.Context(), opts, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&opts.config, "config", "/etc/qcdp/replica.toml", "policy `FILE`")
	cmd.Flags().BoolVar(&opts.check, "check", false, "check the policy (recovery plans included) and exit")
	return cmd
}

func runReplica(ctx context.Context, opts replicaOptions, out io.Writer) error {
	cfg, err := configs.LoadReplica(opts.config)
	if err != nil {
		return err // names the file, line and key
	}
	if opts.check {
		fmt.Fprintf(out, "%s: ok: %d tenant(s), %d recovery plan(s)\n", opts.config, len(cfg.Tenants), len(cfg.Recoveries))
		return nil
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	d, err := replica.New(ctx, cfg, log)
	if err != nil {
		return err
	}
	// Failovers kept on disk are taken up before any stream is taken: a
	// group that failed over stays fenced across a restart.
	fo := failover.New(d, cfg, log)
	defer fo.Close()
	if err := fo.Resume(ctx); err != nil {
		log.Error("failover: taking up the failovers kept on disk", "err", err)
	}
	// The control API and the daemon end together: a failed API stops
	// the daemon, and the API stops (its handlers done) before the
	// daemon tears down what they use.
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	apiCtx, stopAPI := context.WithCancel(context.Background())
	apiDone := make(chan error, 1)
	go func() { apiDone <- ctlapi.Serve(apiCtx, cfg.ControlSocket, replicaAPI(d, fo)) }()
	serveCtx, stopServe := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- d.Serve(serveCtx) }()
	fmt.Fprintf(out, "qcdp replica: policy %s, %d tenant(s), listening on %s, journals in %s, views on %s, control socket %s\n",
		opts.config, len(cfg.Tenants), d.Addr(), cfg.StorageRoot, cfg.NBDSocket, cfg.ControlSocket)
	sdNotify(log, daemon.SdNotifyReady+"\nSTATUS=receiving on "+d.Addr().String())
	var apiErr, serveErr error
	select {
	case <-runCtx.Done():
		sdNotify(log, daemon.SdNotifyStopping)
		stopAPI()
		apiErr = <-apiDone
		stopServe()
		serveErr = <-served
	case apiErr = <-apiDone:
		sdNotify(log, daemon.SdNotifyStopping)
		stopServe()
		serveErr = <-served
	case serveErr = <-served:
		sdNotify(log, daemon.SdNotifyStopping)
		stopAPI()
		apiErr = <-apiDone
	}
	stopAPI()
	stopServe()
	fmt.Fprintln(out, "qcdp replica: stopped")
	return errors.Join(serveErr, apiErr)
}
