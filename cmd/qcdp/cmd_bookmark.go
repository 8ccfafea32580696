package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/qcdp/qcdp/protect"
)

// bookmarkOptions are the flags of `qcdp bookmark`.
type bookmarkOptions struct {
	socket      string
	app         bool
	json        bool
	group, name string
}

func newBookmarkCommand() *cobra.Command {
	var opts bookmarkOptions
	cmd := &cobra.Command{
		Use:   "bookmark [--app] GROUP NAME",
		Short: "put a named (or app-consistent) restore point into a group's stream",
		Long: `Puts a named restore point into the group's stream. With --app the guests'
filesystems are frozen around it through their QEMU guest agents; a guest without
an agent makes it crash-consistent, and is named. NAME has no slash, white space
or control character.`,
		Example: "  qcdp bookmark g1 before-upgrade\n  qcdp bookmark --app g1 nightly\n  qcdp bookmark g1 nightly --app --json",
		Args:    positional("GROUP", "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.group, opts.name = args[0], args[1]
			if err := protect.ValidBookmarkName(opts.name); err != nil {
				return usageError{err}
			}
			return runBookmark(cmd.Context(), opts, cmd.OutOrStdout())
		},
	}
	addHostSocketFlag(cmd.Flags(), &opts.socket)
	cmd.Flags().BoolVar(&opts.app, "app", false, "app-consistent: freeze the group's guests through their QEMU guest agents first")
	addJSONFlag(cmd.Flags(), &opts.json)
	return cmd
}

func runBookmark(ctx context.Context, opts bookmarkOptions, out io.Writer) error {
	res, err := newHostClient(opts.socket).Bookmark(ctx, opts.group, opts.name, opts.app)
	if err != nil {
		return err
	}
	if opts.json {
		return printJSON(out, res)
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
