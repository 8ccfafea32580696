package failover

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/hypervisor"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica"
	"github.com/qcdp/qcdp/replica/journal"
)

func testDef() record.VMDefinition {
	return record.VMDefinition{ID: "uuid-1", Name: "web1", Source: "libvirt", VCPUs: 2, MemoryMiB: 1024, Machine: "pc-i440fx-7.2",
		Disks: []record.VMDisk{{Disk: "web1.vda", Target: "vda", Bus: "virtio", Size: 1 << 30, Boot: 1, Serial: "qcdp0"},
			{Target: "vdb", Size: 1 << 20}},
		NICs: []record.VMNIC{{MAC: "52:54:00:12:34:56", Model: "virtio", Network: "default"}}}
}

func testPlan() *configs.Recovery {
	return &configs.Recovery{Tenant: "t", Group: "g", LibvirtURI: "test:///", StandbyDir: "/srv/standby", DomainType: "qemu",
		Networks:    map[configs.Network]configs.Network{{Name: "default"}: {Name: "dr-net"}},
		TestNetwork: configs.Network{Name: "qcdp-test"}, BootTimeout: time.Minute, PostBootTimeout: time.Minute}
}

// TestDomainXMLGolden: the standby domain of a definition, byte for byte
// (QCDP_WRITE_GOLDEN=1 writes it anew).
func TestDomainXMLGolden(t *testing.T) {
	def := testDef()
	nics, err := nicsFor(def, testPlan(), ModeStart, configs.VMOverride{MAC: "keep"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := domainXML(domainSpec{Name: "web1", Type: "qemu", Def: def, Override: configs.VMOverride{MemoryMiB: 2048, MAC: "keep"},
		Disks: []standbyDisk{{Def: def.Disks[0], Overlay: "/srv/standby/t/g/web1/vda.qcow2", Export: "fo.t.g/web1.vda", Socket: "/run/qcdp/standby-0011.sock"}},
		NICs:  nics, Console: "/srv/standby/t/g/web1/console.log", ConsoleSocket: "/srv/standby/t/g/web1/console.sock", Tenant: "t", Group: "g", Mode: ModeStart, PointSeq: 42, Machine: def.Machine})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join("testdata", "standby-domain.xml")
	if os.Getenv("QCDP_WRITE_GOLDEN") != "" {
		os.WriteFile(path, []byte(got), 0o644)
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Fatalf("domain XML changed:\n%s\nwant:\n%s", got, want)
	}
	for _, s := range []string{"<memory unit=\"MiB\">2048</memory>", "protocol=\"nbd\"", "transport=\"unix\"", "dr-net", "52:54:00:12:34:56"} {
		if !strings.Contains(got, s) {
			t.Errorf("no %s in\n%s", s, got)
		}
	}
	if !ours(got, "t", "g") || ours(got, "t", "other") || ours("<domain><name>x</name></domain>", "t", "g") {
		t.Fatal("ours() does not tell qcdp's standby from others")
	}
	if !backedByNBD(got, "vda") || backedByNBD(strings.ReplaceAll(got, `protocol="nbd"`, `protocol="x"`), "vda") {
		t.Fatal("backedByNBD wrong")
	}
}

// TestDomainXMLRefusesKernelOutside: a kernel path from the host is used
// only inside kernel_dirs.
func TestDomainXMLRefusesKernelOutside(t *testing.T) {
	def := testDef()
	def.Kernel, def.Initrd, def.Cmdline = "/var/lib/k/vmlinuz", "/etc/shadow", "console=ttyS0"
	_, err := domainXML(domainSpec{Name: "w", Type: "qemu", Def: def, KernelDirs: []string{"/var/lib/k"}})
	if !errors.Is(err, ErrPlan) || !strings.Contains(err.Error(), "/etc/shadow") {
		t.Fatalf("%v", err)
	}
	def.Initrd = "/var/lib/k/../../../etc/shadow"
	if _, err := domainXML(domainSpec{Name: "w", Type: "qemu", Def: def, KernelDirs: []string{"/var/lib/k"}}); !errors.Is(err, ErrPlan) {
		t.Fatalf("a path with .. passed: %v", err)
	}
	def.Initrd = "/var/lib/k/initrd"
	x, err := domainXML(domainSpec{Name: "w", Type: "qemu", Def: def, KernelDirs: []string{"/var/lib/k"},
		Override: configs.VMOverride{CmdlineAppend: "qcdp.verify=1"}})
	if err != nil || !strings.Contains(x, "<cmdline>console=ttyS0 qcdp.verify=1</cmdline>") {
		t.Fatalf("%v\n%s", err, x)
	}
}

func TestNICsMapping(t *testing.T) {
	def := testDef()
	p := testPlan()
	if _, err := nicsFor(def, p, ModeStart, configs.VMOverride{MAC: "keep"}); err != nil {
		t.Fatal(err)
	}
	def.NICs = append(def.NICs, record.VMNIC{MAC: "52:54:00:00:00:02", Network: "br0", Bridge: true})
	_, err := nicsFor(def, p, ModeStart, configs.VMOverride{MAC: "keep"})
	if !errors.Is(err, ErrPlan) || !strings.Contains(err.Error(), "bridge:br0") {
		t.Fatalf("unmapped network: %v", err)
	}
	n, err := nicsFor(def, p, ModeTest, configs.VMOverride{MAC: "new"})
	if err != nil || len(n) != 2 || n[0].Net.Name != "qcdp-test" || n[1].Net.Name != "qcdp-test" || n[0].MAC != "" {
		t.Fatalf("test mapping %+v %v", n, err)
	}
	if _, err := nicsFor(def, p, ModeTest, configs.VMOverride{MAC: "52:54:00:00:00:09"}); !errors.Is(err, ErrPlan) {
		t.Fatalf("one MAC for two NICs: %v", err)
	}
}

// TestStateFileCut: a state file cut or flipped anywhere is reported as
// damaged, never read as another state.
func TestStateFileCut(t *testing.T) {
	st := &State{Tenant: "t", Group: "g", Mode: ModeStart, Phase: PhaseRunning, Point: journal.Point{Seq: 9}, Fenced: true,
		VMs: []VMState{{ID: "u", Name: "web1", Domain: "web1", UUID: "x", Disks: []DiskState{{Disk: "d", Target: "vda", Size: 1}}}}}
	b, err := encodeState(st)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := decodeState("s", b); err != nil || got.VMs[0].Domain != "web1" || !got.Fenced {
		t.Fatalf("%+v %v", got, err)
	}
	for n := 0; n < len(b); n++ {
		if _, err := decodeState("s", b[:n]); !errors.Is(err, ErrState) {
			t.Fatalf("cut at %d: %v", n, err)
		}
	}
	for i := 0; i < len(b); i++ {
		c := append([]byte(nil), b...)
		c[i] ^= 0x20
		if _, err := decodeState("s", c); !errors.Is(err, ErrState) {
			t.Fatalf("flip at %d read as a state: %v", i, err)
		}
	}
}

// fakeSite is the site as failover sees it.
type fakeSite struct {
	mu       sync.Mutex
	decl     record.Declaration
	defs     []journal.DefinitionAt
	point    journal.Point
	last     uint64
	exports  map[string]bool
	sockets  map[string]bool
	fenced   map[string]string
	pointErr error
	points   []journal.Point
}

func (s *fakeSite) PointAt(ctx context.Context, tenant, group string, at journal.Target) (journal.Point, record.Declaration, []journal.DefinitionAt, error) {
	if s.pointErr != nil {
		return journal.Point{}, record.Declaration{}, nil, s.pointErr
	}
	p := s.point
	if at.Seq != 0 {
		p.Seq = at.Seq
	}
	return p, s.decl, s.defs, nil
}
func (s *fakeSite) ExportAs(ctx context.Context, id, tenant, group string, at journal.Target, writable bool) (replica.ExportInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.exports[id] {
		return replica.ExportInfo{}, fmt.Errorf("export id %q is in use", id)
	}
	s.exports[id] = true
	return replica.ExportInfo{ID: id, Point: journal.Point{Seq: at.Seq}}, nil
}
func (s *fakeSite) Withdraw(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.exports[id] {
		return replica.ErrUnknownExport
	}
	delete(s.exports, id)
	return nil
}
func (s *fakeSite) ListenNBD(path string, uid, gid int, id string) (func() error, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sockets[path] = true
	return func() error { s.mu.Lock(); delete(s.sockets, path); s.mu.Unlock(); return nil }, nil
}
func (s *fakeSite) Fence(ctx context.Context, tenant, group, why string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fenced[tenant+"/"+group] = why
	return nil
}
func (s *fakeSite) Unfence(tenant, group string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.fenced, tenant+"/"+group)
}
func (s *fakeSite) Points(ctx context.Context, tenant, group string) ([]journal.Point, journal.Window, error) {
	return s.points, journal.Window{LastSeq: s.last}, nil
}

// fakeLibvirt keeps domains and networks in memory, and says libvirt's
// errors as the real one does.
type fakeLibvirt struct {
	mu        sync.Mutex
	domains   map[string]*hypervisor.DomainInfo
	networks  map[string]bool
	failStart string
	pulled    map[string]bool
}

func (l *fakeLibvirt) LookupDomain(ctx context.Context, name string) (hypervisor.DomainInfo, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	d, ok := l.domains[name]
	if !ok {
		return hypervisor.DomainInfo{}, noDomain
	}
	return *d, nil
}
func (l *fakeLibvirt) DefineDomain(ctx context.Context, x string) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	name := x[strings.Index(x, "<name>")+6 : strings.Index(x, "</name>")]
	if _, ok := l.domains[name]; ok {
		return "", errors.New("domain exists")
	}
	uuid := fmt.Sprintf("uuid-%s", name)
	l.domains[name] = &hypervisor.DomainInfo{Name: name, UUID: uuid, XML: x}
	return uuid, nil
}
func (l *fakeLibvirt) StartDomain(ctx context.Context, name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if name == l.failStart {
		return errors.New("boom: no such emulator")
	}
	l.domains[name].Running = true
	return nil
}
func (l *fakeLibvirt) DestroyDomain(ctx context.Context, name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.domains[name].Running = false
	return nil
}
func (l *fakeLibvirt) UndefineDomain(ctx context.Context, name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.domains, name)
	return nil
}
func (l *fakeLibvirt) BlockPull(ctx context.Context, name, target string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	d := l.domains[name]
	d.XML = strings.ReplaceAll(d.XML, `protocol="nbd"`, `protocol="gone"`)
	return nil
}
func (l *fakeLibvirt) BlockJobInfo(ctx context.Context, name, target string) (hypervisor.BlockJob, error) {
	return hypervisor.BlockJob{}, nil
}
func (l *fakeLibvirt) NetworkActive(ctx context.Context, name string) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.networks[name] {
		return false, noNetwork
	}
	return true, nil
}
func (l *fakeLibvirt) DefineNetwork(ctx context.Context, x string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.networks[x[strings.Index(x, "<name>")+6:strings.Index(x, "</name>")]] = true
	return nil
}
func (l *fakeLibvirt) StartNetwork(ctx context.Context, name string) error { return nil }
func (l *fakeLibvirt) RemoveNetwork(ctx context.Context, name string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.networks, name)
	return nil
}
func (l *fakeLibvirt) Close() error { return nil }

func newFixture(t *testing.T) (*Engine, *fakeSite, *fakeLibvirt, *configs.Recovery) {
	t.Helper()
	if _, err := exec_LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed (make setup installs it)")
	}
	p := testPlan()
	p.StandbyDir = t.TempDir()
	cfg := &configs.Replica{File: "r.toml", NBDSocket: filepath.Join(t.TempDir(), "nbd.sock"), StorageRoot: t.TempDir(), Recoveries: []*configs.Recovery{p}}
	def := testDef()
	def2 := record.VMDefinition{ID: "uuid-2", Name: "db1", VCPUs: 1, MemoryMiB: 512,
		Disks: []record.VMDisk{{Disk: "db1.vda", Target: "vda", Size: 1 << 20}}}
	site := &fakeSite{exports: map[string]bool{}, sockets: map[string]bool{}, fenced: map[string]string{},
		point: journal.Point{Seq: 100}, last: 100,
		decl: record.Declaration{Disks: []record.Member{{Disk: "db1.vda", Size: 1 << 20, VM: "uuid-2"}, {Disk: "web1.vda", Size: 1 << 30, VM: "uuid-1"}}},
		defs: []journal.DefinitionAt{{Seq: 3, Def: def}, {Seq: 4, Def: def2}}}
	lv := &fakeLibvirt{domains: map[string]*hypervisor.DomainInfo{}, networks: map[string]bool{}}
	e := New(site, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	e.Dial = func(ctx context.Context, uri string) (Libvirt, error) { return lv, nil }
	t.Cleanup(func() { e.Close() })
	return e, site, lv, p
}

func TestTestFailoverAndCleanupLeaveNothing(t *testing.T) {
	ctx := context.Background()
	e, site, lv, p := newFixture(t)
	p.BootOrder = []string{"web1"}
	st, err := e.Failover(ctx, "t", "g", ModeTest, journal.Target{})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.VMs) != 2 || st.VMs[0].Domain != "web1-qcdp-test" || st.VMs[1].Domain != "db1-qcdp-test" || st.Fenced {
		t.Fatalf("boot order or names: %+v", st.VMs)
	}
	if !lv.domains["web1-qcdp-test"].Running || !lv.networks["qcdp-test"] || len(site.exports) != 1 || len(site.fenced) != 0 {
		t.Fatalf("lv %+v site %+v", lv, site)
	}
	if _, err := os.Stat(st.VMs[0].Disks[0].Overlay); err != nil {
		t.Fatal(err)
	}
	if len(st.VMs[0].Disks) != 1 {
		t.Fatalf("an unprotected disk got an overlay: %+v", st.VMs[0].Disks)
	}
	if _, err := e.Failover(ctx, "t", "g", ModeStart, journal.Target{}); !errors.Is(err, ErrActive) {
		t.Fatalf("second failover: %v", err)
	}
	if err := e.Undo(ctx, "t", "g"); !errors.Is(err, ErrMode) {
		t.Fatalf("undo of a test: %v", err)
	}
	if err := e.Cleanup(ctx, "t", "g"); err != nil {
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(groupDir(p, "t", "g"))
	if len(lv.domains) != 0 || len(lv.networks) != 0 || len(site.exports) != 0 || len(site.sockets) != 0 || len(ents) != 0 {
		t.Fatalf("left behind: domains %v networks %v exports %v sockets %v files %v", lv.domains, lv.networks, site.exports, site.sockets, ents)
	}
}

func TestStartCommitUndo(t *testing.T) {
	ctx := context.Background()
	e, site, lv, _ := newFixture(t)
	st, err := e.Failover(ctx, "t", "g", ModeStart, journal.Target{Seq: 77})
	if err != nil {
		t.Fatal(err)
	}
	if st.Point.Seq != 77 || site.fenced["t/g"] == "" || lv.domains["web1"] == nil {
		t.Fatalf("%+v %v", st, site.fenced)
	}
	if err := e.Cleanup(ctx, "t", "g"); !errors.Is(err, ErrMode) {
		t.Fatalf("cleanup of a real failover: %v", err)
	}
	if _, err := e.Commit(ctx, "t", "g"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, err := e.Status(ctx, "t", "g")
		if err != nil {
			t.Fatal(err)
		}
		if s.Phase == PhaseCommitted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("commit never ended: %+v", s.State)
		}
		time.Sleep(50 * time.Millisecond)
	}
	site.mu.Lock()
	left := len(site.exports)
	site.mu.Unlock()
	if left != 0 {
		t.Fatalf("view still exported after commit: %v", site.exports)
	}
	if err := e.Undo(ctx, "t", "g"); !errors.Is(err, ErrCommitted) {
		t.Fatalf("undo after commit: %v", err)
	}
	if site.fenced["t/g"] == "" {
		t.Fatal("a committed group is unfenced")
	}
}

func TestFailoverRefusals(t *testing.T) {
	ctx := context.Background()
	e, site, lv, p := newFixture(t)
	// A domain of that name exists and is not qcdp's: never touched.
	lv.domains["web1"] = &hypervisor.DomainInfo{Name: "web1", UUID: "theirs", Running: true, XML: "<domain/>"}
	if _, err := e.Failover(ctx, "t", "g", ModeStart, journal.Target{}); !errors.Is(err, ErrExists) {
		t.Fatalf("existing domain: %v", err)
	}
	if !lv.domains["web1"].Running || len(site.fenced) != 0 {
		t.Fatal("an existing domain was touched, or the group fenced")
	}
	delete(lv.domains, "web1")
	// A NIC on an unmapped network.
	delete(p.Networks, configs.Network{Name: "default"})
	if _, err := e.Failover(ctx, "t", "g", ModeStart, journal.Target{}); !errors.Is(err, ErrPlan) || !strings.Contains(err.Error(), "default") {
		t.Fatalf("unmapped network: %v", err)
	}
	p.Networks[configs.Network{Name: "default"}] = configs.Network{Name: "dr-net"}
	// A point that is none.
	site.pointErr = fmt.Errorf("%w: seq 5 is inside a resync bracket; nearest valid points: seq 3 before it", journal.ErrNoPoint)
	if _, err := e.Failover(ctx, "t", "g", ModeStart, journal.Target{Seq: 5}); !errors.Is(err, journal.ErrNoPoint) {
		t.Fatalf("bad point: %v", err)
	}
	site.pointErr = nil
	// A VM without a definition.
	defs := site.defs
	site.defs = defs[:1]
	if _, err := e.Failover(ctx, "t", "g", ModeStart, journal.Target{}); !errors.Is(err, ErrPlan) || !strings.Contains(err.Error(), "uuid-2") {
		t.Fatalf("no definition: %v", err)
	}
	site.defs = defs
	// libvirt unreachable.
	e.Dial = func(ctx context.Context, uri string) (Libvirt, error) {
		return nil, errors.New("dial unix: no such file")
	}
	if _, err := e.Failover(ctx, "t", "g", ModeStart, journal.Target{}); !errors.Is(err, ErrLibvirt) {
		t.Fatalf("libvirt down: %v", err)
	}
	e.Dial = func(ctx context.Context, uri string) (Libvirt, error) { return lv, nil }
	// A standby that does not start: everything made is undone.
	lv.failStart = "web1"
	_, err := e.Failover(ctx, "t", "g", ModeStart, journal.Target{})
	if !errors.Is(err, ErrLibvirt) || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("start failure: %v", err)
	}
	ents, _ := os.ReadDir(groupDir(p, "t", "g"))
	if len(lv.domains) != 0 || len(site.exports) != 0 || len(site.fenced) != 0 || len(ents) != 0 {
		t.Fatalf("a failed failover left: domains %v exports %v fenced %v files %v", lv.domains, site.exports, site.fenced, ents)
	}
	// Undo with nothing to undo.
	if err := e.Undo(ctx, "t", "g"); !errors.Is(err, ErrNone) {
		t.Fatalf("undo of nothing: %v", err)
	}
	// A group with no plan.
	if _, err := e.Failover(ctx, "t", "nope", ModeTest, journal.Target{}); !errors.Is(err, ErrPlan) {
		t.Fatalf("no plan: %v", err)
	}
}

// TestUndoLeavesForeignDomain: a domain that replaced qcdp's standby under
// its name (another UUID) is left alone, and undo says so.
func TestUndoLeavesForeignDomain(t *testing.T) {
	ctx := context.Background()
	e, _, lv, _ := newFixture(t)
	if _, err := e.Failover(ctx, "t", "g", ModeStart, journal.Target{}); err != nil {
		t.Fatal(err)
	}
	lv.domains["web1"] = &hypervisor.DomainInfo{Name: "web1", UUID: "someone-else", Running: true, XML: "<domain/>"}
	if err := e.Undo(ctx, "t", "g"); !errors.Is(err, ErrExists) {
		t.Fatalf("%v", err)
	}
	if lv.domains["web1"] == nil || !lv.domains["web1"].Running {
		t.Fatal("a domain qcdp did not make was destroyed")
	}
}

func TestPlannedNeedsFinalPoint(t *testing.T) {
	ctx := context.Background()
	e, site, _, _ := newFixture(t)
	if _, err := e.Planned(ctx, "t", "g"); !errors.Is(err, ErrPlan) || !strings.Contains(err.Error(), "prepare") {
		t.Fatalf("no final point: %v", err)
	}
	site.points = []journal.Point{{Seq: 90, Kind: record.UserBookmark, Name: FinalBookmark}}
	if _, err := e.Planned(ctx, "t", "g"); !errors.Is(err, ErrPlan) || !strings.Contains(err.Error(), "wrote after it") {
		t.Fatalf("records after the final point: %v", err)
	}
	site.points = append(site.points, journal.Point{Seq: 100, Kind: record.UserBookmark, Name: FinalBookmark})
	st, err := e.Planned(ctx, "t", "g")
	if err != nil || st.Point.Seq != 100 || site.fenced["t/g"] == "" {
		t.Fatalf("%+v %v", st, err)
	}
}

// TestNewestValid: the default point of a failover is the newest boundary
// that is a restore point, never one inside a resync bracket.
func TestNewestValid(t *testing.T) {
	for _, tc := range []struct {
		w    journal.Window
		want uint64
		ok   bool
	}{
		{journal.Window{}, 0, false},
		{journal.Window{FirstSeq: 5, LastSeq: 50}, 50, true},
		{journal.Window{FirstSeq: 5, LastSeq: 50, Gaps: []journal.Gap{{FromSeq: 40, ToSeq: 50}}}, 39, true},
		{journal.Window{FirstSeq: 5, LastSeq: 50, Gaps: []journal.Gap{{FromSeq: 20, ToSeq: 30}, {FromSeq: 31, ToSeq: 50}}}, 19, true},
		{journal.Window{FirstSeq: 5, LastSeq: 50, Gaps: []journal.Gap{{FromSeq: 5, ToSeq: 50}}}, 0, false},
	} {
		got, ok := newestValid(tc.w)
		if got != tc.want && tc.ok || ok != tc.ok {
			t.Errorf("%+v: %d %v, want %d %v", tc.w, got, ok, tc.want, tc.ok)
		}
	}
}

// TestNeverInSync: a group with no restore point yet is refused saying so.
func TestNeverInSync(t *testing.T) {
	e, site, lv, _ := newFixture(t)
	site.last = 0
	_, err := e.Failover(context.Background(), "t", "g", ModeStart, journal.Target{})
	if !errors.Is(err, journal.ErrNoPoint) || !strings.Contains(err.Error(), "never in sync") {
		t.Fatalf("%v", err)
	}
	if len(site.fenced) != 0 || len(lv.domains) != 0 {
		t.Fatalf("a refused failover left the group fenced (%v) or a domain (%v)", site.fenced, lv.domains)
	}
}
