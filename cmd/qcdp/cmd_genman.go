package main

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// genManOptions are the flags of `qcdp gen-man`.
type genManOptions struct {
	dir string
}

// newGenManCommand is the hidden command `make man` runs: a man page per
// command, from the command tree itself.
func newGenManCommand() *cobra.Command {
	var opts genManOptions
	return &cobra.Command{
		Use:     "gen-man DIR",
		Short:   "write a man page per command into DIR",
		Long:    "Writes a man page (section 1) per command into DIR, created if missing: qcdp.1, qcdp-export.1, ...",
		Example: "  qcdp gen-man man/",
		Hidden:  true,
		Args:    positional("DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.dir = args[0]
			return runGenMan(cmd.Root(), opts, cmd.OutOrStdout())
		},
	}
}

func runGenMan(root *cobra.Command, opts genManOptions, out io.Writer) error {
	if err := os.MkdirAll(opts.dir, 0o755); err != nil {
		return err
	}
	header := &doc.GenManHeader{Title: "QCDP", Section: "1", Source: "qcdp " + version, Manual: "qcdp manual"}
	if err := doc.GenManTree(root, header, opts.dir); err != nil {
		return fmt.Errorf("man pages into %s: %w", opts.dir, err)
	}
	fmt.Fprintf(out, "man pages written into %s\n", opts.dir)
	return nil
}
