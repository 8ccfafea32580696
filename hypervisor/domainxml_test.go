package hypervisor

import (
	"maps"
	"testing"
)

func TestDomainLabels(t *testing.T) {
	tests := []struct {
		name string
		meta string
		want map[string]string
	}{
		{"none", ``, nil},
		{"qcdp", `<qcdp:labels xmlns:qcdp="https://qcdp.dev/xmlns/1"><qcdp:label key="tier"> gold </qcdp:label><qcdp:label key="group">db</qcdp:label><qcdp:label key="">x</qcdp:label></qcdp:labels>`,
			map[string]string{"tier": "gold", "group": "db"}},
		{"other namespace ignored", `<x:labels xmlns:x="https://example.com/1"><x:label key="tier">gold</x:label></x:labels>`, nil},
		{"nova", `<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
  <nova:package version="25.0.0"/>
  <nova:name>web-1</nova:name>
  <nova:flavor name="m1.small"><nova:memory>2048</nova:memory></nova:flavor>
  <nova:owner>
    <nova:user uuid="8f3b">admin</nova:user>
    <nova:project uuid="c0ff">demo</nova:project>
  </nova:owner>
</nova:instance>`, map[string]string{"nova.name": "web-1", "nova.flavor": "m1.small", "nova.user": "admin",
			"nova.user-uuid": "8f3b", "nova.project": "demo", "nova.project-uuid": "c0ff"}},
		{"qcdp wins over nova", `<qcdp:labels xmlns:qcdp="https://qcdp.dev/xmlns/1"><qcdp:label key="nova.project">gold-tenant</qcdp:label></qcdp:labels>
<nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.2"><nova:owner><nova:project uuid="c0ff">demo</nova:project></nova:owner></nova:instance>`,
			map[string]string{"nova.project": "gold-tenant", "nova.project-uuid": "c0ff"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := parseDomainXML(`<domain type='qemu'><name>x</name><metadata>` + tt.meta + `</metadata></domain>`)
			if err != nil {
				t.Fatal(err)
			}
			if got := d.labels(); !maps.Equal(got, tt.want) {
				t.Errorf("labels = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestDomainDisks(t *testing.T) {
	d, err := parseDomainXML(`<domain type='kvm' id='3'><name>vm</name><uuid>f377dfdf-603e-414a-81b2-fc9404c0feaf</uuid><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/i/a.qcow2' index='2'/><target dev='vda' bus='virtio'/><alias name='virtio-disk0'/></disk>
<disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg/b' index='1'/><target dev='vdb'/></disk>
<disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='rbd' name='pool/img' index='3'/><target dev='vdc'/></disk>
<disk type='file' device='cdrom'><source file='/i/x.iso' index='4'/><target dev='sda'/></disk>
</devices></domain>`)
	if err != nil {
		t.Fatal(err)
	}
	if d.ID != "3" || len(d.Disks) != 4 {
		t.Fatalf("parsed %+v", d)
	}
	want := []struct {
		file, format, target string
		index                int
	}{{"/i/a.qcow2", "qcow2", "vda", 2}, {"/dev/vg/b", "raw", "vdb", 1}, {"rbd:pool/img", "raw", "vdc", 3}}
	for i, w := range want {
		x := d.Disks[i]
		if x.file() != w.file || x.Driver.Type != w.format || x.Target.Dev != w.target || x.Source.Index != w.index {
			t.Errorf("disk %d = %+v, want %+v", i, x, w)
		}
	}
	if _, err := parseDomainXML(`<domain><name>`); err == nil {
		t.Error("truncated XML parsed")
	}
}

func TestLibvirtNodeNames(t *testing.T) {
	nodes := []namedNode{
		{NodeName: "libvirt-2-format", Driver: "qcow2"},
		{NodeName: "libvirt-2-storage", Driver: "file"},
		{NodeName: "libvirt-1-storage", Driver: "file"}, // raw without a format layer
	}
	var x diskXML
	for index, want := range map[int]string{2: "libvirt-2-format", 1: "libvirt-1-storage", 0: "", 7: ""} {
		x.Source.Index = index
		n, err := libvirtNode(nodes, x)
		if n.NodeName != want || (want == "") != (err != nil) {
			t.Errorf("index %d: %q, %v; want %q", index, n.NodeName, err, want)
		}
	}
}

func TestParseTarget(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/1000")
	tests := []struct{ in, uri, sock string }{
		{"", "qemu:///system", DefaultLibvirtSocket},
		{"/tmp/l.sock", "qemu:///system", "/tmp/l.sock"},
		{"qemu:///system", "qemu:///system", DefaultLibvirtSocket},
		{"qemu+unix:///system?socket=/x/s", "qemu:///system", "/x/s"},
		{"qemu:///session", "qemu:///session", "/run/user/1000/libvirt/libvirt-sock"},
		{"qemu+ssh://root@h/system", "qemu+ssh://root@h/system", ""},
		{"qemu+tcp://h/system", "qemu+tcp://h/system", ""},
	}
	for _, tt := range tests {
		uri, sock, err := parseTarget(tt.in)
		if err != nil || uri != tt.uri || sock != tt.sock {
			t.Errorf("parseTarget(%q) = %q, %q, %v; want %q, %q", tt.in, uri, sock, err, tt.uri, tt.sock)
		}
	}
	if _, _, err := parseTarget("qemu:///nowhere"); err == nil {
		t.Error("qemu:///nowhere accepted")
	}
}

func TestUUIDRoundTrip(t *testing.T) {
	const s = "f377dfdf-603e-414a-81b2-fc9404c0feaf"
	u, err := parseUUID(s)
	if err != nil || formatUUID(u) != s {
		t.Fatalf("round trip: %s, %v", formatUUID(u), err)
	}
	for _, bad := range []string{"", "f377dfdf", "zz77dfdf-603e-414a-81b2-fc9404c0feaf"} {
		if _, err := parseUUID(bad); err == nil {
			t.Errorf("parseUUID(%q) accepted", bad)
		}
	}
}

func TestDeviceTargetAndVersion(t *testing.T) {
	for in, want := range map[blockDevice]string{
		{Device: "drive-scsi0", QDev: "scsi0"}:                      "drive-scsi0",
		{QDev: "/machine/peripheral/disk0/virtio-backend"}:          "disk0",
		{QDev: "/machine/peripheral-anon/device[1]/virtio-backend"}: "/machine/peripheral-anon/device[1]/virtio-backend",
	} {
		if got := deviceTarget(in); got != want {
			t.Errorf("deviceTarget(%+v) = %q, want %q", in, got, want)
		}
	}
	img := func(format, compat string) imageInfo {
		i := imageInfo{Format: format}
		if compat != "" {
			i.FormatSpecific = &struct {
				Type string `json:"type"`
				Data struct {
					Compat string `json:"compat"`
				} `json:"data"`
			}{Type: format}
			i.FormatSpecific.Data.Compat = compat
		}
		return i
	}
	for _, tt := range []struct {
		img  imageInfo
		want int
	}{{img("qcow2", "1.1"), 3}, {img("qcow2", "0.10"), 2}, {img("qcow2", ""), 0}, {img("raw", ""), 0}} {
		if got := qcow2Version(tt.img); got != tt.want {
			t.Errorf("qcow2Version(%+v) = %d, want %d", tt.img, got, tt.want)
		}
	}
}
