package nbd

import (
	"context"
	"log/slog"
	"sort"
	"sync"

	"github.com/qcdp/qcdp/proc"
)

// Export is one disk the server can serve. What a connection may do with it
// is decided by which of the optional interfaces below it also implements:
// an export without Writer is served read-only.
type Export interface {
	// Size is the export size in bytes; it must not change while served.
	Size() int64
}

// Reader serves NBD_CMD_READ. p is fully owned by the call; the export fills
// all of it or returns an error.
type Reader interface {
	ReadAt(ctx context.Context, p []byte, off int64) error
}

// Writer serves NBD_CMD_WRITE. The server calls WriteAt on the connection's
// request loop, in the order the requests arrived, so an export that keeps a
// log sees the client's order. It must therefore never block for long; the
// server owns p only until WriteAt returns.
type Writer interface {
	WriteAt(ctx context.Context, p []byte, off int64) error
}

// ZeroFlags are the client's wishes for NBD_CMD_WRITE_ZEROES.
type ZeroFlags struct {
	NoHole bool // NBD_CMD_FLAG_NO_HOLE: the range must stay allocated
	Fast   bool // NBD_CMD_FLAG_FAST_ZERO: fail with ErrNotSupported unless cheap
}

// Zeroer serves NBD_CMD_WRITE_ZEROES, called like WriteAt on the request loop.
type Zeroer interface {
	Zero(ctx context.Context, off, length int64, flags ZeroFlags) error
}

// Trimmer serves NBD_CMD_TRIM, called like WriteAt on the request loop.
type Trimmer interface {
	Trim(ctx context.Context, off, length int64) error
}

// Flusher serves NBD_CMD_FLUSH and the durability half of NBD_CMD_FLAG_FUA.
// A flush must cover every write any connection to the export has seen
// acknowledged (the server advertises NBD_FLAG_CAN_MULTI_CONN).
type Flusher interface {
	Flush(ctx context.Context) error
}

// Extent is a run of an export with the same allocation status.
type Extent struct {
	Length int64
	Hole   bool // NBD_STATE_HOLE: not allocated
	Zero   bool // NBD_STATE_ZERO: reads as zeroes
}

// Extenter serves NBD_CMD_BLOCK_STATUS for the base:allocation context. It
// returns extents covering [off, off+length) from off on, in order; it may
// stop early but must return at least one extent of non-zero length.
type Extenter interface {
	Extents(ctx context.Context, off, length int64) ([]Extent, error)
}

// Peer is who is at the other end of a connection.
type Peer struct {
	Addr string // the remote address, as net.Conn says
	// Cred is the process that connected and its user and group, as the
	// kernel recorded them (SO_PEERCRED) and read when the server accepted
	// the connection. HasCred is false when the kernel does not say: a
	// transport other than a unix socket.
	Cred    proc.Cred
	HasCred bool
}

// LogValue implements slog.LogValuer.
func (p Peer) LogValue() slog.Value {
	if !p.HasCred {
		return slog.GroupValue(slog.String("addr", p.Addr), slog.Bool("cred", false))
	}
	return slog.GroupValue(slog.Int("pid", p.Cred.PID), slog.Uint64("start", p.Cred.Start),
		slog.Uint64("uid", uint64(p.Cred.UID)), slog.Uint64("gid", uint64(p.Cred.GID)))
}

// Authorizer is an Export that decides who may open it. The server asks
// Allow before it opens the export (NBD_OPT_GO, NBD_OPT_EXPORT_NAME) or
// tells anything about it (NBD_OPT_INFO, the meta context options), and
// leaves the export out of NBD_OPT_LIST for a peer it refuses. A refused
// option is answered as for a missing export, NBD_REP_ERR_UNKNOWN with the
// same text, so refusals do not reveal names (NBD_OPT_EXPORT_NAME, which cannot
// carry an error, closes the connection), and the server logs who was
// refused and Allow's error. An export without Allow is open to whoever can
// connect. Allow must be quick: it runs during negotiation.
type Authorizer interface {
	Allow(p Peer) error
}

// Catalog is where the server finds exports by name. Lookup is called once
// per NBD_OPT_GO, NBD_OPT_INFO or NBD_OPT_EXPORT_NAME, and for each name
// NBD_OPT_LIST would show (to ask an Authorizer).
type Catalog interface {
	Lookup(name string) (Export, bool)
	Names() []string
}

// Exports is a Catalog safe for concurrent use that the caller fills.
type Exports struct {
	mu sync.RWMutex
	m  map[string]Export
}

// Add publishes e under name, replacing any export of that name. Connections
// already open keep the export they negotiated.
func (c *Exports) Add(name string, e Export) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]Export)
	}
	c.m[name] = e
}

// Remove withdraws name from new negotiations.
func (c *Exports) Remove(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, name)
}

// Lookup implements Catalog.
func (c *Exports) Lookup(name string) (Export, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	e, ok := c.m[name]
	return e, ok
}

// Names implements Catalog, sorted.
func (c *Exports) Names() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	names := make([]string, 0, len(c.m))
	for n := range c.m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
