package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// versionOptions are the flags of `qcdp version`.
type versionOptions struct {
	json bool
}

func newVersionCommand() *cobra.Command {
	var opts versionOptions
	cmd := &cobra.Command{
		Use:     "version [--json]",
		Short:   "print the version",
		Long:    "Prints the version stamped at build time (git describe; \"dev\" for a plain go build), as qcdp --version does.",
		Example: "  qcdp version\n  qcdp --version",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runVersion(opts, cmd.OutOrStdout())
		},
	}
	addJSONFlag(cmd.Flags(), &opts.json)
	return cmd
}

func runVersion(opts versionOptions, out io.Writer) error {
	if opts.json {
		return printJSON(out, struct {
			Version string `json:"version"`
		}{version})
	}
	_, err := fmt.Fprintf(out, "qcdp %s\n", version)
	return err
}
