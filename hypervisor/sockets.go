package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/qcdp/qcdp/qmp"
)

// ProxmoxSockets is where Proxmox VE puts each VM's QMP socket,
// <vmid>.qmp.
const ProxmoxSockets = "/var/run/qemu-server/*.qmp"

// DefaultProbeTimeout bounds the talk with one socket during discovery.
// QEMU queues a second client until the first leaves, so a socket that
// another program holds (Proxmox's own qm, say) answers only after it.
const DefaultProbeTimeout = 5 * time.Second

// ErrDuplicateID is returned when two sockets have the same base name.
var ErrDuplicateID = errors.New("hypervisor: two QMP sockets with one VM id")

// Sockets is the source of plain QEMU and Proxmox VMs: the QMP unix sockets
// matching its patterns (paths or filepath.Match globs). A VM's ID is its
// socket's base name without extension ("101" for Proxmox's 101.qmp), so
// each VM needs a socket of its own name. QEMU serves one QMP client at a
// time, so Sockets remembers each connection QMP hands out until it is
// closed: meanwhile discovery reports that VM as it was, without dialing a
// socket that would not answer, and agent commands go through it.
type Sockets struct {
	patterns     []string
	probeTimeout time.Duration

	mu   sync.Mutex
	held map[string]heldVM // by socket path

	log atomic.Pointer[slog.Logger] // nil: slog.Default (SetLogger)
}

// heldVM is a VM whose QMP connection QMP handed out and that is still
// open: QEMU serves one client at a time, so its socket would not answer.
type heldVM struct {
	vm VM
	c  *qmp.Client
}

// holding returns the open connection QMP handed out for the socket at
// path, forgetting one that has been closed.
func (s *Sockets) holding(path string) (heldVM, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.held[path]
	if ok && h.c.Closed() {
		delete(s.held, path)
		return heldVM{}, false
	}
	return h, ok
}

// NewSockets returns the source of the VMs whose QMP sockets match patterns.
func NewSockets(patterns ...string) *Sockets {
	return &Sockets{patterns: slices.Clone(patterns), probeTimeout: DefaultProbeTimeout}
}

// SetProbeTimeout changes DefaultProbeTimeout for s.
func (s *Sockets) SetProbeTimeout(d time.Duration) { s.probeTimeout = d }

// socketID is the VM id a socket path stands for.
func socketID(path string) string {
	base := filepath.Base(path)
	return strings.TrimSuffix(base, filepath.Ext(base))
}

// paths lists the sockets the patterns match now, sorted.
func (s *Sockets) paths() ([]string, error) {
	var paths []string
	for _, p := range s.patterns {
		m, err := filepath.Glob(p)
		if err != nil {
			return nil, fmt.Errorf("hypervisor: QMP socket pattern %q: %w", p, err)
		}
		paths = append(paths, m...)
	}
	slices.Sort(paths)
	return slices.Compact(paths), nil
}

// ListVMs connects briefly to each socket and asks QEMU for its name and
// UUID. A socket nobody listens on (QEMU gone, a stale file) is a VM that
// is not running. When some sockets fail, ListVMs returns the VMs of the
// others together with an error naming each failed socket.
func (s *Sockets) ListVMs(ctx context.Context) ([]VM, error) {
	paths, err := s.paths()
	if err != nil {
		return nil, err
	}
	var vms []VM
	var errs []error
	seen := map[string]string{}
	for _, path := range paths {
		id := socketID(path)
		if other, ok := seen[id]; ok {
			errs = append(errs, fmt.Errorf("%w: %s and %s are both %q", ErrDuplicateID, other, path, id))
			continue
		}
		seen[id] = path
		if h, ok := s.holding(path); ok {
			vms = append(vms, h.vm)
			continue
		}
		vm, err := s.probe(ctx, path)
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			errs = append(errs, err)
			continue
		}
		vms = append(vms, vm)
	}
	return vms, errors.Join(errs...)
}

// probe asks the QEMU behind path who it is.
func (s *Sockets) probe(ctx context.Context, path string) (VM, error) {
	vm := VM{ID: socketID(path), Name: socketID(path), Source: SourceQMP, Socket: path}
	ctx, cancel := context.WithTimeout(ctx, s.probeTimeout)
	defer cancel()
	c, err := qmp.Dial(ctx, path)
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
		return vm, nil
	}
	if err != nil {
		return VM{}, fmt.Errorf("hypervisor: VM %s: %w", vm.ID, err)
	}
	defer c.Close()
	var name struct {
		Name string `json:"name"`
	}
	if err := c.Execute(ctx, "query-name", nil, &name); err != nil {
		return VM{}, fmt.Errorf("hypervisor: VM %s on %s: %w", vm.ID, path, err)
	}
	var uuid struct {
		UUID string `json:"UUID"`
	}
	if err := c.Execute(ctx, "query-uuid", nil, &uuid); err != nil {
		return VM{}, fmt.Errorf("hypervisor: VM %s on %s: %w", vm.ID, path, err)
	}
	if name.Name != "" {
		vm.Name = name.Name
	}
	if uuid.UUID != "00000000-0000-0000-0000-000000000000" {
		vm.UUID = strings.ToLower(uuid.UUID)
	}
	vm.Running = true
	return vm, nil
}

// Disks connects briefly to vm's socket and returns the disks QEMU has a
// medium in, in query-block's order; removable devices (cdroms) are left
// out. A disk's Target is its -drive id, else its -device id. When filters
// (a capture mirror's among them) sit on a disk, Node is the format node
// under them.
func (s *Sockets) Disks(ctx context.Context, vm VM) ([]Disk, error) {
	c, err := s.QMP(ctx, vm)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	devs, err := queryBlock(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("hypervisor: VM %s on %s: %w", vm.ID, vm.Socket, err)
	}
	nodes, err := queryNamedNodes(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("hypervisor: VM %s on %s: %w", vm.ID, vm.Socket, err)
	}
	var disks []Disk
	for _, dev := range devs {
		if dev.Inserted == nil || dev.Removable {
			continue
		}
		target := deviceTarget(dev)
		if target == "" {
			continue
		}
		n, err := belowFilters(nodes, dev.Inserted.NodeName, dev.Inserted.Image)
		if err != nil {
			return nil, fmt.Errorf("hypervisor: VM %s on %s disk %s: %w", vm.ID, vm.Socket, target, err)
		}
		file := n.Image.Filename
		if file == "" {
			file = n.File
		}
		disks = append(disks, Disk{
			ID:           vm.ID + "/" + target,
			Target:       target,
			Node:         n.NodeName,
			Format:       n.Driver,
			Qcow2Version: qcow2Version(n.Image),
			Size:         n.Image.VirtualSize,
			File:         file,
		})
	}
	return disks, nil
}

// QMP dials vm's socket. Under Proxmox the connection keeps Proxmox's own
// tools out of the VM: close it as soon as it is not needed.
func (s *Sockets) QMP(ctx context.Context, vm VM) (*qmp.Client, error) {
	if vm.Source != SourceQMP {
		return nil, fmt.Errorf("%w: %s VM %s given to the QMP socket source", ErrWrongSource, vm.Source, vm.ID)
	}
	c, err := qmp.Dial(ctx, vm.Socket)
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
		return nil, fmt.Errorf("hypervisor: VM %s on %s: %w: %w", vm.ID, vm.Socket, ErrNotRunning, err)
	}
	if err != nil {
		return nil, fmt.Errorf("hypervisor: VM %s: %w", vm.ID, err)
	}
	s.mu.Lock()
	if s.held == nil {
		s.held = map[string]heldVM{}
	}
	s.held[vm.Socket] = heldVM{vm, c}
	s.mu.Unlock()
	return c, nil
}
