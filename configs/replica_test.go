package configs_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/configs"
)

var replicaHead = []string{`[replica]`, `ca = "/t/ca.pem"`, `cert = "/t/r.pem"`, `key = "/t/r-key.pem"`}

func withReplica(lines ...string) string {
	return doc(append(append([]string{}, replicaHead...), lines...)...)
}

func TestReplicaExample(t *testing.T) {
	c, err := configs.LoadReplica("examples/replica.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":7443" || c.StorageRoot != "/var/lib/qcdp/replica" || len(c.Tenants) != 2 {
		t.Fatalf("%+v", c)
	}
	want := []configs.Schedule{{Every: time.Hour, Keep: 24 * time.Hour}, {Every: 24 * time.Hour, Keep: 7 * 24 * time.Hour}}
	if !reflect.DeepEqual(c.Defaults.LongTerm, want) || c.Defaults.Bookmarks != 30*24*time.Hour {
		t.Fatalf("defaults %+v", c.Defaults)
	}
	g := c.Tenants[1]
	if g.Retention.Window != 72*time.Hour || len(g.Retention.LongTerm) != 1 || g.Retention.Bookmarks != 30*24*time.Hour {
		t.Fatalf("globex retention %+v", g.Retention)
	}
	for _, tc := range []struct {
		tenant, host, group string
		write, read         bool
	}{
		{"acme", "kvm1.acme.example", "web", true, true},
		{"acme", "kvm1.acme.example", "db-7", true, true},
		{"acme", "kvm3.acme.example", "web", false, false},
		{"acme", "kvm1.acme.example", "erp", false, false},
		{"globex", "anything", "erp", true, true},
		{"globex", "anything", "web", false, false},
		{"initech", "kvm1.acme.example", "web", false, false},
		{"acme", "kvm1.acme.example", "../web", false, false},
	} {
		werr, rerr := c.MayWrite(tc.tenant, tc.host, tc.group), c.MayRead(tc.tenant, tc.host, tc.group)
		if (werr == nil) != tc.write || (rerr == nil) != tc.read {
			t.Errorf("%+v: write %v, read %v", tc, werr, rerr)
		}
		if werr != nil && !errors.Is(werr, configs.ErrNotAllowed) {
			t.Errorf("%+v: %v", tc, werr)
		}
	}
	dir, err := c.JournalDir("acme", "web")
	if err != nil || dir != "/var/lib/qcdp/replica/acme/web" {
		t.Fatalf("%q %v", dir, err)
	}
	for _, bad := range [][2]string{{"acme", "../x"}, {"..", "web"}, {"a/b", "web"}, {"acme", ""}} {
		if _, err := c.JournalDir(bad[0], bad[1]); err == nil {
			t.Errorf("JournalDir%q accepted", bad)
		}
	}
}

// The limits: built-in defaults, [defaults] for every tenant, a tenant's
// own, and [defaults] for a tenant the policy does not name.
func TestReplicaLimits(t *testing.T) {
	c, err := configs.LoadReplica("examples/replica.toml")
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxInflight != configs.DefaultMaxInflight || c.LimitsFor("acme") != configs.DefaultLimits || c.LimitsFor("globex") != (configs.Limits{MaxStreams: 8, MaxGroups: 4}) {
		t.Fatalf("example: max_inflight %d, acme %+v, globex %+v", c.MaxInflight, c.LimitsFor("acme"), c.LimitsFor("globex"))
	}
	c, err = configs.ParseReplica("r.toml", []byte(withReplica(`max_inflight = "1G"`, `[defaults]`, `max_streams = 10`, `max_groups = 20`,
		`[[tenant]]`, `name = "a"`, `hosts = ["*"]`, `groups = ["*"]`, `max_groups = 3`)))
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxInflight != 1<<30 || c.LimitsFor("a") != (configs.Limits{MaxStreams: 10, MaxGroups: 3}) || c.LimitsFor("stranger") != (configs.Limits{MaxStreams: 10, MaxGroups: 20}) {
		t.Fatalf("max_inflight %d, a %+v, stranger %+v", c.MaxInflight, c.LimitsFor("a"), c.LimitsFor("stranger"))
	}
}

func TestReplicaReadGroups(t *testing.T) {
	c, err := configs.ParseReplica("r.toml", []byte(withReplica(`[[tenant]]`, `name = "ops"`, `hosts = ["*"]`, `read_groups = ["*"]`)))
	if err != nil {
		t.Fatal(err)
	}
	if c.MayRead("ops", "x", "web") != nil || c.MayWrite("ops", "x", "web") == nil {
		t.Fatal("read_groups")
	}
}

func TestReplicaErrors(t *testing.T) {
	cases := []struct {
		name string
		toml string
		line int
		key  string
		err  error
	}{
		{"no TLS", doc(`[replica]`, `listen = ":7443"`), 1, "replica", configs.ErrMissing},
		{"relative ca", doc(`[replica]`, `ca = "ca.pem"`, `cert = "/r.pem"`, `key = "/k.pem"`), 2, "replica.ca", configs.ErrInvalid},
		{"bad listen", withReplica(`listen = "7443"`), 5, "replica.listen", configs.ErrInvalid},
		{"unknown key", withReplica(`storage = "/x"`), 5, "replica.storage", configs.ErrUnknownKey},
		{"bad window", withReplica(`[defaults]`, `window = "1 day"`), 6, "defaults.window", configs.ErrInvalid},
		{"window not a string", withReplica(`[defaults]`, `window = 24`), 6, "defaults.window", configs.ErrType},
		{"keep shorter than every", withReplica(`[defaults]`, `long_term = [`, `  {every = "1h", keep = "24h"},`, `  {every = "24h", keep = "1h"},`, `]`),
			8, "defaults.long_term[1].keep", configs.ErrInvalid},
		{"schedule without keep", withReplica(`[defaults]`, `long_term = [{every = "1h"}]`), 6, "defaults.long_term[0]", configs.ErrMissing},
		{"schedule typo", withReplica(`[defaults]`, `long_term = [{kepp = "2h", every = "1h", keep = "3h"}]`), 6, "defaults.long_term[0].kepp", configs.ErrUnknownKey},
		{"tenant without name", withReplica(`[[tenant]]`, `hosts = ["*"]`, `groups = ["a"]`), 5, "tenant[0].name", configs.ErrMissing},
		{"tenant path", withReplica(`[[tenant]]`, `name = "../x"`, `hosts = ["*"]`, `groups = ["a"]`), 6, "tenant[0].name", configs.ErrInvalid},
		{"duplicate tenant", withReplica(`[[tenant]]`, `name = "a"`, `hosts = ["*"]`, `groups = ["a"]`,
			`[[tenant]]`, `name = "a"`, `hosts = ["*"]`, `groups = ["b"]`), 10, "tenant[1].name", configs.ErrDuplicate},
		{"group path", withReplica(`[[tenant]]`, `name = "a"`, `hosts = ["*"]`, `groups = ["web", "../etc"]`), 8, "tenant[0].groups[1]", configs.ErrInvalid},
		{"group pattern with slash", withReplica(`[[tenant]]`, `name = "a"`, `hosts = ["*"]`, `groups = ["*/x"]`), 8, "tenant[0].groups[0]", configs.ErrInvalid},
		{"group of two tenants", withReplica(`[[tenant]]`, `name = "a"`, `hosts = ["*"]`, `groups = ["web"]`,
			`[[tenant]]`, `name = "b"`, `hosts = ["*"]`, `groups = ["web"]`), 12, "tenant[1].groups[0]", configs.ErrDuplicate},
		{"no hosts", withReplica(`[[tenant]]`, `name = "a"`, `groups = ["web"]`), 5, "tenant[0]", configs.ErrMissing},
		{"tenant retention", withReplica(`[[tenant]]`, `name = "a"`, `hosts = ["*"]`, `groups = ["w"]`, `window_bytes = "lots"`),
			9, "tenant[0].window_bytes", configs.ErrInvalid},
		{"budget below the largest batch", withReplica(`max_inflight = "64M"`), 5, "replica.max_inflight", configs.ErrInvalid},
		{"budget not a size", withReplica(`max_inflight = "much"`), 5, "replica.max_inflight", configs.ErrInvalid},
		{"budget negative", withReplica(`max_inflight = -1`), 5, "replica.max_inflight", configs.ErrInvalid},
		{"no streams", withReplica(`[defaults]`, `max_streams = 0`), 6, "defaults.max_streams", configs.ErrInvalid},
		{"streams not a number", withReplica(`[defaults]`, `max_streams = "8"`), 6, "defaults.max_streams", configs.ErrType},
		{"streams a float", withReplica(`[defaults]`, `max_streams = 8.5`), 6, "defaults.max_streams", configs.ErrType},
		{"tenant groups negative", withReplica(`[[tenant]]`, `name = "a"`, `hosts = ["*"]`, `groups = ["w"]`, `max_groups = -3`),
			9, "tenant[0].max_groups", configs.ErrInvalid},
		{"tenant groups huge", withReplica(`[[tenant]]`, `name = "a"`, `hosts = ["*"]`, `groups = ["w"]`, `max_groups = 9999999999`),
			9, "tenant[0].max_groups", configs.ErrInvalid},
		{"limit in [replica]", withReplica(`max_groups = 5`), 5, "replica.max_groups", configs.ErrUnknownKey},
	}
	for _, tc := range cases {
		_, err := configs.ParseReplica("replica.toml", []byte(tc.toml))
		es := configs.Errors(err)
		if len(es) == 0 {
			t.Errorf("%s: no error (%v)", tc.name, err)
			continue
		}
		e := es[0]
		if e.Line != tc.line || e.Key != tc.key || !errors.Is(e, tc.err) || e.File != "replica.toml" {
			t.Errorf("%s: got %v (line %d, key %q), want line %d key %q %v", tc.name, e, e.Line, e.Key, tc.line, tc.key, tc.err)
		}
	}
}

// FuzzParseReplica: never panics; every failure is located; every accepted
// tenant name and group name is path-safe.
func FuzzParseReplica(f *testing.F) {
	if b, err := os.ReadFile("examples/replica.toml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(withReplica(`[[tenant]]`, `name = "../x"`, `hosts = ["*"]`, `groups = ["*"]`)))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := configs.ParseReplica("fuzz.toml", data)
		if err != nil {
			for _, e := range configs.Errors(err) {
				if e.File != "fuzz.toml" || e.Err == nil {
					t.Fatalf("bad error %#v", e)
				}
			}
			if len(configs.Errors(err)) == 0 {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		for _, tn := range c.Tenants {
			dir, err := c.JournalDir(tn.Name, "g")
			if err != nil || filepath.Dir(filepath.Dir(dir)) != c.StorageRoot || strings.Contains(tn.Name, "/") {
				t.Fatalf("tenant %q: dir %q %v", tn.Name, dir, err)
			}
		}
	})
}
