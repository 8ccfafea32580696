package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// verifyOptions are the flags of `qcdp verify`.
type verifyOptions struct {
	groupOptions
	group string
}

func newVerifyCommand() *cobra.Command {
	var opts verifyOptions
	cmd := &cobra.Command{
		Use:   "verify GROUP",
		Short: "check every record of a group's journal",
		Long: `Checks every record and base of a group's journal on the replica; corruption is
named by file, offset and seq, and the command fails.`,
		Example: "  qcdp verify g1\n  qcdp verify g1 --json",
		Args:    positional("GROUP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.group = args[0]
			return runVerify(cmd.Context(), opts, cmd.OutOrStdout())
		},
	}
	opts.addFlags(cmd.Flags())
	return cmd
}

func runVerify(ctx context.Context, opts verifyOptions, out io.Writer) error {
	rep, err := newReplicaClient(opts.socket).Verify(ctx, opts.tenant, opts.group)
	if err != nil {
		return err // names the file, offset and seq of what is corrupt
	}
	if opts.json {
		return printJSON(out, rep)
	}
	fmt.Fprintf(out, "group %s: journal verified: %d segments, %d layers, %d records, %d bytes\n",
		opts.group, rep.Segments, rep.Layers, rep.Records, rep.Bytes)
	return nil
}
