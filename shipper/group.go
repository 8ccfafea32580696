package shipper

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/qcdp/qcdp/nbd"
	"github.com/qcdp/qcdp/proc"
	"github.com/qcdp/qcdp/shipper/sender"
	"github.com/qcdp/qcdp/shipper/spool"
)

// ErrGroupClosed is what Serve returns after Shutdown.
var ErrGroupClosed = errors.New("shipper: group closed")

// GroupOptions configure one protection group on the protected host.
type GroupOptions struct {
	// Spool is where the group's writes are kept until the replica holds
	// them. Its Group is the group's name.
	Spool spool.Options
	// Socket is the unix socket the capture NBD server listens on; empty
	// means no server (the caller writes into the exports itself).
	Socket string
	// SocketMode and SocketGID say who may connect: the socket is given
	// to group SocketGID with SocketMode, or to root alone (the group bits
	// cleared) when SocketGID is negative. A zero SocketMode means 0660.
	SocketMode os.FileMode
	SocketGID  int
	// Replica, when not nil, ships the spool: the sender's options, its
	// Spool filled in by the group. Nil means the spool only grows until
	// something else acknowledges it.
	Replica *sender.Options
	Logger  *slog.Logger
	// HealMinBackoff and HealMaxBackoff bound the wait between attempts
	// to reopen a broken spool (defaults DefaultHealMinBackoff and
	// DefaultHealMaxBackoff); see Serve.
	HealMinBackoff, HealMaxBackoff time.Duration
}

// Group is one protection group on the protected host: its spool, its
// sequencer (one seq order across the group's disks), the NBD server QEMU's
// write-blocking mirror writes into, and the sender that ships the spool
// to the replica. The host engine, `qcdp capture`, the benchmarks and the
// tests all use it; nothing else wires these four together.
//
// OpenGroup opens the spool and listens; Serve runs the capture server and
// the sender, and heals a broken spool, until ctx ends or Shutdown is
// called; Shutdown stops both and closes the spool. Exports may be added
// before or while Serve runs.
type Group struct {
	name    string
	opts    GroupOptions
	log     *slog.Logger
	seq     *Sequencer
	cat     nbd.Exports
	srv     *nbd.Server     // nil without a socket
	ln      net.Listener    // nil without a socket
	sndOpts *sender.Options // nil without a replica; Spool set per spool

	// hmu guards what healing replaces: the spool, its sender, and the
	// group's health.
	hmu       sync.Mutex
	sp        *spool.Spool
	snd       *sender.Sender
	health    Health
	reopening bool // sp is closed: a broken spool is being reopened

	mu       sync.Mutex
	served   bool
	closing  chan struct{} // closed by Shutdown
	serveEnd chan struct{} // closed when Serve has returned
	shutDone chan struct{} // closed when the first Shutdown has set closeErr
	closed   bool
	closeErr error
}

// OpenGroup opens the group's spool, makes its sequencer and sender, and
// listens on its socket (a stale socket file nobody serves is replaced; a
// live one is refused). Nothing is served until Serve.
func OpenGroup(ctx context.Context, opts GroupOptions) (*Group, error) {
	name := opts.Spool.Group
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	log := opts.Logger.With("group", name)
	if opts.Spool.Logger == nil {
		opts.Spool.Logger = log
	}
	sp, err := spool.Open(ctx, opts.Spool)
	if err != nil {
		return nil, fmt.Errorf("group %s: %w", name, err)
	}
	g := &Group{name: name, opts: opts, log: log, sp: sp, seq: NewSequencer(sp),
		health:  Health{State: StateOK},
		closing: make(chan struct{}), serveEnd: make(chan struct{}), shutDone: make(chan struct{})}
	g.seq.SetLogger(log)
	if opts.Replica != nil {
		so := *opts.Replica
		if so.Logger == nil {
			so.Logger = log
		}
		g.sndOpts = &so
		if g.snd, err = g.newSender(sp); err != nil {
			sp.Close()
			return nil, fmt.Errorf("group %s: %w", name, err)
		}
	}
	if opts.Socket != "" {
		if g.ln, err = ListenUnix(opts.Socket); err != nil {
			sp.Close()
			return nil, fmt.Errorf("group %s: %w", name, err)
		}
		mode := opts.SocketMode
		if mode == 0 {
			mode = 0o660
		}
		if err := Restrict(opts.Socket, mode, opts.SocketGID); err != nil {
			g.ln.Close()
			sp.Close()
			return nil, fmt.Errorf("group %s: %w", name, err)
		}
		g.srv = nbd.NewServer(&g.cat, nbd.Options{Logger: log})
	}
	return g, nil
}

// ListenUnix listens on path, replacing a stale socket file that nobody
// serves any more but refusing to take over a live one.
func ListenUnix(path string) (net.Listener, error) {
	if _, err := os.Lstat(path); err == nil {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("socket %s is in use by another server", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	return ln, nil
}

// Restrict gives path to root and group gid with mode, or to root alone
// (the group bits cleared) when gid is negative: whoever can connect to a
// capture socket can write into the group's exports that have no owner
// (see CaptureExport).
func Restrict(path string, mode os.FileMode, gid int) error {
	if gid < 0 {
		mode &^= 0o070
	} else if err := os.Chown(path, 0, gid); err != nil {
		return fmt.Errorf("give %s to group %d: %w", path, gid, err)
	}
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	return nil
}

// Name is the group's name.
func (g *Group) Name() string { return g.name }

// Socket is the capture server's socket ("" without one).
func (g *Group) Socket() string { return g.opts.Socket }

// Spool is the group's spool now: healing replaces a broken one (see
// Serve), so callers ask again rather than keep it.
func (g *Group) Spool() *spool.Spool {
	g.hmu.Lock()
	defer g.hmu.Unlock()
	return g.sp
}

// Sequencer is the group's sequencer: markers go through it.
func (g *Group) Sequencer() *Sequencer { return g.seq }

// Sender is the group's sender now, nil without a replica: healing
// replaces it with the spool it ships.
func (g *Group) Sender() *sender.Sender {
	g.hmu.Lock()
	defer g.hmu.Unlock()
	return g.snd
}

// ServerStats are the capture server's figures (zero without a server).
func (g *Group) ServerStats() nbd.Stats {
	if g.srv == nil {
		return nbd.Stats{}
	}
	return g.srv.Stats()
}

// Export returns the capture export of disk, served under its name. One
// made earlier with the same size is kept (so a VM restart keeps its
// export); one of another size is replaced. A new export opens to any
// process the socket admits (`qcdp capture`, tests); one kept keeps its
// owner. The host engine uses OwnedExport.
func (g *Group) Export(disk string, size int64) (*CaptureExport, error) {
	return g.export(disk, size, nil)
}

// OwnedExport is Export for one process: the export, new or kept, opens
// only to owner, the QEMU that writes the disk (see CaptureExport.SetOwner).
// A new export has its owner before it is published: no other process can
// open it first.
func (g *Group) OwnedExport(disk string, size int64, owner proc.Process) (*CaptureExport, error) {
	return g.export(disk, size, &owner)
}

func (g *Group) export(disk string, size int64, owner *proc.Process) (*CaptureExport, error) {
	g.mu.Lock() // one export per name, even when two callers race
	defer g.mu.Unlock()
	if e, ok := g.cat.Lookup(disk); ok {
		if ce := e.(*CaptureExport); ce.Size() == size {
			if owner != nil {
				ce.SetOwner(*owner)
			}
			return ce, nil
		}
	}
	exp, err := g.seq.Export(disk, size)
	if err != nil {
		return nil, fmt.Errorf("group %s: %w", g.name, err)
	}
	if owner != nil {
		exp.SetOwner(*owner)
	}
	g.cat.Add(disk, exp)
	return exp, nil
}

// Exports are the names of the disks exported now.
func (g *Group) Exports() []string { return g.cat.Names() }

// Serve runs the capture server and the sender until ctx ends (it returns
// nil) or Shutdown is called (ErrGroupClosed). A capture server that fails
// ends it with that error. Serve runs once.
//
// Serve also heals the group when its spool breaks (an fsync or a write
// failed, so what is on disk is unknown: see package spool). Meanwhile the
// capture exports answer every write EIO at once, so QEMU's mirror stops
// and QEMU keeps tracking the changes, and each disk owes the stream a
// resync bracket; the sender stops. Serve closes the broken spool and
// opens its directory again (recovery finds what is really on disk), at
// once and then with backoff between HealMinBackoff and HealMaxBackoff
// while that fails; the sequencer then appends to the reopened spool, a
// new sender ships it, and the disks' resync re-copies what was refused.
// Health says where it stands.
func (g *Group) Serve(ctx context.Context) error {
	g.mu.Lock()
	if g.served || g.closed {
		g.mu.Unlock()
		return fmt.Errorf("group %s: %w", g.name, ErrGroupClosed)
	}
	g.served = true
	g.mu.Unlock()
	defer close(g.serveEnd)

	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	served := make(chan error, 1)
	if g.srv != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			served <- g.srv.Serve(g.ln)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		g.keep(sctx)
	}()
	var err error
	select {
	case <-ctx.Done():
	case <-g.closing:
		err = ErrGroupClosed
	case serr := <-served:
		err = fmt.Errorf("group %s: capture server on %s: %w", g.name, g.opts.Socket, serr)
	}
	cancel()
	if g.srv != nil {
		// Shutdown waits for its own context; a closed one stops the
		// connections at once, which is what leaving Serve means.
		dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
		if serr := g.srv.Shutdown(dctx); serr != nil && !errors.Is(serr, context.DeadlineExceeded) {
			g.log.Warn("capture server shutdown", "err", serr)
		}
		dcancel()
	}
	wg.Wait()
	return err
}

// Shutdown ends Serve (waiting for it) and then syncs and closes the
// spool and removes the socket. It may be called without Serve; a second
// call returns the first one's result.
func (g *Group) Shutdown(ctx context.Context) error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		<-g.shutDone // the first call's result, once it has one
		return g.closeErr
	}
	g.closed = true
	served := g.served
	close(g.closing)
	g.mu.Unlock()
	defer close(g.shutDone)

	var errs []error
	if served {
		select {
		case <-g.serveEnd:
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("group %s: waiting for the capture server: %w", g.name, ctx.Err()))
			<-g.serveEnd // Serve's own bound (10 s) ends it
		}
	} else if g.ln != nil {
		g.ln.Close()
	}
	if g.ln != nil {
		os.Remove(g.opts.Socket)
	}
	g.hmu.Lock()
	sp, reopening, health := g.sp, g.reopening, g.health
	g.hmu.Unlock()
	if reopening {
		// Serve has ended: nothing reopens it now; it is closed already.
		errs = append(errs, fmt.Errorf("group %s: shut down while its broken spool was being reopened: %s", g.name, health.Error))
	} else {
		if err := sp.Sync(ctx); err != nil {
			errs = append(errs, fmt.Errorf("group %s: final spool sync: %w", g.name, err))
		}
		if err := sp.Close(); err != nil {
			errs = append(errs, fmt.Errorf("group %s: spool close: %w", g.name, err))
		}
	}
	g.closeErr = errors.Join(errs...)
	return g.closeErr
}
