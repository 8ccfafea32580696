// Package configs owns the host daemon's policy file (/etc/qcdp/host.toml,
// `qcdp host --config`): its TOML schema, the built-in defaults, validation,
// and the documented example in examples/host.toml. Load and Parse return a
// read-only *Policy; the daemon asks it which protection group a VM belongs
// to (Policy.GroupFor) and which of its disks to protect
// (DiskFilter.DiskIncluded). It does not find VMs, open sockets or create
// directories: hypervisor/, shipper/ and cmd/ do, with what it returns.
//
// # Schema
//
//	[host]                 state_dir, control_socket, nbd_socket_dir, log_level,
//	                       libvirt_uri, qmp_sockets (one of the last two required)
//	[defaults]             spool_max, spool_segment, sync_interval, sync_bytes, granularity
//	[[group]]              name (required), replica, and any [defaults] key
//	  [[group.vm]]         exactly one of name, uuid, label; disks
//	    disks              { include = [...], exclude = [...] } by target device
//
// Sizes are binary ("64M", "8G") or plain byte counts; durations are Go's
// ("250ms", "1s"). examples/host.toml documents every key.
//
// # Validation
//
// Decoding is strict: an unknown key, a value of the wrong type, or an
// invalid value is an error, never a silent default. Group and disk names
// are ValidName ([A-Za-z0-9._-], 1 to 64 bytes, not starting with '.' or
// '-'), because the daemon builds file paths and socket names from them
// (invariant 6: names from a policy never reach a file path unchecked).
// Group names are unique; a VM selector (a name, a UUID or a label) appears
// once in the whole file; a disk is not both included and excluded.
//
// # Errors
//
// Every problem is an *Error naming the file, the line and column, and the
// key path with array indices, and wrapping one sentinel (ErrSyntax,
// ErrUnknownKey, ErrType, ErrMissing, ErrInvalid, ErrDuplicate, ErrTooLarge):
//
//	host.toml:14:3: group[1].vm[0]: set exactly one of name, uuid, label
//
// A file with several problems gives them all, in file order, as an
// errors.Join (see Errors). A file over MaxFileSize, or nesting deeper than
// MaxNesting or MaxKeyParts, is refused before decoding (ErrTooLarge): the
// TOML library's cost grows faster than linearly with either.
//
// Syntax errors are located by BurntSushi/toml (toml.ParseError.Position).
// Key positions are not: v1.6.0 keeps them private (MetaData has no position
// accessor) and keeps one per key name without array indices, so it cannot
// tell group[0].name from group[3].name. For the same reason the document is
// decoded into a map and walked here, rather than decoded into structs and
// checked with MetaData.Undecoded, whose keys have no indices either. The
// positions come from a small scan of the source (positions.go) that follows
// table headers, [[array]] counters, dotted keys, inline tables and arrays,
// and skips strings and comments; it runs only on text the library has
// accepted, and a key it cannot place is reported at its table's line.
package configs
