package hypervisor

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/integration/harness"
	"github.com/qcdp/qcdp/qmp"
	"github.com/qcdp/qcdp/record"
)

func randomUUID(t *testing.T) string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return formatUUID(b)
}

// testDomainXML is a transient TCG domain with no OS and two virtio disks.
func testDomainXML(name, uuid, qcow2, raw string) string {
	return `<domain type='qemu'>
  <name>` + name + `</name>
  <uuid>` + uuid + `</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <metadata>
    <qcdp:labels xmlns:qcdp="https://qcdp.dev/xmlns/1">
      <qcdp:label key="tier">gold</qcdp:label>
      <qcdp:label key="group">db</qcdp:label>
    </qcdp:labels>
  </metadata>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='` + qcow2 + `'/><target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/><source file='` + raw + `'/><target dev='vdb' bus='virtio'/>
    </disk>
  </devices>
</domain>`
}

// waitLifecycle reads events until one of kind for the domain uuid.
func waitLifecycle(ctx context.Context, events <-chan LifecycleEvent, uuid string, kind EventKind) (LifecycleEvent, error) {
	for {
		select {
		case <-ctx.Done():
			return LifecycleEvent{}, fmt.Errorf("waiting for %s of %s: %w", kind, uuid, ctx.Err())
		case e, ok := <-events:
			if !ok {
				return LifecycleEvent{}, fmt.Errorf("waiting for %s of %s: event stream closed", kind, uuid)
			}
			if e.VM.UUID == uuid && e.Kind == kind {
				return e, nil
			}
		}
	}
}

// TestLibvirt runs a transient TCG domain under a real libvirtd and checks
// discovery, labels, disks and their node names, QMP passthrough (error
// classes, monitor events) and lifecycle events across a stop and start.
//
// The libvirtd is the test's own (harness.NeedLibvirtd), warmed up before
// the test's budget starts: a domain start takes under a second there.
func TestLibvirt(t *testing.T) {
	lv := harness.NeedLibvirtd(context.Background(), t)
	ctx, cancel := context.WithTimeout(context.Background(), 80*time.Second)
	defer cancel()

	s, err := Connect(ctx, lv.URI)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(func() { // after the domain is gone: cleanups run last first
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})

	// libvirt's QEMU runs as libvirt-qemu: it must reach the images (libvirt
	// chowns the images themselves, dynamic_ownership).
	dir := t.TempDir()
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	q2, raw := filepath.Join(dir, "a.qcow2"), filepath.Join(dir, "b.raw")
	createImage(t, q2, "qcow2", 64<<20, "compat=1.1")
	createImage(t, raw, "raw", 32<<20)
	name := fmt.Sprintf("qcdp-test-%d", os.Getpid())
	uuid := randomUUID(t)
	domXML := testDomainXML(name, uuid, q2, raw)

	ectx, stopEvents := context.WithCancel(ctx)
	defer stopEvents()
	events, err := s.Events(ectx)
	if err != nil {
		t.Fatal(err)
	}

	// A second stream on the same connection sees the same events.
	events2, err := s.Events(ectx)
	if err != nil {
		t.Fatalf("second Events on one connection: %v", err)
	}

	start := func() {
		t.Helper()
		if _, err := s.l.DomainCreateXML(domXML, 0); err != nil {
			t.Fatalf("create domain %s: %v", name, err)
		}
		if _, err := waitLifecycle(ctx, events, uuid, EventStarted); err != nil {
			t.Fatal(err)
		}
	}
	destroy := func() error {
		u, _ := parseUUID(uuid)
		d, err := s.l.DomainLookupByUUID(u)
		if err != nil {
			return err
		}
		return s.l.DomainDestroy(d)
	}
	start()
	if _, err := waitLifecycle(ctx, events2, uuid, EventStarted); err != nil {
		t.Fatalf("second stream: %v", err)
	}
	t.Cleanup(func() {
		if err := destroy(); err != nil && !IsNoDomain(err) {
			t.Errorf("destroy %s: %v", name, err)
		}
	})

	vms, err := s.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var vm VM
	for _, v := range vms {
		if v.ID == uuid {
			vm = v
		}
	}
	want := VM{ID: uuid, Name: name, UUID: uuid, Labels: map[string]string{"tier": "gold", "group": "db"}, Source: SourceLibvirt, Running: true}
	if fmt.Sprint(vm) != fmt.Sprint(want) {
		t.Fatalf("ListVMs has %+v, want %+v (all: %+v)", vm, want, vms)
	}

	disks, err := s.Disks(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	checkDisks(t, disks, uuid, q2, raw)

	// A transient domain's definition is its live XML.
	def, err := s.Definition(ctx, vm, disks, map[string]string{"vda": "d.vda"})
	if err != nil {
		t.Fatal(err)
	}
	wantDisks := []record.VMDisk{{Disk: "d.vda", Target: "vda", Bus: "virtio", Size: 64 << 20}, {Target: "vdb", Bus: "virtio", Size: 32 << 20}}
	if def.ID != uuid || def.Name != name || def.Source != "libvirt" || def.VCPUs != 1 || def.MemoryMiB != 64 ||
		def.Arch != "x86_64" || !strings.HasPrefix(def.Machine, "pc-i440fx-") || def.Firmware != "bios" ||
		!reflect.DeepEqual(def.Disks, wantDisks) || !strings.Contains(def.XML, "<name>"+name+"</name>") {
		t.Errorf("definition %+v", def)
	}

	c, err := s.QMP(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if v := c.Greeting(); !v.AtLeast(4, 0) {
		t.Errorf("QEMU version through passthrough = %v", v)
	}
	// The QEMU process behind the passthrough is the domain's (libvirt
	// gives QEMU -uuid).
	if p, err := QEMUProcess(ctx, c); err != nil || !cmdlineHas(p, uuid) {
		t.Errorf("QEMUProcess through libvirt = %v, %v; want the QEMU of domain %s", p, err, uuid)
	}
	nodes, err := c.QueryNamedBlockNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disks {
		found := false
		for _, n := range nodes {
			if n.NodeName == d.Node && n.Driver == d.Format && n.Image.Filename == d.File && n.Image.VirtualSize == d.Size {
				found = true
			}
		}
		if !found {
			t.Errorf("disk %s: node %s (%s, %s) not in query-named-block-nodes %+v", d.Target, d.Node, d.Format, d.File, nodes)
		}
	}

	// An error reply keeps its class through passthrough.
	err = c.BlockJobCancel(ctx, "no-such-job", false)
	if !qmp.IsDeviceNotActive(err) {
		t.Errorf("block-job-cancel of no job: %v (%T), want class DeviceNotActive", err, err)
	}

	// Monitor events reach subscribers, with their data.
	sub, err := c.Subscribe(ctx, "STOP", qmp.EventJobStatusChange)
	if err != nil {
		t.Fatal(err)
	}
	// A second Client of the same domain shares the subscription: both see
	// the job's events.
	c2, err := s.QMP(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	sub2, err := c2.Subscribe(ctx, qmp.EventJobStatusChange)
	if err != nil {
		t.Fatal(err)
	}
	runJob(t, ctx, c, disks[0], sub, sub2)
	c2.Close()

	// Events without data never arrive through go-libvirt (see
	// qmp.DialLibvirt); say so when that changes, the doc is then wrong.
	if err := c.Execute(ctx, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(ctx, time.Second)
	if _, err := qmp.Wait(sctx, sub, func(e qmp.Event) bool { return e.Name == "STOP" }); err == nil {
		t.Log("a STOP event (no data) came through libvirt: update qmp.DialLibvirt's doc")
	}
	scancel()
	if err := c.Execute(ctx, "cont", nil, nil); err != nil {
		t.Fatal(err)
	}

	// Stop: a lifecycle event, and the open QMP channel is closed.
	if err := destroy(); err != nil {
		t.Fatal(err)
	}
	if e, err := waitLifecycle(ctx, events, uuid, EventStopped); err != nil || e.VM.Running || e.VM.Name != name {
		t.Fatalf("stopped event: %+v, %v", e, err)
	}
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, qmp.ErrClosed) {
		t.Errorf("command after the domain stopped: %v, want ErrClosed", err)
	} else if code, ok := LibvirtCode(err); !ok || !IsNoDomain(err) && !IsOperationInvalid(err) {
		t.Errorf("command after the domain stopped: libvirt code %v (%v), want no-domain or operation-invalid", code, ok)
	}
	if _, err := s.QMP(ctx, vm); !IsNoDomain(err) {
		t.Errorf("QMP of the stopped transient domain: %v, want IsNoDomain", err)
	}

	// Start again: same identities, fresh node names confirmed again.
	start()
	again, err := s.Disks(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	checkDisks(t, again, uuid, q2, raw)
	// Disks closed the domain's last Client: a new one subscribes afresh.
	c3, err := s.QMP(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	sub3, err := c3.Subscribe(ctx, qmp.EventJobStatusChange)
	if err != nil {
		t.Fatal(err)
	}
	runJob(t, ctx, c3, again[1], sub3)

	// A persistent domain's definition is its inactive XML, what its next
	// boot runs: redefined with 2 vCPUs while it runs with 1, it has 2.
	pq2, praw := filepath.Join(dir, "p.qcow2"), filepath.Join(dir, "p.raw")
	createImage(t, pq2, "qcow2", 64<<20, "compat=1.1")
	createImage(t, praw, "raw", 32<<20)
	pname, puuid := name+"-p", randomUUID(t)
	pxml := testDomainXML(pname, puuid, pq2, praw)
	pd, err := s.l.DomainDefineXML(pxml)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.l.DomainDestroy(pd)
		if err := s.l.DomainUndefine(pd); err != nil {
			t.Errorf("undefine %s: %v", pname, err)
		}
	})
	if err := s.l.DomainCreate(pd); err != nil {
		t.Fatal(err)
	}
	if _, err := waitLifecycle(ctx, events, puuid, EventStarted); err != nil {
		t.Fatal(err)
	}
	if _, err := s.l.DomainDefineXML(strings.Replace(pxml, "<vcpu>1</vcpu>", "<vcpu>2</vcpu>", 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := waitLifecycle(ctx, events, puuid, EventDefined); err != nil {
		t.Fatal(err)
	}
	pvm := VM{ID: puuid, Name: pname, UUID: puuid, Source: SourceLibvirt, Running: true}
	pdisks, err := s.Disks(ctx, pvm)
	if err != nil {
		t.Fatal(err)
	}
	pdef, err := s.Definition(ctx, pvm, pdisks, map[string]string{"vdb": "p.vdb"})
	if err != nil {
		t.Fatal(err)
	}
	if x, err := parseDomainXML(pdef.XML); err != nil || x.ID != "" || pdef.VCPUs != 2 || len(pdef.Disks) != 2 || pdef.Disks[1].Disk != "p.vdb" {
		t.Errorf("definition of a persistent domain %+v, want the inactive XML's", pdef)
	}
	stopEvents()
	for range events { // the streams end once ctx does
	}
	for range events2 {
	}
}

// runJob runs a short mirror job on d and checks that each subscription
// sees its JOB_STATUS_CHANGE events, data included.
func runJob(t *testing.T, ctx context.Context, c *qmp.Client, d Disk, subs ...<-chan qmp.Event) {
	t.Helper()
	if err := c.BlockdevAdd(ctx, map[string]any{"driver": "null-co", "node-name": "qcdp-test-tgt", "size": d.Size}); err != nil {
		t.Fatal(err)
	}
	if err := c.BlockdevMirror(ctx, qmp.MirrorArgs{JobID: "qcdp-test", Device: d.Node, Target: "qcdp-test-tgt",
		Sync: qmp.SyncNone, CopyMode: qmp.CopyModeWriteBlocking}); err != nil {
		t.Fatal(err)
	}
	for i, sub := range subs {
		e, err := qmp.Wait(ctx, sub, func(e qmp.Event) bool { return e.Name == qmp.EventJobStatusChange && e.Str("status") == "ready" })
		if err != nil || e.Str("id") != "qcdp-test" || e.Timestamp.Before(time.Now().Add(-time.Minute)) {
			t.Fatalf("subscriber %d: JOB_STATUS_CHANGE ready: %+v, %v", i, e, err)
		}
	}
	if err := c.BlockJobCancel(ctx, "qcdp-test", true); err != nil {
		t.Fatal(err)
	}
	for i, sub := range subs {
		if _, err := qmp.Wait(ctx, sub, func(e qmp.Event) bool { return e.Name == qmp.EventJobStatusChange && e.Str("status") == "null" }); err != nil {
			t.Fatalf("subscriber %d: JOB_STATUS_CHANGE null: %v", i, err)
		}
	}
	if err := c.BlockdevDel(ctx, "qcdp-test-tgt"); err != nil {
		t.Fatal(err)
	}
}

func checkDisks(t *testing.T, disks []Disk, uuid, q2, raw string) {
	t.Helper()
	want := []Disk{
		{ID: uuid + "/vda", Target: "vda", Format: "qcow2", Qcow2Version: 3, Size: 64 << 20, File: q2},
		{ID: uuid + "/vdb", Target: "vdb", Format: "raw", Size: 32 << 20, File: raw},
	}
	if len(disks) != len(want) {
		t.Fatalf("Disks = %+v, want %+v", disks, want)
	}
	for i, d := range disks {
		if !strings.HasPrefix(d.Node, "libvirt-") || !strings.HasSuffix(d.Node, "-format") {
			t.Errorf("disk %s: node %q, want libvirt-N-format", d.Target, d.Node)
		}
		d.Node = ""
		if d != want[i] {
			t.Errorf("disk %d = %+v, want %+v", i, d, want[i])
		}
	}
}
