package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/spf13/cobra"

	"github.com/qcdp/qcdp/replica/journal"
)

// exportOptions are the flags of `qcdp export`.
type exportOptions struct {
	groupOptions
	pointOptions
	writable bool
	group    string
}

func newExportCommand() *cobra.Command {
	var opts exportOptions
	cmd := &cobra.Command{
		Use:   "export GROUP (--seq N | --time RFC3339 | --ago 5m | --bookmark NAME) [--writable]",
		Short: "serve a group's restore point over NBD (read-only, or writable into an overlay)",
		Long: `Serves every disk of a group at one restore point over NBD and prints an
nbd+unix:// URI per disk; nothing is copied. A writable view keeps its writes in
an overlay, never in the journal, deleted when it is unexported. The view stays
until 'qcdp unexport ID'.`,
		Example: `  qcdp export g1 --seq 5
  qcdp export g1 --ago 5m
  qcdp export g1 --time 2026-11-21T22:15:00Z --writable
  qcdp export g1 --bookmark nightly --json`,
		Args: positional("GROUP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.group = args[0]
			at, err := opts.target(time.Now())
			if err != nil {
				return err
			}
			return runExport(cmd.Context(), opts, at, cmd.OutOrStdout())
		},
	}
	opts.groupOptions.addFlags(cmd.Flags())
	opts.pointOptions.addFlags(cmd.Flags())
	cmd.Flags().BoolVar(&opts.writable, "writable", false, "writes go to an overlay, never to the journal (for test failover)")
	return cmd
}

func runExport(ctx context.Context, opts exportOptions, at journal.Target, out io.Writer) error {
	e, err := newReplicaClient(opts.socket).Export(ctx, opts.tenant, opts.group, at, opts.writable)
	if err != nil {
		return err
	}
	if opts.json {
		return printJSON(out, e)
	}
	fmt.Fprintf(out, "export %s: %s/%s at seq %d (%s)\n", e.ID, e.Tenant, e.Group, e.Point.Seq, e.Point.Time.UTC().Format(time.RFC3339Nano))
	disks := make([]string, 0, len(e.URIs))
	for d := range e.URIs {
		disks = append(disks, d)
	}
	sort.Strings(disks)
	for _, d := range disks {
		fmt.Fprintf(out, "  %s  %s\n", d, e.URIs[d])
	}
	fmt.Fprintf(out, "withdraw with: qcdp unexport %s\n", e.ID)
	return nil
}
