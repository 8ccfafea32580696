package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/qcdp/qcdp/shipper/spool"
)

const spoolUsage = `usage: qcdp spool show   --spool DIR [--json]
       qcdp spool verify --spool DIR [--json]
       qcdp spool apply  --spool DIR --disk NAME=IMAGE [--disk ...] [--to-seq N] [--skip-unmapped] [--json]

show    prints the group, segments, seq range, acknowledged seq, bytes, record
        counts by kind and the markers of a spool.
verify  checks every record; a torn tail is reported (exit 0: the daemon cuts
        it at its next start), corruption is reported with file, offset and
        seq (exit 1).
apply   replays the spool's records in seq order onto raw image files (created
        at the size the records need when missing).

The spool is only read, never changed; it may belong to a running daemon.`

// spoolCommand dispatches `qcdp spool SUBCOMMAND`.
func spoolCommand(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stdout, spoolUsage)
		return usagef("missing subcommand")
	}
	switch args[0] {
	case "show":
		return spoolShowCommand(ctx, args[1:], stdout)
	case "verify":
		return spoolVerifyCommand(ctx, args[1:], stdout)
	case "apply":
		return spoolApplyCommand(ctx, args[1:], stdout)
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, spoolUsage)
		return nil
	}
	fmt.Fprintln(stdout, spoolUsage)
	return usagef("unknown subcommand %q", args[0])
}

// spoolShowOptions are the flags of `qcdp spool show` and `qcdp spool verify`.
type spoolShowOptions struct {
	dir  string
	json bool
}

func spoolShowFlags(name string, out io.Writer, opts *spoolShowOptions) func(args []string) error {
	fs := newFlags("spool "+name, out)
	fs.StringVar(&opts.dir, "spool", "", "spool directory (required)")
	fs.BoolVar(&opts.json, "json", false, "print JSON")
	fs.Usage = func() {
		fmt.Fprintln(out, spoolUsage)
		fs.PrintDefaults()
	}
	return func(args []string) error {
		if err := parseFlags(fs, args); err != nil {
			return err
		}
		if opts.dir == "" {
			return usagef("--spool is required")
		}
		return nil
	}
}

func spoolShowCommand(ctx context.Context, args []string, out io.Writer) error {
	var opts spoolShowOptions
	if err := spoolShowFlags("show", out, &opts)(args); err != nil {
		return err
	}
	return runSpoolShow(ctx, opts, out)
}

func runSpoolShow(ctx context.Context, opts spoolShowOptions, out io.Writer) error {
	rep, err := spool.Inspect(ctx, opts.dir, spool.InspectOptions{})
	if err != nil {
		return err
	}
	if opts.json {
		return writeSpoolJSON(out, rep)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "spool\t%s\n", rep.Dir)
	fmt.Fprintf(w, "group\t%s\n", rep.Group)
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

func spoolVerifyCommand(ctx context.Context, args []string, out io.Writer) error {
	var opts spoolShowOptions
	if err := spoolShowFlags("verify", out, &opts)(args); err != nil {
		return err
	}
	return runSpoolVerify(ctx, opts, out)
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
		if jerr := writeSpoolJSON(out, v); jerr != nil {
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
	disks        pairsFlag
	toSeq        uint64
	skipUnmapped bool
	json         bool
}

func spoolApplyCommand(ctx context.Context, args []string, out io.Writer) error {
	var opts spoolApplyOptions
	fs := newFlags("spool apply", out)
	fs.StringVar(&opts.dir, "spool", "", "spool directory (required)")
	fs.Var(&opts.disks, "disk", "NAME=IMAGE: apply disk NAME's records to the raw image IMAGE (repeat)")
	fs.Uint64Var(&opts.toSeq, "to-seq", 0, "apply records up to this seq only (0: all)")
	fs.BoolVar(&opts.skipUnmapped, "skip-unmapped", false, "skip records of disks with no --disk instead of failing")
	fs.BoolVar(&opts.json, "json", false, "print JSON")
	fs.Usage = func() {
		fmt.Fprintln(out, spoolUsage)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if opts.dir == "" || len(opts.disks.names) == 0 {
		return usagef("--spool and at least one --disk are required")
	}
	return runSpoolApply(ctx, opts, out)
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
		return writeSpoolJSON(out, sum)
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

func writeSpoolJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
