package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/qcdp/qcdp/protect"
)

// statusOptions are the flags of `qcdp status`.
type statusOptions struct {
	socket  string
	json    bool
	metrics bool
}

func newStatusCommand() *cobra.Command {
	var opts statusOptions
	cmd := &cobra.Command{
		Use:   "status [--json | --metrics]",
		Short: "show protection groups and disk states",
		Long: `Shows the host daemon's protection groups: spool, stream to the replica and RPO, and
every protected disk's state (initial-sync, syncing, tracking, resync, paused,
error, detached). --metrics prints the same in Prometheus text format, e.g. for
node_exporter's textfile collector.`,
		Example: `  qcdp status
  qcdp status --json
  qcdp status --metrics > /var/lib/node_exporter/textfile/qcdp.prom`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.json && opts.metrics {
				return usagef("give --json or --metrics, not both")
			}
			return runStatus(cmd.Context(), opts, cmd.OutOrStdout())
		},
	}
	addHostSocketFlag(cmd.Flags(), &opts.socket)
	addJSONFlag(cmd.Flags(), &opts.json)
	cmd.Flags().BoolVar(&opts.metrics, "metrics", false, "print Prometheus metrics (RPO per group, disk states)")
	return cmd
}

// addHostSocketFlag adds the --socket of the commands that talk to the host
// daemon.
func addHostSocketFlag(fs *pflag.FlagSet, v *string) {
	fs.StringVar(v, "socket", "/run/qcdp/host.sock", "`PATH` of the host daemon's control socket")
}

func runStatus(ctx context.Context, opts statusOptions, out io.Writer) error {
	st, err := newHostClient(opts.socket).Status(ctx)
	if err != nil {
		return err
	}
	if opts.metrics {
		return protect.WriteMetrics(out, st)
	}
	if opts.json {
		return printJSON(out, st)
	}
	for _, g := range st.Groups {
		fmt.Fprintf(out, "group %s: seq %d (acked %d), spool %s of %s, %d NBD writes, %d errors\n",
			g.Name, g.LastSeq, g.Acked, humanBytes(g.Bytes), humanBytes(g.MaxBytes), g.NBDWrites, g.NBDErrors)
		if g.State != "" && g.State != "ok" {
			fmt.Fprintf(out, "  state %s\n", g.State)
		}
		if r := g.Replica; r != nil {
			link := "connected"
			switch {
			case r.Diverged != "":
				link = "diverged (" + r.Diverged + ")"
			case !r.Connected:
				link = "not connected"
				if r.LastError != "" {
					link += " (" + r.LastError + ")"
				}
			}
			fmt.Fprintf(out, "  replica %s: RPO %v, acked seq %d, sent %s (%.1fx compressed)\n",
				link, r.RPO.Round(time.Millisecond), r.LastAcked, humanBytes(r.BytesSent), r.Ratio())
		}
		for _, u := range g.Unmatched {
			fmt.Fprintf(out, "  protects nothing: %s\n", u)
		}
		if len(g.Disks) == 0 {
			fmt.Fprintln(out, "  no disk protected yet")
			continue
		}
		tw := tabwriter.NewWriter(out, 0, 2, 2, ' ', 0)
		fmt.Fprintln(tw, "  VM\tDISK\tSTATE\tFORMAT\tSIZE\tSTREAM\tERROR")
		for _, d := range g.Disks {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\n", d.VM, d.Target, d.State, d.Format, humanBytes(d.Size), d.Stream, d.Error)
		}
		tw.Flush()
		for _, d := range g.Disks {
			if d.Resync != nil {
				fmt.Fprintf(out, "  %s %s: %s\n", d.VM, d.Target, d.Resync)
			}
		}
	}
	return nil
}

func humanBytes(n int64) string { return protect.HumanBytes(n) }
