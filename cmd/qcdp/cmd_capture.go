package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"github.com/qcdp/qcdp/nbd"
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

	sp, err := spool.Open(ctx, spool.Options{
		Dir: opts.spoolDir, Group: opts.group,
		SegmentBytes: opts.segmentBytes, MaxBytes: opts.maxSpool,
		SyncInterval: opts.syncInterval, SyncBytes: opts.syncBytes,
		Logger: log,
	})
	if err != nil {
		return fmt.Errorf("open spool: %w", err)
	}
	defer sp.Close()
	seq := shipper.NewSequencer(sp)
	var cat nbd.Exports
	for i, name := range opts.disks.names {
		size, err := parseSize(opts.disks.values[i])
		if err != nil || size <= 0 {
			return usagef("--disk %s: invalid size %q", name, opts.disks.values[i])
		}
		e, err := seq.Export(name, size)
		if err != nil {
			return usagef("--disk %s: %v", name, err)
		}
		cat.Add(name, e)
	}

	ln, err := listenUnix(opts.socket)
	if err != nil {
		return err
	}
	srv := nbd.NewServer(&cat, nbd.Options{Logger: log})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	fmt.Fprintf(out, "qcdp capture: group %s, disks %s, serving nbd+unix:///DISK?socket=%s, spool %s (from seq %d)\n",
		opts.group, opts.disks.String(), opts.socket, opts.spoolDir, sp.LastSeq()+1)

	select {
	case err = <-served:
		err = fmt.Errorf("serve %s: %w", opts.socket, err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if serr := srv.Shutdown(sctx); serr != nil {
			log.Warn("capture shutdown", "err", serr)
		}
		cancel()
		<-served
	}
	os.Remove(opts.socket)
	if serr := sp.Sync(context.Background()); serr != nil && err == nil {
		err = fmt.Errorf("final spool sync: %w", serr)
	}
	st := srv.Stats()
	fmt.Fprintf(out, "qcdp capture: stopped after %d writes (%d bytes), last seq %d\n", st.Writes, st.BytesWritten, sp.LastSeq())
	return err
}

// listenUnix listens on path, replacing a stale socket file that nobody
// serves any more but refusing to steal a live one.
func listenUnix(path string) (net.Listener, error) {
	if _, err := os.Stat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("socket %s is in use by another server", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("stat socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return ln, nil
}
