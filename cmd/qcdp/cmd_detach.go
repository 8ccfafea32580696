package main

import (
	"context"
	"fmt"
	"io"

	"github.com/qcdp/qcdp/cmd/qcdp/internal/hostd"
)

// detachOptions are the flags of `qcdp detach`.
type detachOptions struct {
	socket string
	vm     string
	disk   string
}

func detachCommand(ctx context.Context, args []string, out io.Writer) error {
	var opts detachOptions
	fs := newFlags("detach", out)
	fs.StringVar(&opts.socket, "socket", "/run/qcdp/host.sock", "control socket of `qcdp host`")
	fs.StringVar(&opts.disk, "disk", "", "only this disk (target device, e.g. vda)")
	fs.Usage = func() {
		fmt.Fprintln(out, "usage: qcdp detach [--disk TARGET] VM")
		fmt.Fprintln(out, "\nCleanly ends capture of a VM (name, UUID or id): its mirror jobs are cancelled,")
		fmt.Fprintln(out, "never completed, and it is not protected again until `qcdp attach VM`.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() != 1 {
		return usagef("want exactly one VM")
	}
	opts.vm = fs.Arg(0)
	if err := hostd.NewClient(opts.socket).Detach(ctx, opts.vm, opts.disk); err != nil {
		return err
	}
	fmt.Fprintf(out, "detached %s\n", opts.vm)
	return nil
}

// attachOptions are the flags of `qcdp attach`.
type attachOptions struct {
	socket string
	vm     string
}

func attachCommand(ctx context.Context, args []string, out io.Writer) error {
	var opts attachOptions
	fs := newFlags("attach", out)
	fs.StringVar(&opts.socket, "socket", "/run/qcdp/host.sock", "control socket of `qcdp host`")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() != 1 {
		return usagef("want exactly one VM")
	}
	opts.vm = fs.Arg(0)
	if err := hostd.NewClient(opts.socket).Attach(ctx, opts.vm); err != nil {
		return err
	}
	fmt.Fprintf(out, "attached %s\n", opts.vm)
	return nil
}
