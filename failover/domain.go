package failover

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/record"
)

// metaNS is the namespace of the metadata qcdp puts in every standby
// domain: what tells a domain qcdp created from one it must not touch.
const metaNS = "https://qcdp.dev/xmlns/standby/1"

// standbyDisk is one disk of a standby: its overlay and the view under it.
type standbyDisk struct {
	Def     record.VMDisk
	Overlay string // the qcow2 overlay file
	Export  string // the NBD export name of the view ("fo.t.g/vm1.vda")
	Socket  string // the NBD unix socket serving it
}

// domainSpec is everything a standby domain's XML is made of.
type domainSpec struct {
	Name     string
	UUID     string // the domain's UUID, chosen by qcdp
	Type     string // kvm or qemu
	Def      record.VMDefinition
	Override configs.VMOverride
	Disks    []standbyDisk // in the definition's order, protected disks only
	NICs     []nicSpec
	Console  string // the serial console's log file
	// ConsoleSocket is a unix socket QEMU listens on for the serial
	// console ("" for none: only the log).
	ConsoleSocket string
	Tenant        string
	Group         string
	Mode          Mode
	PointSeq      uint64
	Machine       string // the machine type to ask for ("" lets libvirt pick)
	KernelDirs    []string
}

type nicSpec struct {
	MAC   string // "" lets libvirt make one
	Model string
	Net   configs.Network
}

type xDomain struct {
	XMLName  xml.Name `xml:"domain"`
	Type     string   `xml:"type,attr"`
	Name     string   `xml:"name"`
	UUID     string   `xml:"uuid,omitempty"`
	Metadata struct {
		Standby xStandby `xml:"qcdp:standby"`
	} `xml:"metadata"`
	Memory  xUnit    `xml:"memory"`
	VCPU    int      `xml:"vcpu"`
	OS      xOS      `xml:"os"`
	Feat    xFeat    `xml:"features"`
	OnOff   string   `xml:"on_poweroff"`
	OnReb   string   `xml:"on_reboot"`
	OnCrash string   `xml:"on_crash"`
	Devices xDevices `xml:"devices"`
}

type xStandby struct {
	NS     string `xml:"xmlns:qcdp,attr"`
	Tenant string `xml:"qcdp:tenant"`
	Group  string `xml:"qcdp:group"`
	VM     string `xml:"qcdp:vm"`
	Mode   string `xml:"qcdp:mode"`
	Seq    uint64 `xml:"qcdp:seq"`
}

type xUnit struct {
	Unit  string `xml:"unit,attr"`
	Value int64  `xml:",chardata"`
}

type xOS struct {
	Firmware string `xml:"firmware,attr,omitempty"`
	Type     struct {
		Arch    string `xml:"arch,attr"`
		Machine string `xml:"machine,attr,omitempty"`
		Value   string `xml:",chardata"`
	} `xml:"type"`
	Kernel  string `xml:"kernel,omitempty"`
	Initrd  string `xml:"initrd,omitempty"`
	Cmdline string `xml:"cmdline,omitempty"`
}

type xFeat struct {
	ACPI *struct{} `xml:"acpi"`
	APIC *struct{} `xml:"apic"`
}

type xDevices struct {
	Disks  []xDisk `xml:"disk"`
	NICs   []xNIC  `xml:"interface"`
	Serial xSerial `xml:"serial"`
}

type xDisk struct {
	Type   string `xml:"type,attr"`
	Device string `xml:"device,attr"`
	Driver struct {
		Name string `xml:"name,attr"`
		Type string `xml:"type,attr"`
	} `xml:"driver"`
	Source struct {
		File string `xml:"file,attr"`
	} `xml:"source"`
	Backing xBacking `xml:"backingStore"`
	Target  struct {
		Dev string `xml:"dev,attr"`
		Bus string `xml:"bus,attr"`
	} `xml:"target"`
	Boot   *xBoot `xml:"boot"`
	Serial string `xml:"serial,omitempty"`
}

type xBacking struct {
	Type   string `xml:"type,attr"`
	Format struct {
		Type string `xml:"type,attr"`
	} `xml:"format"`
	Source struct {
		Protocol string `xml:"protocol,attr"`
		Name     string `xml:"name,attr"`
		Host     struct {
			Transport string `xml:"transport,attr"`
			Socket    string `xml:"socket,attr"`
		} `xml:"host"`
	} `xml:"source"`
	End struct{} `xml:"backingStore"` // the view has no backing file
}

type xBoot struct {
	Order int `xml:"order,attr"`
}

type xNIC struct {
	Type string `xml:"type,attr"`
	MAC  *struct {
		Address string `xml:"address,attr"`
	} `xml:"mac"`
	Source struct {
		Network string `xml:"network,attr,omitempty"`
		Bridge  string `xml:"bridge,attr,omitempty"`
	} `xml:"source"`
	Model struct {
		Type string `xml:"type,attr"`
	} `xml:"model"`
}

type xSerial struct {
	Type   string `xml:"type,attr"`
	Source struct {
		Mode string `xml:"mode,attr,omitempty"`
		Path string `xml:"path,attr"`
	} `xml:"source"`
	Log *struct {
		File   string `xml:"file,attr"`
		Append string `xml:"append,attr"`
	} `xml:"log"`
	Target struct {
		Port int `xml:"port,attr"`
	} `xml:"target"`
}

// domainXML builds a standby's domain XML. Nothing the protected host sent
// reaches it unchecked: the definition passed record.Validate (names,
// MACs, models, buses are from closed sets or a safe alphabet) and
// encoding/xml escapes every value; a kernel or initrd path is used only
// inside the plan's kernel_dirs.
func domainXML(s domainSpec) (string, error) {
	d := xDomain{Type: s.Type, Name: s.Name, UUID: s.UUID, OnOff: "destroy", OnReb: "restart", OnCrash: "destroy"}
	d.Metadata.Standby = xStandby{NS: metaNS, Tenant: s.Tenant, Group: s.Group, VM: s.Def.ID, Mode: string(s.Mode), Seq: s.PointSeq}
	mem := s.Def.MemoryMiB
	if s.Override.MemoryMiB > 0 {
		mem = s.Override.MemoryMiB
	}
	d.Memory = xUnit{Unit: "MiB", Value: mem}
	d.VCPU = s.Def.VCPUs
	if s.Override.VCPUs > 0 {
		d.VCPU = s.Override.VCPUs
	}
	d.OS.Type.Arch = s.Def.Arch
	if d.OS.Type.Arch == "" {
		d.OS.Type.Arch = "x86_64"
	}
	d.OS.Type.Machine = s.Machine
	d.OS.Type.Value = "hvm"
	if s.Def.Firmware == "efi" {
		d.OS.Firmware = "efi"
	}
	if s.Def.Kernel != "" {
		for _, p := range []string{s.Def.Kernel, s.Def.Initrd} {
			if p != "" && !inDirs(p, s.KernelDirs) {
				return "", fmt.Errorf("%w: VM %s boots the kernel or initrd %s directly: allow its directory in the recovery plan's kernel_dirs (now %v)",
					ErrPlan, s.Def.Name, p, s.KernelDirs)
			}
		}
		d.OS.Kernel, d.OS.Initrd, d.OS.Cmdline = s.Def.Kernel, s.Def.Initrd, s.Def.Cmdline
		if s.Override.CmdlineAppend != "" {
			d.OS.Cmdline = strings.TrimSpace(d.OS.Cmdline + " " + s.Override.CmdlineAppend)
		}
	}
	d.Feat.ACPI, d.Feat.APIC = &struct{}{}, &struct{}{}
	for _, k := range s.Disks {
		var x xDisk
		x.Type, x.Device = "file", "disk"
		x.Driver.Name, x.Driver.Type = "qemu", "qcow2"
		x.Source.File = k.Overlay
		x.Backing.Type = "network"
		x.Backing.Format.Type = "raw"
		x.Backing.Source.Protocol = "nbd"
		x.Backing.Source.Name = k.Export
		x.Backing.Source.Host.Transport = "unix"
		x.Backing.Source.Host.Socket = k.Socket
		x.Target.Dev = k.Def.Target
		x.Target.Bus = k.Def.Bus
		if x.Target.Bus == "" {
			x.Target.Bus = "virtio"
		}
		if k.Def.Boot > 0 {
			x.Boot = &xBoot{Order: k.Def.Boot}
		}
		x.Serial = k.Def.Serial
		d.Devices.Disks = append(d.Devices.Disks, x)
	}
	for _, n := range s.NICs {
		var x xNIC
		if n.Net.Bridge {
			x.Type, x.Source.Bridge = "bridge", n.Net.Name
		} else {
			x.Type, x.Source.Network = "network", n.Net.Name
		}
		if n.MAC != "" {
			x.MAC = &struct {
				Address string `xml:"address,attr"`
			}{n.MAC}
		}
		x.Model.Type = n.Model
		if x.Model.Type == "" {
			x.Model.Type = "virtio"
		}
		d.Devices.NICs = append(d.Devices.NICs, x)
	}
	// The serial console goes to a log file; with a socket, an operator
	// (or a test) can also type into it.
	if s.ConsoleSocket != "" {
		d.Devices.Serial.Type = "unix"
		d.Devices.Serial.Source.Mode = "bind"
		d.Devices.Serial.Source.Path = s.ConsoleSocket
		d.Devices.Serial.Log = &struct {
			File   string `xml:"file,attr"`
			Append string `xml:"append,attr"`
		}{s.Console, "on"}
	} else {
		d.Devices.Serial.Type = "file"
		d.Devices.Serial.Source.Path = s.Console
	}
	var b bytes.Buffer
	enc := xml.NewEncoder(&b)
	enc.Indent("", "  ")
	if err := enc.Encode(d); err != nil {
		return "", fmt.Errorf("failover: domain XML of %s: %w", s.Name, err)
	}
	return b.String() + "\n", nil
}

// inDirs reports whether path, cleaned, lies inside one of dirs.
func inDirs(path string, dirs []string) bool {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return false
	}
	for _, d := range dirs {
		if strings.HasPrefix(path, d+"/") {
			return true
		}
	}
	return false
}

// nicsFor maps a definition's NICs onto the recovery networks: the plan's
// networks for a failover, its test networks for a test. A NIC whose
// network the plan does not map fails a failover, naming it.
func nicsFor(def record.VMDefinition, plan *configs.Recovery, mode Mode, o configs.VMOverride) ([]nicSpec, error) {
	var macs []string
	if o.MAC != "keep" && o.MAC != "new" && o.MAC != "" {
		for _, m := range strings.Split(o.MAC, ",") {
			macs = append(macs, strings.TrimSpace(m))
		}
		if len(macs) != len(def.NICs) {
			return nil, fmt.Errorf("%w: VM %s has %d NICs, its mac override lists %d addresses", ErrPlan, def.Name, len(def.NICs), len(macs))
		}
	}
	var out []nicSpec
	for i, n := range def.NICs {
		src := configs.Network{Name: n.Network, Bridge: n.Bridge}
		var dst configs.Network
		if mode == ModeTest {
			var ok bool
			if dst, ok = plan.TestNetworks[src]; !ok {
				dst = plan.TestNetwork
			}
		} else {
			var ok bool
			if dst, ok = plan.Networks[src]; !ok {
				return nil, fmt.Errorf("%w: VM %s's NIC %s is on %s, which the recovery plan's networks do not map (add %q = \"…\")",
					ErrPlan, def.Name, n.MAC, src, src.String())
			}
		}
		mac := n.MAC
		switch {
		case macs != nil:
			mac = macs[i]
		case o.MAC == "new":
			mac = ""
		}
		out = append(out, nicSpec{MAC: mac, Model: n.Model, Net: dst})
	}
	return out, nil
}

// testNetworkXML is the isolated network a test failover defines when its
// test_network is missing: no <forward>, so its guests reach nothing
// outside it, and no addresses from the host.
func testNetworkXML(name string) string {
	var b strings.Builder
	b.WriteString("<network>\n  <name>")
	xml.EscapeText(&b, []byte(name))
	b.WriteString("</name>\n  <metadata><qcdp:test xmlns:qcdp=\"" + metaNS + "\"/></metadata>\n</network>\n")
	return b.String()
}

// machineAlias is the generic machine type a recovery site surely has,
// for a versioned one it may not ("pc-q35-7.2" → "q35").
func machineAlias(m string) string {
	switch {
	case strings.Contains(m, "q35"):
		return "q35"
	case strings.HasPrefix(m, "pc"), strings.Contains(m, "i440fx"):
		return "pc"
	}
	return ""
}

// domainName is the name of a VM's standby domain: its own name with the
// plan's suffix (test: with -qcdp-test), with every byte outside
// [A-Za-z0-9._+-] made '_'.
func domainName(def record.VMDefinition, mode Mode, suffix string) string {
	n := def.Name
	if n == "" {
		n = def.ID
	}
	b := []byte(n)
	for i, c := range b {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '+' || c == '-') {
			b[i] = '_'
		}
	}
	if len(b) > 100 {
		b = b[:100]
	}
	if len(b) > 0 && b[0] == '.' {
		b[0] = '_' // never "." nor ".."
	}
	if mode == ModeTest {
		return string(b) + "-qcdp-test"
	}
	return string(b) + suffix
}

// ours reports whether a domain's XML carries qcdp's standby metadata for
// this tenant's group.
func ours(domXML, tenant, group string) bool {
	var d struct {
		Meta struct {
			Inner []byte `xml:",innerxml"`
		} `xml:"metadata"`
	}
	if xml.Unmarshal([]byte(domXML), &d) != nil {
		return false
	}
	var st struct {
		XMLName xml.Name `xml:"standby"`
		Tenant  string   `xml:"tenant"`
		Group   string   `xml:"group"`
	}
	dec := xml.NewDecoder(bytes.NewReader(d.Meta.Inner))
	for {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Space == metaNS && se.Name.Local == "standby" {
			if dec.DecodeElement(&st, &se) != nil {
				return false
			}
			return st.Tenant == tenant && st.Group == group
		}
	}
}
