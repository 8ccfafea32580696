package hypervisor

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/digitalocean/go-libvirt"
	"github.com/qcdp/qcdp/qmp"
)

// DefaultLibvirtSocket is the socket of the system libvirt daemon
// (qemu:///system).
const DefaultLibvirtSocket = "/var/run/libvirt/libvirt-sock"

// Libvirt is a connection to a libvirt daemon, the source of its QEMU
// domains. Its methods are safe for concurrent use.
//
// libvirt RPCs cannot be cancelled: when ctx ends first a method returns
// ctx.Err() and the call finishes in the background; Close waits for it.
type Libvirt struct {
	l   *libvirt.Libvirt
	uri string // for messages

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup // RPCs in flight and the lifecycle relay

	ev lifecycleEvents

	log atomic.Pointer[slog.Logger] // nil: slog.Default (SetLogger)
}

// Connect connects to libvirt. target is a libvirt URI ("qemu:///system",
// "qemu+unix:///system?socket=/path", "qemu+tcp://host/system", ...), the
// path of a libvirt socket (then the URI is qemu:///system), or "" for
// DefaultLibvirtSocket. ctx bounds the dial and handshake on a local socket;
// a remote URI is dialled by go-libvirt, under its own timeouts.
func Connect(ctx context.Context, target string) (*Libvirt, error) {
	uri, sock, err := parseTarget(target)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if sock == "" {
		// Remote transports: go-libvirt picks the dialer, which takes no context.
		u, err := url.Parse(uri)
		if err != nil {
			return nil, fmt.Errorf("hypervisor: libvirt URI %q: %w", uri, err)
		}
		l, err := libvirt.ConnectToURI(u)
		if err != nil {
			return nil, fmt.Errorf("hypervisor: connect to libvirt %s: %w", uri, err)
		}
		return &Libvirt{l: l, uri: uri}, nil
	}
	d := &ctxDialer{ctx: ctx, path: sock}
	stop := context.AfterFunc(ctx, d.abort)
	l := libvirt.NewWithDialer(d)
	err = l.ConnectToURI(libvirt.ConnectURI(uri))
	if !stop() {
		if err == nil {
			l.Disconnect()
		}
		return nil, fmt.Errorf("hypervisor: connect to libvirt %s on %s: %w", uri, sock, ctx.Err())
	}
	if err != nil {
		return nil, fmt.Errorf("hypervisor: connect to libvirt %s on %s: %w", uri, sock, err)
	}
	return &Libvirt{l: l, uri: uri}, nil
}

// parseTarget returns the URI to open and, for a local connection, the
// socket to dial.
func parseTarget(target string) (uri, sock string, err error) {
	switch {
	case target == "":
		return string(libvirt.QEMUSystem), DefaultLibvirtSocket, nil
	case strings.HasPrefix(target, "/"):
		return string(libvirt.QEMUSystem), target, nil
	}
	u, err := url.Parse(target)
	if err != nil {
		return "", "", fmt.Errorf("hypervisor: libvirt URI %q: %w", target, err)
	}
	scheme, transport, _ := strings.Cut(u.Scheme, "+")
	if u.Host != "" || (transport != "" && transport != "unix") {
		return target, "", nil
	}
	sock = u.Query().Get("socket")
	if sock == "" {
		switch u.Path {
		case "/system":
			sock = DefaultLibvirtSocket
		case "/session":
			dir := os.Getenv("XDG_RUNTIME_DIR")
			if dir == "" {
				return "", "", fmt.Errorf("hypervisor: libvirt URI %q: XDG_RUNTIME_DIR unset, add ?socket=", target)
			}
			sock = filepath.Join(dir, "libvirt", "libvirt-sock")
		default:
			return "", "", fmt.Errorf("hypervisor: libvirt URI %q: unknown path, add ?socket=", target)
		}
	}
	return (&url.URL{Scheme: scheme, Path: u.Path}).String(), sock, nil
}

// ctxDialer dials a unix socket for go-libvirt under a context, and closes
// the connection if that context ends during the handshake.
type ctxDialer struct {
	ctx  context.Context
	path string

	mu      sync.Mutex
	conn    net.Conn
	aborted bool
}

func (d *ctxDialer) Dial() (net.Conn, error) {
	var nd net.Dialer
	conn, err := nd.DialContext(d.ctx, "unix", d.path)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.aborted {
		conn.Close()
		return nil, d.ctx.Err()
	}
	d.conn = conn
	return conn, nil
}

func (d *ctxDialer) abort() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.aborted = true
	if d.conn != nil {
		d.conn.Close()
	}
}

// Close disconnects from libvirt, ends event streams and waits for the
// calls in flight.
func (s *Libvirt) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	// Disconnect before the event subscription is cancelled: go-libvirt
	// answers a cancel with an unsubscribe call, which waits for its
	// router, which may be blocked handing that very subscription an event
	// (its consumer is the goroutine making the call): a deadlock seen
	// under load. Disconnected first, the call fails at once.
	err := s.l.Disconnect()
	s.ev.mu.Lock()
	if s.ev.cancel != nil {
		s.ev.cancel()
	}
	s.ev.mu.Unlock()
	s.wg.Wait()
	if err != nil {
		return fmt.Errorf("hypervisor: disconnect from libvirt %s: %w", s.uri, err)
	}
	return nil
}

// Done is closed when the connection to libvirt is lost or closed.
func (s *Libvirt) Done() <-chan struct{} { return s.l.Disconnected() }

// call runs one libvirt RPC, returning early with ctx.Err() if ctx ends.
func (s *Libvirt) call(ctx context.Context, rpc func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("hypervisor: libvirt %s: connection closed", s.uri)
	}
	s.wg.Add(1)
	s.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		defer s.wg.Done()
		done <- rpc()
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ListVMs returns every domain libvirt knows, running or not.
func (s *Libvirt) ListVMs(ctx context.Context) ([]VM, error) {
	var doms []libvirt.Domain
	err := s.call(ctx, func() (err error) {
		doms, _, err = s.l.ConnectListAllDomains(1, libvirt.ConnectListDomainsActive|libvirt.ConnectListDomainsInactive)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("hypervisor: list libvirt domains on %s: %w", s.uri, err)
	}
	vms := make([]VM, 0, len(doms))
	for _, d := range doms {
		x, err := s.domainXML(ctx, d)
		if IsNoDomain(err) {
			continue // gone since the listing
		}
		if err != nil {
			return nil, err
		}
		vms = append(vms, vmFromXML(d, x))
	}
	return vms, nil
}

func vmFromXML(d libvirt.Domain, x domainXML) VM {
	id := formatUUID(d.UUID)
	return VM{
		ID:      id,
		Name:    d.Name,
		UUID:    id,
		Labels:  x.labels(),
		Source:  SourceLibvirt,
		Running: d.ID > 0,
	}
}

// domainXML fetches and parses the live XML of d (inactive XML when d is
// not running).
func (s *Libvirt) domainXML(ctx context.Context, d libvirt.Domain) (domainXML, error) {
	var doc string
	err := s.call(ctx, func() (err error) {
		doc, err = s.l.DomainGetXMLDesc(d, 0)
		return err
	})
	if err != nil {
		return domainXML{}, fmt.Errorf("hypervisor: XML of libvirt domain %s (%s): %w", d.Name, formatUUID(d.UUID), err)
	}
	x, err := parseDomainXML(doc)
	if err != nil {
		return domainXML{}, fmt.Errorf("hypervisor: libvirt domain %s (%s): %w", d.Name, formatUUID(d.UUID), err)
	}
	return x, nil
}

// lookup finds vm's domain by its UUID.
func (s *Libvirt) lookup(ctx context.Context, vm VM) (libvirt.Domain, error) {
	if vm.Source != SourceLibvirt {
		return libvirt.Domain{}, fmt.Errorf("%w: %s VM %s given to libvirt", ErrWrongSource, vm.Source, vm.ID)
	}
	uuid, err := parseUUID(vm.UUID)
	if err != nil {
		return libvirt.Domain{}, fmt.Errorf("hypervisor: libvirt VM %s: %w", vm.Name, err)
	}
	var d libvirt.Domain
	err = s.call(ctx, func() (err error) {
		d, err = s.l.DomainLookupByUUID(uuid)
		return err
	})
	if err != nil {
		return libvirt.Domain{}, fmt.Errorf("hypervisor: look up libvirt domain %s (%s): %w", vm.Name, vm.UUID, err)
	}
	return d, nil
}

// Disks returns vm's disks (device='disk'; cdroms, floppies and luns are
// not protected), in the order of the domain XML. For a running domain each
// disk has its QEMU node, size and qcow2 version, read through QMP
// passthrough; for a stopped one, what the XML says.
func (s *Libvirt) Disks(ctx context.Context, vm VM) ([]Disk, error) {
	d, err := s.lookup(ctx, vm)
	if err != nil {
		return nil, err
	}
	x, err := s.domainXML(ctx, d)
	if err != nil {
		return nil, err
	}
	var disks []Disk
	for _, xd := range x.Disks {
		if !xd.protected() {
			continue
		}
		disks = append(disks, Disk{
			ID:     vm.ID + "/" + xd.Target.Dev,
			Target: xd.Target.Dev,
			Format: xd.Driver.Type,
			File:   xd.file(),
		})
	}
	if d.ID <= 0 || len(disks) == 0 {
		return disks, nil
	}
	c, err := qmp.DialLibvirt(ctx, s.l, d)
	if err != nil {
		return nil, fmt.Errorf("hypervisor: libvirt domain %s (%s): %w", d.Name, vm.UUID, err)
	}
	defer c.Close()
	nodes, err := queryNamedNodes(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("hypervisor: libvirt domain %s (%s): %w", d.Name, vm.UUID, err)
	}
	var devs []blockDevice // fetched when a disk has no -blockdev node name
	i := 0
	for _, xd := range x.Disks {
		if !xd.protected() {
			continue
		}
		disk := &disks[i]
		i++
		n, err := libvirtNode(nodes, xd)
		if errors.Is(err, ErrNoNode) && xd.Alias.Name != "" {
			if devs == nil {
				if devs, err = queryBlock(ctx, c); err != nil {
					return nil, fmt.Errorf("hypervisor: libvirt domain %s (%s): %w", d.Name, vm.UUID, err)
				}
			}
			n, err = driveNode(nodes, devs, xd.Alias.Name)
		}
		if err != nil {
			return nil, fmt.Errorf("hypervisor: libvirt domain %s (%s) disk %s: %w", d.Name, vm.UUID, disk.Target, err)
		}
		disk.Node = n.NodeName
		disk.Format = n.Driver
		disk.Qcow2Version = qcow2Version(n.Image)
		disk.Size = n.Image.VirtualSize
	}
	return disks, nil
}

// libvirtNode finds the format node libvirt (5.10 and later, -blockdev)
// made for a disk: libvirt-<index>-format, or libvirt-<index>-storage when
// libvirt left out the format layer (a raw image without options).
func libvirtNode(nodes []namedNode, xd diskXML) (namedNode, error) {
	if xd.Source.Index <= 0 {
		return namedNode{}, fmt.Errorf("%w: no source index in the domain XML", ErrNoNode)
	}
	for _, layer := range []string{"format", "storage"} {
		name := fmt.Sprintf("libvirt-%d-%s", xd.Source.Index, layer)
		if n, ok := findNode(nodes, name); ok {
			return n, nil
		}
	}
	return namedNode{}, fmt.Errorf("%w: no node libvirt-%d-format or -storage", ErrNoNode, xd.Source.Index)
}

// driveNode finds the node of a disk libvirt gave QEMU with -drive
// (libvirt before 5.10): device "drive-<alias>", or the device whose id is
// the alias.
func driveNode(nodes []namedNode, devs []blockDevice, alias string) (namedNode, error) {
	for _, dev := range devs {
		if dev.Inserted == nil || dev.Device != "drive-"+alias && deviceTarget(dev) != alias {
			continue
		}
		return belowFilters(nodes, dev.Inserted.NodeName, dev.Inserted.Image)
	}
	return namedNode{}, fmt.Errorf("%w: no block device for alias %s", ErrNoNode, alias)
}

// QMP returns a QMP channel to vm's QEMU through libvirt's passthrough; see
// qmp.DialLibvirt for what that costs. The caller closes it.
func (s *Libvirt) QMP(ctx context.Context, vm VM) (*qmp.Client, error) {
	d, err := s.lookup(ctx, vm)
	if err != nil {
		return nil, err
	}
	if d.ID <= 0 {
		return nil, fmt.Errorf("hypervisor: libvirt domain %s (%s): %w", d.Name, vm.UUID, ErrNotRunning)
	}
	c, err := qmp.DialLibvirt(ctx, s.l, d)
	if err != nil {
		return nil, fmt.Errorf("hypervisor: libvirt domain %s (%s): %w", d.Name, vm.UUID, err)
	}
	return c, nil
}

// Events streams the lifecycle events of every domain until ctx ends or the
// connection is lost or closed; then the channel is closed. The caller must
// keep reading until it is: a stream that falls behind holds back the
// others. libvirt allows one lifecycle registration per connection, so all
// streams of s share one, set up by the first call and ended by Close.
func (s *Libvirt) Events(ctx context.Context) (<-chan LifecycleEvent, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.ev.mu.Lock()
	defer s.ev.mu.Unlock()
	if s.ev.cancel == nil {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return nil, fmt.Errorf("hypervisor: libvirt %s: connection closed", s.uri)
		}
		s.wg.Add(1)
		s.mu.Unlock()
		sub, cancel := context.WithCancel(context.Background())
		in, err := s.l.LifecycleEvents(sub)
		if err != nil {
			cancel()
			s.wg.Done()
			return nil, fmt.Errorf("hypervisor: subscribe to libvirt %s lifecycle events: %w", s.uri, err)
		}
		s.ev.cancel = cancel
		s.ev.subs = map[*lifecycleSub]bool{}
		go s.relayLifecycle(in)
	}
	if s.ev.ended {
		return nil, fmt.Errorf("hypervisor: libvirt %s: lifecycle events ended: connection closed or lost", s.uri)
	}
	sub := &lifecycleSub{ctx: ctx, ch: make(chan LifecycleEvent, 64)}
	s.ev.subs[sub] = true
	context.AfterFunc(ctx, func() {
		s.ev.mu.Lock()
		defer s.ev.mu.Unlock()
		if s.ev.subs[sub] {
			delete(s.ev.subs, sub)
			close(sub.ch)
		}
	})
	return sub.ch, nil
}

// lifecycleEvents is the one lifecycle subscription of a Libvirt.
type lifecycleEvents struct {
	mu     sync.Mutex // held while delivering an event
	cancel context.CancelFunc
	subs   map[*lifecycleSub]bool
	ended  bool
}

type lifecycleSub struct {
	ctx context.Context
	ch  chan LifecycleEvent
}

// relayLifecycle hands each event to every stream until in closes. It
// drains in to the end: go-libvirt's sender does not watch its context
// while it hands over an event.
func (s *Libvirt) relayLifecycle(in <-chan libvirt.DomainEventLifecycleMsg) {
	defer s.wg.Done()
	defer func() {
		s.ev.mu.Lock()
		defer s.ev.mu.Unlock()
		s.ev.ended = true
		for sub := range s.ev.subs {
			close(sub.ch)
		}
		clear(s.ev.subs)
	}()
	for m := range in {
		e := lifecycleEvent(m)
		s.ev.mu.Lock()
		for sub := range s.ev.subs {
			select {
			case sub.ch <- e:
			case <-sub.ctx.Done():
			}
		}
		s.ev.mu.Unlock()
	}
}

var eventKinds = map[libvirt.DomainEventType]EventKind{
	libvirt.DomainEventDefined:     EventDefined,
	libvirt.DomainEventUndefined:   EventUndefined,
	libvirt.DomainEventStarted:     EventStarted,
	libvirt.DomainEventSuspended:   EventSuspended,
	libvirt.DomainEventResumed:     EventResumed,
	libvirt.DomainEventStopped:     EventStopped,
	libvirt.DomainEventShutdown:    EventShutdown,
	libvirt.DomainEventPmsuspended: EventPMSuspended,
	libvirt.DomainEventCrashed:     EventCrashed,
}

func lifecycleEvent(m libvirt.DomainEventLifecycleMsg) LifecycleEvent {
	kind, ok := eventKinds[libvirt.DomainEventType(m.Event)]
	if !ok {
		kind = EventKind(fmt.Sprintf("event-%d", m.Event))
	}
	id := formatUUID(m.Dom.UUID)
	running := kind != EventStopped && kind != EventDefined && kind != EventUndefined && kind != EventCrashed
	return LifecycleEvent{
		VM:     VM{ID: id, Name: m.Dom.Name, UUID: id, Source: SourceLibvirt, Running: running},
		Kind:   kind,
		Detail: int(m.Detail),
	}
}

func formatUUID(u libvirt.UUID) string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

func parseUUID(s string) (libvirt.UUID, error) {
	var u libvirt.UUID
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != len(u) {
		return u, fmt.Errorf("hypervisor: bad UUID %q", s)
	}
	copy(u[:], b)
	return u, nil
}
