package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/qcdp/qcdp/protect"
)

// statusOptions are the flags of `qcdp status`.
type statusOptions struct {
	socket  string
	json    bool
	metrics bool
}

func statusCommand(ctx context.Context, args []string, out io.Writer) error {
	var opts statusOptions
	fs := newFlags("status", out)
	fs.StringVar(&opts.socket, "socket", "/run/qcdp/host.sock", "control socket of `qcdp host`")
	fs.BoolVar(&opts.json, "json", false, "print JSON")
	fs.BoolVar(&opts.metrics, "metrics", false, "print Prometheus metrics (RPO per group, disk states), e.g. for node_exporter's textfile collector")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	return runStatus(ctx, opts, out)
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
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(st)
	}
	for _, g := range st.Groups {
		fmt.Fprintf(out, "group %s: seq %d (acked %d), spool %s of %s, %d NBD writes, %d errors\n",
			g.Name, g.LastSeq, g.Acked, humanBytes(g.Bytes), humanBytes(g.MaxBytes), g.NBDWrites, g.NBDErrors)
		if r := g.Replica; r != nil {
			link := "connected"
			if !r.Connected {
				link = "not connected"
				if r.LastError != "" {
					link += " (" + r.LastError + ")"
				}
			}
			fmt.Fprintf(out, "  replica %s: RPO %v, acked seq %d, sent %s (%.1fx compressed)\n",
				link, r.RPO.Round(time.Millisecond), r.LastAcked, humanBytes(r.BytesSent), r.Ratio())
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
	}
	return nil
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
