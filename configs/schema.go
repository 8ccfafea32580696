package configs

import (
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Built-in defaults, for what [host] and [defaults] leave out.
const (
	DefaultStateDir      = "/var/lib/qcdp"
	DefaultControlSocket = "/run/qcdp/host.sock"
	DefaultNBDSocketDir  = "/run/qcdp/nbd"
	// DefaultLibvirtQEMUGroup is the group libvirt runs QEMU as on Debian.
	DefaultLibvirtQEMUGroup = "libvirt-qemu"
)

// DefaultTuning is what [defaults] starts from.
var DefaultTuning = Tuning{
	SpoolMax:     8 << 30,
	SpoolSegment: 64 << 20,
	SyncInterval: 0,
	SyncBytes:    0,
	Granularity:  4096,
	// ResyncReadRate: most disks read several times this; a guest keeps
	// the rest.
	ResyncReadRate: 256 << 20,
}

// Limits checked by Parse.
const (
	MaxNameLen = 64 // group and disk names

	// MinSpoolMax holds two of QEMU's largest NBD writes (32 MiB each).
	MinSpoolMax     = 64 << 20
	MinSpoolSegment = 1 << 20
	// SegmentsPerSpool: spool_max must hold this many segments, since the
	// spool frees room a whole segment at a time.
	SegmentsPerSpool = 4
	MinGranularity   = 512
	MaxGranularity   = 64 << 10
	// maxSocketPath is the longest path a unix socket can have on Linux
	// (sun_path is 108 bytes with the terminating NUL).
	maxSocketPath = 107
)

// ValidName reports whether s may name a group or a disk: 1 to 64 bytes of
// [A-Za-z0-9._-], not starting with '.' or '-'. Such a name is safe as one
// file path element (no "/", no "." or "..") and cannot be taken for a hidden
// or temporary file or for a command-line flag. The error wraps ErrInvalid.
func ValidName(s string) error {
	if why := nameProblem(s); why != "" {
		return fmt.Errorf("%w: name %q: %s", ErrInvalid, s, why)
	}
	return nil
}

func nameProblem(s string) string {
	if s == "" {
		return "empty"
	}
	if len(s) > MaxNameLen {
		return fmt.Sprintf("%d bytes long; at most %d", len(s), MaxNameLen)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			r, _ := utf8.DecodeRuneInString(s[i:])
			return fmt.Sprintf("contains %q; use only letters, digits, '.', '_' and '-'", r)
		}
	}
	if s[0] == '.' || s[0] == '-' {
		return fmt.Sprintf("must not start with %q", s[0])
	}
	return ""
}

func (d *decoder) policy(raw map[string]any) *Policy {
	root := d.table("", raw)
	p := &Policy{
		File:     d.file,
		Defaults: DefaultTuning,
		byName:   map[string]*VM{},
		byUUID:   map[string]*VM{},
	}
	h, ok := root.sub("host")
	if !ok {
		h = d.table("host", nil)
	}
	p.Host = d.host(h)
	if t, ok := root.sub("defaults"); ok {
		p.Defaults = d.tuning(t, DefaultTuning)
		d.spoolFits(t, p.Defaults, "built-in default")
		t.done()
	}
	seen := map[string]string{} // selector → its path
	for _, t := range root.subs("group") {
		if g := d.group(t, p, seen); g != nil {
			if g.Replica != "" && (p.Host.TLSCA == "" || p.Host.TLSCert == "" || p.Host.TLSKey == "") {
				d.errorf(t.key("replica"), ErrMissing, "a replica needs [host] tls_ca, tls_cert and tls_key (see `qcdp certs`)")
			}
			p.groups = append(p.groups, g)
		}
	}
	root.done()
	return p
}

func (d *decoder) host(t *table) Host {
	h := Host{
		StateDir:      d.absPath(t, "state_dir", DefaultStateDir),
		ControlSocket: d.absPath(t, "control_socket", DefaultControlSocket),
		NBDSocketDir:  d.absPath(t, "nbd_socket_dir", DefaultNBDSocketDir),
		LogLevel:      slog.LevelInfo,
		TLSCA:         d.absPath(t, "tls_ca", ""),
		TLSCert:       d.absPath(t, "tls_cert", ""),
		TLSKey:        d.absPath(t, "tls_key", ""),
	}
	if len(h.ControlSocket) > maxSocketPath {
		d.errorf(t.key("control_socket"), ErrInvalid, "%d bytes long; a unix socket path has at most %d", len(h.ControlSocket), maxSocketPath)
	}
	if s, ok := t.str("log_level"); ok {
		levels := map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}
		if l, ok := levels[s]; ok {
			h.LogLevel = l
		} else {
			d.errorf(t.key("log_level"), ErrInvalid, "%q is not one of debug, info, warn, error", s)
		}
	}
	if s, ok := t.str("libvirt_uri"); ok {
		if err := checkLibvirtURI(s); err != "" {
			d.errorf(t.key("libvirt_uri"), ErrInvalid, "%q: %s", s, err)
		} else {
			h.LibvirtURI = s
		}
	}
	if s, ok := t.str("qemu_group"); ok {
		if !validGroupName(s) {
			d.errorf(t.key("qemu_group"), ErrInvalid, "%q is not a valid group name", s)
		} else {
			h.QEMUGroup = s
		}
	} else if h.LibvirtURI != "" {
		h.QEMUGroup = DefaultLibvirtQEMUGroup
	}
	globs, paths, _ := t.strs("qmp_sockets")
	for i, g := range globs {
		if !filepath.IsAbs(g) {
			d.errorf(paths[i], ErrInvalid, "%q is not an absolute path", g)
			continue
		}
		if _, err := filepath.Match(g, ""); err != nil {
			d.errorf(paths[i], ErrInvalid, "%q is not a valid glob pattern", g)
			continue
		}
		h.QMPSockets = append(h.QMPSockets, filepath.Clean(g))
	}
	if arr, _ := t.m["qmp_sockets"].([]any); !t.has("libvirt_uri") && len(arr) == 0 {
		d.errorf(t.path, ErrMissing, "set libvirt_uri, qmp_sockets or both, or the daemon finds no VMs")
	}
	t.done()
	return h
}

// validGroupName accepts POSIX portable user and group names.
func validGroupName(s string) bool {
	if s == "" || len(s) > 32 || s[0] == '-' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// checkLibvirtURI returns what is wrong with a libvirt URI, or "". The host
// daemon must run beside QEMU (QEMU's mirror connects to its unix sockets),
// so only local qemu URIs make sense.
func checkLibvirtURI(s string) string {
	u, err := url.Parse(s)
	switch {
	case err != nil || u.Scheme == "":
		return `not a libvirt URI such as "qemu:///system"`
	case u.Scheme != "qemu" && u.Scheme != "qemu+unix":
		return "the host daemon runs beside QEMU: use a local qemu:// or qemu+unix:// URI"
	case u.Host != "":
		return "the host daemon runs beside QEMU: the URI must not name a host"
	case u.Path != "/system" && u.Path != "/session":
		return "the path must be /system or /session"
	}
	return ""
}

// absPath reads an absolute path at k, or returns def.
func (d *decoder) absPath(t *table, k, def string) string {
	s, ok := t.str(k)
	if !ok {
		return def
	}
	if !filepath.IsAbs(s) || strings.ContainsRune(s, 0) {
		d.errorf(t.key(k), ErrInvalid, "%q is not an absolute path", s)
		return def
	}
	return filepath.Clean(s)
}

// tuning reads the Tuning keys of t over base.
func (d *decoder) tuning(t *table, base Tuning) Tuning {
	tu := base
	if n, ok := t.size("spool_max"); ok {
		if n < MinSpoolMax {
			d.errorf(t.key("spool_max"), ErrInvalid, "%s is less than the minimum %s", formatSize(n), formatSize(MinSpoolMax))
		} else {
			tu.SpoolMax = n
		}
	}
	if n, ok := t.size("spool_segment"); ok {
		if n < MinSpoolSegment {
			d.errorf(t.key("spool_segment"), ErrInvalid, "%s is less than the minimum %s", formatSize(n), formatSize(MinSpoolSegment))
		} else {
			tu.SpoolSegment = n
		}
	}
	if v, ok := t.duration("sync_interval"); ok {
		if v > 0 && v.Milliseconds() < 1 {
			d.errorf(t.key("sync_interval"), ErrInvalid, "%s: use 0s (off) or at least 1ms", v)
		} else {
			tu.SyncInterval = v
		}
	}
	if n, ok := t.size("sync_bytes"); ok {
		tu.SyncBytes = n
	}
	if n, ok := t.size("granularity"); ok {
		if n < MinGranularity || n > MaxGranularity || n&(n-1) != 0 {
			d.errorf(t.key("granularity"), ErrInvalid, "%d is not a power of two from %d to %d", n, MinGranularity, MaxGranularity)
		} else {
			tu.Granularity = n
		}
	}
	if n, ok := t.size("resync_read_rate"); ok {
		if n != 0 && n < 1<<20 {
			d.errorf(t.key("resync_read_rate"), ErrInvalid, "%s per second is less than the minimum 1M (0 is no bound)", formatSize(n))
		} else {
			tu.ResyncReadRate = n
		}
	}
	return tu
}

// spoolFits checks spool_max against spool_segment, blaming the key t sets.
func (d *decoder) spoolFits(t *table, tu Tuning, inherited string) {
	if tu.SpoolMax/SegmentsPerSpool >= tu.SpoolSegment {
		return
	}
	switch {
	case t.has("spool_max") && t.has("spool_segment"):
		d.errorf(t.key("spool_max"), ErrInvalid, "%s holds fewer than %d segments of %s (spool_segment)",
			formatSize(tu.SpoolMax), SegmentsPerSpool, formatSize(tu.SpoolSegment))
	case t.has("spool_max"):
		d.errorf(t.key("spool_max"), ErrInvalid, "%s holds fewer than %d segments of %s (spool_segment, %s)",
			formatSize(tu.SpoolMax), SegmentsPerSpool, formatSize(tu.SpoolSegment), inherited)
	case t.has("spool_segment"):
		d.errorf(t.key("spool_segment"), ErrInvalid, "%d segments of %s do not fit in %s (spool_max, %s)",
			SegmentsPerSpool, formatSize(tu.SpoolSegment), formatSize(tu.SpoolMax), inherited)
	}
}

func (d *decoder) group(t *table, p *Policy, seen map[string]string) *Group {
	g := &Group{}
	name, ok := t.str("name")
	switch {
	case !t.has("name"):
		d.errorf(t.key("name"), ErrMissing, "every group needs a name")
	case !ok:
	case nameProblem(name) != "":
		d.errorf(t.key("name"), ErrInvalid, "group name %q: %s", name, nameProblem(name))
	default:
		if prev, dup := seen["group:"+name]; dup {
			d.errorf(t.key("name"), ErrDuplicate, "group %q is already defined by %s (line %d)", name, prev, d.line(prev))
		} else {
			seen["group:"+name] = t.path
		}
		g.Name = name
	}
	if s, ok := t.str("replica"); ok {
		if err := checkHostPort(s); err != "" {
			d.errorf(t.key("replica"), ErrInvalid, "%q: %s", s, err)
		} else {
			g.Replica = s
		}
	}
	if n, ok := t.size("bandwidth"); ok {
		if n > 0 && n < 64<<10 {
			d.errorf(t.key("bandwidth"), ErrInvalid, "%s per second is less than the minimum 64K (0 is no limit)", formatSize(n))
		} else {
			g.Bandwidth = n
		}
	}
	if v, ok := t.duration("app_consistent_every"); ok {
		if v < time.Minute {
			d.errorf(t.key("app_consistent_every"), ErrInvalid, "%s: freezing guests more often than once a minute is not supported", v)
		} else {
			g.AppConsistentEvery = v
		}
	}
	g.Tuning = d.tuning(t, p.Defaults)
	d.spoolFits(t, g.Tuning, "from [defaults]")
	vms := t.subs("vm")
	if arr, isArr := t.m["vm"].([]any); !t.has("vm") || isArr && len(arr) == 0 {
		d.errorf(t.path, ErrMissing, "a group needs at least one [[group.vm]] selecting its VMs")
	}
	for _, vt := range vms {
		if vm := d.vm(vt, g, p, seen); vm != nil {
			g.VMs = append(g.VMs, vm)
		}
	}
	t.done()
	return g
}

// checkHostPort returns what is wrong with a "host:port" address, or "".
func checkHostPort(s string) string {
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return `use "host:port", e.g. "dr1.example.com:7443" or "[2001:db8::1]:7443"`
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "the port must be a number from 1 to 65535"
	}
	return ""
}

func (d *decoder) vm(t *table, g *Group, p *Policy, seen map[string]string) *VM {
	vm := &VM{Group: g}
	var set []string
	for _, k := range []string{"name", "uuid", "label"} {
		if t.has(k) {
			set = append(set, k)
		}
	}
	name, nameOK := t.str("name")
	uuid, uuidOK := t.str("uuid")
	label, labelOK := t.str("label")
	ok := len(set) == 1
	switch {
	case len(set) == 0:
		d.errorf(t.path, ErrMissing, "set exactly one of name, uuid, label")
	case len(set) > 1:
		d.errorf(t.path, ErrInvalid, "set exactly one of name, uuid, label, not %s", strings.Join(set, " and "))
	}
	var sel, what string
	switch {
	case nameOK:
		if err := checkVMName(name); err != "" {
			d.errorf(t.key("name"), ErrInvalid, "%q: %s", name, err)
			ok = false
		}
		vm.Name, sel, what = name, "name:"+name, fmt.Sprintf("VM name %q", name)
	case uuidOK:
		u, valid := normalizeUUID(uuid)
		if !valid {
			d.errorf(t.key("uuid"), ErrInvalid, "%q is not a UUID such as \"6f1f2a4e-3b7c-4d7e-9a53-0c5f7f1a2b3c\"", uuid)
			ok = false
		}
		vm.UUID, sel, what = u, "uuid:"+u, fmt.Sprintf("VM uuid %s", u)
	case labelOK:
		if err := checkLabel(label); err != "" {
			d.errorf(t.key("label"), ErrInvalid, "%q: %s", label, err)
			ok = false
		}
		vm.Label, sel, what = label, "label:"+label, fmt.Sprintf("label %q", label)
	}
	if sel == "" {
		ok = false // a type error, already reported
	}
	if ok {
		if prev, dup := seen[sel]; dup {
			d.errorf(t.key(set[0]), ErrDuplicate, "%s is already selected by %s (line %d)", what, prev, d.line(prev))
			ok = false
		} else {
			seen[sel] = t.path
		}
	}
	if dt, present := t.sub("disks"); present {
		vm.Disks = d.disks(dt)
	}
	t.done()
	if !ok {
		return nil
	}
	pos := d.at.find(t.path)
	vm.Origin = fmt.Sprintf("%s:%d %s", d.file, pos.line, t.path)
	switch {
	case vm.Name != "":
		p.byName[vm.Name] = vm
	case vm.UUID != "":
		p.byUUID[vm.UUID] = vm
	default:
		p.labels = append(p.labels, vm)
	}
	return vm
}

func (d *decoder) disks(t *table) DiskFilter {
	var f DiskFilter
	read := func(k string) ([]string, []string) {
		names, paths, _ := t.strs(k)
		var good, goodPaths []string
		for i, n := range names {
			switch {
			case nameProblem(n) != "":
				d.errorf(paths[i], ErrInvalid, "disk name %q: %s", n, nameProblem(n))
			case containsAt(good, n) >= 0:
				d.errorf(paths[i], ErrDuplicate, "disk %q is listed twice", n)
			default:
				good, goodPaths = append(good, n), append(goodPaths, paths[i])
			}
		}
		return good, goodPaths
	}
	f.Include, _ = read("include")
	exclude, paths := read("exclude")
	for i, n := range exclude {
		if j := containsAt(f.Include, n); j >= 0 {
			d.errorf(paths[i], ErrInvalid, "disk %q is also in %s", n, t.key("include"))
			continue
		}
		f.Exclude = append(f.Exclude, n)
	}
	t.done()
	return f
}

func containsAt(list []string, s string) int {
	for i, x := range list {
		if x == s {
			return i
		}
	}
	return -1
}

// checkVMName: libvirt allows almost anything but '/' in a domain name;
// refuse only what cannot be meant.
func checkVMName(s string) string {
	switch {
	case s == "":
		return "empty"
	case !utf8.ValidString(s):
		return "not valid UTF-8"
	case strings.ContainsFunc(s, unicode.IsControl):
		return "contains a control character"
	}
	return ""
}

// checkLabel: a libvirt metadata "key=value" or a Proxmox tag.
func checkLabel(s string) string {
	switch {
	case s == "":
		return "empty"
	case len(s) > 256:
		return "longer than 256 bytes"
	case !utf8.ValidString(s):
		return "not valid UTF-8"
	case strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) || r == ',' || r == ';' }):
		return "contains a space, control character, ',' or ';'"
	}
	return ""
}

// normalizeUUID accepts a UUID with or without dashes, any case, and returns
// it in the lower-case 8-4-4-4-12 form libvirt prints.
func normalizeUUID(s string) (string, bool) {
	hex := strings.ReplaceAll(s, "-", "")
	if len(hex) != 32 || (len(s) != 32 && len(s) != 36) {
		return "", false
	}
	if len(s) == 36 && (s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-') {
		return "", false
	}
	for _, c := range hex {
		if !strings.ContainsRune("0123456789abcdefABCDEF", c) {
			return "", false
		}
	}
	hex = strings.ToLower(hex)
	return hex[0:8] + "-" + hex[8:12] + "-" + hex[12:16] + "-" + hex[16:20] + "-" + hex[20:], true
}
