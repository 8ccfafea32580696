package protect

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/hypervisor"
	"github.com/qcdp/qcdp/record"
)

// definingSource is a fakeSource whose VMs have definitions, built from
// what the engine passes (Definer).
type definingSource struct {
	*fakeSource
	mu    sync.Mutex
	vcpus int
	fail  error // Definition's answer when set
	asked []map[string]string
}

func (s *definingSource) Definition(ctx context.Context, vm hypervisor.VM, disks []hypervisor.Disk, names map[string]string) (record.VMDefinition, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.asked = append(s.asked, maps.Clone(names))
	if s.fail != nil {
		return record.VMDefinition{}, s.fail
	}
	def := record.VMDefinition{ID: vm.ID, Name: vm.Name, Source: "qmp", VCPUs: s.vcpus, MemoryMiB: 64}
	for _, dk := range disks {
		def.Disks = append(def.Disks, record.VMDisk{Disk: names[dk.Target], Target: dk.Target, Size: uint64(dk.Size)})
	}
	return def, nil
}

func (s *definingSource) set(vcpus int, fail error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.vcpus, s.fail = vcpus, fail
}

// streamOf returns the kind of each record in group's spool (a
// definition's with its VM and vCPUs), and the definitions.
func streamOf(t *testing.T, e *Engine, group string) (kinds []string, defs []record.VMDefinition) {
	t.Helper()
	c := e.groups[group].Spool().Cursor(1)
	defer c.Close()
	for {
		r, err := c.Next()
		if errors.Is(err, io.EOF) {
			return kinds, defs
		}
		if err != nil {
			t.Fatal(err)
		}
		switch r.Kind {
		case record.Definition:
			d, err := r.Definition()
			if err != nil {
				t.Fatal(err)
			}
			defs = append(defs, d)
			kinds = append(kinds, fmt.Sprintf("definition %s %d", d.ID, d.VCPUs))
		case record.Marker:
			kinds = append(kinds, r.Marker.String()+" "+r.Disk)
		default:
			kinds = append(kinds, r.Kind.String())
		}
	}
}

// TestEngineDefinesVMs: attaching a VM records its definition right after
// its declaration and bracket, its disk named as the membership names it;
// a "defined" event records it again if it changed; a definition that
// cannot be read changes nothing else.
func TestEngineDefinesVMs(t *testing.T) {
	q := newFakeQEMU(t, "node-vm1")
	src := &definingSource{vcpus: 1, fakeSource: &fakeSource{
		vms:  []hypervisor.VM{{ID: "vm1", Name: "vm1", Running: true, Source: hypervisor.SourceQMP}},
		qemu: map[string]*fakeQEMU{"vm1": q},
	}}
	e, _ := newEngine(t, src)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e.scan(ctx)
	waitDisk(t, e, "g1", "vm1", "initial-sync")
	kinds, defs := streamOf(t, e, "g1")
	if len(kinds) < 3 || !reflect.DeepEqual(kinds[:3], []string{"members", "resync-begin vm1.vda", "definition vm1 1"}) {
		t.Fatalf("stream after the attach: %q", kinds)
	}
	decl, _ := e.groups["g1"].Sequencer().Members()
	if len(defs[0].Disks) != 1 || defs[0].Disks[0].Disk != decl.Disks[0].Disk || defs[0].Disks[0].Size != decl.Disks[0].Size {
		t.Fatalf("defined disks %+v, declared %+v", defs[0].Disks, decl.Disks)
	}

	// The definition changed: recorded again; unchanged: not.
	src.set(2, nil)
	e.redefine(ctx, "vm1")
	e.redefine(ctx, "vm1")
	if _, defs = streamOf(t, e, "g1"); len(defs) != 2 || defs[1].VCPUs != 2 {
		t.Fatalf("definitions after a change: %+v", defs)
	}
	// A VM that is not attached, or whose definition cannot be read.
	e.redefine(ctx, "vm-other")
	src.set(3, errors.New("libvirt went away"))
	e.redefine(ctx, "vm1")
	if _, defs = streamOf(t, e, "g1"); len(defs) != 2 {
		t.Fatalf("definitions after failures: %+v", defs)
	}
	src.mu.Lock()
	asked := src.asked
	src.mu.Unlock()
	if len(asked) != 4 || !reflect.DeepEqual(asked[0], map[string]string{"vda": "vm1.vda"}) {
		t.Fatalf("the source was asked %d times, names %v", len(asked), asked)
	}

	// Attached anew while its definition cannot be read: protected all
	// the same.
	if err := e.Detach(ctx, "vm1", ""); err != nil {
		t.Fatal(err)
	}
	if err := e.Attach(ctx, "vm1"); err != nil {
		t.Fatal(err)
	}
	waitDisk(t, e, "g1", "vm1", "initial-sync")
	if _, defs = streamOf(t, e, "g1"); len(defs) != 2 {
		t.Fatalf("definitions after an attach that could not read one: %+v", defs)
	}
}
