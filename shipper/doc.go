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
package shipper
