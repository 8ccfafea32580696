package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/nbd"
	"github.com/qcdp/qcdp/replica/journal"
	"github.com/qcdp/qcdp/replica/receiver"
	"github.com/qcdp/qcdp/stream"
	"github.com/qcdp/qcdp/vfs"
)

// compactEvery is how often retention runs over every open journal.
const compactEvery = time.Minute

// Sentinel errors of the control API.
var (
	ErrUnknownGroup  = errors.New("replica: no such group")
	ErrUnknownExport = errors.New("replica: no such export")
	ErrOwnedExport   = errors.New("replica: the export belongs to a failover")
)

// Site is the recovery site engine.
type Site struct {
	cfg *configs.Replica
	log *slog.Logger

	recv     *receiver.Server
	recvLn   net.Listener
	recvDone chan error

	nbdSrv  *nbd.Server
	nbdDone chan error
	exports nbd.Exports

	mu       sync.Mutex
	journals map[string]*journal.Journal // by tenant/group
	// broken holds the groups whose journal is corrupt: quarantined, no
	// stream is taken and no view served, until an operator repairs them.
	broken  map[string]error
	opening map[string]chan struct{} // journals being opened, by tenant/group
	closed  bool                     // Serve is tearing down: no new view or journal
	views   map[string]*export       // by export id
	nextID  int
	// fences holds the groups that failed over (package failover), by
	// tenant/group: their streams and hash queries are refused.
	fences map[string]string
	// standby are the NBD servers of standbys' sockets (ListenNBD); Serve
	// shuts them down with its own.
	standby map[*nbd.Server]struct{}

	// hcache keeps the block hashes of hash queries (hashcache.go).
	hcache hashCache

	// creating serialises the creation of journals, so that two new groups
	// of a tenant cannot both take its last place under max_groups.
	creating sync.Mutex

	wg sync.WaitGroup
}

// export is one exported point-in-time view: an NBD export per disk.
type export struct {
	ID       string
	Tenant   string
	Group    string
	Point    journal.Point
	Writable bool
	Disks    map[string]string // disk → NBD export name
	// owned: made by ExportAs for a failover's standbys, withdrawn only
	// by it (Withdraw), never by `qcdp unexport`.
	owned   bool
	view    *journal.View
	closers []func() error
}

// New loads TLS, opens the journals already on disk and starts listening:
// the stream port, the NBD socket of views. Serve starts the work.
func New(ctx context.Context, cfg *configs.Replica, log *slog.Logger) (*Site, error) {
	tlsCfg, err := stream.LoadServerTLS(cfg.CA, cfg.Cert, cfg.Key)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.StorageRoot, 0o750); err != nil {
		return nil, fmt.Errorf("replica: storage root: %w", err)
	}
	d := &Site{cfg: cfg, log: log, journals: map[string]*journal.Journal{}, broken: map[string]error{},
		opening: map[string]chan struct{}{}, views: map[string]*export{}, fences: map[string]string{}, standby: map[*nbd.Server]struct{}{}}
	if err := d.openExisting(ctx); err != nil {
		d.closeJournals()
		return nil, err
	}
	d.recv = &receiver.Server{
		TLS: tlsCfg, Config: cfg, Logger: log, MaxInflight: cfg.MaxInflight,
		MaxStreams: func(tenant string) int { return cfg.LimitsFor(tenant).MaxStreams },
		Hasher:     d.hashes,
		Fenced:     d.fenced,
		OpenJournal: func(ctx context.Context, tenant, group string) (receiver.Journal, error) {
			j, err := d.journalOrNew(ctx, tenant, group)
			if err != nil {
				return nil, err
			}
			return &shared{d: d, key: tenant + "/" + group, Journal: j}, nil
		},
	}
	if d.recvLn, err = net.Listen("tcp", cfg.Listen); err != nil {
		d.closeJournals()
		return nil, fmt.Errorf("replica: listen %s: %w", cfg.Listen, err)
	}
	os.MkdirAll(filepath.Dir(cfg.NBDSocket), 0o755)
	os.Remove(cfg.NBDSocket)
	nbdLn, err := net.Listen("unix", cfg.NBDSocket)
	if err != nil {
		d.recvLn.Close()
		d.closeJournals()
		return nil, fmt.Errorf("replica: NBD socket: %w", err)
	}
	os.Chmod(cfg.NBDSocket, 0o660)
	d.nbdSrv = nbd.NewServer(&d.exports, nbd.Options{Logger: log.With("part", "views")})
	d.recvDone, d.nbdDone = make(chan error, 1), make(chan error, 1)
	go func() { d.nbdDone <- d.nbdSrv.Serve(nbdLn) }()
	return d, nil
}

// Addr is the stream listener's address.
func (d *Site) Addr() net.Addr { return d.recvLn.Addr() }

// shared is the receiver's handle on a journal the daemon shares with the
// views: closing it (the receiver does after a failed write, to reopen)
// drops the journal from the daemon, which reopens it on next use.
type shared struct {
	d   *Site
	key string
	*journal.Journal
}

func (s *shared) Close() error {
	d := s.d
	d.mu.Lock()
	if d.journals[s.key] != s.Journal {
		d.mu.Unlock()
		return nil
	}
	delete(d.journals, s.key)
	var gone []*export
	for id, e := range d.views {
		if e.Tenant+"/"+e.Group == s.key {
			gone = append(gone, e)
			delete(d.views, id)
		}
	}
	d.mu.Unlock()
	// Views of a journal that is closed could only fail: withdraw them,
	// visibly, before it goes.
	for _, e := range gone {
		d.log.Warn("export withdrawn: its journal is being closed", "id", e.ID, "group", s.key)
		e.close()
	}
	return s.Journal.Close()
}

// openExisting opens the journals of the configured tenants found on disk.
func (d *Site) openExisting(ctx context.Context) error {
	for _, t := range d.cfg.Tenants {
		entries, err := os.ReadDir(filepath.Join(d.cfg.StorageRoot, t.Name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("replica: %w", err)
		}
		for _, e := range entries {
			if !e.IsDir() || configs.ValidName(e.Name()) != nil {
				continue
			}
			if _, err := d.journal(ctx, t.Name, e.Name()); err != nil {
				if !errors.Is(err, journal.ErrCorrupt) {
					return err
				}
				d.log.Error("journal quarantined: corrupt; its group takes no stream and serves no view",
					"tenant", t.Name, "group", e.Name(), "err", err)
			}
		}
	}
	return nil
}

// journal returns the open journal of a tenant's group, opening it.
// It opens each journal once, outside the daemon's lock: a recovery scan
// of one group must not hold up the others.
func (d *Site) journal(ctx context.Context, tenant, group string) (*journal.Journal, error) {
	key := tenant + "/" + group
	dir, err := d.cfg.JournalDir(tenant, group) // checks both names
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	for {
		if d.closed {
			d.mu.Unlock()
			return nil, errStopping
		}
		if j, ok := d.journals[key]; ok {
			d.mu.Unlock()
			return j, nil
		}
		if err, ok := d.broken[key]; ok {
			d.mu.Unlock()
			return nil, err
		}
		wait, busy := d.opening[key]
		if !busy {
			break
		}
		d.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		d.mu.Lock()
	}
	done := make(chan struct{})
	d.opening[key] = done
	d.mu.Unlock()
	j, err := journal.Open(ctx, journal.Options{
		Dir: dir, Group: group, Retention: Retention(d.cfg.RetentionFor(tenant)),
		Logger: d.log.With("tenant", tenant, "group", group),
	})
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.opening, key)
	close(done)
	if err != nil {
		err = fmt.Errorf("group %s: %w", key, err)
		if errors.Is(err, journal.ErrCorrupt) {
			d.broken[key] = err
		}
		return nil, err
	}
	if d.closed {
		j.Close()
		return nil, errStopping
	}
	d.journals[key] = j
	return j, nil
}

// journalOrNew returns the journal of a tenant's group, creating it if
// the tenant has fewer journals than its max_groups; else the error wraps
// receiver.ErrLimit.
func (d *Site) journalOrNew(ctx context.Context, tenant, group string) (*journal.Journal, error) {
	dir, err := d.cfg.JournalDir(tenant, group) // checks both names
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		return d.journal(ctx, tenant, group)
	}
	d.creating.Lock()
	defer d.creating.Unlock()
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		n, err := d.groupsOnDisk(tenant)
		if err != nil {
			return nil, err
		}
		if limit := d.cfg.LimitsFor(tenant).MaxGroups; n >= limit {
			return nil, fmt.Errorf("%w: tenant %q has %d groups at the replica, its max_groups is %d: group %q would be one more",
				receiver.ErrLimit, tenant, n, limit, group)
		}
	}
	return d.journal(ctx, tenant, group)
}

// groupsOnDisk counts the journals of a tenant in the storage root, as
// openExisting finds them.
func (d *Site) groupsOnDisk(tenant string) (int, error) {
	entries, err := os.ReadDir(filepath.Join(d.cfg.StorageRoot, tenant))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("replica: %w", err)
	}
	n := 0
	for _, e := range entries {
		if e.IsDir() && configs.ValidName(e.Name()) == nil {
			n++
		}
	}
	return n, nil
}

// errStopping: the daemon is stopping.
var errStopping = errors.New("replica: stopping")

// existing returns a journal that exists on disk, without creating one.
func (d *Site) existing(ctx context.Context, tenant, group string) (*journal.Journal, error) {
	dir, err := d.cfg.JournalDir(tenant, group)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnknownGroup, err)
	}
	if _, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("%w: %s/%s has no journal", ErrUnknownGroup, tenant, group)
	}
	return d.journal(ctx, tenant, group)
}

// Retention converts the policy's retention into the journal's.
func Retention(r configs.Retention) journal.Retention {
	jr := journal.Retention{Window: r.Window, WindowBytes: r.WindowBytes, Bookmarks: r.Bookmarks}
	for _, s := range r.LongTerm {
		jr.Schedules = append(jr.Schedules, journal.Schedule{Every: s.Every, Keep: s.Keep})
	}
	return jr
}

// Serve receives streams and runs retention until ctx ends, then stops
// everything it started.
func (d *Site) Serve(ctx context.Context) error {
	go func() { d.recvDone <- d.recv.Serve(d.recvLn) }()
	cctx, stopCompact := context.WithCancel(ctx)
	defer stopCompact()
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.compactLoop(cctx)
	}()
	var err error
	select {
	case <-ctx.Done():
	case err = <-d.recvDone:
		d.recvDone <- nil
	}
	stopCompact()
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errs := []error{err, d.recv.Shutdown(sctx)}
	if rerr := <-d.recvDone; rerr != nil && !errors.Is(rerr, receiver.ErrServerClosed) {
		errs = append(errs, rerr)
	}
	errs = append(errs, d.nbdSrv.Shutdown(sctx))
	<-d.nbdDone
	d.mu.Lock()
	standby := make([]*nbd.Server, 0, len(d.standby))
	for srv := range d.standby {
		standby = append(standby, srv)
	}
	d.mu.Unlock()
	for _, srv := range standby {
		if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, nbd.ErrServerClosed) {
			errs = append(errs, err)
		}
	}
	os.Remove(d.cfg.NBDSocket)
	d.wg.Wait()
	d.mu.Lock()
	for id, e := range d.views {
		errs = append(errs, e.close())
		delete(d.views, id)
	}
	d.mu.Unlock()
	errs = append(errs, d.closeJournals())
	if errors.Is(errs[0], receiver.ErrServerClosed) {
		errs[0] = nil
	}
	return errors.Join(errs...)
}

func (d *Site) closeJournals() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for k, j := range d.journals {
		errs = append(errs, j.Close())
		delete(d.journals, k)
	}
	return errors.Join(errs...)
}

// compactLoop applies retention to every open journal on a timer.
func (d *Site) compactLoop(ctx context.Context) {
	t := time.NewTicker(compactEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			d.mu.Lock()
			js := make([]*journal.Journal, 0, len(d.journals))
			for _, j := range d.journals {
				js = append(js, j)
			}
			d.mu.Unlock()
			for _, j := range js {
				if err := j.Compact(ctx, now); err != nil && ctx.Err() == nil {
					d.log.Warn("retention", "group", j.Group(), "err", err)
				}
			}
		}
	}
}

// GroupInfo is one journal the replica holds.
type GroupInfo struct {
	Tenant  string         `json:"tenant"`
	Group   string         `json:"group"`
	LastSeq uint64         `json:"last_seq"`
	Window  journal.Window `json:"window"`
	Error   string         `json:"error,omitempty"` // why the group is quarantined, or takes no stream
	// Clock counts the capture times the receiver corrected: a host clock
	// that stepped back or runs ahead of this site's (see package receiver).
	Clock *receiver.ClockReport `json:"host_clock,omitempty"`
	// Spool is the host spool the journal is bound to (nil: none yet);
	// Refused the newest stream refused as diverged since the daemon
	// started: another spool, an older copy of this one, or one that lost
	// records the journal holds (see package receiver).
	Spool   *journal.Origin   `json:"spool,omitempty"`
	Refused *receiver.Refusal `json:"refused,omitempty"`
}

// Groups lists the open journals.
func (d *Site) Groups(ctx context.Context) ([]GroupInfo, error) {
	d.mu.Lock()
	keys := make([]string, 0, len(d.journals))
	js := map[string]*journal.Journal{}
	for k, j := range d.journals {
		keys = append(keys, k)
		js[k] = j
	}
	broken := map[string]error{}
	for k, err := range d.broken {
		broken[k] = err
	}
	d.mu.Unlock()
	sort.Strings(keys)
	var out []GroupInfo
	for k, err := range broken {
		tenant, group, _ := cutKey(k)
		out = append(out, GroupInfo{Tenant: tenant, Group: group, Error: err.Error()})
	}
	for _, k := range keys {
		_, w, err := js[k].Points(ctx)
		if err != nil {
			return nil, err
		}
		tenant, group, _ := cutKey(k)
		gi := GroupInfo{Tenant: tenant, Group: group, LastSeq: js[k].LastSeq(), Window: w}
		if c := d.recv.Clock(tenant, group); c != (receiver.ClockReport{}) {
			gi.Clock = &c
		}
		if o, bound, err := js[k].Origin(); err != nil {
			gi.Error = err.Error() // its streams are refused until the file is repaired
		} else if bound {
			gi.Spool = &o
		}
		if r, ok := d.recv.Refused(tenant, group); ok {
			gi.Refused = &r
		}
		out = append(out, gi)
	}
	return out, nil
}

func cutKey(k string) (string, string, bool) {
	i := len(k) - 1
	for i >= 0 && k[i] != '/' {
		i--
	}
	if i < 0 {
		return "", k, false
	}
	return k[:i], k[i+1:], true
}

// Points lists a group's restore points and window.
func (d *Site) Points(ctx context.Context, tenant, group string) ([]journal.Point, journal.Window, error) {
	j, err := d.existing(ctx, tenant, group)
	if err != nil {
		return nil, journal.Window{}, err
	}
	return j.Points(ctx)
}

// Export opens a view of a group at target and serves each of its disks
// over NBD, read-only or (writable) with writes kept in an overlay that
// never touches the journal. Nothing is copied.
func (d *Site) Export(ctx context.Context, tenant, group string, at journal.Target, writable bool) (ExportInfo, error) {
	e, err := d.export(ctx, "", tenant, group, at, writable)
	if err != nil {
		return ExportInfo{}, err
	}
	return d.info(e), nil
}

func (d *Site) export(ctx context.Context, id, tenant, group string, at journal.Target, writable bool) (*export, error) {
	j, err := d.existing(ctx, tenant, group)
	if err != nil {
		return nil, err
	}
	v, err := j.View(ctx, at) // its errors name the target
	if err != nil {
		return nil, fmt.Errorf("group %s/%s: %w", tenant, group, err)
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		v.Close()
		return nil, errStopping
	}
	if id == "" {
		d.nextID++
		// Names may hold dots, never a slash: "x7/vda" is unique.
		id = fmt.Sprintf("x%d", d.nextID)
	} else if _, taken := d.views[id]; taken {
		d.mu.Unlock()
		v.Close()
		return nil, fmt.Errorf("replica: export id %q is in use", id)
	}
	d.mu.Unlock()
	e := &export{ID: id, Tenant: tenant, Group: group, Point: v.Point(), Writable: writable,
		Disks: map[string]string{}, view: v}
	for _, disk := range v.Disks() {
		var exp nbd.Export
		if writable {
			o, err := v.Writable(disk)
			if err != nil {
				e.close()
				return nil, fmt.Errorf("writable view of %s: %w", disk, err)
			}
			exp = o // the view's Close deletes its overlays
		} else {
			dv, err := v.Disk(disk)
			if err != nil {
				e.close()
				return nil, fmt.Errorf("view of %s: %w", disk, err)
			}
			exp = dv
		}
		name := id + "/" + disk
		d.exports.Add(name, exp)
		e.Disks[disk] = name
		e.closers = append(e.closers, func() error { d.exports.Remove(name); return nil })
	}
	d.mu.Lock()
	d.views[id] = e
	d.mu.Unlock()
	d.log.Info("exported view", "id", id, "seq", e.Point.Seq, "writable", writable, "disks", len(e.Disks))
	return e, nil
}

// close withdraws the exports (last first) and closes the view.
func (e *export) close() error {
	var errs []error
	for i := len(e.closers) - 1; i >= 0; i-- {
		errs = append(errs, e.closers[i]())
	}
	errs = append(errs, e.view.Close())
	return errors.Join(errs...)
}

// Unexport withdraws an export and closes its view: connections still open
// get errors, and a writable view's overlay is deleted.
func (d *Site) Unexport(id string) error {
	d.mu.Lock()
	e, ok := d.views[id]
	if ok && e.owned {
		d.mu.Unlock()
		return fmt.Errorf("%w: %q is the view under the standbys of group %s/%s's failover: `qcdp failover undo` (or cleanup) withdraws it",
			ErrOwnedExport, id, e.Tenant, e.Group)
	}
	delete(d.views, id)
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownExport, id)
	}
	return e.close()
}

// Withdraw is Unexport for the owner of an export ExportAs made.
func (d *Site) Withdraw(id string) error {
	d.mu.Lock()
	e, ok := d.views[id]
	delete(d.views, id)
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %q", ErrUnknownExport, id)
	}
	return e.close()
}

// URI is the NBD URI of an export name on the daemon's socket.
func (d *Site) URI(name string) string {
	return "nbd+unix:///" + name + "?socket=" + d.cfg.NBDSocket
}

// Restore writes one disk of a group at target into a new image at path
// (an absolute path on the replica host, never overwritten), raw or qcow2
// (holes stay holes: qemu-img converts the point served over the site's
// NBD socket). The image is written beside its name, fsync'd, and linked
// into place only when whole; the directory is fsync'd after: an
// interrupted restore leaves no image that looks complete, and a finished
// one survives a power cut.
func (d *Site) Restore(ctx context.Context, tenant, group string, at journal.Target, disk, path, format string) (RestoreInfo, error) {
	if !filepath.IsAbs(path) {
		return RestoreInfo{}, fmt.Errorf("%w: restore target %q is not an absolute path", ErrBadTarget, path)
	}
	if format == "" {
		format = "raw"
	}
	if format != "raw" && format != "qcow2" {
		return RestoreInfo{}, fmt.Errorf("%w: image format %q (raw or qcow2)", ErrBadTarget, format)
	}
	j, err := d.existing(ctx, tenant, group)
	if err != nil {
		return RestoreInfo{}, err
	}
	v, err := j.View(ctx, at) // its errors name the target
	if err != nil {
		return RestoreInfo{}, fmt.Errorf("group %s/%s: %w", tenant, group, err)
	}
	defer v.Close()
	name, err := ResolveDisk(v.Disks(), disk)
	if err != nil {
		return RestoreInfo{}, fmt.Errorf("group %s/%s at seq %d: %w", tenant, group, v.Point().Seq, err)
	}
	dv, err := v.Disk(name)
	if err != nil {
		return RestoreInfo{}, err
	}
	if _, err := os.Lstat(path); err == nil {
		return RestoreInfo{}, fmt.Errorf("%w: %s exists; a restore never overwrites a file", ErrBadTarget, path)
	}
	partial := path + ".partial"
	defer os.Remove(partial)
	var n int64
	if format == "raw" {
		n, err = restoreRaw(ctx, dv, partial)
	} else {
		n, err = d.restoreQcow2(ctx, dv, partial)
	}
	if err == nil {
		err = os.Link(partial, path) // fails if path appeared meanwhile
	}
	if err == nil {
		err = vfs.Default.SyncDir(filepath.Dir(path))
	}
	if err != nil {
		return RestoreInfo{}, fmt.Errorf("restore %s of %s/%s into %s: %w", name, tenant, group, path, err)
	}
	return RestoreInfo{Point: v.Point(), Disk: name, Path: path, Bytes: n}, nil
}

// restoreRaw writes dv into a new raw file at partial and fsyncs it; it
// returns the bytes of data written.
func restoreRaw(ctx context.Context, dv *journal.DiskView, partial string) (int64, error) {
	f, err := os.OpenFile(partial, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	if err := f.Truncate(dv.Size()); err != nil {
		f.Close()
		return 0, err
	}
	n, err := journal.Restore(ctx, dv, f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return n, err
}

// restoreQcow2 serves dv on the site's NBD socket under a name of its own
// for as long as qemu-img converts it into a new qcow2 file at partial,
// then fsyncs that file. It returns the image file's size.
func (d *Site) restoreQcow2(ctx context.Context, dv *journal.DiskView, partial string) (int64, error) {
	d.mu.Lock()
	d.nextID++
	name := fmt.Sprintf("restore%d", d.nextID)
	d.mu.Unlock()
	d.exports.Add(name, dv)
	defer d.exports.Remove(name)
	cmd := exec.CommandContext(ctx, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", d.URI(name), partial)
	if b, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("qemu-img convert: %w: %s", err, strings.TrimSpace(string(b)))
	}
	f, err := os.Open(partial)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return 0, err
	}
	st, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}
