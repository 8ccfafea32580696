package integration

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/qcdp/qcdp/integration/guest"
	"github.com/qcdp/qcdp/integration/guest/workload"
)

// guestDomain is a persistent libvirt domain that boots the test guest's
// kernel directly: one qcow2 disk (serial qcdp0), an optional NIC, a
// console socket and log, and the label qcdp-test=Label.
type guestDomain struct {
	Name, Label    string
	UUID           string // "": a new random one
	Kernel, Initrd string // readable by libvirt's QEMU user (guestKernel)
	Params         workload.Params
	Disk           string
	Network, MAC   string // no NIC when Network is ""
	ConsoleSock    string
	ConsoleLog     string
}

// XML is the domain's XML, and its UUID.
func (g guestDomain) XML() (xml, uuid string) {
	uuid = g.UUID
	if uuid == "" {
		var u [16]byte
		rand.Read(u[:])
		uuid = fmt.Sprintf("%x-%x-%x-%x-%x", u[:4], u[4:6], u[6:8], u[8:10], u[10:])
	}
	nic := ""
	if g.Network != "" {
		nic = fmt.Sprintf("\n    <interface type='network'><source network='%s'/><mac address='%s'/><model type='virtio'/></interface>", g.Network, g.MAC)
	}
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <uuid>%s</uuid>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <metadata>
    <qcdp:labels xmlns:qcdp="https://qcdp.dev/xmlns/1"><qcdp:label key="qcdp-test">%s</qcdp:label></qcdp:labels>
  </metadata>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>%s</kernel><initrd>%s</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 cryptomgr.notests %s</cmdline></os>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='%s'/><target dev='vda' bus='virtio'/><serial>qcdp0</serial></disk>%s
    <serial type='unix'><source mode='bind' path='%s'/><log file='%s' append='on'/><target port='0'/></serial>
  </devices>
</domain>`, g.Name, uuid, g.Label, g.Kernel, g.Initrd, g.Params.Cmdline(), g.Disk, nic, g.ConsoleSock, g.ConsoleLog), uuid
}

// guestKernel copies the test guest's kernel and initrd into dir/kernel,
// where libvirt's QEMU user may read them (the build cache is root's), and
// returns the directory and both paths.
func guestKernel(tb testing.TB, dir string, art *guest.Artifacts) (kdir, kernel, initrd string) {
	tb.Helper()
	kdir = filepath.Join(dir, "kernel")
	if err := os.MkdirAll(kdir, 0o755); err != nil {
		tb.Fatal(err)
	}
	kernel, initrd = filepath.Join(kdir, "vmlinuz"), filepath.Join(kdir, "initrd")
	for src, dst := range map[string]string{art.Kernel: kernel, art.Initrd: initrd} {
		b, err := os.ReadFile(src)
		if err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	return kdir, kernel, initrd
}

// qemuDir makes a directory QEMU (libvirt-qemu) may make its console
// socket in.
func qemuDir(tb testing.TB, dir string) string {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	chownQEMU(tb, dir)
	return dir
}
