package configs_test

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/configs"
)

// doc joins lines, so that a case's line N is the N-th argument.
func doc(lines ...string) string { return strings.Join(lines, "\n") + "\n" }

// host is a minimal valid [host] table: lines 1 and 2 of most cases.
var host = []string{`[host]`, `libvirt_uri = "qemu:///system"`}

func withHost(lines ...string) string { return doc(append(append([]string{}, host...), lines...)...) }

func TestParseErrors(t *testing.T) {
	long := strings.Repeat("a", 65)
	cases := []struct {
		name string
		toml string
		line int
		key  string
		err  error
	}{
		{"syntax", withHost(`[[group]]`, `name = = "web"`), 4, "group.name", configs.ErrSyntax},
		{"unknown top-level table", withHost(`[hosts]`, `x = 1`), 3, "hosts", configs.ErrUnknownKey},
		{"unknown key in host", withHost(`statedir = "/x"`), 3, "host.statedir", configs.ErrUnknownKey},
		{"unknown key in defaults", withHost(`[defaults]`, `spoolmax = "8G"`), 4, "defaults.spoolmax", configs.ErrUnknownKey},
		{"unknown key in second group's vm", withHost(
			`[[group]]`, `name = "a"`, `  [[group.vm]]`, `  name = "a1"`,
			`[[group]]`, `name = "b"`, `  [[group.vm]]`, `  name = "b1"`, `  nmae = "b2"`),
			11, "group[1].vm[0].nmae", configs.ErrUnknownKey},
		{"unknown key in disks", withHost(`[[group]]`, `name = "a"`, `[[group.vm]]`, `name = "x"`,
			`disks = { include = ["vda"], exlude = [] }`), 7, "group[0].vm[0].disks.exlude", configs.ErrUnknownKey},
		{"group without name", withHost(`[[group]]`, `spool_max = "1G"`, `[[group.vm]]`, `name = "x"`),
			3, "group[0].name", configs.ErrMissing},
		{"group name with slash", withHost(`[[group]]`, `name = "a/b"`, `vm = [{name = "x"}]`), 4, "group[0].name", configs.ErrInvalid},
		{"group name dot dot slash", withHost(`[[group]]`, `name = "../x"`, `vm = [{name = "x"}]`), 4, "group[0].name", configs.ErrInvalid},
		{"group name dot dot", withHost(`[[group]]`, `name = ".."`, `vm = [{name = "x"}]`), 4, "group[0].name", configs.ErrInvalid},
		{"group name dot", withHost(`[[group]]`, `name = "."`, `vm = [{name = "x"}]`), 4, "group[0].name", configs.ErrInvalid},
		{"group name empty", withHost(`[[group]]`, `name = ""`, `vm = [{name = "x"}]`), 4, "group[0].name", configs.ErrInvalid},
		{"group name too long", withHost(`[[group]]`, `name = "`+long+`"`, `vm = [{name = "x"}]`), 4, "group[0].name", configs.ErrInvalid},
		{"group name flag-like", withHost(`[[group]]`, `name = "-rf"`, `vm = [{name = "x"}]`), 4, "group[0].name", configs.ErrInvalid},
		{"group name not a string", withHost(`[[group]]`, `name = 7`, `vm = [{name = "x"}]`), 4, "group[0].name", configs.ErrType},
		{"duplicate group", withHost(
			`[[group]]`, `name = "web"`, `vm = [{name = "a"}]`,
			`[[group]]`, `name = "web"`, `vm = [{name = "b"}]`), 7, "group[1].name", configs.ErrDuplicate},
		{"group written as a table", withHost(`[group]`, `name = "web"`), 3, "group", configs.ErrType},
		{"group without vm", withHost(`[[group]]`, `name = "web"`), 3, "group[0]", configs.ErrMissing},
		{"vm without selector", withHost(
			`[[group]]`, `name = "a"`, `[[group.vm]]`, `name = "a1"`,
			`[[group]]`, `name = "b"`, `  [[group.vm]]`, `  disks = { include = ["vda"] }`),
			9, "group[1].vm[0]", configs.ErrMissing},
		{"vm with two selectors", withHost(`[[group]]`, `name = "a"`, `  [[group.vm]]`, `  name = "x"`, `  label = "y"`),
			5, "group[0].vm[0]", configs.ErrInvalid},
		{"vm selected in two groups", withHost(
			`[[group]]`, `name = "a"`, `[[group.vm]]`, `name = "web1"`,
			`[[group]]`, `name = "b"`, `[[group.vm]]`, `label = "x"`, `[[group.vm]]`, `name = "web1"`),
			12, "group[1].vm[1].name", configs.ErrDuplicate},
		{"uuid selected twice in another spelling", withHost(
			`[[group]]`, `name = "a"`,
			`vm = [{uuid = "6f1f2a4e-3b7c-4d7e-9a53-0c5f7f1a2b3c"},`,
			`      {uuid = "6F1F2A4E3B7C4D7E9A530C5F7F1A2B3C"}]`),
			6, "group[0].vm[1].uuid", configs.ErrDuplicate},
		{"label selected twice", withHost(
			`[[group]]`, `name = "a"`, `vm = [{label = "tier=gold"}]`,
			`[[group]]`, `name = "b"`, `vm = [{label = "tier=gold"}]`), 8, "group[1].vm[0].label", configs.ErrDuplicate},
		{"resync read rate too low", withHost(`[[group]]`, `name = "a"`, `resync_read_rate = "100K"`, `vm = [{name = "x"}]`), 5, "group[0].resync_read_rate", configs.ErrInvalid},
		{"resync read rate not a size", withHost(`[[group]]`, `name = "a"`, `resync_read_rate = "fast"`, `vm = [{name = "x"}]`), 5, "group[0].resync_read_rate", configs.ErrInvalid},
		{"bad uuid", withHost(`[[group]]`, `name = "a"`, `[[group.vm]]`, `uuid = "web1"`), 6, "group[0].vm[0].uuid", configs.ErrInvalid},
		{"label with a space", withHost(`[[group]]`, `name = "a"`, `[[group.vm]]`, `label = "tier gold"`), 6, "group[0].vm[0].label", configs.ErrInvalid},
		{"disk included and excluded", withHost(`[[group]]`, `name = "a"`, `[[group.vm]]`, `name = "x"`,
			`disks = { include = ["vda", "vdb"],`, `          exclude = ["vdc", "vdb"] }`),
			8, "group[0].vm[0].disks.exclude[1]", configs.ErrInvalid},
		{"disk listed twice", withHost(`[[group]]`, `name = "a"`, `[[group.vm]]`, `name = "x"`,
			`disks.include = ["vda", "vda"]`), 7, "group[0].vm[0].disks.include[1]", configs.ErrDuplicate},
		{"disk name path-like", withHost(`[[group]]`, `name = "a"`, `[[group.vm]]`, `name = "x"`,
			`[group.vm.disks]`, `include = ["vda", "../../etc/passwd"]`), 8, "group[0].vm[0].disks.include[1]", configs.ErrInvalid},
		{"disk name dot dot", withHost(`[[group]]`, `name = "a"`, `[[group.vm]]`, `name = "x"`,
			`disks = { exclude = [".."] }`), 7, "group[0].vm[0].disks.exclude[0]", configs.ErrInvalid},
		{"disks not a table", withHost(`[[group]]`, `name = "a"`, `[[group.vm]]`, `name = "x"`, `disks = ["vda"]`),
			7, "group[0].vm[0].disks", configs.ErrType},
		{"spool_max zero", withHost(`[defaults]`, `spool_max = "0"`), 4, "defaults.spool_max", configs.ErrInvalid},
		{"spool_max negative", withHost(`[defaults]`, `spool_max = -1`), 4, "defaults.spool_max", configs.ErrInvalid},
		{"spool_max decimal suffix", withHost(`[defaults]`, `spool_max = "8GB"`), 4, "defaults.spool_max", configs.ErrInvalid},
		{"spool_max float", withHost(`[defaults]`, `spool_max = 1.5`), 4, "defaults.spool_max", configs.ErrType},
		{"spool_max overflow", withHost(`[defaults]`, `spool_max = "9999999999P"`), 4, "defaults.spool_max", configs.ErrInvalid},
		{"segment too small", withHost(`[defaults]`, `spool_segment = "4K"`), 4, "defaults.spool_segment", configs.ErrInvalid},
		{"segments do not fit", withHost(`[defaults]`, `spool_max = "128M"`, `spool_segment = "64M"`),
			4, "defaults.spool_max", configs.ErrInvalid},
		{"group spool_max below 4 default segments", withHost(`[[group]]`, `name = "a"`, `spool_max = "128M"`, `vm = [{name = "x"}]`),
			5, "group[0].spool_max", configs.ErrInvalid},
		{"granularity not a power of two", withHost(`[defaults]`, `granularity = 3000`), 4, "defaults.granularity", configs.ErrInvalid},
		{"granularity too large", withHost(`[defaults]`, `granularity = "128K"`), 4, "defaults.granularity", configs.ErrInvalid},
		{"granularity too small", withHost(`[[group]]`, `name = "a"`, `granularity = 256`, `vm = [{name = "x"}]`),
			5, "group[0].granularity", configs.ErrInvalid},
		{"sync_interval not a duration", withHost(`[defaults]`, `sync_interval = "fast"`), 4, "defaults.sync_interval", configs.ErrInvalid},
		{"sync_interval integer", withHost(`[defaults]`, `sync_interval = 1`), 4, "defaults.sync_interval", configs.ErrType},
		{"sync_interval negative", withHost(`[defaults]`, `sync_interval = "-1s"`), 4, "defaults.sync_interval", configs.ErrInvalid},
		{"relative state_dir", withHost(`state_dir = "var/lib/qcdp"`), 3, "host.state_dir", configs.ErrInvalid},
		{"control socket too long", withHost(`control_socket = "/` + strings.Repeat("s", 120) + `"`), 3, "host.control_socket", configs.ErrInvalid},
		{"log level", withHost(`log_level = "verbose"`), 3, "host.log_level", configs.ErrInvalid},
		{"bandwidth too small", withHost(`[[group]]`, `name = "a"`, `bandwidth = "1K"`, `vm = [{name = "x"}]`), 5, "group[0].bandwidth", configs.ErrInvalid},
		{"app-consistent too often", withHost(`[[group]]`, `name = "a"`, `app_consistent_every = "10s"`, `vm = [{name = "x"}]`), 5, "group[0].app_consistent_every", configs.ErrInvalid},
		{"replica without TLS", withHost(`[[group]]`, `name = "a"`, `replica = "dr1:7443"`, `vm = [{name = "x"}]`), 5, "group[0].replica", configs.ErrMissing},
		{"relative tls_ca", withHost(`tls_ca = "ca.pem"`), 3, "host.tls_ca", configs.ErrInvalid},
		{"qemu group with a slash", withHost(`qemu_group = "../kvm"`), 3, "host.qemu_group", configs.ErrInvalid},
		{"qemu group not a string", withHost(`qemu_group = 107`), 3, "host.qemu_group", configs.ErrType},
		{"remote libvirt", doc(`[host]`, `libvirt_uri = "qemu+ssh://kvm1/system"`), 2, "host.libvirt_uri", configs.ErrInvalid},
		{"relative qmp glob", doc(`[host]`, `qmp_sockets = [`, `  "/run/a.qmp",`, `  "*.qmp",`, `]`), 4, "host.qmp_sockets[1]", configs.ErrInvalid},
		{"bad qmp glob", doc(`[host]`, `qmp_sockets = ["/run/[.qmp"]`), 2, "host.qmp_sockets[0]", configs.ErrInvalid},
		{"no way to find VMs", doc(`# nothing`, `[host]`, `state_dir = "/srv/qcdp"`), 2, "host", configs.ErrMissing},
		{"replica without port", withHost(`[[group]]`, `name = "a"`, `replica = "dr1"`, `vm = [{name = "x"}]`), 5, "group[0].replica", configs.ErrInvalid},
		{"replica port out of range", withHost(`[[group]]`, `name = "a"`, `replica = "dr1:70000"`, `vm = [{name = "x"}]`), 5, "group[0].replica", configs.ErrInvalid},
		{"inline vm array element not a table", withHost(`[[group]]`, `name = "a"`, `vm = [{name = "x"}, "y"]`), 5, "group[0].vm[1]", configs.ErrType},
		{"quoted key with a dot", withHost(`[[group]]`, `name = "a"`, `vm = [{name = "x"}]`, `"spool.max" = "8G"`),
			6, `group[0]."spool.max"`, configs.ErrUnknownKey},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { checkErr(t, tc.toml, 0, tc.line, tc.key, tc.err) })
	}
}

// Key positions are found by scanning the source: text that looks like a
// header or a key inside strings and comments must not move them. The
// strings sit under an unknown key, the first of two errors.
func TestParseErrorsAfterStrings(t *testing.T) {
	checkErr(t, withHost(
		`[[group]]`, `name = "a"`, `note = """`, `[[group]]`, `name = "fake"`, `\"""`, `"""`, `[[group.vm]]`, `name = "x"`,
		`[[group]]`, `name = "b"`, `[[group.vm]]`, `uuid = 7`),
		1, 15, "group[1].vm[0].uuid", configs.ErrType)
	checkErr(t, withHost(
		`[[group]]`, `name = "a"`, `vm = [{name = "x"}]`, `note = '''`, `[[group]]`, `'''`,
		`[[group]]`, `name = "b"`, `vm = [ # [[group]]`, `  { label = "l", disks = {include = ["a/b"]} }, ]`),
		1, 12, "group[1].vm[0].disks.include[0]", configs.ErrInvalid)
	checkErr(t, withHost(
		`[[group]]`, `name = "a"`, `vm = [{name = "x"}]`, `note = ["]", '[[group]]', """`, `[[group]]"""]`,
		`[[group]]`, `name = "b"`, `[[group.vm]]`, `name = "x"`),
		1, 11, "group[1].vm[0].name", configs.ErrDuplicate)
}

// checkErr parses data and checks that its nth problem (in file order) is at
// line with key and wraps sentinel, and that it is the last.
func checkErr(t *testing.T, data string, nth, line int, key string, sentinel error) {
	t.Helper()
	_, err := configs.Parse("host.toml", []byte(data))
	if err == nil {
		t.Fatalf("no error; want host.toml:%d %s", line, key)
	}
	es := configs.Errors(err)
	if len(es) != nth+1 {
		t.Fatalf("%d errors, want %d:\n%v", len(es), nth+1, err)
	}
	e := es[nth]
	if e.File != "host.toml" || e.Line != line || e.Key != key || !errors.Is(e, sentinel) {
		t.Errorf("got %s (line %d, key %q, %v)\nwant line %d, key %q, %v", e, e.Line, e.Key, e.Err, line, key, sentinel)
	}
	if want := fmt.Sprintf("host.toml:%d:", line); !strings.HasPrefix(e.Error(), want) {
		t.Errorf("text %q does not start with %q", e.Error(), want)
	}
	if key != "" && !strings.Contains(e.Error(), " "+key+": ") {
		t.Errorf("text %q does not name key %q", e.Error(), key)
	}
}

func TestParseErrorColumn(t *testing.T) {
	_, err := configs.Parse("host.toml", []byte(withHost(`[[group]]`, `name = "a"`, `  vm = [{name = "x"}, {  uuid = "no"}]`)))
	var e *configs.Error
	if !errors.As(err, &e) {
		t.Fatalf("got %v", err)
	}
	if e.Line != 5 || e.Column != 26 || e.Key != "group[0].vm[1].uuid" {
		t.Fatalf("got %s; want host.toml:5:26: group[0].vm[1].uuid", e)
	}
	if want := `host.toml:5:26: group[0].vm[1].uuid: "no" is not a UUID`; !strings.HasPrefix(e.Error(), want) {
		t.Fatalf("got %q, want prefix %q", e.Error(), want)
	}
}

// A file with several problems reports all of them, in file order.
func TestParseManyErrors(t *testing.T) {
	_, err := configs.Parse("p.toml", []byte(doc(
		`[host]`,
		`state_dir = "rel"`,
		`[[group]]`,
		`name = "a/b"`,
		`vm = [{name = "x"}, {}]`,
		`[defaults]`,
		`granularity = 1000`,
	)))
	var got []string
	for _, e := range configs.Errors(err) {
		got = append(got, fmt.Sprintf("%d %s", e.Line, e.Key))
	}
	want := []string{"1 host", "2 host.state_dir", "4 group[0].name", "5 group[0].vm[1]", "7 defaults.granularity"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q\nwant %q\n%v", got, want, err)
	}
	var e *configs.Error
	if !errors.As(err, &e) || e.Line != 1 {
		t.Fatalf("errors.As finds %v, want the first", e)
	}
}

func TestParseTooLarge(t *testing.T) {
	data := []byte(withHost("# " + strings.Repeat("x", configs.MaxFileSize)))
	_, err := configs.Parse("big.toml", data)
	if !errors.Is(err, configs.ErrTooLarge) {
		t.Fatalf("got %v", err)
	}
}

func TestLoadMissing(t *testing.T) {
	_, err := configs.Load(filepath.Join(t.TempDir(), "host.toml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("got %v", err)
	}
}

func TestParseValid(t *testing.T) {
	p, err := configs.Parse("host.toml", []byte(doc(
		`[host]`,
		`state_dir = "/srv/qcdp/"`,
		`qmp_sockets = ["/var/run/qemu-server/*.qmp"]`,
		`log_level = "debug"`,
		`[defaults]`,
		`spool_max = "1T"`,
		`sync_bytes = "1MiB"`,
		`[[group]]`,
		`name = "db-1.prod_eu"`,
		`granularity = "64K"`,
		`sync_interval = "250ms"`,
		`  [[group.vm]]`,
		`  uuid = "6F1F2A4E3B7C4D7E9A530C5F7F1A2B3C"`,
		`  disks.exclude = ["vdc"]`,
		`[[group]]`,
		`name = "web"`,
		`spool_max = 68719476736`,
		`vm = [{name = "web1", disks = {include = ["vda"]}}, {label = "tier=web"}]`,
	)))
	if err != nil {
		t.Fatal(err)
	}
	wantHost := configs.Host{
		StateDir:      "/srv/qcdp",
		ControlSocket: configs.DefaultControlSocket,
		NBDSocketDir:  configs.DefaultNBDSocketDir,
		LogLevel:      slog.LevelDebug,
		QMPSockets:    []string{"/var/run/qemu-server/*.qmp"},
	}
	if !reflect.DeepEqual(p.Host, wantHost) {
		t.Errorf("host %+v\nwant %+v", p.Host, wantHost)
	}
	wantDefaults := configs.Tuning{SpoolMax: 1 << 40, SpoolSegment: 64 << 20, SyncBytes: 1 << 20, Granularity: 4096, ResyncReadRate: 256 << 20}
	if p.Defaults != wantDefaults {
		t.Errorf("defaults %+v, want %+v", p.Defaults, wantDefaults)
	}
	gs := p.Groups()
	if len(gs) != 2 {
		t.Fatalf("%d groups", len(gs))
	}
	db, web := gs[0], gs[1]
	if want := (configs.Tuning{SpoolMax: 1 << 40, SpoolSegment: 64 << 20, SyncInterval: 250 * time.Millisecond,
		SyncBytes: 1 << 20, Granularity: 64 << 10, ResyncReadRate: 256 << 20}); db.Name != "db-1.prod_eu" || db.Tuning != want {
		t.Errorf("group 0 %s %+v, want %+v", db.Name, db.Tuning, want)
	}
	if db.VMs[0].UUID != "6f1f2a4e-3b7c-4d7e-9a53-0c5f7f1a2b3c" || db.VMs[0].Origin != "host.toml:12 group[0].vm[0]" {
		t.Errorf("vm %+v", db.VMs[0])
	}
	if web.SpoolMax != 64<<30 || web.Granularity != 4096 || len(web.VMs) != 2 || web.VMs[1].Label != "tier=web" {
		t.Errorf("group 1 %+v", web)
	}
	if g, ok := p.Group("web"); !ok || g != web {
		t.Errorf("Group(web) = %v, %v", g, ok)
	}
	if got := p.SpoolDir(db); got != "/srv/qcdp/spool/db-1.prod_eu" {
		t.Errorf("SpoolDir = %s", got)
	}
}

func TestGroupFor(t *testing.T) {
	p, err := configs.Parse("host.toml", []byte(withHost(
		`[[group]]`, `name = "a"`,
		`vm = [{uuid = "6f1f2a4e-3b7c-4d7e-9a53-0c5f7f1a2b3c", disks = {exclude = ["vdb"]}},`,
		`      {label = "tier=gold"}]`,
		`[[group]]`, `name = "b"`,
		`vm = [{name = "web1", disks = {include = ["vda"]}}, {label = "env=prod"}]`,
	)))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		vm    configs.VMIdentity
		group string
		err   error
		disks map[string]bool
	}{
		{"by uuid, any case", configs.VMIdentity{UUID: "6F1F2A4E-3B7C-4D7E-9A53-0C5F7F1A2B3C"}, "a", nil,
			map[string]bool{"vda": true, "vdb": false, "sdc": true}},
		{"uuid wins over name and labels", configs.VMIdentity{Name: "web1", UUID: "6f1f2a4e-3b7c-4d7e-9a53-0c5f7f1a2b3c",
			Labels: []string{"env=prod"}}, "a", nil, nil},
		{"by name", configs.VMIdentity{Name: "web1", UUID: "00000000-0000-0000-0000-000000000001"}, "b", nil,
			map[string]bool{"vda": true, "vdb": false}},
		{"name wins over labels", configs.VMIdentity{Name: "web1", Labels: []string{"tier=gold"}}, "b", nil, nil},
		{"by label", configs.VMIdentity{Name: "db9", Labels: []string{"x", "tier=gold"}}, "a", nil,
			map[string]bool{"vda": true, "vdz": true}},
		{"two labels of two groups", configs.VMIdentity{Name: "db9", Labels: []string{"tier=gold", "env=prod"}}, "", configs.ErrAmbiguous, nil},
		{"nothing matches", configs.VMIdentity{Name: "web2", Labels: []string{"tier=silver"}}, "", configs.ErrNotProtected, nil},
		{"names are exact", configs.VMIdentity{Name: "WEB1"}, "", configs.ErrNotProtected, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, f, err := p.GroupFor(tc.vm)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err %v, want %v", err, tc.err)
			}
			if err != nil {
				return
			}
			if g.Name != tc.group {
				t.Fatalf("group %s, want %s", g.Name, tc.group)
			}
			for disk, want := range tc.disks {
				if got := f.DiskIncluded(disk); got != want {
					t.Errorf("DiskIncluded(%s) = %v, want %v", disk, got, want)
				}
			}
		})
	}
}

func TestValidName(t *testing.T) {
	for _, s := range []string{"web", "db-1.prod_eu", "vda", "a", strings.Repeat("x", 64), "a..b"} {
		if err := configs.ValidName(s); err != nil {
			t.Errorf("ValidName(%q) = %v", s, err)
		}
	}
	for _, s := range []string{"", ".", "..", "../x", "a/b", "/abs", ".hidden", "-x", "a b", "é", "a\x00", strings.Repeat("x", 65)} {
		if err := configs.ValidName(s); !errors.Is(err, configs.ErrInvalid) {
			t.Errorf("ValidName(%q) = %v, want ErrInvalid", s, err)
		}
	}
}

// view is a Policy without its pointers and source positions, to compare.
type view struct {
	Host     configs.Host
	Defaults configs.Tuning
	Groups   []groupView
}

type groupView struct {
	Name, Replica string
	Tuning        configs.Tuning
	VMs           []vmView
}

type vmView struct {
	Name, UUID, Label string
	Disks             configs.DiskFilter
}

func viewOf(p *configs.Policy) view {
	v := view{Host: p.Host, Defaults: p.Defaults}
	for _, g := range p.Groups() {
		gv := groupView{Name: g.Name, Replica: g.Replica, Tuning: g.Tuning}
		for _, vm := range g.VMs {
			gv.VMs = append(gv.VMs, vmView{vm.Name, vm.UUID, vm.Label, vm.Disks})
		}
		v.Groups = append(v.Groups, gv)
	}
	return v
}

// roundTrip checks that the effective policy printed by MarshalTOML parses
// back to the same policy.
func roundTrip(t *testing.T, p *configs.Policy) {
	t.Helper()
	out, err := p.MarshalTOML()
	if err != nil {
		t.Fatal(err)
	}
	q, err := configs.Parse("effective.toml", out)
	if err != nil {
		t.Fatalf("re-parse: %v\n%s", err, out)
	}
	if a, b := viewOf(p), viewOf(q); !reflect.DeepEqual(a, b) {
		t.Fatalf("round trip changed the policy:\n%+v\n%+v\n%s", a, b, out)
	}
}

// With libvirt, the NBD sockets default to libvirt's QEMU group; without it
// they stay root's unless qemu_group says otherwise.
func TestQEMUGroupDefault(t *testing.T) {
	for _, c := range []struct{ doc, want string }{
		{doc(`[host]`, `libvirt_uri = "qemu:///system"`, `[[group]]`, `name = "a"`, `vm = [{name = "x"}]`), "libvirt-qemu"},
		{doc(`[host]`, `qmp_sockets = ["/run/*.qmp"]`, `[[group]]`, `name = "a"`, `vm = [{name = "x"}]`), ""},
		{doc(`[host]`, `qmp_sockets = ["/run/*.qmp"]`, `qemu_group = "kvm"`, `[[group]]`, `name = "a"`, `vm = [{name = "x"}]`), "kvm"},
	} {
		p, err := configs.Parse("host.toml", []byte(c.doc))
		if err != nil {
			t.Fatal(err)
		}
		if p.Host.QEMUGroup != c.want {
			t.Errorf("qemu_group %q, want %q for:\n%s", p.Host.QEMUGroup, c.want, c.doc)
		}
	}
}

func TestExample(t *testing.T) {
	p, err := configs.Load("examples/host.toml")
	if err != nil {
		t.Fatal(err)
	}
	want := view{
		Host: configs.Host{
			StateDir: "/var/lib/qcdp", ControlSocket: "/run/qcdp/host.sock", NBDSocketDir: "/run/qcdp/nbd",
			LogLevel: slog.LevelInfo, LibvirtURI: "qemu:///system", QMPSockets: []string{"/var/run/qemu-server/*.qmp"}, QEMUGroup: "libvirt-qemu",
			TLSCA: "/etc/qcdp/tls/ca.pem", TLSCert: "/etc/qcdp/tls/host.pem", TLSKey: "/etc/qcdp/tls/host-key.pem",
		},
		Defaults: configs.DefaultTuning,
		Groups: []groupView{
			{Name: "web", Replica: "dr1.example.com:7443",
				Tuning: configs.Tuning{SpoolMax: 16 << 30, SpoolSegment: 64 << 20, Granularity: 4096, ResyncReadRate: 256 << 20},
				VMs: []vmView{
					{Name: "web1", Disks: configs.DiskFilter{Include: []string{"vda", "vdb"}}},
					{UUID: "6f1f2a4e-3b7c-4d7e-9a53-0c5f7f1a2b3c", Disks: configs.DiskFilter{Exclude: []string{"vdc"}}},
				}},
			{Name: "db", Replica: "dr1.example.com:7443",
				Tuning: configs.Tuning{SpoolMax: 8 << 30, SpoolSegment: 64 << 20, SyncInterval: time.Second, Granularity: 4096, ResyncReadRate: 256 << 20},
				VMs:    []vmView{{Label: "tier=gold"}}},
		},
	}
	if got := viewOf(p); !reflect.DeepEqual(got, want) {
		t.Fatalf("example:\n%+v\nwant\n%+v", got, want)
	}
	roundTrip(t, p)
}

// Nesting and dotted keys the TOML library would take minutes over are
// refused first, located.
func TestParseLimits(t *testing.T) {
	deep := func(n int) string { return strings.Repeat("{b=", n) + "1" + strings.Repeat("}", n) }
	cases := []struct {
		name string
		toml string
		line int
		col  int
	}{
		{"inline tables", withHost(`[[group]]`, `x = `+deep(configs.MaxNesting+1)), 4, 5 + 3*(configs.MaxNesting+1)},
		{"arrays", withHost(`x = [`, strings.Repeat("[", 5000)+strings.Repeat("]", 5000)+"]"), 4, 33},
		{"dotted key", withHost(`x` + strings.Repeat(".x", configs.MaxKeyParts) + ` = 1`), 3, 1},
		{"header", withHost(``, `  [x`+strings.Repeat(".x", 5000)+`]`), 4, 4},
		{"huge inline", withHost(`x = ` + deep(20000)), 3, 5 + 3*(configs.MaxNesting+1)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := configs.Parse("host.toml", []byte(tc.toml))
			var e *configs.Error
			if !errors.As(err, &e) || !errors.Is(err, configs.ErrTooLarge) || e.Line != tc.line || e.Column != tc.col {
				t.Fatalf("got %v; want host.toml:%d:%d over a limit", err, tc.line, tc.col)
			}
		})
	}
	if _, err := configs.Parse("host.toml", []byte(withHost(`x = `+deep(configs.MaxNesting)))); errors.Is(err, configs.ErrTooLarge) {
		t.Fatalf("nesting of %d refused: %v", configs.MaxNesting, err)
	}
}
