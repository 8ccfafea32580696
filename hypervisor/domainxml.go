package hypervisor

import (
	"encoding/xml"
	"fmt"
	"strings"
)

// Metadata namespaces. Never change: domains carry them in their XML.
const (
	// LabelsNamespace is qcdp's libvirt metadata namespace (see the package
	// doc for the element).
	LabelsNamespace = "https://qcdp.dev/xmlns/1"
	// novaNamespacePrefix starts every version of Nova's namespace
	// (http://openstack.org/xmlns/libvirt/nova/1.1, ...).
	novaNamespacePrefix = "http://openstack.org/xmlns/libvirt/nova/"
)

// domainXML is the part of libvirt's domain XML read here.
type domainXML struct {
	ID       string `xml:"id,attr"` // present while running
	Name     string `xml:"name"`
	UUID     string `xml:"uuid"`
	Metadata struct {
		Items []xmlNode `xml:",any"`
	} `xml:"metadata"`
	Disks []diskXML `xml:"devices>disk"`

	// What a definition of the VM reads (definition.go).
	VCPU   string `xml:"vcpu"` // the maximum vCPUs
	Memory struct {
		Unit  string `xml:"unit,attr"` // KiB when empty
		Value string `xml:",chardata"`
	} `xml:"memory"`
	OS struct {
		Firmware string `xml:"firmware,attr"` // "efi", "bios" or empty
		Type     struct {
			Arch    string `xml:"arch,attr"`
			Machine string `xml:"machine,attr"`
		} `xml:"type"`
		Loader  *struct{} `xml:"loader"`
		Kernel  string    `xml:"kernel"` // direct boot
		Initrd  string    `xml:"initrd"`
		Cmdline string    `xml:"cmdline"`
	} `xml:"os"`
	Interfaces []interfaceXML `xml:"devices>interface"`
}

// interfaceXML is one <interface> of a domain.
type interfaceXML struct {
	Type string `xml:"type,attr"` // network, bridge, user, direct, ...
	MAC  struct {
		Address string `xml:"address,attr"`
	} `xml:"mac"`
	Model struct {
		Type string `xml:"type,attr"`
	} `xml:"model"`
	Source struct {
		Network string `xml:"network,attr"`
		Bridge  string `xml:"bridge,attr"`
	} `xml:"source"`
}

type diskXML struct {
	Type   string `xml:"type,attr"`   // file, block, network, volume
	Device string `xml:"device,attr"` // disk, cdrom, floppy, lun
	Driver struct {
		Type  string `xml:"type,attr"` // qcow2, raw
		Cache string `xml:"cache,attr"`
	} `xml:"driver"`
	Source struct {
		File     string `xml:"file,attr"`
		Dev      string `xml:"dev,attr"`
		Protocol string `xml:"protocol,attr"`
		Name     string `xml:"name,attr"`
		Index    int    `xml:"index,attr"` // node names libvirt-<index>-format/-storage
	} `xml:"source"`
	Target struct {
		Dev string `xml:"dev,attr"`
		Bus string `xml:"bus,attr"`
	} `xml:"target"`
	Boot struct {
		Order int `xml:"order,attr"`
	} `xml:"boot"`
	Serial string `xml:"serial"`
	Alias  struct {
		Name string `xml:"name,attr"`
	} `xml:"alias"`
}

// xmlNode is any element, kept whole.
type xmlNode struct {
	XMLName  xml.Name
	Attrs    []xml.Attr `xml:",any,attr"`
	Text     string     `xml:",chardata"`
	Children []xmlNode  `xml:",any"`
}

func (n xmlNode) attr(local string) string {
	for _, a := range n.Attrs {
		if a.Name.Local == local {
			return a.Value
		}
	}
	return ""
}

func parseDomainXML(doc string) (domainXML, error) {
	var d domainXML
	if err := xml.Unmarshal([]byte(doc), &d); err != nil {
		return domainXML{}, fmt.Errorf("hypervisor: domain XML: %w", err)
	}
	return d, nil
}

// labels returns the domain's qcdp and Nova labels, nil when it has none.
func (d domainXML) labels() map[string]string {
	var labels map[string]string
	set := func(k, v string) {
		if k == "" || v == "" {
			return
		}
		if labels == nil {
			labels = map[string]string{}
		}
		labels[k] = v
	}
	for _, item := range d.Metadata.Items {
		if strings.HasPrefix(item.XMLName.Space, novaNamespacePrefix) && item.XMLName.Local == "instance" {
			for _, c := range item.Children {
				switch c.XMLName.Local {
				case "name":
					set("nova.name", strings.TrimSpace(c.Text))
				case "flavor":
					set("nova.flavor", c.attr("name"))
				case "owner":
					for _, o := range c.Children {
						switch o.XMLName.Local {
						case "user", "project":
							set("nova."+o.XMLName.Local, strings.TrimSpace(o.Text))
							set("nova."+o.XMLName.Local+"-uuid", o.attr("uuid"))
						}
					}
				}
			}
		}
	}
	// qcdp's own labels last: they win over Nova's.
	for _, item := range d.Metadata.Items {
		if item.XMLName.Space == LabelsNamespace && item.XMLName.Local == "labels" {
			for _, c := range item.Children {
				if c.XMLName.Space == LabelsNamespace && c.XMLName.Local == "label" {
					set(c.attr("key"), strings.TrimSpace(c.Text))
				}
			}
		}
	}
	return labels
}

// protected reports whether qcdp protects the disk: device='disk' (not
// cdrom, floppy or lun) with a target.
func (x diskXML) protected() bool {
	return (x.Device == "" || x.Device == "disk") && x.Target.Dev != ""
}

// file is where the disk's data is: a file, a block device, or for a
// network disk its protocol and name.
func (x diskXML) file() string {
	switch {
	case x.Source.File != "":
		return x.Source.File
	case x.Source.Dev != "":
		return x.Source.Dev
	case x.Source.Protocol != "":
		return x.Source.Protocol + ":" + x.Source.Name
	}
	return ""
}
