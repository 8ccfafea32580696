package main

import (
	"context"
	"fmt"
	"io"
)

// The operator's commands on one protected VM: attach, detach, pause and
// resume. They share their flags and only differ in what they ask the host
// daemon, so they live together.

// vmOptions are the flags of the VM commands.
type vmOptions struct {
	socket string
	disk   string // "" for all the VM's disks (not for attach)
	vm     string
}

// vmAction is one VM command.
type vmAction struct {
	name, about string
	perDisk     bool
	do          func(ctx context.Context, c *hostClient, opts vmOptions) error
}

var vmActions = map[string]vmAction{
	"attach": {"attach", "Protects a VM again after a detach (or at once, if the daemon has not attached it yet).", false,
		func(ctx context.Context, c *hostClient, o vmOptions) error { return c.Attach(ctx, o.vm) }},
	"detach": {"detach", "Cleanly ends capture of a VM: its mirror jobs are cancelled, never completed; it is\nnot protected again until `qcdp attach VM` or its next start.", true,
		func(ctx context.Context, c *hostClient, o vmOptions) error { return c.Detach(ctx, o.vm, o.disk) }},
	"pause": {"pause", "Holds capture of a VM: writes are refused by the capture export, the jobs stop and\nQEMU tracks what changes; the guest is not affected. Nothing resumes until `qcdp resume`.", true,
		func(ctx context.Context, c *hostClient, o vmOptions) error { return c.Pause(ctx, o.vm, o.disk) }},
	"resume": {"resume", "Ends a pause: the jobs resume and re-copy what changed, bracketed as a resync.", true,
		func(ctx context.Context, c *hostClient, o vmOptions) error { return c.Resume(ctx, o.vm, o.disk) }},
}

func vmCommand(name string) func(ctx context.Context, args []string, out io.Writer) error {
	a := vmActions[name]
	return func(ctx context.Context, args []string, out io.Writer) error {
		var opts vmOptions
		fs := newFlags(name, out)
		fs.StringVar(&opts.socket, "socket", "/run/qcdp/host.sock", "control socket of `qcdp host`")
		if a.perDisk {
			fs.StringVar(&opts.disk, "disk", "", "only this disk (target device, e.g. vda)")
		}
		fs.Usage = func() {
			fmt.Fprintf(out, "usage: qcdp %s [flags] VM   (VM: name, UUID or id)\n\n%s\n", name, a.about)
			fs.PrintDefaults()
		}
		if err := fs.Parse(args); err != nil {
			return usageError{err}
		}
		if fs.NArg() != 1 {
			return usagef("want exactly one VM, got %d arguments", fs.NArg())
		}
		opts.vm = fs.Arg(0)
		if err := a.do(ctx, newHostClient(opts.socket), opts); err != nil {
			return err
		}
		fmt.Fprintf(out, "%s: %s done\n", opts.vm, name)
		return nil
	}
}
