package configs

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// The replica daemon's policy file (/etc/qcdp/replica.toml, `qcdp replica
// --config`), decoded with the same strict walker, positions and errors as
// the host policy:
//
//	[replica]      listen, ca, cert, key (required), storage_root, control_socket,
//	               nbd_socket, log_level, max_inflight
//	[defaults]     window, window_bytes, long_term = [{every, keep}, …], bookmarks,
//	               max_streams, max_groups
//	[[tenant]]     name (required), hosts, groups, read_groups, and any [defaults] key
//	[[recovery]]   a group's recovery plan (recovery.go)
//
// Durations are Go's ("90s", "24h") and may also be whole days ("7d").
//
// # Limits
//
// A host that holds a tenant's certificate must not be able to push the
// replica daemon out of memory, nor fill its storage root with journals:
//
//   - max_inflight (a size, default 256M, at least 128M) bounds the memory
//     that all streams together hold for data in flight: frames being read,
//     batches being decoded and waiting for their journal append. A stream
//     that needs more than is free waits (at most the idle timeout, then it
//     is refused as unavailable); a frame that alone needs more is refused.
//     128M holds the largest batch a host sends (a 32 MiB write with the
//     rest of a batch, compressed) with room to spare.
//   - max_streams (default 64) bounds the connections a tenant's hosts have
//     open at once. One more is refused as unavailable, unless it replaces
//     its group's stream (a host reconnecting after a half-open
//     connection); beyond twice the limit, before its Hello.
//   - max_groups (default 64) bounds the journals a tenant has in the
//     storage root, those already there included: a stream that would
//     create one more is refused as denied. Lowering it below what exists
//     refuses new groups only.
//
// Each refusal names the limit and is logged.

// Built-in defaults of the replica policy.
const (
	DefaultReplicaListen = ":7443"
	DefaultStorageRoot   = "/var/lib/qcdp/replica"
	// DefaultReplicaControlSocket and DefaultReplicaNBDSocket are the replica
	// daemon's local sockets.
	DefaultReplicaControlSocket = "/run/qcdp/replica.sock"
	DefaultReplicaNBDSocket     = "/run/qcdp/replica-nbd.sock"
	// DefaultMaxInflight and MinMaxInflight are max_inflight's default and
	// least value.
	DefaultMaxInflight = 256 << 20
	MinMaxInflight     = 128 << 20
	// MaxLimit bounds max_streams and max_groups.
	MaxLimit = 1 << 20
)

// DefaultLimits are a tenant's limits unless [defaults] or its [[tenant]]
// say otherwise.
var DefaultLimits = Limits{MaxStreams: 64, MaxGroups: 64}

// DefaultRetention is what [defaults] starts from: a day of any-point-in-
// time, then hourly points for a day and daily points for a week.
var DefaultRetention = Retention{
	Window:    24 * time.Hour,
	LongTerm:  []Schedule{{Every: time.Hour, Keep: 24 * time.Hour}, {Every: 24 * time.Hour, Keep: 7 * 24 * time.Hour}},
	Bookmarks: 30 * 24 * time.Hour,
}

// ErrNotAllowed is returned by Replica.MayWrite and Replica.MayRead.
var ErrNotAllowed = errors.New("configs: not allowed by the replica policy")

// Replica is a validated replica policy with every default applied. It is
// read-only after ParseReplica and safe for concurrent use.
type Replica struct {
	File        string
	Listen      string     // listen: "host:port" or ":port"
	CA          string     // ca: PEM file of the CA that signs host certificates
	Cert, Key   string     // cert, key: the replica's server certificate and key
	StorageRoot string     // storage_root: journals live in <storage_root>/<tenant>/<group>
	LogLevel    slog.Level // log_level
	// ControlSocket (control_socket) serves `qcdp points`, `export`,
	// `restore` and `verify`; NBDSocket (nbd_socket) serves the exported
	// point-in-time views to local NBD clients (QEMU, qemu-img, nbdcopy).
	ControlSocket, NBDSocket string
	// MaxInflight (max_inflight) bounds the memory of data in flight over
	// all streams.
	MaxInflight int64
	Defaults    Retention // [defaults]
	Limits      Limits    // [defaults]
	Tenants     []*Tenant // in file order
	// Recoveries are the groups' recovery plans ([[recovery]], recovery.go).
	Recoveries []*Recovery
}

// Limits bound what the hosts of one tenant may hold at the replica.
type Limits struct {
	MaxStreams int // max_streams: connections open at once
	MaxGroups  int // max_groups: journals in the storage root
}

// Retention is how long a group's history is kept (see journal.Retention).
type Retention struct {
	Window      time.Duration // window: every record boundary is a restore point this long
	WindowBytes int64         // window_bytes: …or while the newer records fit in this; 0 = no bound
	LongTerm    []Schedule    // long_term: points kept after the window
	Bookmarks   time.Duration // bookmarks: named bookmarks kept this long
}

// Schedule keeps the newest restore point of every Every-long slot for Keep.
type Schedule struct {
	Every time.Duration
	Keep  time.Duration
}

// Tenant is one [[tenant]]: the hosts whose certificates carry its name
// (their OrganizationalUnit) and the groups they may write and read.
type Tenant struct {
	Name       string    // safe as a path element (ValidName)
	Hosts      []string  // host certificate CommonNames allowed, or patterns ("*", "kvm*")
	Groups     []string  // groups its hosts may write (and read): names or patterns ("web-*")
	ReadGroups []string  // groups they may only read
	Retention  Retention // [defaults] with the tenant's overrides
	Limits     Limits    // [defaults] with the tenant's overrides
}

// LoadReplica reads and parses the replica policy at path.
func LoadReplica(path string) (*Replica, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return ParseReplica(path, data)
}

// ParseReplica parses and validates a replica policy; errors are as Parse's.
func ParseReplica(name string, data []byte) (*Replica, error) {
	return decodeDoc(name, data, (*decoder).replica)
}

func (d *decoder) replica(raw map[string]any) *Replica {
	root := d.table("", raw)
	c := &Replica{File: d.file, Defaults: DefaultRetention, Limits: DefaultLimits, MaxInflight: DefaultMaxInflight}
	rt, ok := root.sub("replica")
	if !ok {
		rt = d.table("replica", nil)
	}
	c.Listen = DefaultReplicaListen
	if s, ok := rt.str("listen"); ok {
		if why := checkListen(s); why != "" {
			d.errorf(rt.key("listen"), ErrInvalid, "%q: %s", s, why)
		} else {
			c.Listen = s
		}
	}
	for _, k := range []struct {
		key string
		dst *string
	}{{"ca", &c.CA}, {"cert", &c.Cert}, {"key", &c.Key}} {
		if !rt.has(k.key) {
			d.errorf(rt.path, ErrMissing, "set %s (a PEM file; `qcdp certs` makes one)", k.key)
		}
		*k.dst = d.absPath(rt, k.key, "")
	}
	c.StorageRoot = d.absPath(rt, "storage_root", DefaultStorageRoot)
	c.ControlSocket = d.absPath(rt, "control_socket", DefaultReplicaControlSocket)
	c.NBDSocket = d.absPath(rt, "nbd_socket", DefaultReplicaNBDSocket)
	for _, k := range []string{"control_socket", "nbd_socket"} {
		if p := map[string]string{"control_socket": c.ControlSocket, "nbd_socket": c.NBDSocket}[k]; len(p) > maxSocketPath {
			d.errorf(rt.key(k), ErrInvalid, "%d bytes long; a unix socket path has at most %d", len(p), maxSocketPath)
		}
	}
	c.LogLevel = d.logLevel(rt)
	if n, ok := rt.size("max_inflight"); ok {
		if n < MinMaxInflight {
			d.errorf(rt.key("max_inflight"), ErrInvalid, "%s is less than %s: the largest batch a host sends would not fit",
				formatSize(n), formatSize(MinMaxInflight))
		} else {
			c.MaxInflight = n
		}
	}
	rt.done()
	if t, ok := root.sub("defaults"); ok {
		c.Defaults = d.retention(t, DefaultRetention)
		c.Limits = d.limits(t, DefaultLimits)
		t.done()
	}
	seen := map[string]string{}
	for _, t := range root.subs("tenant") {
		if tn := d.tenant(t, c, seen); tn != nil {
			c.Tenants = append(c.Tenants, tn)
		}
	}
	c.Recoveries = d.recoveries(root, c)
	root.done()
	return c
}

func (d *decoder) logLevel(t *table) slog.Level {
	s, ok := t.str("log_level")
	if !ok {
		return slog.LevelInfo
	}
	levels := map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}
	l, known := levels[s]
	if !known {
		d.errorf(t.key("log_level"), ErrInvalid, "%q is not one of debug, info, warn, error", s)
	}
	return l
}

// checkListen returns what is wrong with a listen address, or "".
func checkListen(s string) string {
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return `use "host:port" or ":port", e.g. ":7443" or "[2001:db8::1]:7443"`
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "the port must be a number from 1 to 65535"
	}
	return ""
}

func (d *decoder) retention(t *table, base Retention) Retention {
	r := base
	if v, ok := d.longDuration(t, "window"); ok {
		r.Window = v
	}
	if n, ok := t.size("window_bytes"); ok {
		r.WindowBytes = n
	}
	if v, ok := d.longDuration(t, "bookmarks"); ok {
		r.Bookmarks = v
	}
	if t.has("long_term") {
		r.LongTerm = []Schedule{} // an empty list turns long-term points off
		for _, st := range t.subs("long_term") {
			var s Schedule
			every, okE := d.longDuration(st, "every")
			keep, okK := d.longDuration(st, "keep")
			for _, k := range []string{"every", "keep"} {
				if !st.has(k) {
					d.errorf(st.path, ErrMissing, "a long_term schedule needs every and keep, e.g. {every = \"1h\", keep = \"24h\"}")
					break
				}
			}
			switch {
			case okE && every <= 0:
				d.errorf(st.key("every"), ErrInvalid, "every must be more than 0")
			case okE && okK && keep < every:
				d.errorf(st.key("keep"), ErrInvalid, "keep %s is shorter than every %s: it would keep nothing", keep, every)
			case okE && okK:
				s.Every, s.Keep = every, keep
				r.LongTerm = append(r.LongTerm, s)
			}
			st.done()
		}
	}
	return r
}

func (d *decoder) limits(t *table, base Limits) Limits {
	l := base
	if n, ok := t.integer("max_streams", 1, MaxLimit); ok {
		l.MaxStreams = int(n)
	}
	if n, ok := t.integer("max_groups", 1, MaxLimit); ok {
		l.MaxGroups = int(n)
	}
	return l
}

// longDuration reads a duration written as Go does or in whole days
// ("7d"): retention periods are naturally days.
func (d *decoder) longDuration(t *table, k string) (time.Duration, bool) {
	v, present := t.lookup(k)
	if !present {
		return 0, false
	}
	s, isStr := v.(string)
	if !isStr {
		t.typeErr(t.key(k), `a duration string ("90s", "24h", "7d")`, v)
		return 0, false
	}
	if days, ok := strings.CutSuffix(s, "d"); ok && days != "" && strings.Trim(days, "0123456789") == "" {
		n, err := strconv.ParseInt(days, 10, 64)
		if err != nil || n > int64(1<<63-1)/int64(24*time.Hour) {
			d.errorf(t.key(k), ErrInvalid, "duration %q is too long", s)
			return 0, false
		}
		return time.Duration(n) * 24 * time.Hour, true
	}
	dur, err := time.ParseDuration(s)
	if err != nil {
		d.errorf(t.key(k), ErrInvalid, "duration %q: use a number with a unit: \"90s\", \"24h\", \"7d\"", s)
		return 0, false
	}
	if dur < 0 {
		d.errorf(t.key(k), ErrInvalid, "duration %s is negative", s)
		return 0, false
	}
	return dur, true
}

func (d *decoder) tenant(t *table, c *Replica, seen map[string]string) *Tenant {
	tn := &Tenant{}
	name, ok := t.str("name")
	switch {
	case !t.has("name"):
		d.errorf(t.key("name"), ErrMissing, "every tenant needs a name (the OrganizationalUnit of its host certificates)")
	case !ok:
	case nameProblem(name) != "":
		d.errorf(t.key("name"), ErrInvalid, "tenant name %q: %s", name, nameProblem(name))
	default:
		if prev, dup := seen["tenant:"+name]; dup {
			d.errorf(t.key("name"), ErrDuplicate, "tenant %q is already defined by %s (line %d)", name, prev, d.line(prev))
		} else {
			seen["tenant:"+name] = t.path
		}
		tn.Name = name
	}
	hosts, paths, _ := t.strs("hosts")
	for i, h := range hosts {
		if why := checkHostPattern(h); why != "" {
			d.errorf(paths[i], ErrInvalid, "host %q: %s", h, why)
			continue
		}
		tn.Hosts = append(tn.Hosts, h)
	}
	if !t.has("hosts") {
		d.errorf(t.path, ErrMissing, `set hosts: the CommonNames of the tenant's host certificates, or ["*"] for any`)
	}
	tn.Groups = d.groupPatterns(t, "groups", tn.Name, seen)
	tn.ReadGroups = d.groupPatterns(t, "read_groups", "", nil)
	if !t.has("groups") && !t.has("read_groups") {
		d.errorf(t.path, ErrMissing, "set groups (and/or read_groups): the groups the tenant's hosts may write (read)")
	}
	tn.Retention = d.retention(t, c.Defaults)
	tn.Limits = d.limits(t, c.Limits)
	t.done()
	if tn.Name == "" {
		return nil
	}
	return tn
}

// groupPatterns reads group names or patterns ('*' and '?' over name
// characters). A plain name written by two tenants is an error: the
// administrator surely meant one of them (seen is nil to skip the check).
func (d *decoder) groupPatterns(t *table, k, tenant string, seen map[string]string) []string {
	pats, paths, _ := t.strs(k)
	var out []string
	for i, p := range pats {
		if why := patternProblem(p); why != "" {
			d.errorf(paths[i], ErrInvalid, "group %q: %s", p, why)
			continue
		}
		if slices.Contains(out, p) {
			d.errorf(paths[i], ErrDuplicate, "group %q is listed twice", p)
			continue
		}
		if seen != nil && !strings.ContainsAny(p, "*?") {
			if prev, dup := seen["group:"+p]; dup {
				d.errorf(paths[i], ErrDuplicate, "group %q is already given to another tenant by %s (line %d)", p, prev, d.line(prev))
				continue
			}
			seen["group:"+p] = paths[i]
		}
		out = append(out, p)
	}
	return out
}

// patternProblem: a group name, or a pattern whose other characters are
// name characters.
func patternProblem(p string) string {
	if !strings.ContainsAny(p, "*?") {
		return nameProblem(p)
	}
	if len(p) > MaxNameLen {
		return fmt.Sprintf("%d bytes long; at most %d", len(p), MaxNameLen)
	}
	if why := nameProblem(strings.NewReplacer("*", "a", "?", "a").Replace(p)); why != "" {
		return why + " (patterns may use '*' and '?')"
	}
	return ""
}

func checkHostPattern(h string) string {
	switch {
	case h == "":
		return "empty"
	case len(h) > 255:
		return "longer than 255 bytes"
	case strings.ContainsFunc(h, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }):
		return "contains a space or a control character"
	}
	if _, err := path.Match(h, ""); err != nil {
		return "not a valid pattern"
	}
	return ""
}

// Tenant returns the tenant called name.
func (c *Replica) Tenant(name string) (*Tenant, bool) {
	for _, t := range c.Tenants {
		if t.Name == name {
			return t, true
		}
	}
	return nil, false
}

func matchAny(pats []string, s string) bool {
	for _, p := range pats {
		if ok, _ := path.Match(p, s); ok || p == s {
			return true
		}
	}
	return false
}

// MayWrite reports (nil) whether a host certificate of tenant with
// CommonName host may stream group. The error wraps ErrNotAllowed and says
// which rule is missing.
func (c *Replica) MayWrite(tenant, host, group string) error {
	return c.may(tenant, host, group, false)
}

// MayRead is MayWrite for reading (views, restores): a tenant reads the
// groups it writes and its read_groups.
func (c *Replica) MayRead(tenant, host, group string) error {
	return c.may(tenant, host, group, true)
}

func (c *Replica) may(tenant, host, group string, read bool) error {
	if err := ValidName(group); err != nil {
		return fmt.Errorf("%w: %w", ErrNotAllowed, err)
	}
	t, ok := c.Tenant(tenant)
	switch {
	case !ok:
		return fmt.Errorf("%w: no [[tenant]] named %q in %s", ErrNotAllowed, tenant, c.File)
	case !matchAny(t.Hosts, host):
		return fmt.Errorf("%w: host %q is not in tenant %q's hosts", ErrNotAllowed, host, tenant)
	case matchAny(t.Groups, group):
		return nil
	case read && matchAny(t.ReadGroups, group):
		return nil
	}
	return fmt.Errorf("%w: group %q is not among tenant %q's groups", ErrNotAllowed, group, tenant)
}

// JournalDir is <storage_root>/<tenant>/<group>. Both names are checked
// (ValidName), so the result is always two levels inside storage_root.
func (c *Replica) JournalDir(tenant, group string) (string, error) {
	if err := ValidName(tenant); err != nil {
		return "", fmt.Errorf("configs: tenant: %w", err)
	}
	if err := ValidName(group); err != nil {
		return "", fmt.Errorf("configs: group: %w", err)
	}
	return filepath.Join(c.StorageRoot, tenant, group), nil
}

// LimitsFor returns the limits of a tenant ([defaults] for a tenant the
// policy does not name).
func (c *Replica) LimitsFor(tenant string) Limits {
	if t, ok := c.Tenant(tenant); ok {
		return t.Limits
	}
	return c.Limits
}

// RetentionFor returns the retention of a tenant's groups.
func (c *Replica) RetentionFor(tenant string) Retention {
	if t, ok := c.Tenant(tenant); ok {
		return t.Retention
	}
	return c.Defaults
}
