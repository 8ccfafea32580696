package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// exportsOptions are the flags of `qcdp exports`.
type exportsOptions struct {
	socket string
	json   bool
}

func newExportsCommand() *cobra.Command {
	var opts exportsOptions
	cmd := &cobra.Command{
		Use:     "exports [--json]",
		Short:   "list the exported views",
		Long:    "Lists the views the replica daemon exports now: id, group, point, writable, disks.",
		Example: "  qcdp exports\n  qcdp exports --json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runExports(cmd.Context(), opts, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&opts.socket, "socket", "/run/qcdp/replica.sock", "`PATH` of the replica daemon's control socket")
	addJSONFlag(cmd.Flags(), &opts.json)
	return cmd
}

func runExports(ctx context.Context, opts exportsOptions, out io.Writer) error {
	es, err := newReplicaClient(opts.socket).Exports(ctx)
	if err != nil {
		return err
	}
	if opts.json {
		return printJSON(out, es)
	}
	tw := tabwriter.NewWriter(out, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tGROUP\tSEQ\tTIME\tWRITABLE\tDISKS")
	for _, e := range es {
		disks := make([]string, 0, len(e.URIs))
		for d := range e.URIs {
			disks = append(disks, d)
		}
		sort.Strings(disks)
		fmt.Fprintf(tw, "%s\t%s/%s\t%d\t%s\t%v\t%s\n", e.ID, e.Tenant, e.Group, e.Point.Seq,
			e.Point.Time.UTC().Format(time.RFC3339), e.Writable, strings.Join(disks, ","))
	}
	return tw.Flush()
}
