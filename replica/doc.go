// Package replica is the recovery site. It owns, per protection group: the
// receiver of the group's stream (package replica/receiver: mTLS, one
// stream per group, acknowledging a seq once it is durable), the journal
// (package replica/journal: checksummed segments, the index, base and
// long-term layers, restore points, retention), and the point-in-time views
// the journal opens and the replica daemon serves read-only or writable over
// NBD (package nbd).
//
// It does not own the record format (package record, shared with the host's
// spool), the NBD protocol, nor failover.
package replica
