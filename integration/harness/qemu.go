package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/qmp"
)

// Disk is a source disk given to QEMU: a format node named Name on a file
// node named Name+"-file".
type Disk struct {
	Name   string // format node name, e.g. "disk0"
	Path   string
	Format string // "qcow2" or "raw"
}

// Options configure Launch.
type Options struct {
	Dir    string // socket, log and trace go here
	Disks  []Disk
	Paused bool // start with -S
	// Machine is QEMU's -M; default "none" (no devices, no guest). Disks
	// that a hypervisor source must find need devices: use "pc".
	Machine string
	Extra   []string // more arguments
}

// QEMU is a running qemu-system-x86_64 without a guest: -M none, TCG.
type QEMU struct {
	*Proc
	QMP        *qmp.Client
	SocketPath string
	TracePath  string
	trace      *lockedFile

	ioMu      sync.Mutex  // one qemu-io command at a time
	ioResults chan string // qemu-io result lines read from QEMU's stdout

	closeOnce sync.Once
	closeErr  error
}

// lockedFile serializes the QMP trace lines of several goroutines.
type lockedFile struct {
	mu sync.Mutex
	f  *os.File
}

func (l *lockedFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Write(p)
}

// Args returns QEMU's command line for opts. QEMU runs under `stdbuf -oL`:
// HMP qemu-io prints its results on QEMU's stdout, which must reach the
// harness line by line.
func (o Options) Args(socket string) []string {
	machine := o.Machine
	if machine == "" {
		machine = "none"
	}
	args := []string{"stdbuf", "-oL", "qemu-system-x86_64", "-M", machine, "-accel", "tcg", "-nodefaults", "-display", "none",
		"-qmp", "unix:" + socket + ",server=on,wait=off"}
	if o.Paused {
		args = append(args, "-S")
	}
	for _, d := range o.Disks {
		args = append(args,
			"-blockdev", fmt.Sprintf("driver=file,node-name=%s-file,filename=%s", d.Name, d.Path),
			"-blockdev", fmt.Sprintf("driver=%s,node-name=%s,file=%s-file", d.Format, d.Name, d.Name))
	}
	return append(args, o.Extra...)
}

// Launch starts QEMU and connects to its QMP socket.
func Launch(ctx context.Context, opts Options) (*QEMU, error) {
	if strings.ContainsAny(opts.Dir, ",") {
		return nil, fmt.Errorf("harness: QEMU dir %q has a comma", opts.Dir)
	}
	q := &QEMU{SocketPath: filepath.Join(opts.Dir, "qmp.sock"), TracePath: filepath.Join(opts.Dir, "qmp-trace.log")}
	f, err := os.Create(q.TracePath)
	if err != nil {
		return nil, fmt.Errorf("harness: QMP trace: %w", err)
	}
	q.trace = &lockedFile{f: f}
	q.ioResults = make(chan string, 1024)
	q.Proc, err = startProc(opts.Dir, "qemu", q.onStdout, opts.Args(q.SocketPath))
	if err != nil {
		f.Close()
		return nil, err
	}
	if err := WaitSocket(ctx, q.SocketPath, q.Proc); err != nil {
		q.Close()
		return nil, err
	}
	q.QMP, err = qmp.Dial(ctx, q.SocketPath, qmp.WithTrace(q.trace))
	if err != nil {
		q.Close()
		return nil, fmt.Errorf("harness: QEMU (pid %d): %w", q.PID(), err)
	}
	return q, nil
}

// Close asks QEMU to quit, so it closes its images cleanly, then stops the
// process by PID if it did not end. Later calls return the first's result.
func (q *QEMU) Close() error {
	q.closeOnce.Do(func() { q.closeErr = q.close() })
	return q.closeErr
}

func (q *QEMU) close() error {
	var errs []error
	if q.QMP != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := q.QMP.Execute(ctx, "quit", nil, nil)
		cancel()
		if err != nil && !errors.Is(err, qmp.ErrClosed) {
			errs = append(errs, err)
		}
		if err == nil {
			select {
			case <-q.Exited():
			case <-time.After(10 * time.Second):
			}
		}
		q.QMP.Close()
	}
	if q.Proc != nil {
		errs = append(errs, q.Stop(5*time.Second))
	}
	q.trace.f.Close()
	return errors.Join(errs...)
}

// Report says where to look when something went wrong: QEMU's log and the
// QMP trace, with their last lines.
func (q *QEMU) Report() string {
	trace, err := os.ReadFile(q.TracePath)
	t := tail(string(trace), 40)
	if err != nil {
		t = err.Error()
	}
	return fmt.Sprintf("%s\n--- QMP trace %s:\n%s", q.Proc.Report(), q.TracePath, t)
}

// Start launches QEMU for a test; t.Cleanup quits it and, if the test
// failed, prints its log and QMP trace.
func Start(ctx context.Context, t testing.TB, opts Options) *QEMU {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = TempDir(t)
	}
	q, err := Launch(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := q.Close(); err != nil {
			t.Errorf("stop QEMU: %v", err)
		}
		if t.Failed() {
			t.Log(q.Report())
		}
	})
	return q
}
