package record

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"regexp"
	"unicode/utf8"
)

// Definition bounds. On the wire and on disk: never change them.
const (
	// MaxDefinition bounds the payload of a Definition record: the JSON
	// description and the libvirt domain XML it may carry.
	MaxDefinition = 1 << 20
	// MaxDefinitionXML bounds the domain XML inside it.
	MaxDefinitionXML = 512 << 10
	// MaxVMDevices bounds the disks and the NICs of one definition.
	MaxVMDevices = 64
)

// VMDefinition is what the recovery site needs to know of a protected VM to
// start a standby of it: its hardware, its disks (by their names in the
// group's stream) and its NICs. A Definition record carries one VM's, as
// JSON; it holds for that VM from its record's seq until the next one of
// the same VM. Readers ignore fields they do not know, so a field can be
// added without a new layout.
type VMDefinition struct {
	ID     string `json:"id"`     // the VM's stable id, as in its disks' Member.VM
	Name   string `json:"name"`   // the VM's name on its host
	Source string `json:"source"` // "libvirt", "qmp" (plain QEMU) or "proxmox"

	VCPUs     int    `json:"vcpus"`      // 1..4096
	MemoryMiB int64  `json:"memory_mib"` // 1..16 TiB
	Machine   string `json:"machine,omitempty"`
	Arch      string `json:"arch,omitempty"`     // "x86_64" when empty
	Firmware  string `json:"firmware,omitempty"` // "bios" (or empty) or "efi"
	// Kernel, Initrd and Cmdline are set for a VM that boots a kernel
	// directly (paths on its host; the recovery plan says which
	// directories a standby may boot from).
	Kernel  string `json:"kernel,omitempty"`
	Initrd  string `json:"initrd,omitempty"`
	Cmdline string `json:"cmdline,omitempty"`

	Disks []VMDisk `json:"disks"`
	NICs  []VMNIC  `json:"nics,omitempty"`

	// XML is the libvirt domain XML the host had (inactive definition),
	// kept for the operator; the standby is built from the fields above.
	XML string `json:"xml,omitempty"`
}

// VMDisk is one disk of a VM definition.
type VMDisk struct {
	Disk   string `json:"disk"`             // its name in the group's stream; "" for a disk qcdp does not protect
	Target string `json:"target"`           // its name in the VM ("vda", "scsi0")
	Bus    string `json:"bus,omitempty"`    // "virtio", "scsi", "sata", "ide"; virtio when empty
	Size   uint64 `json:"size"`             // exact size in bytes
	Boot   int    `json:"boot,omitempty"`   // boot order, 1 first; 0 none
	Cache  string `json:"cache,omitempty"`  // informative
	Serial string `json:"serial,omitempty"` // the serial number the guest sees, if set
}

// VMNIC is one network interface of a VM definition.
type VMNIC struct {
	MAC     string `json:"mac"`               // "52:54:00:12:34:56"
	Model   string `json:"model,omitempty"`   // "virtio", "e1000", ...; virtio when empty
	Network string `json:"network,omitempty"` // the libvirt network, or the bridge when Bridge is set
	Bridge  bool   `json:"bridge,omitempty"`  // Network names a host bridge, not a libvirt network
}

var (
	// safeLabel is what a name placed into a standby's domain XML may hold.
	safeLabel = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$`)
	nicModels = map[string]bool{"": true, "virtio": true, "e1000": true, "e1000e": true, "rtl8139": true, "vmxnet3": true, "ne2k_pci": true, "pcnet": true}
	diskBuses = map[string]bool{"": true, "virtio": true, "scsi": true, "sata": true, "ide": true, "usb": true}
)

// Validate checks d as the replica does before it keeps or uses a
// definition: bounded numbers, names safe to place in a domain XML, MACs
// that parse, unique disk targets.
func (d *VMDefinition) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: definition of VM %q: %s", ErrInvalid, d.ID, fmt.Sprintf(format, a...))
	}
	for _, s := range []string{d.ID, d.Name, d.Source, d.Machine, d.Arch, d.Firmware} {
		if len(s) > MaxLabel || !utf8.ValidString(s) {
			return bad("a label of %d bytes, or not UTF-8", len(s))
		}
	}
	switch {
	case d.ID == "":
		return bad("no id")
	case d.VCPUs < 1 || d.VCPUs > 4096:
		return bad("%d vCPUs, want 1..4096", d.VCPUs)
	case d.MemoryMiB < 1 || d.MemoryMiB > 16<<20:
		return bad("%d MiB of memory, want 1..%d", d.MemoryMiB, 16<<20)
	case d.Machine != "" && !safeLabel.MatchString(d.Machine):
		return bad("machine type %q", d.Machine)
	case d.Arch != "" && !safeLabel.MatchString(d.Arch):
		return bad("arch %q", d.Arch)
	case d.Firmware != "" && d.Firmware != "bios" && d.Firmware != "efi":
		return bad("firmware %q, want bios or efi", d.Firmware)
	case len(d.Disks) > MaxVMDevices || len(d.NICs) > MaxVMDevices:
		return bad("%d disks and %d NICs, at most %d each", len(d.Disks), len(d.NICs), MaxVMDevices)
	case len(d.Kernel) > 4096 || len(d.Initrd) > 4096 || len(d.Cmdline) > 4096 || !utf8.ValidString(d.Kernel+d.Initrd+d.Cmdline):
		return bad("kernel, initrd or command line longer than 4096 bytes, or not UTF-8")
	case len(d.XML) > MaxDefinitionXML:
		return bad("domain XML of %d bytes, at most %d", len(d.XML), MaxDefinitionXML)
	}
	targets := map[string]bool{}
	for _, k := range d.Disks {
		if k.Disk != "" {
			if err := ValidDiskName(k.Disk); err != nil {
				return bad("disk %q: %v", k.Disk, err)
			}
		}
		if !safeLabel.MatchString(k.Target) || targets[k.Target] {
			return bad("disk target %q empty, unsafe or repeated", k.Target)
		}
		targets[k.Target] = true
		if !diskBuses[k.Bus] {
			return bad("disk %s: bus %q", k.Target, k.Bus)
		}
		if k.Size == 0 || k.Size > MaxDiskSize || k.Boot < 0 || k.Boot > 1024 {
			return bad("disk %s: size %d or boot order %d out of bounds", k.Target, k.Size, k.Boot)
		}
		if k.Serial != "" && !safeLabel.MatchString(k.Serial) {
			return bad("disk %s: serial %q", k.Target, k.Serial)
		}
		if k.Cache != "" && !safeLabel.MatchString(k.Cache) {
			return bad("disk %s: cache %q", k.Target, k.Cache)
		}
	}
	for i, n := range d.NICs {
		if _, err := net.ParseMAC(n.MAC); err != nil || len(n.MAC) != 17 {
			return bad("NIC %d: MAC %q", i, n.MAC)
		}
		if !nicModels[n.Model] {
			return bad("NIC %d: model %q", i, n.Model)
		}
		if n.Network != "" && !safeLabel.MatchString(n.Network) {
			return bad("NIC %d: network %q", i, n.Network)
		}
	}
	return nil
}

// DefinitionRecord returns the Definition record (its seq and time unset)
// that carries d. Its Name is d's id.
func DefinitionRecord(d VMDefinition) (Record, error) {
	if err := d.Validate(); err != nil {
		return Record{}, err
	}
	// Not escaped for HTML: a domain XML's < > & stay one byte each.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(d); err != nil {
		return Record{}, fmt.Errorf("%w: definition of VM %q: %v", ErrInvalid, d.ID, err)
	}
	p := bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
	if len(p) > MaxDefinition || len(d.ID) > MaxName {
		return Record{}, fmt.Errorf("%w: definition of VM %q is %d bytes, at most %d", ErrInvalid, d.ID, len(p), MaxDefinition)
	}
	return Record{Kind: Definition, Name: d.ID, Length: uint64(len(p)), Payload: p}, nil
}

// DecodeDefinition decodes a Definition record's payload and validates it.
func DecodeDefinition(p []byte) (VMDefinition, error) {
	var d VMDefinition
	if len(p) > MaxDefinition {
		return d, fmt.Errorf("%w: definition of %d bytes, at most %d", ErrInvalid, len(p), MaxDefinition)
	}
	dec := json.NewDecoder(bytes.NewReader(p))
	if err := dec.Decode(&d); err != nil {
		return VMDefinition{}, fmt.Errorf("%w: definition: %v", ErrInvalid, err)
	}
	if dec.More() {
		return VMDefinition{}, fmt.Errorf("%w: definition: bytes after the JSON object", ErrInvalid)
	}
	if err := d.Validate(); err != nil {
		return VMDefinition{}, err
	}
	return d, nil
}

// Definition decodes the VM definition a Definition record carries; its
// id must be the record's Name.
func (r *Record) Definition() (VMDefinition, error) {
	if r.Kind != Definition {
		return VMDefinition{}, fmt.Errorf("%w: a %v record defines no VM", ErrInvalid, r.Kind)
	}
	d, err := DecodeDefinition(r.Payload)
	if err == nil && d.ID != r.Name {
		err = fmt.Errorf("%w: definition of VM %q in a record named %q", ErrInvalid, d.ID, r.Name)
	}
	return d, err
}
