package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/qcdp/qcdp/qmp"
)

// StorageDaemonOptions configure LaunchStorageDaemon.
type StorageDaemonOptions struct {
	Dir  string // sockets and the log go here
	Name string // log and socket names: Dir/Name.log, Dir/Name-nbd.sock, Dir/Name-qmp.sock
	Disk Disk   // the format node Disk.Name on the file node Disk.Name+"-file", exported as Disk.Name
	// AIO is the file node's aio mode ("threads", "io_uring", "native");
	// default "threads".
	AIO string
	// CacheDirect sets the file node's cache.direct (O_DIRECT).
	CacheDirect bool
}

// StorageDaemon is a running qemu-storage-daemon holding one disk, exporting
// its format node writable over NBD on a unix socket, with a QMP monitor.
// The export is added on the command line, before any job: a mirror started
// later on the disk's node moves the export's BlockBackend above its filter
// node, as it does a guest device's.
type StorageDaemon struct {
	*Proc
	QMP       *qmp.Client
	NBDSocket string
	QMPSocket string
	TracePath string
	Export    string // NBD export name (the disk's node name)
	traceFile *os.File
	closed    bool
}

// StorageDaemonArgs returns qemu-storage-daemon's command line for opts.
func StorageDaemonArgs(opts StorageDaemonOptions, nbdSock, qmpSock string) []string {
	aio := opts.AIO
	if aio == "" {
		aio = "threads"
	}
	d := opts.Disk
	return []string{"qemu-storage-daemon",
		"--blockdev", fmt.Sprintf("driver=file,node-name=%s-file,filename=%s,aio=%s,cache.direct=%s",
			d.Name, d.Path, aio, onOff(opts.CacheDirect)),
		"--blockdev", fmt.Sprintf("driver=%s,node-name=%s,file=%s-file", d.Format, d.Name, d.Name),
		"--nbd-server", "addr.type=unix,addr.path=" + nbdSock,
		"--export", fmt.Sprintf("type=nbd,id=exp-%s,node-name=%s,name=%s,writable=on", d.Name, d.Name, d.Name),
		"--chardev", "socket,id=qmp0,path=" + qmpSock + ",server=on,wait=off",
		"--monitor", "chardev=qmp0",
	}
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// LaunchStorageDaemon starts qemu-storage-daemon and connects to its QMP
// monitor once both sockets exist.
func LaunchStorageDaemon(ctx context.Context, opts StorageDaemonOptions) (*StorageDaemon, error) {
	if strings.ContainsAny(opts.Dir+opts.Disk.Path, ",") {
		return nil, fmt.Errorf("harness: qemu-storage-daemon %s: a path has a comma (%s, %s)", opts.Name, opts.Dir, opts.Disk.Path)
	}
	s := &StorageDaemon{
		NBDSocket: filepath.Join(opts.Dir, opts.Name+"-nbd.sock"),
		QMPSocket: filepath.Join(opts.Dir, opts.Name+"-qmp.sock"),
		TracePath: filepath.Join(opts.Dir, opts.Name+"-qmp-trace.log"),
		Export:    opts.Disk.Name,
	}
	var err error
	if s.traceFile, err = os.Create(s.TracePath); err != nil {
		return nil, fmt.Errorf("harness: qemu-storage-daemon %s: QMP trace: %w", opts.Name, err)
	}
	s.Proc, err = StartProc(opts.Dir, opts.Name, StorageDaemonArgs(opts, s.NBDSocket, s.QMPSocket)...)
	if err != nil {
		s.traceFile.Close()
		return nil, err
	}
	for _, sock := range []string{s.QMPSocket, s.NBDSocket} {
		if err := WaitSocket(ctx, sock, s.Proc); err != nil {
			s.Close()
			return nil, fmt.Errorf("harness: qemu-storage-daemon %s: %w", opts.Name, err)
		}
	}
	// The socket file exists from bind(2) on; listen(2) follows at once.
	// A connection refused in between is retried, briefly.
	for delay := time.Millisecond; ; delay *= 2 {
		s.QMP, err = qmp.Dial(ctx, s.QMPSocket, qmp.WithTrace(s.traceFile))
		if !errors.Is(err, syscall.ECONNREFUSED) || delay > 500*time.Millisecond {
			break
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
		}
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("harness: qemu-storage-daemon %s (pid %d): QMP: %w", opts.Name, s.PID(), err)
	}
	return s, nil
}

// URI is the NBD URI of the export.
func (s *StorageDaemon) URI() string { return "nbd+unix:///" + s.Export + "?socket=" + s.NBDSocket }

// Close closes the QMP connection and stops the daemon by PID (SIGTERM:
// qemu-storage-daemon then closes its images cleanly). Only the first call
// does anything.
func (s *StorageDaemon) Close() error {
	if s.closed {
		return nil
	}
	s.closed = true
	if s.QMP != nil {
		s.QMP.Close()
	}
	err := s.Proc.Stop(10 * time.Second)
	s.traceFile.Close()
	return err
}
