package main

import (
	"context"
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// unexportOptions are the flags of `qcdp unexport`.
type unexportOptions struct {
	socket string
	json   bool
	id     string
}

func newUnexportCommand() *cobra.Command {
	var opts unexportOptions
	cmd := &cobra.Command{
		Use:   "unexport ID",
		Short: "withdraw an exported view",
		Long: `Withdraws an exported view (ID is what 'qcdp export' and 'qcdp exports' print):
connections still open get errors, and a writable view's overlay is deleted.`,
		Example: "  qcdp unexport x1",
		Args:    positional("ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.id = args[0]
			return runUnexport(cmd.Context(), opts, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&opts.socket, "socket", "/run/qcdp/replica.sock", "`PATH` of the replica daemon's control socket")
	addJSONFlag(cmd.Flags(), &opts.json)
	return cmd
}

func runUnexport(ctx context.Context, opts unexportOptions, out io.Writer) error {
	if err := newReplicaClient(opts.socket).Unexport(ctx, opts.id); err != nil {
		return err
	}
	if opts.json {
		return printJSON(out, struct {
			ID     string `json:"id"`
			Action string `json:"action"`
		}{opts.id, "unexport"})
	}
	fmt.Fprintf(out, "export %s withdrawn\n", opts.id)
	return nil
}
