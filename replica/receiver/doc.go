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
// # Hash queries
//
// A connection whose first frame is a HashQ (stream.HashQuery) asks for
// block hashes of a disk of a group, for the host's hash resync (package
// filter). Each query is authorized as a Hello for its group would be,
// counts against the tenant's max_streams like a stream, and waits for one
// of maxHashQueries slots of the whole replica; the answer comes from
// Server.Hasher (replica.Site: the journal's newest state, once it holds
// the query's After seq). A Server without a Hasher refuses hash queries
// with CodeProtocol, as a replica older than them does, and the host then
// copies disks whole.
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
// # One spool per journal
//
// A Hello names the host spool its records come from (stream.SpoolID: a
// random id, its creation time and an epoch per open of the spool, which
// descends from the epoch last welcomed: record.EpochParent)
// and the seq up to which that spool vouches for what it ever held (its
// intact seq). The journal records the spool it is bound to in its ORIGIN
// file (journal.Origin, written with vfs.Publish): the first spool that
// streams into a journal is bound to it, and a newer epoch of that spool
// is noted. Before the Welcome, a Hello is refused with CodeDiverged when
//
//   - it names another spool: the host's spool directory was lost or
//     recreated (the new spool starts again at seq 1), or another host
//     protects a group of the same name;
//   - it names an epoch of the bound spool that does not follow the bound
//     one (the same epoch, one descending from it, or, while no record
//     came since it was bound, one descending from the epoch bound before:
//     a spool that crashed before it noted its welcome): a copy of the
//     spool directory, restored or cloned; spools whose epochs do not
//     descend yet (written before they did) must only not go lower;
//   - the journal holds more than the spool's last seq, or more than its
//     intact seq: the spool lost records it had sent (a host crash before
//     their fsync) and will write other records under their seqs.
//
// It is refused at every seq, also once the spool's last seq passes the
// journal's: the records of two spools are never spliced into one journal
// (invariants 2 and 3). While the bound spool is streaming, another
// spool's connection is refused before it claims the group, so it cannot
// displace the bound one. The newest refusal of each group is kept for
// its status (Refused, and the replica's group info); the host's status
// shows the stream as diverged with the same reason, and its spool keeps
// every record (nothing is acknowledged to it).
//
// A journal written before spools had an identity has no ORIGIN: the first
// spool that vouches for everything the journal holds is bound (the
// host's own spool, which got its identity when it was opened); a new
// spool, which vouches for nothing, is refused.
//
// A diverged group does not heal by itself: the hash-comparison resync
// compares only with a journal that has welcomed the host's spool (a
// journal bound to another spool describes another stream). The way out
// for an operator:
//
//   - Another host uses the same group name: give one of the groups
//     another name in its host's policy (and allow it in the replica's).
//   - The host's spool is gone (lost directory, host reinstalled, a crash
//     lost sent records), or the journal is corrupt, and the journal's
//     history is to be kept but closed. In this order: stop qcdp host;
//     move the group's spool directory <state_dir>/spool/<group> aside;
//     stop the replica daemon; move the group's journal directory
//     <storage root>/<tenant>/<group> out of the storage root (it can still
//     be opened for restores from there); start the replica daemon, then
//     qcdp host; detach and attach the group's VMs (qcdp detach, qcdp
//     attach) so that new capture jobs copy them whole. The new journal
//     binds the new spool and offers no restore point before every disk's
//     initial sync. (Started with the old spool still running, the new
//     journal would bind that spool, and the new one would then be refused.)
//   - The ORIGIN file is damaged (the group's streams are refused as
//     unavailable and its info names the error): remove it; the bound
//     spool, which vouches for all the journal holds, is bound again at its
//     next stream, and any other is still refused.
//
// # Receiving
//
// Each batch is checked (checksums, consecutive seqs), trimmed of records
// at or below the journal's durable seq (a resend after a reconnect), and
// refused if it would leave a gap (CodeProtocol). Records outside the
// group's declared membership (a disk the host did not declare, a range
// past its disk's declared size, more disks than record.MaxGroupDisks for
// a group that declared none) are refused by the journal whole, before it
// writes any of them (record.ErrMembership): the stream is refused with
// CodeProtocol naming the record, nothing of what was pending is stored,
// and the journal goes on with the next session. Batches that have already
// arrived are appended together (one fsync for several batches), then one
// Ack names the new durable seq. A Ping is answered by an Ack too. A
// connection silent for longer than IdleTimeout is closed.
//
// A host is answered in its own protocol version (stream.Speaks: 2 or 3):
// its Welcome, Acks and the Refuse that ends its stream, and the Hashes
// of a hash query, are of the version of its Hello (of its query). Every
// frame of a stream must be of that version (else CodeProtocol), and a
// batch of a version 2 stream that holds a Definition record, which only
// version 3 carries, is refused with CodeProtocol.
//
// # Memory
//
// A host holding a tenant's certificate must not be able to push the
// daemon out of memory. Everything a stream holds for data in flight is
// paid for, before it is allocated, from one budget of MaxInflight bytes
// shared by all streams (a weighted semaphore served in order):
//
//   - once a frame's header is read (and a batch's 20-byte header), the
//     frame's cost, stream.FrameCost: its payload, and what decoding it
//     allocates as the batch header declares (the decompressed data, the
//     records and their names). Only then is the payload read, into a
//     buffer of its own, and decoded into buffers of their own
//     (stream.Reader.Reserve, stream.BatchDecoder.Fresh);
//   - when batches are coalesced, the slice of pending records.
//
// The budget a batch took is returned when the batch has been appended to
// the journal; its buffers are then dropped, so a stream that goes idle
// after a large batch holds none of it. A stream that finds too little
// free first appends what it has pending (so that no stream waits while
// holding what another waits for), then waits in line, at most
// IdleTimeout: after that it is refused with CodeUnavailable, naming the
// budget, and its host retries. A frame that alone costs more than the
// whole budget is refused with CodeProtocol, naming both; the policy's
// least max_inflight (configs.MinMaxInflight) holds any batch a host
// sends.
//
// Beyond the budget a stream holds a fixed amount: its TLS connection and
// a 64 KiB read buffer; its group's journal keeps a write buffer of at
// most 1 MiB; the process keeps a few zstd decoders (one per CPU, each
// with its block buffers) that streams borrow for each batch. The number
// of streams is bounded per tenant (below); the daemon's heap is then
// about MaxInflight plus that, plus what the Go collector has not yet
// reclaimed (set GOMEMLIMIT to make it collect sooner).
//
// # Limits per tenant
//
// MaxStreams bounds the connections a tenant's hosts have open at once,
// counted from the TLS handshake. A connection that would exceed it is
// refused with CodeUnavailable once its Hello names its group, unless that
// group is streaming now: it replaces that stream (a host reconnecting
// after a half-open connection is served at once, even at the limit). A
// connection beyond twice the limit is refused before its Hello.
//
// The number of groups a tenant may create is the journal opener's to
// bound (OpenJournal; the replica's max_groups): an error wrapping
// ErrLimit refuses the stream with CodeDenied and the error's message. A
// group refused before its journal opened leaves nothing in memory.
// Every refusal is logged with the peer, the tenant and the limit.
package receiver
