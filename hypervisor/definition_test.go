package hypervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/qmp"
	"github.com/qcdp/qcdp/qmp/qmptest"
	"github.com/qcdp/qcdp/record"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// TestLibvirtDefinitionFixtures reads the definition out of golden domain
// XML documents (testdata/domain-*.xml) as libvirt writes them.
func TestLibvirtDefinitionFixtures(t *testing.T) {
	const gib = 1 << 30
	tests := []struct {
		file  string
		vm    VM
		disks []Disk
		names map[string]string
		want  record.VMDefinition
	}{{
		// virtio, scsi and sata disks (one not protected, a cdrom left
		// out, a serial with spaces dropped), firmware='efi', a network
		// and a bridge NIC (a user NIC left out), memory in GiB.
		file: "domain-efi-mixed.xml",
		vm:   VM{ID: "3c5b9d1e-7a51-4f0e-9b8e-2f6d1c4a9e01", Name: "db-1", Source: SourceLibvirt},
		disks: []Disk{
			{Target: "vda", Size: 20 * gib}, {Target: "sda", Size: 100 * gib}, {Target: "sdb", Size: 10 * gib},
		},
		names: map[string]string{"vda": "3c5b9d1e-7a51-4f0e-9b8e-2f6d1c4a9e01.vda", "sda": "3c5b9d1e-7a51-4f0e-9b8e-2f6d1c4a9e01.sda"},
		want: record.VMDefinition{ID: "3c5b9d1e-7a51-4f0e-9b8e-2f6d1c4a9e01", Name: "db-1", Source: "libvirt",
			VCPUs: 4, MemoryMiB: 4096, Machine: "pc-q35-7.2", Arch: "x86_64", Firmware: "efi",
			Disks: []record.VMDisk{
				{Disk: "3c5b9d1e-7a51-4f0e-9b8e-2f6d1c4a9e01.vda", Target: "vda", Bus: "virtio", Size: 20 * gib, Boot: 1, Cache: "none", Serial: "db1-root"},
				{Disk: "3c5b9d1e-7a51-4f0e-9b8e-2f6d1c4a9e01.sda", Target: "sda", Bus: "scsi", Size: 100 * gib, Cache: "none"},
				{Target: "sdb", Bus: "sata", Size: 10 * gib, Boot: 2},
			},
			NICs: []record.VMNIC{
				{MAC: "52:54:00:ab:cd:01", Model: "virtio", Network: "default"},
				{MAC: "52:54:00:ab:cd:02", Model: "e1000e", Network: "br-storage", Bridge: true},
			}},
	}, {
		// A pflash <loader> without firmware='efi', memory in the default
		// unit (KiB), the maximum vCPUs; an ide disk; a disk of unknown
		// size left out, a xen bus that becomes the default, a disk of
		// the running domain only added; a bridge NIC, a direct one left
		// out, an unknown model that becomes the default.
		file: "domain-loader-kib.xml",
		vm:   VM{ID: "a1b2c3d4-0000-4000-8000-000000000002", Name: "web-2", Source: SourceLibvirt},
		disks: []Disk{
			{Target: "hda", Size: 8 * gib}, {Target: "xvda", Size: gib}, {Target: "vdc", Size: 3 * gib},
		},
		names: map[string]string{"hda": "w.hda", "vdc": "w.vdc"},
		want: record.VMDefinition{ID: "a1b2c3d4-0000-4000-8000-000000000002", Name: "web-2", Source: "libvirt",
			VCPUs: 2, MemoryMiB: 2048, Machine: "pc-i440fx-7.2", Arch: "x86_64", Firmware: "efi",
			Disks: []record.VMDisk{
				{Disk: "w.hda", Target: "hda", Bus: "ide", Size: 8 * gib, Cache: "writeback"},
				{Target: "xvda", Size: gib},
				{Disk: "w.vdc", Target: "vdc", Bus: "virtio", Size: 3 * gib},
			},
			NICs: []record.VMNIC{
				{MAC: "52:54:00:00:00:21", Model: "rtl8139", Network: "vmbr0", Bridge: true},
				{MAC: "52:54:00:00:00:23", Network: "lan"},
			}},
	}, {
		// BIOS, memory in bytes (rounded up to MiB), a running Nova
		// instance's live XML booting a kernel directly, no NIC.
		file:  "domain-bios-bytes.xml",
		vm:    VM{ID: "5e3c1d0a-9f8b-4c7d-a6e5-4b3a2c1d0e0f", Name: "nova-instance-0000002a", Source: SourceLibvirt},
		disks: []Disk{{Target: "vda", Size: gib}},
		names: map[string]string{"vda": "n.vda"},
		want: record.VMDefinition{ID: "5e3c1d0a-9f8b-4c7d-a6e5-4b3a2c1d0e0f", Name: "nova-instance-0000002a", Source: "libvirt",
			VCPUs: 1, MemoryMiB: 1001, Machine: "pc-i440fx-7.2", Arch: "x86_64", Firmware: "bios",
			Kernel: "/var/lib/nova/instances/5e3c1d0a/kernel", Initrd: "/var/lib/nova/instances/5e3c1d0a/ramdisk",
			Cmdline: "root=/dev/vda console=ttyS0",
			Disks:   []record.VMDisk{{Disk: "n.vda", Target: "vda", Bus: "virtio", Size: gib}}},
	}}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			doc, err := os.ReadFile(filepath.Join("testdata", tt.file))
			if err != nil {
				t.Fatal(err)
			}
			def, err := libvirtDefinition(tt.vm, string(doc), tt.disks, tt.names)
			if err == nil {
				def, err = fitDefinition(def, quiet)
			}
			if err != nil {
				t.Fatal(err)
			}
			if def.XML != string(doc) {
				t.Errorf("the definition does not keep the domain XML as it was")
			}
			def.XML = ""
			if !reflect.DeepEqual(def, tt.want) {
				got, _ := json.MarshalIndent(def, "", "  ")
				want, _ := json.MarshalIndent(tt.want, "", "  ")
				t.Fatalf("definition\n%s\nwant\n%s", got, want)
			}
			// It is what a Definition record carries, and reads back.
			def.XML = string(doc)
			r, err := record.DefinitionRecord(def)
			if err != nil {
				t.Fatal(err)
			}
			back, err := r.Definition()
			if err != nil || !reflect.DeepEqual(back, def) {
				t.Fatalf("read back: %+v, %v", back, err)
			}
		})
	}
}

func TestMemoryUnits(t *testing.T) {
	for _, tt := range []struct {
		value, unit string
		mib         int64
	}{
		{"1048576", "", 1024}, {"1048576", "KiB", 1024}, {"1048576", "k", 1024}, {"1048576", "K", 1024},
		{"1024000", "KB", 977}, // 1,024,000,000 bytes
		{"512", "MiB", 512}, {"512", "M", 512}, {"512", "mib", 512}, {"1000", "MB", 954},
		{"4", "GiB", 4096}, {"4", "G", 4096}, {"4", "GB", 3815},
		{"1", "TiB", 1 << 20}, {"1", "T", 1 << 20},
		{"1", "PiB", 1 << 30}, {"1", "EiB", 1 << 40},
		{"1048576", "b", 1}, {"1048577", "bytes", 2}, {"1", "byte", 1}, {"0", "KiB", 0},
		{" 2048 ", "MiB", 2048},
	} {
		got, err := memoryMiB(tt.value, tt.unit)
		if err != nil || got != tt.mib {
			t.Errorf("memoryMiB(%q, %q) = %d, %v; want %d", tt.value, tt.unit, got, err, tt.mib)
		}
	}
	for _, bad := range []struct{ value, unit string }{
		{"x", "KiB"}, {"-1", "KiB"}, {"1", "XiB"}, {"1", "KiX"}, {"1", "KiBB"}, {"16", "EiB"}, {"18446744073709551615", "KiB"},
	} {
		if got, err := memoryMiB(bad.value, bad.unit); err == nil {
			t.Errorf("memoryMiB(%q, %q) = %d, want an error", bad.value, bad.unit, got)
		}
	}
}

// TestDefinitionBounds: an XML larger than the record holds is dropped and
// the rest of the definition kept; a protected disk it cannot describe is
// an error, an unprotected one is left out.
func TestDefinitionBounds(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("testdata", "domain-bios-bytes.xml"))
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Replace(string(doc), "<devices>", "<!-- "+strings.Repeat("x", record.MaxDefinitionXML)+" --><devices>", 1)
	vm := VM{ID: "vm", Name: "n"}
	var logged bytes.Buffer
	def, err := libvirtDefinition(vm, big, []Disk{{Target: "vda", Size: 1 << 30}}, map[string]string{"vda": "vm.vda"})
	if err == nil {
		def, err = fitDefinition(def, slog.New(slog.NewTextHandler(&logged, nil)))
	}
	if err != nil {
		t.Fatal(err)
	}
	if def.XML != "" || def.VCPUs != 1 || len(def.Disks) != 1 || !strings.Contains(logged.String(), "too large") {
		t.Fatalf("a too large XML: XML of %d bytes, %+v; logged %q", len(def.XML), def, logged.String())
	}
	// A protected disk whose size is not known.
	def, err = libvirtDefinition(vm, string(doc), nil, map[string]string{"vda": "vm.vda"})
	if err == nil {
		_, err = fitDefinition(def, quiet)
	}
	if err == nil {
		t.Fatal("a protected disk of unknown size was accepted")
	}
	// An unprotected one is left out.
	def, err = libvirtDefinition(vm, string(doc), nil, nil)
	if err == nil {
		def, err = fitDefinition(def, quiet)
	}
	if err != nil || len(def.Disks) != 0 {
		t.Fatalf("an unprotected disk of unknown size: %+v, %v", def.Disks, err)
	}
	// No <vcpu>, or no memory: not a definition.
	for _, bad := range []string{
		`<domain><name>x</name><memory>1024</memory></domain>`,
		`<domain><name>x</name><vcpu>1</vcpu><memory unit='parsec'>1</memory></domain>`,
		`<domain><name>x</name><vcpu>1</vcpu></domain>`,
	} {
		if def, err := libvirtDefinition(vm, bad, nil, nil); err == nil {
			if _, err = fitDefinition(def, quiet); err == nil {
				t.Errorf("%s: accepted", bad)
			}
		}
	}
}

func TestDirectBoot(t *testing.T) {
	for _, tt := range []struct {
		argv                    []string
		kernel, initrd, cmdline string
	}{
		{[]string{"qemu-system-x86_64", "-m", "64", "-kernel", "/b/vmlinuz", "-initrd", "/b/initrd", "-append", "console=ttyS0 quiet"},
			"/b/vmlinuz", "/b/initrd", "console=ttyS0 quiet"},
		{[]string{"qemu-system-x86_64", "--kernel", "/b/vmlinuz", "-name", "x"}, "/b/vmlinuz", "", ""},
		{[]string{"qemu-system-x86_64", "-name", "kernel", "-drive", "file=/i/a"}, "", "", ""},
		{[]string{"qemu-system-x86_64", "-kernel"}, "", "", ""},
		{nil, "", "", ""},
	} {
		k, i, c := directBoot(tt.argv)
		if k != tt.kernel || i != tt.initrd || c != tt.cmdline {
			t.Errorf("directBoot(%q) = %q, %q, %q", tt.argv, k, i, c)
		}
	}
}

func TestBusOfTarget(t *testing.T) {
	for target, want := range map[string]string{
		"vda": "virtio", "sdb": "scsi", "hdc": "ide", "drive-scsi0": "scsi", "drive-virtio1": "virtio",
		"drive-sata2": "sata", "drive-ide0": "ide", "scsi3": "scsi", "disk0": "", "drive-efidisk0": "",
	} {
		if got := busOfTarget(target); got != want {
			t.Errorf("busOfTarget(%q) = %q, want %q", target, got, want)
		}
	}
}

// fakeDefinitionQEMU answers the commands a socket VM's definition asks,
// as QEMU 7.2 does for a q35 VM with OVMF in pflash, two vCPUs, 512 MiB
// and two virtio NICs (one added without an id).
func fakeDefinitionQEMU(c qmptest.Command) []string {
	switch c.Name {
	case "query-cpus-fast":
		return []string{qmptest.Return([]map[string]any{
			{"cpu-index": 0, "thread-id": 100, "qom-path": "/machine/unattached/device[0]", "target": "x86_64"},
			{"cpu-index": 1, "thread-id": 101, "qom-path": "/machine/unattached/device[1]", "target": "x86_64"},
		})}
	case "query-memory-size-summary":
		return []string{qmptest.Return(map[string]any{"base-memory": 512 << 20, "plugged-memory": 0})}
	case "qom-get":
		var a struct{ Path, Property string }
		c.Decode(&a)
		switch {
		case a.Path == "/machine" && a.Property == "type":
			return []string{qmptest.Return("pc-q35-7.2-machine")}
		case a.Path == "/machine/peripheral/net0" && a.Property == "type":
			return []string{qmptest.Return("virtio-net-pci")}
		}
		return []string{qmptest.Error(qmp.ClassDeviceNotFound, "Device '"+a.Path+"' not found")}
	case "query-block":
		return []string{qmptest.Return([]map[string]any{
			{"device": "pflash0", "qdev": "/machine/system.flash0", "removable": false,
				"inserted": map[string]any{"node-name": "#block1", "drv": "raw", "file": "/usr/share/OVMF/OVMF_CODE.fd"}},
			{"device": "drive-scsi0", "qdev": "scsi0", "removable": false,
				"inserted": map[string]any{"node-name": "#block2", "drv": "qcow2", "file": "/i/100.qcow2"}},
		})}
	case "query-rx-filter":
		return []string{qmptest.Return([]map[string]any{
			{"name": "net0", "main-mac": "BC:24:11:00:00:01", "promiscuous": false},
			{"name": "virtio-net-pci.1", "main-mac": "bc:24:11:00:00:02", "promiscuous": false},
		})}
	}
	return []string{qmptest.Error(qmp.ClassCommandNotFound, "The command "+c.Name+" has not been found")}
}

// TestSocketsDefinition reads a socket VM's definition through the
// connection QMP handed out (QEMU would queue a second one), and on a
// connection of its own when none is open.
func TestSocketsDefinition(t *testing.T) {
	srv := qmptest.NewServer(t, fakeDefinitionQEMU)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s := NewSockets(srv.Path())
	s.SetLogger(quiet)
	vm := VM{ID: "100", Name: "pve-100", Source: SourceQMP, Running: true, Socket: srv.Path()}
	disks := []Disk{{ID: "100/drive-scsi0", Target: "drive-scsi0", Size: 32 << 30}, {ID: "100/disk1", Target: "disk1", Size: 1 << 30}}
	names := map[string]string{"drive-scsi0": "100.drive-scsi0"}
	want := record.VMDefinition{ID: "100", Name: "pve-100", Source: "qmp", VCPUs: 2, MemoryMiB: 512,
		Machine: "pc-q35-7.2", Arch: "x86_64", Firmware: "efi",
		Disks: []record.VMDisk{
			{Disk: "100.drive-scsi0", Target: "drive-scsi0", Bus: "scsi", Size: 32 << 30},
			{Target: "disk1", Size: 1 << 30},
		},
		NICs: []record.VMNIC{{MAC: "bc:24:11:00:00:01", Model: "virtio"}, {MAC: "bc:24:11:00:00:02"}}}

	held, err := s.QMP(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	def, err := s.Definition(ctx, vm, disks, names)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(def, want) {
		t.Fatalf("definition %+v\nwant %+v", def, want)
	}
	if held.Closed() {
		t.Fatal("Definition closed the connection QMP handed out")
	}
	held.Close()
	if def, err = s.Definition(ctx, vm, disks, names); err != nil || !reflect.DeepEqual(def, want) {
		t.Fatalf("on a connection of its own: %+v, %v", def, err)
	}
	if _, ok := s.holding(vm.Socket); ok {
		t.Error("Definition left its own connection open")
	}
	if got := definitionSource("/var/run/qemu-server/100.qmp"); got != "proxmox" {
		t.Errorf("a Proxmox socket's source is %q", got)
	}
	if got := definitionSource("/run/qemu-server/100.qmp"); got != "proxmox" {
		t.Errorf("a Proxmox socket's source is %q", got)
	}
}

// TestSocketsDefinitionQEMU reads the definition of a real QEMU.
func TestSocketsDefinitionQEMU(t *testing.T) {
	needTools(t, map[string]string{"qemu-system-x86_64": "qemu-system-x86", "qemu-img": "qemu-utils"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	img := filepath.Join(dir, "a.qcow2")
	createImage(t, img, "qcow2", 64<<20, "compat=1.1")
	socket := filepath.Join(dir, "101.qmp")
	q := startQEMU(t, dir, socket, "-name", "web1", "-smp", "2",
		"-blockdev", "driver=file,node-name=a-file,filename="+img,
		"-blockdev", "driver=qcow2,node-name=a-fmt,file=a-file",
		"-device", "virtio-blk-pci,drive=a-fmt,id=disk0",
		"-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,id=net0,mac=52:54:00:12:34:56",
		"-netdev", "user,id=n1", "-device", "e1000,netdev=n1,id=net1,mac=52:54:00:12:34:57")
	src := NewSockets(socket)
	src.SetLogger(quiet)
	vms, err := src.ListVMs(ctx)
	if err != nil || len(vms) != 1 {
		t.Fatalf("ListVMs = %+v, %v\n%s", vms, err, q.logText())
	}
	disks, err := src.Disks(ctx, vms[0])
	if err != nil {
		t.Fatal(err)
	}
	def, err := src.Definition(ctx, vms[0], disks, map[string]string{"disk0": "101.disk0"})
	if err != nil {
		t.Fatalf("Definition: %v\n%s", err, q.logText())
	}
	// -M pc is the newest i440fx machine; e1000 has no receive filter
	// to report.
	if def.ID != "101" || def.Name != "web1" || def.Source != "qmp" || def.VCPUs != 2 || def.MemoryMiB != 64 ||
		!strings.HasPrefix(def.Machine, "pc-i440fx-") || def.Arch != "x86_64" || def.Firmware != "bios" ||
		!reflect.DeepEqual(def.Disks, []record.VMDisk{{Disk: "101.disk0", Target: "disk0", Size: 64 << 20}}) ||
		!reflect.DeepEqual(def.NICs, []record.VMNIC{{MAC: "52:54:00:12:34:56", Model: "virtio"}}) {
		t.Fatalf("definition of a real QEMU: %+v", def)
	}
}
