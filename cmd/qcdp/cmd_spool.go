package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/qcdp/qcdp/shipper/spool"
)

func newSpoolCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "spool (show | verify | apply) --spool DIR",
		Short: "inspect, verify and apply a spool (show, verify, apply)",
		Long: `Inspects, verifies and applies a protection group's spool on the host. The spool is
only read, never changed; it may belong to a running daemon.`,
		Example: `  qcdp spool show --spool /var/lib/qcdp/spool/g1
  qcdp spool verify --spool /var/lib/qcdp/spool/g1
  qcdp spool apply --spool /var/lib/qcdp/spool/g1 --disk vda=/tmp/vda.raw --to-seq 1000`,
	}
	cmd.AddCommand(newSpoolShowCommand(), newSpoolVerifyCommand(), newSpoolApplyCommand())
	needSubcommand(cmd)
	return cmd
}

// spoolShowOptions are the flags of `qcdp spool show` and `qcdp spool verify`.
type spoolShowOptions struct {
	dir  string
	json bool
}

func (o *spoolShowOptions) addFlags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&o.dir, "spool", "", "spool `DIR` (required)")
	addJSONFlag(cmd.Flags(), &o.json)
	cmd.MarkFlagDirname("spool")
}

func (o *spoolShowOptions) check() error {
	if o.dir == "" {
		return usagef("--spool is required")
	}
	return nil
}

func newSpoolShowCommand() *cobra.Command {
	var opts spoolShowOptions
	cmd := &cobra.Command{
		Use:   "show --spool DIR [--json]",
		Short: "print what a spool holds",
		Long: `Prints the group, segments, seq range, acknowledged seq, bytes, record counts by
kind and the markers of a spool.`,
		Example: "  qcdp spool show --spool /var/lib/qcdp/spool/g1\n  qcdp spool show --spool /var/lib/qcdp/spool/g1 --json",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := opts.check(); err != nil {
				return err
			}
			return runSpoolShow(cmd.Context(), opts, cmd.OutOrStdout())
		},
	}
	opts.addFlags(cmd)
	return cmd
}

func runSpoolShow(ctx context.Context, opts spoolShowOptions, out io.Writer) error {
	rep, err := spool.Inspect(ctx, opts.dir, spool.InspectOptions{})
	if err != nil {
		return err
	}
	if opts.json {
		return printJSON(out, rep)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "spool\t%s\n", rep.Dir)
	fmt.Fprintf(w, "group\t%s\n", rep.Group)
	if id := rep.Identity; id != nil {
		fmt.Fprintf(w, "spool id\t%s (created %s, epoch %d)\n", id.ID, time.Unix(0, id.Created).UTC().Format(time.RFC3339), id.Epoch)
	} else {
		fmt.Fprintf(w, "spool id\tnone yet (made at its next open)\n")
	}
	fmt.Fprintf(w, "segments\t%d (%d bytes)\n", len(rep.Segments), rep.Bytes)
	if rep.Records > 0 {
		fmt.Fprintf(w, "seq\t%d..%d (%d records)\n", rep.FirstSeq, rep.LastSeq, rep.Records)
	} else {
		fmt.Fprintf(w, "seq\tnone\n")
	}
	fmt.Fprintf(w, "acked\t%d\n", rep.Acked)
	fmt.Fprintf(w, "kinds\t%s\n", countList(rep.Kinds))
	fmt.Fprintf(w, "disks\t%s\n", countList(rep.Disks))
	if rep.Torn != "" {
		fmt.Fprintf(w, "torn tail\t%s\n", rep.Torn)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if len(rep.Markers) > 0 {
		fmt.Fprintln(out, "markers:")
		w = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "  SEQ\tKIND\tDISK\tNAME")
		for _, m := range rep.Markers {
			fmt.Fprintf(w, "  %d\t%s\t%s\t%q\n", m.Seq, m.Kind, m.Disk, m.Name)
		}
		return w.Flush()
	}
	return nil
}

func countList(m map[string]int64) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}

func newSpoolVerifyCommand() *cobra.Command {
	var opts spoolShowOptions
	cmd := &cobra.Command{
		Use:   "verify --spool DIR [--json]",
		Short: "check every record of a spool",
		Long: `Checks every record of a spool. A torn tail is reported and is no failure (the
daemon cuts it at its next start); corruption is reported with file, offset and
seq, and the command fails.`,
		Example: "  qcdp spool verify --spool /var/lib/qcdp/spool/g1",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := opts.check(); err != nil {
				return err
			}
			return runSpoolVerify(cmd.Context(), opts, cmd.OutOrStdout())
		},
	}
	opts.addFlags(cmd)
	return cmd
}

// spoolVerdict is what `qcdp spool verify --json` prints.
type spoolVerdict struct {
	OK       bool   `json:"ok"`
	Records  int64  `json:"records"`
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
	Torn     string `json:"torn,omitempty"`
	Corrupt  string `json:"corrupt,omitempty"`
}

func runSpoolVerify(ctx context.Context, opts spoolShowOptions, out io.Writer) error {
	rep, err := spool.Inspect(ctx, opts.dir, spool.InspectOptions{})
	v := spoolVerdict{OK: err == nil, Records: rep.Records, FirstSeq: rep.FirstSeq, LastSeq: rep.LastSeq, Torn: rep.Torn}
	if err != nil && !errors.Is(err, spool.ErrCorrupt) && !errors.Is(err, spool.ErrGroup) {
		return err // not a verdict on the spool: it could not be read
	}
	if err != nil {
		v.Corrupt = err.Error()
	}
	if opts.json {
		if jerr := printJSON(out, v); jerr != nil {
			return jerr
		}
	} else {
		if v.Records > 0 {
			fmt.Fprintf(out, "%d records, seq %d..%d checked\n", v.Records, v.FirstSeq, v.LastSeq)
		} else {
			fmt.Fprintln(out, "no records")
		}
		if v.Torn != "" {
			fmt.Fprintf(out, "torn tail (cut at the daemon's next start): %s\n", v.Torn)
		}
		if v.OK {
			fmt.Fprintln(out, "ok")
		}
	}
	if err != nil {
		return fmt.Errorf("verify %s: %w", opts.dir, err)
	}
	return nil
}

// spoolApplyOptions are the flags of `qcdp spool apply`.
type spoolApplyOptions struct {
	dir          string
	disks        pairsValue // NAME=IMAGE
	toSeq        uint64
	skipUnmapped bool
	json         bool
}

func newSpoolApplyCommand() *cobra.Command {
	opts := spoolApplyOptions{disks: pairsValue{typ: "NAME=IMAGE"}}
	cmd := &cobra.Command{
		Use:   "apply --spool DIR --disk NAME=IMAGE [--disk ...] [--to-seq N] [--skip-unmapped]",
		Short: "replay a spool's records onto raw images",
		Long: `Replays the spool's records in seq order onto raw image files (created at the size
the records need when missing).`,
		Example: `  qcdp spool apply --spool /var/lib/qcdp/spool/g1 --disk vda=/tmp/vda.raw
  qcdp spool apply --spool /var/lib/qcdp/spool/g1 --disk vm1.vda=/tmp/vda.raw --disk vm1.vdb=/tmp/vdb.raw --to-seq 1000 --json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.dir == "" || len(opts.disks.names) == 0 {
				return usagef("--spool and at least one --disk are required")
			}
			return runSpoolApply(cmd.Context(), opts, cmd.OutOrStdout())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&opts.dir, "spool", "", "spool `DIR` (required)")
	fs.Var(&opts.disks, "disk", "NAME=IMAGE: apply disk NAME's records to the raw image IMAGE (repeat)")
	fs.Uint64Var(&opts.toSeq, "to-seq", 0, "apply records up to this seq only (0: all)")
	fs.BoolVar(&opts.skipUnmapped, "skip-unmapped", false, "skip records of disks with no --disk instead of failing")
	addJSONFlag(fs, &opts.json)
	cmd.MarkFlagDirname("spool")
	return cmd
}

func runSpoolApply(ctx context.Context, opts spoolApplyOptions, out io.Writer) error {
	targets := make(map[string]string, len(opts.disks.names))
	for i, name := range opts.disks.names {
		targets[name] = opts.disks.values[i]
	}
	sum, err := spool.Apply(ctx, opts.dir, targets, spool.ApplyOptions{ToSeq: opts.toSeq, SkipUnmapped: opts.skipUnmapped})
	if err != nil {
		return err
	}
	if opts.json {
		return printJSON(out, sum)
	}
	if sum.Records == 0 {
		fmt.Fprintln(out, "no records applied")
	} else {
		fmt.Fprintf(out, "applied seq %d..%d of group %s: %d records, %d markers, %d skipped\n",
			sum.FirstSeq, sum.LastSeq, sum.Group, sum.Records, len(sum.Markers), sum.Skipped)
	}
	names := make([]string, 0, len(sum.Disks))
	for n := range sum.Disks {
		names = append(names, n)
	}
	sort.Strings(names)
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "DISK\tIMAGE\tSIZE\tRECORDS\tDATA\tZERO\tTRIM\tBYTES")
	for _, n := range names {
		d := sum.Disks[n]
		img := d.Image
		if d.Created {
			img += " (created)"
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\n", n, img, d.Size, d.Records, d.Data, d.Zero, d.Trim, d.Bytes)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	for _, m := range sum.Markers {
		fmt.Fprintf(out, "marker seq %d %s %q\n", m.Seq, m.Kind, m.Name)
	}
	if sum.Torn != "" {
		fmt.Fprintf(out, "stopped at a torn tail: %s\n", sum.Torn)
	}
	return nil
}
