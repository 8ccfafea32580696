package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/qcdp/qcdp/shipper"
	"github.com/qcdp/qcdp/shipper/sender"
	"github.com/qcdp/qcdp/shipper/spool"
	"github.com/qcdp/qcdp/stream"
	"github.com/qcdp/qcdp/vfs"
)

// The host side of an ingest run (spool reader, zstd, TLS client) runs in
// a child process, so that the CPU time of the bench process is the
// replica's alone. The bench re-executes itself as
//
//	bench -role ingest-sender -spool DIR -group G -addr HOST:PORT -ca F -cert F -key F [-raw]
//
// and the two talk in lines. The child opens the pre-filled spool and
// prints "ready <last seq>"; on "go" from its stdin it starts a
// sender.Sender; once the spool holds every record as acknowledged (the
// replica has them durably) it prints "done <frame bytes sent> <record
// bytes in them>", waits for its stdin to close and exits 0. The bench
// kills it by its PID if the run fails or its context ends, and the kernel
// kills it if the bench dies (Pdeathsig).

const roleIngestSender = "ingest-sender"

// runRole runs this process as the helper role (os.Args[2] after
// "-role") and returns its exit status.
func runRole(role string, args []string) int {
	if role != roleIngestSender {
		fmt.Fprintf(os.Stderr, "bench: unknown role %q\n", role)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := ingestSender(ctx, args, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "bench %s: %v\n", role, err)
		return 1
	}
	return 0
}

// ingestSender is the child's side of the conversation.
func ingestSender(ctx context.Context, args []string, in io.Reader, out io.Writer) error {
	fl := flag.NewFlagSet(roleIngestSender, flag.ContinueOnError)
	dir := fl.String("spool", "", "the pre-filled spool directory")
	group := fl.String("group", "", "its protection group")
	addr := fl.String("addr", "", "the replica, host:port")
	ca := fl.String("ca", "", "CA certificate, PEM")
	cert := fl.String("cert", "", "host certificate, PEM")
	key := fl.String("key", "", "host key, PEM")
	raw := fl.Bool("raw", false, "send batches uncompressed")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() != 0 || *dir == "" || *group == "" || *addr == "" {
		return errors.New("need -spool, -group and -addr, and nothing more")
	}
	host, _, err := net.SplitHostPort(*addr)
	if err != nil {
		return err
	}
	tlsCfg, err := stream.LoadClientTLS(*ca, *cert, *key, host)
	if err != nil {
		return err
	}
	removed := make(chan struct{}, 1)
	g, err := shipper.OpenGroup(ctx, shipper.GroupOptions{
		Spool:   spool.Options{Dir: *dir, Group: *group, FS: removals{vfs.Default, removed}, Logger: quietLog},
		Replica: &sender.Options{Addr: *addr, TLS: tlsCfg, Host: "bench-host", NoCompress: *raw, Logger: quietLog},
		Logger:  quietLog,
	})
	if err != nil {
		return err
	}
	defer g.Shutdown(context.Background())
	sp := g.Spool()
	last := sp.LastSeq()
	if _, err := fmt.Fprintf(out, "ready %d\n", last); err != nil {
		return err
	}
	lines := bufio.NewReader(in)
	if line, err := lines.ReadString('\n'); err != nil {
		return fmt.Errorf("waiting for go: %w", err)
	} else if line != "go\n" {
		return fmt.Errorf("waiting for go: read %q", line)
	}

	ctx, cancel := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() { ran <- g.Serve(ctx) }()
	defer func() { cancel(); <-ran }()
	// The spool removes its last segment only once every record is
	// acknowledged, after it has recorded the ack: each removal is the
	// moment to look again.
	for sp.Acked() < last {
		select {
		case <-removed:
		case err := <-ran:
			ran <- err // for the deferred receive
			return fmt.Errorf("sender stopped at acked seq %d of %d: %w", sp.Acked(), last, err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	st := g.Sender().Stats()
	if _, err := fmt.Fprintf(out, "done %d %d\n", st.BytesSent, st.BytesRaw); err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, lines) // until the bench closes our stdin
	return err
}

// removals is a filesystem that signals (without blocking) after each
// removal of a file.
type removals struct {
	vfs.FS
	removed chan<- struct{}
}

func (r removals) Remove(name string) error {
	err := r.FS.Remove(name)
	select {
	case r.removed <- struct{}{}:
	default: // a signal is pending already
	}
	return err
}

// senderProc is the bench's handle on a child running as ingest-sender.
type senderProc struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Reader
	stderr bytes.Buffer

	done    chan senderDone // the "done" line, or why none came; one value after begin
	pending bool            // begin was called and done not yet received
	waited  bool
}

// senderDone is what the child reported when the replica had everything.
type senderDone struct {
	sent, raw int64 // sender.Stats BytesSent and BytesRaw
	err       error
}

// errSenderLost says the child ended, or said something else, before its
// "done" line.
var errSenderLost = errors.New("bench: the ingest sender process ended before the replica acknowledged everything")

// startSenderProc starts this executable as ingest-sender with args. ctx
// ending kills it.
func startSenderProc(ctx context.Context, args []string) (*senderProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("ingest sender: %w", err)
	}
	cmd := exec.CommandContext(ctx, exe, append([]string{"-role", roleIngestSender}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	c := &senderProc{cmd: cmd, done: make(chan senderDone, 1)}
	cmd.Stderr = &c.stderr
	if c.in, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		c.in.Close()
		return nil, err
	}
	c.out = bufio.NewReader(out)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("ingest sender: start %s: %w", exe, err)
	}
	return c, nil
}

func (c *senderProc) pid() int { return c.cmd.Process.Pid }

// ready waits for the child's "ready" line and returns the last seq of
// its spool.
func (c *senderProc) ready() (uint64, error) {
	line, err := c.out.ReadString('\n')
	var last uint64
	if err == nil {
		_, err = fmt.Sscanf(line, "ready %d\n", &last)
	}
	if err != nil {
		return 0, c.fail(fmt.Errorf("ingest sender: waiting for ready, read %q: %w", line, err))
	}
	return last, nil
}

// begin tells the child to send. Its "done" line, or errSenderLost,
// arrives on c.done; on errSenderLost, lost is called with it too.
func (c *senderProc) begin(lost context.CancelCauseFunc) error {
	if _, err := io.WriteString(c.in, "go\n"); err != nil {
		return c.fail(fmt.Errorf("ingest sender: %w", err))
	}
	c.pending = true
	go func() {
		var d senderDone
		line, err := c.out.ReadString('\n')
		if err == nil {
			_, err = fmt.Sscanf(line, "done %d %d\n", &d.sent, &d.raw)
		}
		if err != nil {
			d.err = fmt.Errorf("%w (read %q: %v)", errSenderLost, line, err)
			lost(d.err)
		}
		c.done <- d
	}()
	return nil
}

// result waits for what begin's reader got.
func (c *senderProc) result() senderDone {
	c.pending = false
	return <-c.done
}

// finish lets the child exit by closing its stdin and waits for it.
func (c *senderProc) finish() error {
	c.in.Close()
	return c.wait()
}

// fail stops the child and adds how it ended to err.
func (c *senderProc) fail(err error) error {
	if serr := c.stop(); serr != nil {
		return fmt.Errorf("%w; %w", err, serr)
	}
	return err
}

// stop kills the child by its PID unless it was waited for already, waits
// for it and returns how it ended, with what it wrote to stderr.
func (c *senderProc) stop() error {
	if c.waited {
		return nil
	}
	c.cmd.Process.Kill()
	if c.pending {
		c.result()
	}
	return c.wait()
}

func (c *senderProc) wait() error {
	c.waited = true
	err := c.cmd.Wait()
	if err == nil {
		return nil
	}
	if msg := bytes.TrimSpace(c.stderr.Bytes()); len(msg) > 0 {
		return fmt.Errorf("ingest sender pid %d: %w: %s", c.pid(), err, msg)
	}
	return fmt.Errorf("ingest sender pid %d: %w", c.pid(), err)
}
