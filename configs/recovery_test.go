package configs_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/configs"
)

func TestRecoveryExample(t *testing.T) {
	c, err := configs.LoadReplica("examples/replica.toml")
	if err != nil {
		t.Fatal(err)
	}
	r, ok := c.RecoveryFor("acme", "web")
	if !ok {
		t.Fatalf("no plan for acme/web: %+v", c.Recoveries)
	}
	if r.LibvirtURI != "qemu:///system" || r.DomainType != "kvm" || r.BootDelay != 10*time.Second ||
		len(r.BootOrder) != 2 || r.PostBoot[0] != "/usr/local/bin/dr-smoke-test" {
		t.Fatalf("%+v", r)
	}
	if got := r.Networks[configs.Network{Name: "br0", Bridge: true}]; got.String() != "bridge:br-dr" {
		t.Fatalf("bridge mapping %v in %v", got, r.Networks)
	}
	if got := r.Networks[configs.Network{Name: "default"}]; got.String() != "dr-net" {
		t.Fatalf("network mapping %v", got)
	}
	o := r.Override("web1", "")
	if o.MemoryMiB != 2048 || o.VCPUs != 2 || o.MAC != "keep" {
		t.Fatalf("override %+v", o)
	}
	if o := r.Override("db1", ""); o.MAC != "keep" || o.MemoryMiB != 0 {
		t.Fatalf("no override %+v", o)
	}
}

func TestRecoveryDefaults(t *testing.T) {
	c, err := configs.ParseReplica("r.toml", []byte(withReplica(`[[tenant]]`, `name = "t"`, `hosts = ["*"]`, `groups = ["g*"]`,
		`[[recovery]]`, `group = "g1"`)))
	if err != nil {
		t.Fatal(err)
	}
	r, ok := c.RecoveryFor("t", "g1")
	if !ok || r.StandbyDir != configs.DefaultStandbyDir || r.LibvirtURI != configs.DefaultLibvirtURI ||
		!strings.HasPrefix(r.TestNetwork.Name, configs.DefaultTestNetwork+"-") || len(r.TestNetwork.Name) != len("qcdp-test-")+8 || r.ShutdownTimeout != configs.DefaultShutdownTimeout {
		t.Fatalf("%+v", r)
	}
}

// TestRecoveryErrors: every mistake names its line and key.
func TestRecoveryErrors(t *testing.T) {
	tenants := []string{`[[tenant]]`, `name = "a"`, `hosts = ["*"]`, `groups = ["web"]`,
		`[[tenant]]`, `name = "b"`, `hosts = ["*"]`, `groups = ["w*"]`}
	for _, tc := range []struct {
		lines []string
		want  string
		err   error
	}{
		{[]string{`[[recovery]]`, `libvirt_uri = "qemu:///system"`}, "names the group", configs.ErrMissing},
		{[]string{`[[recovery]]`, `group = "nope"`}, `group "nope" is not among`, configs.ErrInvalid},
		{[]string{`[[recovery]]`, `group = "web"`}, "matches tenants a, b", configs.ErrInvalid},
		{[]string{`[[recovery]]`, `group = "web"`, `tenant = "c"`}, `no [[tenant]] is named "c"`, configs.ErrInvalid},
		{[]string{`[[recovery]]`, `group = "wx"`, `[[recovery]]`, `group = "wx"`}, "already has a recovery plan", configs.ErrDuplicate},
		{[]string{`[[recovery]]`, `group = "wx"`, `networks = { "a b" = "x" }`}, `source "a b"`, configs.ErrInvalid},
		{[]string{`[[recovery]]`, `group = "wx"`, `networks = { default = "bridge:" }`}, `recovery network "bridge:"`, configs.ErrInvalid},
		{[]string{`[[recovery]]`, `group = "wx"`, `networks = { default = 3 }`}, "must be a string", configs.ErrType},
		{[]string{`[[recovery]]`, `group = "wx"`, `domain_type = "xen"`}, "want kvm or qemu", configs.ErrInvalid},
		{[]string{`[[recovery]]`, `group = "wx"`, `libvirt_uri = "not a uri"`}, "not a libvirt URI", configs.ErrInvalid},
		{[]string{`[[recovery]]`, `group = "wx"`, `boot_order = ["a", "a"]`}, "given twice", configs.ErrInvalid},
		{[]string{`[[recovery]]`, `group = "wx"`, `post_boot = ["smoke"]`}, "absolute path", configs.ErrInvalid},
		{[]string{`[[recovery]]`, `group = "wx"`, `shutdown_timeout = "0s"`}, "less than", configs.ErrInvalid},
		{[]string{`[[recovery]]`, `group = "wx"`, `standby_dir = "rel"`}, "", nil},
		{[]string{`[[recovery]]`, `group = "wx"`, `colour = "red"`}, "unknown key", configs.ErrUnknownKey},
		{[]string{`[[recovery]]`, `group = "wx"`, `[[recovery.vm]]`, `memory = "1G"`}, "names its VM", configs.ErrMissing},
		{[]string{`[[recovery]]`, `group = "wx"`, `[[recovery.vm]]`, `name = "v"`, `memory = "1000"`}, "whole MiB", configs.ErrInvalid},
		{[]string{`[[recovery]]`, `group = "wx"`, `[[recovery.vm]]`, `name = "v"`, `mac = "52:54:00:zz:00:01"`}, "MAC addresses", configs.ErrInvalid},
		{[]string{`[[recovery]]`, `group = "wx"`, `[[recovery.vm]]`, `name = "v"`, `[[recovery.vm]]`, `name = "v"`}, "already has overrides", configs.ErrDuplicate},
	} {
		_, err := configs.ParseReplica("r.toml", []byte(withReplica(append(append([]string{}, tenants...), tc.lines...)...)))
		if err == nil {
			t.Errorf("%v: accepted", tc.lines)
			continue
		}
		if tc.err != nil && (!errors.Is(err, tc.err) || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%v: %v, want %v naming %q", tc.lines, err, tc.err, tc.want)
		}
		if !strings.Contains(err.Error(), "r.toml:") {
			t.Errorf("%v: %v does not name the file and line", tc.lines, err)
		}
	}
}
