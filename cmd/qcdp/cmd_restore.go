package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/qcdp/qcdp/replica/journal"
)

// restoreOptions are the flags of `qcdp restore`.
type restoreOptions struct {
	groupOptions
	pointOptions
	disk   string
	out    string
	format string
	group  string
}

func newRestoreCommand() *cobra.Command {
	var opts restoreOptions
	cmd := &cobra.Command{
		Use:   "restore GROUP (--seq N | --time RFC3339 | --ago 5m | --bookmark NAME) --disk NAME --out PATH [--format raw|qcow2]",
		Short: "write a disk at a restore point into an image",
		Long: `Writes one disk of a group at a restore point into a new image on the replica host.
The disk is named by its target (vda) where no other VM of the group has one, or
as VM.TARGET (vm1.vda) always. The image is written beside its name and linked
into place only when whole; an existing file is never overwritten.`,
		Example: `  qcdp restore g1 --seq 5 --disk vm1.vda --out /tmp/x.raw
  qcdp restore g1 --bookmark nightly --disk vda --out /srv/vda.qcow2 --format qcow2`,
		Args: positional("GROUP"),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.group = args[0]
			if opts.disk == "" || opts.out == "" {
				return usagef("--disk and --out are required")
			}
			abs, err := filepath.Abs(opts.out) // the daemon resolves nothing against its own directory
			if err != nil {
				return usagef("--out %s: %v", opts.out, err)
			}
			opts.out = abs
			at, err := opts.target(time.Now())
			if err != nil {
				return err
			}
			return runRestore(cmd.Context(), opts, at, cmd.OutOrStdout())
		},
	}
	fs := cmd.Flags()
	opts.groupOptions.addFlags(fs)
	opts.pointOptions.addFlags(fs)
	fs.StringVar(&opts.disk, "disk", "", "the `DISK` to restore: vda, or vm1.vda (required)")
	fs.StringVar(&opts.out, "out", "", "`PATH` of the image to create on the replica host, never overwritten (required)")
	addChoiceFlag(cmd, &opts.format, "format", "raw", []string{"raw", "qcow2"}, "image format")
	return cmd
}

func runRestore(ctx context.Context, opts restoreOptions, at journal.Target, out io.Writer) error {
	r, err := newReplicaClient(opts.socket).Restore(ctx, opts.tenant, opts.group, at, opts.disk, opts.out, opts.format)
	if err != nil {
		return err
	}
	if opts.json {
		return printJSON(out, r)
	}
	what := "bytes of data"
	if opts.format == "qcow2" {
		what = "bytes of qcow2 image"
	}
	fmt.Fprintf(out, "restored %s at seq %d (%s) into %s (%d %s)\n", r.Disk, r.Point.Seq,
		r.Point.Time.UTC().Format(time.RFC3339Nano), r.Path, r.Bytes, what)
	return nil
}
