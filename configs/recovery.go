package configs

import (
	"crypto/sha256"
	"encoding/hex"
	"net"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"
)

// A recovery plan per protection group, in the replica policy: how its VMs
// come up at the recovery site when it fails over (package failover).
//
//	[[recovery]]   group (required), tenant, libvirt_uri, standby_dir, domain_type,
//	               networks, test_network, test_networks, boot_order, boot_delay,
//	               boot_timeout, shutdown_timeout, post_boot, post_boot_timeout, kernel_dirs,
//	               domain_suffix
//	[[recovery.vm]] name (required), memory, vcpus, mac, cmdline_append
//
// A network is named "NAME" (a libvirt network) or "bridge:NAME" (a host
// bridge), on both sides of networks and test_networks. Every network a
// protected VM's NICs use must be in networks, or its failover is refused
// naming it; a test failover puts each NIC on test_networks[source], else
// on test_network (default: "qcdp-test-" and a hash of the tenant and
// group, one per group; an isolated libvirt network that qcdp defines when
// it is missing, and removes at cleanup when it did).

// Defaults of a recovery plan.
const (
	DefaultLibvirtURI = "qemu:///system"
	DefaultStandbyDir = "/var/lib/qcdp/standby"
	// DefaultTestNetwork is test_network's prefix when it is not set: the
	// test network is then the group's own (TestNetworkOf).
	DefaultTestNetwork     = "qcdp-test"
	DefaultBootTimeout     = 5 * time.Minute
	DefaultShutdownTimeout = 5 * time.Minute
	DefaultPostBootTimeout = 5 * time.Minute
)

// Recovery is one group's recovery plan, every default applied.
type Recovery struct {
	Group      string // the protection group
	Tenant     string // its tenant ("" in the file: the one tenant whose groups match)
	LibvirtURI string // libvirt_uri: where standby domains are defined
	// StandbyDir (standby_dir) holds the standby disks: qcow2 overlays over
	// the replica's views, and the disks that commit makes whole.
	StandbyDir string
	DomainType string // domain_type: "kvm" (default) or "qemu" (TCG)
	// DomainSuffix (domain_suffix) is added to a VM's name to name its
	// standby domain in a failover ("" by default: the VM's own name; a
	// test failover's are <vm>-qcdp-test whatever it says).
	DomainSuffix string
	// Networks (networks) maps a source network to the recovery network a
	// failover uses; TestNetworks (test_networks) the one a test failover
	// uses, TestNetwork (test_network) when it names none.
	Networks     map[Network]Network
	TestNetworks map[Network]Network
	TestNetwork  Network
	// BootOrder (boot_order) names the VMs that boot first, in order; the
	// others follow in name order. BootDelay (boot_delay) is the pause
	// after each VM is running, before the next one starts.
	BootOrder []string
	BootDelay time.Duration
	// BootTimeout (boot_timeout) bounds how long a standby domain may take
	// to run; ShutdownTimeout (shutdown_timeout) how long a planned
	// failover waits for the protected VMs to shut down.
	BootTimeout, ShutdownTimeout time.Duration
	// PostBoot (post_boot) is a command (argv, no shell) run after each VM
	// is running, with QCDP_GROUP, QCDP_VM, QCDP_DOMAIN and QCDP_MODE in
	// its environment, for at most PostBootTimeout (post_boot_timeout). A
	// failure is reported in the failover's result; the VM stays up.
	PostBoot        []string
	PostBootTimeout time.Duration
	// KernelDirs (kernel_dirs) are the directories a standby may boot a
	// kernel and initrd from, for a VM that boots one directly: a path
	// that comes from the protected host is used only inside them.
	KernelDirs []string
	VMs        []VMOverride // [[recovery.vm]]
}

// Network is a libvirt network, or a host bridge.
type Network struct {
	Name   string
	Bridge bool
}

func (n Network) String() string {
	if n.Bridge {
		return "bridge:" + n.Name
	}
	return n.Name
}

// VMOverride changes what a standby of one VM gets.
type VMOverride struct {
	Name      string // name: the VM's name (or id) on its host
	MemoryMiB int64  // memory; 0: as the VM had
	VCPUs     int    // vcpus; 0: as the VM had
	// MAC (mac): "keep" (default), "new" (libvirt makes new addresses), or
	// addresses, one per NIC in order, comma-separated.
	MAC string
	// CmdlineAppend (cmdline_append) is added to the kernel command line of
	// a VM that boots a kernel directly.
	CmdlineAppend string
}

var (
	netName  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}$`)
	uriShape = regexp.MustCompile(`^[a-z][a-z0-9+.-]*://[^\s]*$`)
)

// parseNetwork reads "NAME" or "bridge:NAME".
func parseNetwork(s string) (Network, string) {
	n := Network{Name: s}
	if b, ok := strings.CutPrefix(s, "bridge:"); ok {
		n = Network{Name: b, Bridge: true}
	}
	if !netName.MatchString(n.Name) || strings.HasPrefix(n.Name, "bridge:") {
		return n, `want a libvirt network "NAME" or a bridge "bridge:NAME" (letters, digits, . _ : + -)`
	}
	return n, ""
}

func (d *decoder) recoveries(root *table, c *Replica) []*Recovery {
	var out []*Recovery
	seen := map[string]string{}
	for _, t := range root.subs("recovery") {
		r := d.recovery(t, c, seen)
		if r != nil {
			out = append(out, r)
		}
	}
	return out
}

func (d *decoder) recovery(t *table, c *Replica, seen map[string]string) *Recovery {
	r := &Recovery{LibvirtURI: DefaultLibvirtURI, StandbyDir: DefaultStandbyDir, DomainType: "kvm",
		BootTimeout:     DefaultBootTimeout,
		ShutdownTimeout: DefaultShutdownTimeout, PostBootTimeout: DefaultPostBootTimeout,
		Networks: map[Network]Network{}, TestNetworks: map[Network]Network{}}
	group, ok := t.str("group")
	if !t.has("group") {
		d.errorf(t.path, ErrMissing, "every [[recovery]] names the group it recovers: group = \"web\"")
	} else if ok {
		if why := nameProblem(group); why != "" {
			d.errorf(t.key("group"), ErrInvalid, "group %q: %s", group, why)
		}
		r.Group = group
	}
	if s, ok := t.str("tenant"); ok {
		if _, known := c.Tenant(s); !known {
			d.errorf(t.key("tenant"), ErrInvalid, "no [[tenant]] is named %q", s)
		}
		r.Tenant = s
	}
	if r.Group != "" {
		var owners []string
		for _, tn := range c.Tenants {
			if (r.Tenant == "" || tn.Name == r.Tenant) && (matchAny(tn.Groups, r.Group) || matchAny(tn.ReadGroups, r.Group)) {
				owners = append(owners, tn.Name)
			}
		}
		switch {
		case len(owners) == 0:
			d.errorf(t.key("group"), ErrInvalid, "group %q is not among the groups of any [[tenant]]%s", r.Group, map[bool]string{true: " named " + r.Tenant}[r.Tenant != ""])
		case len(owners) > 1:
			d.errorf(t.key("group"), ErrInvalid, "group %q matches tenants %s: say which with tenant = …", r.Group, strings.Join(owners, ", "))
		default:
			r.Tenant = owners[0]
			key := r.Tenant + "/" + r.Group
			if prev, dup := seen[key]; dup {
				d.errorf(t.key("group"), ErrDuplicate, "group %s already has a recovery plan at %s (line %d)", key, prev, d.line(prev))
			} else {
				seen[key] = t.key("group")
			}
		}
	}
	if s, ok := t.str("libvirt_uri"); ok {
		if !uriShape.MatchString(s) {
			d.errorf(t.key("libvirt_uri"), ErrInvalid, "%q is not a libvirt URI such as qemu:///system", s)
		} else {
			r.LibvirtURI = s
		}
	}
	r.StandbyDir = d.absPath(t, "standby_dir", DefaultStandbyDir)
	if s, ok := t.str("domain_type"); ok {
		if s != "kvm" && s != "qemu" {
			d.errorf(t.key("domain_type"), ErrInvalid, "%q: want kvm or qemu (TCG, no hardware acceleration)", s)
		} else {
			r.DomainType = s
		}
	}
	if s, ok := t.str("domain_suffix"); ok {
		if s != "" && !netName.MatchString("x"+s) {
			d.errorf(t.key("domain_suffix"), ErrInvalid, "%q: letters, digits, . _ : + - only", s)
		} else {
			r.DomainSuffix = s
		}
	}
	r.Networks = d.networkMap(t, "networks")
	r.TestNetworks = d.networkMap(t, "test_networks")
	if s, ok := t.str("test_network"); ok {
		if n, why := parseNetwork(s); why != "" {
			d.errorf(t.key("test_network"), ErrInvalid, "%q: %s", s, why)
		} else {
			r.TestNetwork = n
		}
	}
	if names, paths, ok := t.strs("boot_order"); ok {
		dup := map[string]bool{}
		for i, n := range names {
			if n == "" || dup[n] {
				d.errorf(paths[i], ErrInvalid, "VM name %q empty or given twice", n)
			}
			dup[n] = true
		}
		r.BootOrder = names
	}
	for _, k := range []struct {
		key string
		dst *time.Duration
		min time.Duration
	}{{"boot_delay", &r.BootDelay, 0}, {"boot_timeout", &r.BootTimeout, time.Second},
		{"shutdown_timeout", &r.ShutdownTimeout, time.Second}, {"post_boot_timeout", &r.PostBootTimeout, time.Second}} {
		if v, ok := t.duration(k.key); ok {
			if v < k.min {
				d.errorf(t.key(k.key), ErrInvalid, "%s is less than %s", v, k.min)
			} else {
				*k.dst = v
			}
		}
	}
	if argv, paths, ok := t.strs("post_boot"); ok {
		if len(argv) == 0 || !strings.HasPrefix(argv[0], "/") {
			d.errorf(t.key("post_boot"), ErrInvalid, "want a command with an absolute path first, e.g. [\"/usr/local/bin/smoke-test\", \"--quick\"]")
		}
		for i, a := range argv {
			if strings.ContainsRune(a, 0) {
				d.errorf(paths[i], ErrInvalid, "contains a NUL byte")
			}
		}
		r.PostBoot = argv
	}
	if dirs, paths, ok := t.strs("kernel_dirs"); ok {
		for i, dir := range dirs {
			if !strings.HasPrefix(dir, "/") || filepath.Clean(dir) != dir || dir == "/" {
				d.errorf(paths[i], ErrInvalid, "%q: want a clean absolute directory other than /", dir)
				continue
			}
			r.KernelDirs = append(r.KernelDirs, dir)
		}
	}
	vmSeen := map[string]string{}
	for _, vt := range t.subs("vm") {
		r.VMs = append(r.VMs, d.vmOverride(vt, vmSeen))
	}
	t.done()
	if r.TestNetwork.Name == "" {
		h := sha256.Sum256([]byte(r.Tenant + "/" + r.Group))
		r.TestNetwork = Network{Name: DefaultTestNetwork + "-" + hex.EncodeToString(h[:4])}
	}
	return r
}

func (d *decoder) networkMap(t *table, k string) map[Network]Network {
	out := map[Network]Network{}
	v, present := t.lookup(k)
	if !present {
		return out
	}
	m, ok := v.(map[string]any)
	if !ok {
		t.typeErr(t.key(k), `a table of source network = recovery network, e.g. { default = "dr-net", "bridge:br0" = "bridge:br-dr" }`, v)
		return out
	}
	keys := make([]string, 0, len(m))
	for s := range m {
		keys = append(keys, s)
	}
	sort.Strings(keys)
	for _, s := range keys {
		p := keyPath(t.key(k), s)
		src, why := parseNetwork(s)
		if why != "" {
			d.errorf(p, ErrInvalid, "source %q: %s", s, why)
			continue
		}
		ds, isStr := m[s].(string)
		if !isStr {
			t.typeErr(p, "a string", m[s])
			continue
		}
		dst, why := parseNetwork(ds)
		if why != "" {
			d.errorf(p, ErrInvalid, "recovery network %q: %s", ds, why)
			continue
		}
		out[src] = dst
	}
	return out
}

func (d *decoder) vmOverride(t *table, seen map[string]string) VMOverride {
	var o VMOverride
	if n, ok := t.str("name"); ok && n != "" {
		if prev, dup := seen[n]; dup {
			d.errorf(t.key("name"), ErrDuplicate, "VM %q already has overrides at %s (line %d)", n, prev, d.line(prev))
		}
		seen[n] = t.key("name")
		o.Name = n
	} else if !t.has("name") || ok {
		d.errorf(t.path, ErrMissing, "every [[recovery.vm]] names its VM: name = \"web1\"")
	}
	if n, ok := t.size("memory"); ok {
		if n < 1<<20 || n%(1<<20) != 0 {
			d.errorf(t.key("memory"), ErrInvalid, "%d bytes: want whole MiB, at least 1M", n)
		} else {
			o.MemoryMiB = n >> 20
		}
	}
	if n, ok := t.integer("vcpus", 1, 4096); ok {
		o.VCPUs = int(n)
	}
	o.MAC = "keep"
	if s, ok := t.str("mac"); ok {
		switch s {
		case "keep", "new":
			o.MAC = s
		default:
			for _, m := range strings.Split(s, ",") {
				if hw, err := net.ParseMAC(strings.TrimSpace(m)); err != nil || len(hw) != 6 {
					d.errorf(t.key("mac"), ErrInvalid, "%q: want keep, new, or MAC addresses (52:54:00:12:34:56), comma-separated, one per NIC", s)
					break
				}
			}
			o.MAC = s
		}
	}
	if s, ok := t.str("cmdline_append"); ok {
		if len(s) > 1024 || strings.ContainsAny(s, "\x00\n") {
			d.errorf(t.key("cmdline_append"), ErrInvalid, "at most 1024 bytes on one line")
		} else {
			o.CmdlineAppend = s
		}
	}
	t.done()
	return o
}

// RecoveryFor returns the recovery plan of a tenant's group.
func (c *Replica) RecoveryFor(tenant, group string) (*Recovery, bool) {
	for _, r := range c.Recoveries {
		if r.Tenant == tenant && r.Group == group {
			return r, true
		}
	}
	return nil, false
}

// Override returns the overrides of the VM named name (or with that id).
func (r *Recovery) Override(name, id string) VMOverride {
	for _, o := range r.VMs {
		if o.Name == name || id != "" && o.Name == id {
			return o
		}
	}
	return VMOverride{MAC: "keep"}
}
