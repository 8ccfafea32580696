package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/shipper"
	"github.com/qcdp/qcdp/shipper/spool"
)

// captureOptions are the flags of `qcdp capture`.
type captureOptions struct {
	socket       string
	spoolDir     string
	group        string
	disks        pairsValue // NAME=SIZE
	maxSpool     int64
	segmentBytes int64
	syncInterval time.Duration
	syncBytes    int64
	logLevel     slog.Level
}

func newCaptureCommand() *cobra.Command {
	opts := captureOptions{maxSpool: 8 << 30, segmentBytes: 64 << 20, disks: pairsValue{checkName: record.ValidDiskName, check: positiveSize, typ: "NAME=SIZE"}}
	cmd := &cobra.Command{
		Use:   "capture --socket PATH --spool DIR --group NAME --disk NAME=SIZE [--disk ...]",
		Short: "serve capture exports into a spool (the NBD target of QEMU's mirror)",
		Long: `Serves one capture export per disk over NBD until SIGINT or SIGTERM; every write
is appended to the group's spool in arrival order before it is acknowledged.
The disks given are declared in the stream as the group's whole membership:
a replica offers a restore point once every one of them is in sync, and its
views have the sizes given here. Without a host daemon: for tests, the demo
and QEMU set up by hand.`,
		Example: `  qcdp capture --socket /run/qcdp/g1.sock --spool /var/lib/qcdp/spool/g1 --group g1 \
               --disk vda=20G --disk vdb=100G --max-spool 8G --sync-interval 1s`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if opts.socket == "" || opts.spoolDir == "" || opts.group == "" || len(opts.disks.names) == 0 {
				return usagef("--socket, --spool, --group and at least one --disk are required")
			}
			if err := configs.ValidName(opts.group); err != nil {
				return usagef("--group: %v", err)
			}
			return runCapture(cmd.Context(), opts, cmd.OutOrStdout())
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&opts.socket, "socket", "", "unix socket `PATH` to serve NBD on (required)")
	fs.StringVar(&opts.spoolDir, "spool", "", "spool `DIR` of the protection group (required)")
	fs.StringVar(&opts.group, "group", "", "protection group `NAME` (required)")
	fs.Var(&opts.disks, "disk", "NAME=SIZE of a capture export, e.g. vda=20G (repeat for each disk of the group)")
	fs.Var(sizeValue{&opts.maxSpool}, "max-spool", "bound on unacknowledged spool bytes; past it writes fail at once with EIO (0: none)")
	fs.Var(sizeValue{&opts.segmentBytes}, "segment-size", "spool segment size")
	fs.Var(durationValue{v: &opts.syncInterval, zero: true}, "sync-interval", "fsync the spool this often (0: only on FLUSH and FUA)")
	fs.Var(sizeValue{&opts.syncBytes}, "sync-bytes", "fsync the spool after this many bytes (0: off)")
	fs.Var(logLevelValue{&opts.logLevel}, "log-level", "debug, info, warn or error")
	cmd.MarkFlagDirname("spool")
	return cmd
}

func runCapture(ctx context.Context, opts captureOptions, out io.Writer) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: opts.logLevel}))

	g, err := shipper.OpenGroup(ctx, shipper.GroupOptions{
		Spool: spool.Options{
			Dir: opts.spoolDir, Group: opts.group,
			SegmentBytes: opts.segmentBytes, MaxBytes: opts.maxSpool,
			SyncInterval: opts.syncInterval, SyncBytes: opts.syncBytes,
		},
		Socket: opts.socket, SocketMode: 0o600, SocketGID: -1,
		Logger: log,
	})
	if err != nil {
		return err
	}
	var members []record.Member
	for i, name := range opts.disks.names {
		size, _ := parseSize(opts.disks.values[i]) // checked by the flag
		if _, err := g.Export(name, size); err != nil {
			g.Shutdown(context.Background())
			return usagef("--disk %s: %v", name, err)
		}
		members = append(members, record.Member{Disk: name, Size: uint64(size), Target: name})
	}
	// The group is these disks: the replica offers a restore point once
	// every one of them is in sync, and sizes its views as given here.
	if _, err := g.Sequencer().Declare("", members); err != nil {
		g.Shutdown(context.Background())
		return usagef("--disk: %v", err)
	}
	fmt.Fprintf(out, "qcdp capture: group %s, disks %s, serving nbd+unix:///DISK?socket=%s, spool %s (from seq %d)\n",
		opts.group, opts.disks.String(), opts.socket, opts.spoolDir, g.Spool().LastSeq()+1)
	err = g.Serve(ctx)
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	st := g.ServerStats()
	last := g.Spool().LastSeq()
	if serr := g.Shutdown(context.Background()); err == nil {
		err = serr
	}
	fmt.Fprintf(out, "qcdp capture: stopped after %d writes (%d bytes), last seq %d\n", st.Writes, st.BytesWritten, last)
	return err
}
