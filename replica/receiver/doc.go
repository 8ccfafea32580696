// Package receiver is the replica daemon's end of the stream (package
// stream): it accepts TLS 1.3 connections from protected hosts, checks the
// host certificate's tenant against the replica policy, and appends each
// group's batches to that group's journal, acknowledging a seq only once
// the journal has made it durable.
//
// It owns connections, the handshake, authorization and the one-stream-per-
// group rule. It does not own the journal's format or retention (package
// replica/journal), the policy file (package configs) nor certificates
// (package stream issues and checks them).
//
// # Isolation (invariant 6)
//
// The tenant comes from the verified client certificate only (its one
// OrganizationalUnit), never from the wire. The group a Hello names is
// checked with record.ValidDiskName and configs.ValidName before anything
// else, then authorized for (tenant, host) by the policy; only then is the
// journal <storage root>/<tenant>/<group> opened. A refusal is logged with
// the peer, its identity and the group, and answered with a Refuse frame.
//
// # One stream per group
//
// A group has at most one stream. A second connection for a group that is
// already streaming replaces the first: the old connection is closed (it
// gets a Refuse with CodeReplaced), the new one waits until the old one's
// journal append in progress, if any, has finished, and is then welcomed
// with the journal's durable seq. Replacing, rather than refusing the
// newcomer, is what a host needs after a half-open TCP connection: its
// reconnect is served at once instead of waiting for the dead connection
// to time out.
//
// # Receiving
//
// Each batch is checked (checksums, consecutive seqs), trimmed of records
// at or below the journal's durable seq (a resend after a reconnect), and
// refused if it would leave a gap (CodeProtocol). Batches that have already
// arrived are appended together (one fsync for several batches), then one
// Ack names the new durable seq. A Ping is answered by an Ack too. A
// connection silent for longer than IdleTimeout is closed.
package receiver
