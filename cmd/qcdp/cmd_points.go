package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// pointsOptions are the flags of `qcdp points`.
type pointsOptions struct {
	groupOptions
	group string
}

func newPointsCommand() *cobra.Command {
	var opts pointsOptions
	cmd := &cobra.Command{
		Use:   "points GROUP [--json]",
		Short: "list a group's restore points on the replica",
		Long: `Lists what a group's journal on the replica can restore: the any-point window (every
record boundary from its first seq to its last, except its gaps: resyncs and
initial syncs), bookmarks and long-term points.`,
		Example: "  qcdp points g1\n  qcdp points g1 --json\n  qcdp points g1 --tenant acme",
		Args:    positional("GROUP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.group = args[0]
			return runPoints(cmd.Context(), opts, cmd.OutOrStdout())
		},
	}
	opts.addFlags(cmd.Flags())
	return cmd
}

func runPoints(ctx context.Context, opts pointsOptions, out io.Writer) error {
	p, err := newReplicaClient(opts.socket).Points(ctx, opts.tenant, opts.group)
	if err != nil {
		return err
	}
	if opts.json {
		return printJSON(out, p)
	}
	w := p.Window
	if w.LastSeq == 0 {
		fmt.Fprintf(out, "group %s/%s: no restore point yet (waiting for every disk's sync-complete)\n", p.Tenant, p.Group)
	} else {
		fmt.Fprintf(out, "group %s/%s: any point from seq %d (%s) to seq %d (%s)\n", p.Tenant, p.Group,
			w.FirstSeq, w.FirstTime.UTC().Format(time.RFC3339), w.LastSeq, w.LastTime.UTC().Format(time.RFC3339))
		for _, g := range w.Gaps {
			fmt.Fprintf(out, "  except seq %d to %d (resync or initial sync)\n", g.FromSeq, g.ToSeq)
		}
	}
	sort.Slice(p.Points, func(i, j int) bool { return p.Points[i].Seq < p.Points[j].Seq })
	tw := tabwriter.NewWriter(out, 0, 2, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tKIND\tNAME")
	for _, pt := range p.Points {
		kind := pt.Kind.String()
		if pt.Kind == 0 {
			kind = "point"
		}
		if pt.LongTerm {
			kind += " (long-term)"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", pt.Seq, pt.Time.UTC().Format(time.RFC3339Nano), kind, pt.Name)
	}
	return tw.Flush()
}
