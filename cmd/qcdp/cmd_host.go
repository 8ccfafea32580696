package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/qcdp/qcdp/cmd/qcdp/internal/ctlapi"
	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/protect"
)

// hostOptions are the flags of `qcdp host`.
type hostOptions struct {
	config string
}

func hostCommand(ctx context.Context, args []string, out io.Writer) error {
	var opts hostOptions
	fs := newFlags("host", out)
	fs.StringVar(&opts.config, "config", "/etc/qcdp/host.toml", "policy file")
	fs.Usage = func() {
		fmt.Fprintln(out, "usage: qcdp host [--config /etc/qcdp/host.toml]")
		fmt.Fprintln(out, "\nThe host daemon: protects the VMs its policy names, as they run and as they start,")
		fmt.Fprintln(out, "and serves the control API `qcdp status`, `qcdp attach` and `qcdp detach` use.")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	return runHost(ctx, opts, out)
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
	apiCtx, stopAPI := context.WithCancel(ctx)
	apiDone := make(chan error, 1)
	go func() { apiDone <- ctlapi.Serve(apiCtx, pol.Host.ControlSocket, hostAPI(d)) }()
	fmt.Fprintf(out, "qcdp host: policy %s, %d group(s), control socket %s\n", opts.config, len(pol.Groups()), pol.Host.ControlSocket)
	runErr := d.Run(ctx)
	stopAPI()
	apiErr := <-apiDone
	closeErr := d.Close()
	fmt.Fprintln(out, "qcdp host: stopped; capture jobs stay in QEMU for the next daemon to adopt")
	return errors.Join(runErr, apiErr, closeErr)
}
