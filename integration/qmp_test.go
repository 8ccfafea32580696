package integration

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/qcdp/qcdp/integration/harness"
	"github.com/qcdp/qcdp/qmp"
)

// TestQMPAgainstQEMU checks package qmp's typed commands and error classes
// against a real QEMU, where the fake peer of the unit tests only assumes.
func TestQMPAgainstQEMU(t *testing.T) {
	harness.Need(t, "qemu-system-x86_64", "qemu-img")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := harness.TempDir(t)
	src := filepath.Join(dir, "disk0.qcow2")
	if err := harness.CreateImage(ctx, src, "qcow2", diskSize); err != nil {
		t.Fatal(err)
	}
	q := harness.Start(ctx, t, harness.Options{Dir: dir, Paused: true, Disks: []harness.Disk{{Name: "disk0", Path: src, Format: "qcow2"}}})
	c := q.QMP

	v, err := c.QueryVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !v.AtLeast(7, 2) || v != c.Greeting() {
		t.Errorf("QueryVersion %v (greeting %v): want 7.2 or newer, equal to the greeting", v, c.Greeting())
	}

	nodes, err := c.QueryNamedBlockNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]qmp.BlockNode{}
	for _, n := range nodes {
		found[n.NodeName] = n
	}
	if n := found["disk0"]; n.Driver != "qcow2" || n.Image.VirtualSize != diskSize || n.File != src {
		t.Errorf("node disk0 = %+v, want qcow2 of %d bytes on %s", n, diskSize, src)
	}
	if n := found["disk0-file"]; n.Driver != "file" {
		t.Errorf("node disk0-file = %+v, want driver file", n)
	}

	if err := c.BlockJobCancel(ctx, "nosuch", false); !qmp.IsDeviceNotActive(err) {
		t.Errorf("block-job-cancel of a missing job = %v, want class DeviceNotActive", err)
	}
	if err := c.BlockdevDel(ctx, "nosuch"); !qmp.IsClass(err, qmp.ClassGenericError) {
		t.Errorf("blockdev-del of a missing node = %v, want class GenericError", err)
	}
	if err := c.Execute(ctx, "x-no-such-command", nil, nil); !qmp.IsCommandNotFound(err) {
		t.Errorf("unknown command = %v, want class CommandNotFound", err)
	}
	jobs, err := c.QueryBlockJobs(ctx)
	if err != nil || len(jobs) != 0 {
		t.Errorf("QueryBlockJobs = %v, %v; want none", jobs, err)
	}
	out, err := c.HumanMonitorCommand(ctx, "info status")
	if err != nil || out != "VM status: paused (prelaunch)\r\n" {
		t.Errorf("HMP info status = %q, %v", out, err)
	}
}
