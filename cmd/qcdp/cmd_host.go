package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/qcdp/qcdp/cmd/qcdp/internal/ctlapi"
	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/protect"
)

// hostOptions are the flags of `qcdp host`.
type hostOptions struct {
	config string
}

func newHostCommand() *cobra.Command {
	var opts hostOptions
	cmd := &cobra.Command{
		Use:   "host [--config FILE]",
		Short: "the host daemon: protect the VMs a policy names",
		Long: `The host daemon: protects the VMs its policy names, as they run and as they start,
and serves the control API that status, attach, detach, pause, resume and
bookmark use. It runs until SIGINT or SIGTERM; the capture jobs stay in QEMU
for the next daemon to adopt.

Under systemd (Type=notify) it reports READY=1 and STOPPING=1, and with
WatchdogSec it sends WATCHDOG=1 only while every group's write path moves:
a hung daemon is ended by systemd, so it never holds a guest write for
much longer than WatchdogSec (configs/systemd/qcdp-host.service).`,
		Example: "  qcdp host --config /etc/qcdp/host.toml   # example: configs/examples/host.toml",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runHost(cmd.Context(), opts, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&opts.config, "config", "/etc/qcdp/host.toml", "policy `FILE`")
	return cmd
}

func runHost(ctx context.Context, opts hostOptions, out io.Writer) error {
	pol, err := configs.Load(opts.config)
	if err != nil {
		return err // names the file, line and key
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: pol.Host.LogLevel}))
	d, err := protect.Open(ctx, pol, log)
	if err != nil {
		return err
	}
	sup, err := protect.NewSupervisor(d, log)
	if err != nil {
		return errors.Join(err, d.Close())
	}
	apiCtx, stopAPI := context.WithCancel(ctx)
	apiDone := make(chan error, 1)
	go func() { apiDone <- ctlapi.Serve(apiCtx, pol.Host.ControlSocket, hostAPI(d)) }()
	fmt.Fprintf(out, "qcdp host: policy %s, %d group(s), control socket %s\n", opts.config, len(pol.Groups()), pol.Host.ControlSocket)
	// systemd: READY=1 now that the capture sockets listen; WATCHDOG=1
	// while the write paths move; STOPPING=1 as soon as ctx ends.
	if err := sup.Ready(fmt.Sprintf("protecting the VMs of %d group(s)", len(pol.Groups()))); err != nil {
		log.Warn("systemd: READY=1 not sent", "err", err)
	}
	supCtx, stopSup := context.WithCancel(ctx)
	supDone := make(chan struct{})
	go func() {
		defer close(supDone)
		sup.Run(supCtx)
	}()
	runErr := d.Run(ctx)
	stopSup()
	<-supDone
	stopAPI()
	apiErr := <-apiDone
	closeErr := d.Close()
	fmt.Fprintln(out, "qcdp host: stopped; capture jobs stay in QEMU for the next daemon to adopt")
	return errors.Join(runErr, apiErr, closeErr)
}
