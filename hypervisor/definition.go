package hypervisor

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/digitalocean/go-libvirt"
	"github.com/qcdp/qcdp/qmp"
	"github.com/qcdp/qcdp/record"
)

// A VM's definition (record.VMDefinition) is what the recovery site builds
// a standby of it from: its vCPUs, memory, machine, firmware, disks and
// NICs. Both sources give it (Definition); the caller passes the VM's
// disks as Disks reported them, for their exact sizes, and the name in the
// group's stream of each protected one, by its target: a definition's
// disk is named as the group's membership names it ("" for a disk qcdp
// does not protect).
//
// What a definition cannot hold is left out and logged: a disk whose size
// is not known (not among the disks passed), a NIC whose MAC the recovery
// site refuses, the domain XML when it is larger than
// record.MaxDefinitionXML (or makes the record too large); so is an
// attribute it refuses (a disk bus, cache mode or serial, a NIC model or
// network name), and the standby gets its default. A protected disk the
// definition cannot hold is an error. Only libvirt NICs of type network
// or bridge are in a definition (user, direct, ... are nothing a standby
// can join).

// sourceProxmox is a definition's Source for a VM under Proxmox VE (its QMP
// socket is where Proxmox puts them).
const sourceProxmox = "proxmox"

// Definition returns vm's definition from its domain XML: the persistent
// (inactive) definition when the domain has one, which is what its next
// boot runs, else the live one. The XML is kept in the definition as
// libvirt gives it without VIR_DOMAIN_XML_SECURE (so without passwords).
// disks are vm's disks as Disks returned them (a running domain's have
// their sizes); names maps the target of each protected disk to its stream
// name. A protected disk the persistent definition lacks (attached to the
// running domain only) is added with its target and size.
func (s *Libvirt) Definition(ctx context.Context, vm VM, disks []Disk, names map[string]string) (record.VMDefinition, error) {
	d, err := s.lookup(ctx, vm)
	if err != nil {
		return record.VMDefinition{}, err
	}
	var doc string
	err = s.call(ctx, func() error {
		persistent, err := s.l.DomainIsPersistent(d)
		if err != nil {
			return err
		}
		var flags libvirt.DomainXMLFlags
		if persistent == 1 {
			flags = libvirt.DomainXMLInactive
		}
		doc, err = s.l.DomainGetXMLDesc(d, flags)
		return err
	})
	if err != nil {
		return record.VMDefinition{}, fmt.Errorf("hypervisor: definition of libvirt domain %s (%s): %w", d.Name, vm.UUID, err)
	}
	def, err := libvirtDefinition(vm, doc, disks, names)
	if err == nil {
		def, err = fitDefinition(def, s.logger())
	}
	if err != nil {
		return record.VMDefinition{}, fmt.Errorf("hypervisor: definition of libvirt domain %s (%s): %w", d.Name, vm.UUID, err)
	}
	return def, nil
}

// SetLogger sets where s logs what a definition leaves out (Definition).
func (s *Libvirt) SetLogger(l *slog.Logger) { s.log.Store(l) }

func (s *Libvirt) logger() *slog.Logger {
	if l := s.log.Load(); l != nil {
		return l
	}
	return slog.Default()
}

// libvirtDefinition reads a definition out of a domain XML document.
func libvirtDefinition(vm VM, doc string, disks []Disk, names map[string]string) (record.VMDefinition, error) {
	x, err := parseDomainXML(doc)
	if err != nil {
		return record.VMDefinition{}, err
	}
	def := record.VMDefinition{ID: vm.ID, Name: x.Name, Source: SourceLibvirt, XML: doc,
		Machine: x.OS.Type.Machine, Arch: x.OS.Type.Arch,
		Kernel: x.OS.Kernel, Initrd: x.OS.Initrd, Cmdline: x.OS.Cmdline}
	if def.Name == "" {
		def.Name = vm.Name
	}
	if def.VCPUs, err = strconv.Atoi(strings.TrimSpace(x.VCPU)); err != nil {
		return record.VMDefinition{}, fmt.Errorf("hypervisor: domain XML: <vcpu> %q: %w", x.VCPU, err)
	}
	if def.MemoryMiB, err = memoryMiB(x.Memory.Value, x.Memory.Unit); err != nil {
		return record.VMDefinition{}, fmt.Errorf("hypervisor: domain XML: <memory>: %w", err)
	}
	switch {
	case x.OS.Firmware == "efi":
		def.Firmware = "efi"
	case x.OS.Firmware == "" && x.OS.Loader != nil:
		def.Firmware = "efi" // a pflash loader: OVMF, AAVMF
	default:
		def.Firmware = "bios"
	}
	known := map[string]Disk{}
	for _, dk := range disks {
		known[dk.Target] = dk
	}
	inXML := map[string]bool{}
	for _, xd := range x.Disks {
		if !xd.protected() {
			continue // cdroms, floppies, luns
		}
		t := xd.Target.Dev
		inXML[t] = true
		def.Disks = append(def.Disks, record.VMDisk{Disk: names[t], Target: t, Bus: xd.Target.Bus,
			Size: uint64(max(known[t].Size, 0)), Boot: xd.Boot.Order, Cache: xd.Driver.Cache, Serial: xd.Serial})
	}
	for _, dk := range disks {
		if names[dk.Target] != "" && !inXML[dk.Target] {
			def.Disks = append(def.Disks, record.VMDisk{Disk: names[dk.Target], Target: dk.Target,
				Bus: busOfTarget(dk.Target), Size: uint64(max(dk.Size, 0))})
		}
	}
	for _, i := range x.Interfaces {
		n := record.VMNIC{MAC: strings.ToLower(i.MAC.Address), Model: i.Model.Type}
		switch i.Type {
		case "network":
			n.Network = i.Source.Network
		case "bridge":
			n.Network, n.Bridge = i.Source.Bridge, true
		default:
			continue // user, direct, vhostuser, ...: nothing a standby can join
		}
		def.NICs = append(def.NICs, n)
	}
	return def, nil
}

// memoryMiB converts a libvirt scaled integer (<memory unit=...>) to MiB,
// rounded up. Units are libvirt's: b or bytes; k, KiB (the default), KB
// (1000); and so on through E, EiB, EB; case does not matter.
func memoryMiB(value, unit string) (int64, error) {
	v, err := strconv.ParseUint(strings.TrimSpace(value), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("value %q: %w", value, err)
	}
	scale := uint64(1024)
	switch u := strings.ToLower(unit); {
	case u == "":
	case u == "b" || u == "byte" || u == "bytes":
		scale = 1
	default:
		base := uint64(1024)
		switch u[1:] {
		case "", "ib":
		case "b":
			base = 1000
		default:
			return 0, fmt.Errorf("unit %q", unit)
		}
		power := strings.IndexByte("kmgtpe", u[0]) + 1
		if power == 0 {
			return 0, fmt.Errorf("unit %q", unit)
		}
		scale = 1
		for range power {
			scale *= base
		}
	}
	if v > math.MaxUint64/scale {
		return 0, fmt.Errorf("%s %s overflows", value, unit)
	}
	return ceilMiB(v * scale), nil
}

// ceilMiB is b bytes in MiB, rounded up.
func ceilMiB(b uint64) int64 {
	mib := b >> 20
	if b&(1<<20-1) != 0 {
		mib++
	}
	return int64(mib) // b < 2^64: mib < 2^44
}

// busOfTarget guesses a disk's bus from its target name, for a disk no
// domain XML describes: libvirt's prefixes (vda, sda, hda) and Proxmox's
// drive names (drive-scsi0, drive-virtio1, drive-sata0, drive-ide2); ""
// (virtio, the recovery site's default) when the name says nothing.
func busOfTarget(target string) string {
	t := strings.TrimPrefix(target, "drive-")
	for _, p := range []struct{ prefix, bus string }{
		{"virtio", "virtio"}, {"vd", "virtio"}, {"scsi", "scsi"}, {"sd", "scsi"},
		{"sata", "sata"}, {"ide", "ide"}, {"hd", "ide"},
	} {
		if strings.HasPrefix(t, p.prefix) {
			return p.bus
		}
	}
	return ""
}

// Definition returns the definition of a plain QEMU or Proxmox VM as its
// QEMU reports it: vCPUs (query-cpus-fast), boot memory
// (query-memory-size-summary), machine type (the QOM type of /machine),
// firmware (efi when a pflash device has a drive), the kernel it boots
// directly (-kernel, -initrd and -append, when qcdp can read QEMU's
// command line), and the NICs that report a receive filter (virtio-net;
// query-rx-filter), their model from the device's QOM type. QEMU does not
// know which network a NIC is on, so NICs have none. disks are vm's disks
// as Disks returned them; their bus is guessed from their target
// (Proxmox's drive-scsi0 is scsi), and names maps the target of each
// protected disk to its stream name. It talks through the connection QMP
// handed out for vm if one is open (QEMU serves one client at a time),
// else on a connection of its own.
func (s *Sockets) Definition(ctx context.Context, vm VM, disks []Disk, names map[string]string) (record.VMDefinition, error) {
	var c *qmp.Client
	if h, ok := s.holding(vm.Socket); ok {
		c = h.c
	} else {
		var err error
		if c, err = s.QMP(ctx, vm); err != nil {
			return record.VMDefinition{}, err
		}
		defer c.Close()
	}
	def, err := qmpDefinition(ctx, c, vm, disks, names)
	if err == nil {
		def, err = fitDefinition(def, s.logger())
	}
	if err != nil {
		return record.VMDefinition{}, fmt.Errorf("hypervisor: definition of VM %s on %s: %w", vm.ID, vm.Socket, err)
	}
	return def, nil
}

// SetLogger sets where s logs what a definition leaves out (Definition).
func (s *Sockets) SetLogger(l *slog.Logger) { s.log.Store(l) }

func (s *Sockets) logger() *slog.Logger {
	if l := s.log.Load(); l != nil {
		return l
	}
	return slog.Default()
}

// nicModels maps the QOM type of a NIC device to its model.
var nicModels = map[string]string{
	"virtio-net-pci": "virtio", "virtio-net-pci-non-transitional": "virtio", "virtio-net-pci-transitional": "virtio",
	"virtio-net-device": "virtio", "virtio-net-ccw": "virtio",
	"e1000": "e1000", "e1000e": "e1000e", "rtl8139": "rtl8139", "vmxnet3": "vmxnet3", "ne2k_pci": "ne2k_pci", "pcnet": "pcnet",
}

func qmpDefinition(ctx context.Context, c *qmp.Client, vm VM, disks []Disk, names map[string]string) (record.VMDefinition, error) {
	def := record.VMDefinition{ID: vm.ID, Name: vm.Name, Source: definitionSource(vm.Socket), Firmware: "bios"}
	cpus, err := c.QueryCPUsFast(ctx)
	if err != nil {
		return record.VMDefinition{}, err
	}
	def.VCPUs = len(cpus)
	if len(cpus) > 0 {
		def.Arch = cpus[0].Target
	}
	if p, err := QEMUProcess(ctx, c); err == nil {
		// Where qcdp can read it: QEMU may be in another PID namespace.
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p.PID))
		if err == nil && p.Alive() {
			def.Kernel, def.Initrd, def.Cmdline = directBoot(strings.Split(strings.TrimSuffix(string(b), "\x00"), "\x00"))
		}
	}
	mem, err := c.QueryMemorySizeSummary(ctx)
	if err != nil {
		return record.VMDefinition{}, err
	}
	def.MemoryMiB = ceilMiB(mem.BaseMemory)
	if def.Machine, err = c.QueryMachineType(ctx); err != nil {
		return record.VMDefinition{}, err
	}
	devs, err := queryBlock(ctx, c)
	if err != nil {
		return record.VMDefinition{}, err
	}
	for _, d := range devs {
		// The pflash devices of x86 (system.flash0/1) and Arm (virt.flash0/1).
		if d.Inserted != nil && strings.HasPrefix(d.QDev, "/machine/") && strings.Contains(d.QDev, ".flash") {
			def.Firmware = "efi"
		}
	}
	for _, dk := range disks {
		def.Disks = append(def.Disks, record.VMDisk{Disk: names[dk.Target], Target: dk.Target,
			Bus: busOfTarget(dk.Target), Size: uint64(max(dk.Size, 0))})
	}
	nics, err := c.QueryRxFilter(ctx)
	if err != nil && !qmp.IsCommandNotFound(err) {
		return record.VMDefinition{}, err
	}
	for _, n := range nics {
		var typ string
		if err := c.QOMGet(ctx, "/machine/peripheral/"+n.Name, "type", &typ); err != nil && !qmp.IsClass(err, qmp.ClassDeviceNotFound) && !qmp.IsClass(err, qmp.ClassGenericError) {
			return record.VMDefinition{}, err
		}
		def.NICs = append(def.NICs, record.VMNIC{MAC: strings.ToLower(n.MainMAC), Model: nicModels[typ]})
	}
	return def, nil
}

// directBoot returns the kernel, initrd and kernel command line a QEMU
// command line boots directly (-kernel, -initrd, -append), "" for each it
// does not give.
func directBoot(argv []string) (kernel, initrd, cmdline string) {
	for i := 1; i < len(argv)-1; i++ {
		opt, ok := strings.CutPrefix(argv[i], "-")
		if !ok {
			continue
		}
		opt = strings.TrimPrefix(opt, "-") // QEMU takes --kernel too
		switch opt {
		case "kernel":
			kernel = argv[i+1]
		case "initrd":
			initrd = argv[i+1]
		case "append":
			cmdline = argv[i+1]
		default:
			continue
		}
		i++
	}
	return kernel, initrd, cmdline
}

// definitionSource is the Source of the definition of the VM whose QMP
// socket is socket: "proxmox" where Proxmox VE puts them, else "qmp".
func definitionSource(socket string) string {
	if dir := filepath.Dir(socket); dir == filepath.Dir(ProxmoxSockets) || dir == "/run/qemu-server" {
		return sourceProxmox
	}
	return SourceQMP
}

// fitDefinition returns def as a Definition record can carry it (see the
// comment at the top of this file), or why it cannot.
func fitDefinition(def record.VMDefinition, log *slog.Logger) (record.VMDefinition, error) {
	log = log.With("vm", def.ID, "name", def.Name)
	disks := def.Disks[:0:0]
	for _, k := range def.Disks {
		switch {
		case k.Size == 0 && k.Disk == "":
			log.Info("VM definition: a disk of unknown size is left out", "target", k.Target)
			continue
		case k.Size == 0:
			return record.VMDefinition{}, fmt.Errorf("protected disk %s (%s): size not known", k.Target, k.Disk)
		}
		// An attribute the recovery site refuses is dropped, not the disk.
		if !diskTakes(record.VMDisk{Bus: k.Bus}) {
			log.Warn("VM definition: a disk bus the recovery site refuses is left out (the standby has its default)", "target", k.Target, "bus", k.Bus)
			k.Bus = ""
		}
		if !diskTakes(record.VMDisk{Cache: k.Cache}) {
			log.Warn("VM definition: a disk cache mode the recovery site refuses is left out", "target", k.Target, "cache", k.Cache)
			k.Cache = ""
		}
		if !diskTakes(record.VMDisk{Serial: k.Serial}) {
			log.Warn("VM definition: a disk serial the recovery site refuses is left out", "target", k.Target, "serial", k.Serial)
			k.Serial = ""
		}
		if err := validDevices([]record.VMDisk{k}, nil); err != nil {
			if k.Disk != "" {
				return record.VMDefinition{}, err
			}
			log.Info("VM definition: a disk the recovery site cannot use is left out", "target", k.Target, "err", err)
			continue
		}
		disks = append(disks, k)
	}
	def.Disks = disks
	nics := def.NICs[:0:0]
	for _, n := range def.NICs {
		if validDevices(nil, []record.VMNIC{{MAC: "52:54:00:00:00:00", Model: n.Model}}) != nil {
			log.Warn("VM definition: a NIC model the recovery site refuses is left out (the standby has its default)", "mac", n.MAC, "model", n.Model)
			n.Model = ""
		}
		if validDevices(nil, []record.VMNIC{{MAC: "52:54:00:00:00:00", Network: n.Network}}) != nil {
			log.Warn("VM definition: a NIC network name the recovery site refuses is left out (the recovery plan chooses one)", "mac", n.MAC, "network", n.Network)
			n.Network, n.Bridge = "", false
		}
		if err := validDevices(nil, []record.VMNIC{n}); err != nil {
			log.Info("VM definition: a NIC the recovery site cannot use is left out", "mac", n.MAC, "err", err)
			continue
		}
		nics = append(nics, n)
	}
	def.NICs = nics
	_, err := record.DefinitionRecord(def)
	if err != nil && def.XML != "" {
		without := def
		without.XML = ""
		if _, err = record.DefinitionRecord(without); err == nil {
			log.Warn("VM definition: the domain XML is too large to keep; the definition goes without it", "bytes", len(def.XML), "max", record.MaxDefinitionXML)
			def = without
		}
	}
	if err != nil {
		return record.VMDefinition{}, err
	}
	return def, nil
}

// diskTakes reports whether the recovery site takes a disk with the
// attributes set in k (its target and size are a probe's).
func diskTakes(k record.VMDisk) bool {
	k.Target, k.Size = "probe", 1
	return validDevices([]record.VMDisk{k}, nil) == nil
}

// validDevices checks disks and NICs as record.VMDefinition.Validate does.
func validDevices(disks []record.VMDisk, nics []record.VMNIC) error {
	probe := record.VMDefinition{ID: "probe", VCPUs: 1, MemoryMiB: 1, Disks: disks, NICs: nics}
	return probe.Validate()
}
