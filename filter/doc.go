// Package filter owns the per-disk capture lifecycle inside QEMU: the dirty
// bitmap generation that tracks the guest's writes whatever happens to the
// stream, the NBD target node that points at the host daemon's capture
// export, the write-blocking mirror job between them, its states, resume
// after errors and daemon restarts, and clean detach.
//
// It does not store writes (package shipper does) nor find VMs and their
// monitors (package hypervisor does); it drives one disk through a
// *qmp.Client it is given.
//
// # What it puts in QEMU, per disk (names never change: a restarted daemon
// finds its own nodes by them)
//
//	bitmap  qcdp-<disk>          dirty bitmap on the disk's node, granularity
//	                             4096, persistent on qcow2 v3, else in memory
//	target  qcdp-t-<disk>        nbd node, unix socket, export <disk>,
//	                             reconnect-delay 0 (a dead daemon costs the
//	                             guest nothing)
//	job     qcdp-<disk>          blockdev-mirror sync=full copy-mode=
//	                             write-blocking granularity=4096
//	                             on-target-error=stop on-source-error=report
//	filter  qcdp-f-<disk>        the mirror's filter node above the disk
//
// # States (what `qcdp status` shows)
//
//	initial-sync ──READY──► syncing ──target error──► tracking
//	                            ▲                        │ resume succeeds
//	                            └──converged── resync ◄──┘
//	any ──Detach──► detached          any ──job vanished──► error
//
// At BLOCK_JOB_READY the target stream becomes a write log and a
// sync-complete marker enters the spool (DESIGN.md, QEMU facts). When the
// capture export refuses a write (spool full, disk failed, daemon gone) the
// job stops (on-target-error=stop), QEMU keeps the chunk dirty, and the disk
// is tracking; the lifecycle then resumes the job with a bounded backoff
// until QEMU's NBD client has reconnected and the job runs again. The chunks
// QEMU re-copies after a resume arrive out of write order, so the stream is
// bracketed by resync-begin and resync-end markers, the end being written
// when the job has converged again (no event exists for that: the lifecycle
// asks query-block-jobs on a short interval while in resync).
//
// Detach is block-job-cancel, never block-job-complete (that would switch the
// guest onto the NBD target); then the target node is deleted and the bitmap
// is left to go on tracking. A later attach still copies the whole disk
// (sync=full): resync from the bitmap, or by hash comparison when it was
// lost (invariant 4), is not built yet.
//
// The sync-complete marker is written once per job: at BLOCK_JOB_READY, or,
// when the job got there through a resync (a refused write, a restarted
// daemon), when it has converged — without it the replica offers no restore
// point for the disk.
package filter
