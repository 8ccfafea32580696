package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// bookmarkOptions are the flags of `qcdp bookmark`.
type bookmarkOptions struct {
	socket      string
	app         bool
	json        bool
	group, name string
}

func bookmarkCommand(ctx context.Context, args []string, out io.Writer) error {
	var opts bookmarkOptions
	fs := newFlags("bookmark", out)
	fs.StringVar(&opts.socket, "socket", "/run/qcdp/host.sock", "control socket of `qcdp host`")
	fs.BoolVar(&opts.app, "app", false, "app-consistent: freeze the group's guests through their QEMU guest agents first")
	fs.BoolVar(&opts.json, "json", false, "print JSON")
	fs.Usage = func() {
		fmt.Fprintln(out, "usage: qcdp bookmark [--app] GROUP NAME")
		fmt.Fprintln(out, "\nPuts a named restore point into the group's stream. With --app the guests' filesystems")
		fmt.Fprintln(out, "are frozen around it; a guest without an agent makes it crash-consistent, and is named.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if fs.NArg() != 2 {
		return usagef("want GROUP and NAME")
	}
	opts.group, opts.name = fs.Arg(0), fs.Arg(1)
	res, err := newHostClient(opts.socket).Bookmark(ctx, opts.group, opts.name, opts.app)
	if err != nil {
		return err
	}
	if opts.json {
		return json.NewEncoder(out).Encode(res)
	}
	fmt.Fprintf(out, "bookmark %q in group %s at seq %d: %s\n", opts.name, opts.group, res.Seq, res.Kind)
	if len(res.Frozen) > 0 {
		fmt.Fprintf(out, "  frozen: %s\n", strings.Join(res.Frozen, ", "))
	}
	if len(res.NoAgent) > 0 {
		fmt.Fprintf(out, "  no guest agent (crash-consistent only): %s\n", strings.Join(res.NoAgent, ", "))
	}
	for _, f := range res.Failed {
		fmt.Fprintf(out, "  failed: %s\n", f)
	}
	return nil
}
