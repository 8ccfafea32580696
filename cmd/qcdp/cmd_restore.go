package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/qcdp/qcdp/replica"
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
	c := newReplicaClient(opts.socket)
	var r replica.RestoreInfo
	var err error
	if opts.format == "raw" {
		r, err = c.Restore(ctx, opts.tenant, opts.group, at, opts.disk, opts.out)
	} else {
		r, err = restoreQcow2(ctx, c, opts.tenant, opts.group, at, opts.disk, opts.out)
	}
	if err != nil {
		return err
	}
	if opts.json {
		return printJSON(out, r)
	}
	fmt.Fprintf(out, "restored %s at seq %d (%s) into %s (%d bytes of data)\n", r.Disk, r.Point.Seq,
		r.Point.Time.UTC().Format(time.RFC3339Nano), r.Path, r.Bytes)
	return nil
}

// restoreQcow2 writes a qcow2 image of one disk at a restore point by
// converting the point's NBD export with qemu-img (holes stay holes).
func restoreQcow2(ctx context.Context, c *replicaClient, tenant, group string, at journal.Target, disk, path string) (replica.RestoreInfo, error) {
	var r replica.RestoreInfo
	if _, err := os.Lstat(path); err == nil {
		return r, fmt.Errorf("%s exists; a restore never overwrites a file", path)
	}
	e, err := c.Export(ctx, tenant, group, at, false)
	if err != nil {
		return r, err
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		c.Unexport(uctx, e.ID)
	}()
	disks := make([]string, 0, len(e.URIs))
	for d := range e.URIs {
		disks = append(disks, d)
	}
	name, err := replica.ResolveDisk(disks, disk)
	if err != nil {
		return r, fmt.Errorf("group %s/%s at seq %d: %w", e.Tenant, e.Group, e.Point.Seq, err)
	}
	uri := e.URIs[name]
	// Converted beside its name and linked into place only when whole, so
	// neither an interrupted restore nor a file created meanwhile is lost.
	partial := path + ".partial"
	defer os.Remove(partial)
	cmd := exec.CommandContext(ctx, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", uri, partial)
	if b, err := cmd.CombinedOutput(); err != nil {
		return r, fmt.Errorf("qemu-img convert %s: %w: %s", uri, err, strings.TrimSpace(string(b)))
	}
	if err := os.Link(partial, path); err != nil {
		return r, err
	}
	st, err := os.Stat(path)
	if err != nil {
		return r, err
	}
	return replica.RestoreInfo{Point: e.Point, Disk: name, Path: path, Bytes: st.Size()}, nil
}
