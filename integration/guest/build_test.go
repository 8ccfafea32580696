package guest

import (
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/qcdp/qcdp/integration/guest/workload"
)

// TestCpio lists an archive with the cpio tool the kernel's format is
// defined by.
func TestCpio(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio is missing: apt-get install cpio")
	}
	var buf bytes.Buffer
	c := newCpio(&buf)
	c.Dir("dev")
	c.CharDev("dev/console", 0o600, 5, 1)
	c.File("init", 0o755, []byte("#!/bin/true\n"))
	c.File("odd", 0o644, []byte("12345"))
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("cpio", "-itv", "--quiet")
	cmd.Stdin = &buf
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("cpio -t: %v\n%s", err, out)
	}
	var got []string
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		got = append(got, f[0]+" "+f[len(f)-1])
	}
	want := []string{"drwxr-xr-x dev", "crw------- dev/console", "-rwxr-xr-x init", "-rw-r--r-- odd"}
	if !slices.Equal(got, want) {
		t.Errorf("cpio -t:\n%s\nwant %q", out, want)
	}
}

func TestModuleName(t *testing.T) {
	for path, want := range map[string]string{
		"kernel/drivers/virtio/virtio_pci.ko":    "virtio_pci",
		"kernel/drivers/char/virtio-rng.ko.xz":   "virtio_rng",
		"kernel/drivers/block/virtio_blk.ko.zst": "virtio_blk",
		"modules.builtin":                        "",
	} {
		if got := moduleName(path); got != want {
			t.Errorf("moduleName(%q) = %q, want %q", path, got, want)
		}
	}
}

func TestQEMUArgv(t *testing.T) {
	p := workload.Params{Seed: 1, Writes: 10, Blocks: 16, Disks: 2, SyncEvery: 1}
	opts := Options{Workload: &p, Dir: "/run/x", Disks: []Disk{{Path: "/a,b.qcow2", Format: "qcow2"}, {Path: "/c.raw", NodeName: "data"}}}
	argv, err := qemuArgv(&Artifacts{Kernel: "/k", Initrd: "/i"}, &opts)
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Join(argv, " ")
	for _, want := range []string{
		"-accel tcg",
		`-blockdev {"driver":"file","filename":"/a,b.qcow2","node-name":"disk0-file"} -blockdev {"driver":"qcow2","file":"disk0-file","node-name":"disk0"}`,
		"-device virtio-blk-pci,drive=disk0,id=disk0-dev,serial=qcdp0",
		`"node-name":"data"}`, "drive=data,id=data-dev,serial=qcdp1",
		"-qmp unix:/run/x/qmp.sock,server=on,wait=off",
		p.Cmdline(),
	} {
		if !strings.Contains(line, want) {
			t.Errorf("argv lacks %q:\n%s", want, line)
		}
	}
	p.Disks = 1
	if _, err := qemuArgv(&Artifacts{}, &Options{Workload: &p, Dir: "/x", Disks: make([]Disk, 2)}); err == nil {
		t.Error("a 1-disk workload on 2 disks was accepted")
	}
}
