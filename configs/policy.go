package configs

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Policy is a validated host policy with every default applied. It is
// read-only after Parse and safe for concurrent use.
type Policy struct {
	File     string // the name or path it was parsed from
	Host     Host
	Defaults Tuning // [defaults], with built-in defaults for what it leaves out

	groups []*Group
	byName map[string]*VM // by VM name
	byUUID map[string]*VM // by lower-case UUID
	labels []*VM          // label selectors in file order
}

// Host is the [host] table.
type Host struct {
	StateDir      string     // state_dir; spools live in StateDir/spool/<group>
	ControlSocket string     // control_socket: the daemon's API for the CLI and hooks
	NBDSocketDir  string     // nbd_socket_dir: where QEMU's mirror jobs connect
	LogLevel      slog.Level // log_level: debug, info, warn or error
	LibvirtURI    string     // libvirt_uri; "" means do not use libvirt
	QMPSockets    []string   // qmp_sockets: absolute glob patterns of QMP sockets
	// QEMUGroup (qemu_group) is the group QEMU runs as: the NBD sockets are
	// made reachable by it and by root only. Default with libvirt:
	// "libvirt-qemu" (Debian's qemu.conf); "" leaves them to root.
	QEMUGroup string
	// TLSCA, TLSCert, TLSKey (tls_ca, tls_cert, tls_key): PEM files of the
	// CA and of this host's client certificate (its OU is the tenant), for
	// the streams to the replicas; required when a group has a replica.
	TLSCA, TLSCert, TLSKey string
}

// Tuning is what [defaults] sets and a [[group]] may override.
type Tuning struct {
	SpoolMax     int64         // spool_max: bytes the group's spool may hold
	SpoolSegment int64         // spool_segment: size at which a spool segment ends
	SyncInterval time.Duration // sync_interval: background fsync period; 0 = off
	SyncBytes    int64         // sync_bytes: fsync after this many bytes; 0 = off
	Granularity  int64         // granularity: mirror job granularity in bytes
	// ResyncReadRate (resync_read_rate) bounds the bytes per second a hash
	// resync reads from a source disk, so the guest is not starved; 0 is
	// no bound.
	ResyncReadRate int64
}

// Group is one protection group: one ordered stream to one replica.
type Group struct {
	Name    string // safe as a file path element (see ValidName)
	Replica string // "host:port" of the replica daemon; "" if none yet
	// Bandwidth (bandwidth) bounds the bytes per second the group's stream
	// puts on the wire to its replica; 0 is no limit.
	Bandwidth int64
	// AppConsistentEvery (app_consistent_every): how often the host daemon
	// freezes the group's guests through their agents for an
	// app-consistent bookmark; 0 for never.
	AppConsistentEvery time.Duration
	Tuning                   // the group's settings, defaults applied
	VMs                []*VM // selectors in file order
}

// VM selects virtual machines for a group by exactly one of Name, UUID or
// Label.
type VM struct {
	Name  string // libvirt domain name or Proxmox VM name, exact
	UUID  string // domain (or Nova instance, or Proxmox SMBIOS) UUID, lower case
	Label string // a label the VM carries: libvirt metadata or a Proxmox tag
	Disks DiskFilter

	Group  *Group // the group it belongs to
	Origin string // where it is written: "host.toml:14 group[1].vm[0]"
}

// DiskFilter picks the disks of a VM to protect, by target device (vda, sdb,
// scsi0, …).
type DiskFilter struct {
	Include []string // if not empty, only these
	Exclude []string // never these
}

// DiskIncluded reports whether the disk with the given target device is
// protected under f.
func (f DiskFilter) DiskIncluded(target string) bool {
	if slices.Contains(f.Exclude, target) {
		return false
	}
	return len(f.Include) == 0 || slices.Contains(f.Include, target)
}

// VMIdentity is what the hypervisor layer knows of a running VM.
type VMIdentity struct {
	Name   string
	UUID   string   // any case
	Labels []string // "key=value" from libvirt metadata, or Proxmox tags as written
}

// Groups returns the protection groups in file order. The slice is a copy;
// the groups are shared and must not be modified.
func (p *Policy) Groups() []*Group { return slices.Clone(p.groups) }

// Group returns the group called name.
func (p *Policy) Group(name string) (*Group, bool) {
	for _, g := range p.groups {
		if g.Name == name {
			return g, true
		}
	}
	return nil, false
}

// SpoolDir is the directory of g's spool: <state_dir>/spool/<group>. Group
// names are checked by Parse, so the result is always inside state_dir.
func (p *Policy) SpoolDir(g *Group) string {
	return filepath.Join(p.Host.StateDir, "spool", g.Name)
}

// GroupFor returns the group that protects vm and the filter for its disks.
// A UUID selector wins over a name selector, and a name selector over label
// selectors: the more specific choice is the administrator's. If no selector
// matches, the error is ErrNotProtected; if label selectors of different
// entries match and nothing more specific does, it is ErrAmbiguous, naming
// them, and the VM must not be protected until the policy is fixed.
func (p *Policy) GroupFor(vm VMIdentity) (*Group, DiskFilter, error) {
	if vm.UUID != "" {
		if s, ok := p.byUUID[strings.ToLower(vm.UUID)]; ok {
			return s.Group, s.Disks, nil
		}
	}
	if vm.Name != "" {
		if s, ok := p.byName[vm.Name]; ok {
			return s.Group, s.Disks, nil
		}
	}
	var found []*VM
	for _, s := range p.labels {
		if slices.Contains(vm.Labels, s.Label) {
			found = append(found, s)
		}
	}
	switch len(found) {
	case 0:
		return nil, DiskFilter{}, fmt.Errorf("%w: %s", ErrNotProtected, vm.describe())
	case 1:
		return found[0].Group, found[0].Disks, nil
	}
	origins := make([]string, len(found))
	for i, s := range found {
		origins[i] = fmt.Sprintf("%s (label %q)", s.Origin, s.Label)
	}
	return nil, DiskFilter{}, fmt.Errorf("%w: %s: %s; select it by uuid or name, or give it one of these labels only",
		ErrAmbiguous, vm.describe(), strings.Join(origins, ", "))
}

func (vm VMIdentity) describe() string {
	return fmt.Sprintf("VM name %q uuid %q", vm.Name, vm.UUID)
}
