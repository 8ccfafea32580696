package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/qcdp/qcdp/shipper"
	"github.com/qcdp/qcdp/shipper/spool"
)

// captureOptions are the flags of `qcdp capture`.
type captureOptions struct {
	socket       string
	spoolDir     string
	group        string
	disks        pairsFlag
	maxSpool     int64
	segmentBytes int64
	syncInterval time.Duration
	syncBytes    int64
	logLevel     string
}

func captureCommand(ctx context.Context, args []string, out io.Writer) error {
	opts := captureOptions{maxSpool: 8 << 30, segmentBytes: 64 << 20}
	fs := newFlags("capture", out)
	fs.StringVar(&opts.socket, "socket", "", "unix socket to serve NBD on (required)")
	fs.StringVar(&opts.spoolDir, "spool", "", "spool directory of the protection group (required)")
	fs.StringVar(&opts.group, "group", "", "protection group name (required)")
	fs.Var(&opts.disks, "disk", "NAME=SIZE of a capture export (repeat for each disk of the group)")
	fs.Var(sizeFlag{&opts.maxSpool}, "max-spool", "bound on unacknowledged spool bytes; past it writes fail at once with EIO")
	fs.Var(sizeFlag{&opts.segmentBytes}, "segment-size", "spool segment size")
	fs.DurationVar(&opts.syncInterval, "sync-interval", 0, "fsync the spool this often (0: only on FLUSH and FUA)")
	fs.Var(sizeFlag{&opts.syncBytes}, "sync-bytes", "fsync the spool after this many bytes (0: off)")
	fs.StringVar(&opts.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintln(out, "usage: qcdp capture --socket PATH --spool DIR --group NAME --disk NAME=SIZE [--disk ...]")
		fmt.Fprintln(out, "\nServes one capture export per disk over NBD until SIGINT or SIGTERM; every write")
		fmt.Fprintln(out, "is appended to the group's spool in arrival order before it is acknowledged.")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if opts.socket == "" || opts.spoolDir == "" || opts.group == "" || len(opts.disks.names) == 0 {
		return usagef("--socket, --spool, --group and at least one --disk are required")
	}
	return runCapture(ctx, opts, out)
}

func runCapture(ctx context.Context, opts captureOptions, out io.Writer) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(opts.logLevel)); err != nil {
		return usagef("--log-level: %v", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

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
	for i, name := range opts.disks.names {
		size, err := parseSize(opts.disks.values[i])
		if err != nil || size <= 0 {
			g.Shutdown(context.Background())
			return usagef("--disk %s: invalid size %q", name, opts.disks.values[i])
		}
		if _, err := g.Export(name, size); err != nil {
			g.Shutdown(context.Background())
			return usagef("--disk %s: %v", name, err)
		}
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
