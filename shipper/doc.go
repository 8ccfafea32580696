// Package shipper is the protected host's side of the data path: the
// per-group sequencer that gives every captured write its place in the
// group's single order, the capture export QEMU's write-blocking mirror
// writes into over NBD, and (beside it) the local spool (package spool) and
// the sender.
//
// It owns seq assignment and capture time: one Sequencer per protection
// group stamps each write the moment it arrives and appends it to the spool
// under one lock, so seq order is spool order across all disks of the group
// (invariant 2). It does not own the NBD protocol (package nbd), the QEMU
// job that feeds it (package filter), nor the replica.
//
// A capture export never blocks a guest write on anything slow: when the
// spool is full or has failed it answers EIO at once, the mirror job
// (on-target-error=stop) pauses, QEMU keeps tracking the chunk in its dirty
// bitmap and the disk goes to tracking (invariant 1).
//
// A spool that failed an fsync is broken for good (package spool): the
// group heals itself (Group.Serve). The exports answer EIO meanwhile, so
// QEMU tracks the changes; the group closes the spool, opens its directory
// again with backoff until that succeeds, the sequencer appends to the
// reopened spool, a new sender ships it, and the resync bracket each
// refused write opened lets the disks' resync re-copy what was refused.
// Group.Health (and `qcdp status`) says "healing: ..." until then.
//
// One group's capture server serves all its disks on one unix socket, so
// the socket's permissions cannot keep its VMs apart: an export given an
// owner (Group.OwnedExport, what the host engine uses) opens only to that
// QEMU process, told by the kernel's credentials of the connection and the
// process's start time (package proc); every other peer is refused at
// negotiation (invariant 6).
//
// The sequencer also declares the group's membership in the stream
// (Sequencer.Declare, members.go): every disk with its exact size and VM,
// as a whole, at every change and again at the start of every spool
// session, before any record of a disk it adds. The replica offers a
// restore point only once every declared disk is in sync, and refuses
// records of undeclared disks (package replica/journal); so from the first
// declaration on, the sequencer refuses them too: a write of an undeclared
// disk is answered EIO. The host engine keeps the membership across
// restarts (Sequencer.KeepMembers), so a restarted daemon does not drop the
// VMs it has not attached again yet.
//
// It also carries each VM's definition, what the recovery site builds a
// standby from (Sequencer.Define, definitions.go): a Definition record
// when it changes, and each again at the start of every spool session;
// one the spool refuses is written before the next record, after the
// resync-begin markers owed. Definitions are not kept across restarts: the
// host engine defines each VM again as it attaches it.
package shipper
