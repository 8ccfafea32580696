// Package replica is the recovery site's engine. Site, what `qcdp replica`
// runs, owns: the registry of the tenants' group journals (package
// replica/journal), opened when a host first streams into one or when an
// operator first asks about it, and kept open until the site closes; the
// quarantine of a journal found corrupt (its group takes no stream and
// serves no view, the others go on); the receiver of the hosts' streams
// (package replica/receiver: mTLS, one stream per group, a seq acknowledged
// once durable); the point-in-time views, served read-only or writable
// over NBD on a unix socket (package nbd); retention on a timer; restore of
// a disk at a point into an image.
//
// The journals are shared: the receiver appends to the same *Journal that
// views read, so a view of a point taken a second ago opens at once.
// Package failover imports Site for the views its standby domains boot
// from.
//
// It does not own the record format (package record, shared with the host's
// spool), the NBD protocol, the control API's plumbing (cmd/qcdp), nor
// failover.
package replica
