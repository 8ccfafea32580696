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
//	                             4096, persistent on qcow2 v3, else in memory;
//	                             with Config.Group, qcdp-<group>/<disk> and
//	                             its generations (resync.go)
//	target  qcdp-t-<disk>        nbd node, unix socket, export <disk>,
//	                             reconnect-delay 0 (a dead daemon costs the
//	                             guest nothing)
//	job     qcdp-<disk>          blockdev-mirror sync=full (sync=none for a
//	                             resync) copy-mode=write-blocking
//	                             granularity=4096 on-target-error=stop
//	                             on-source-error=report
//	filter  qcdp-f-<disk>        the mirror's filter node above the disk
//	export  qcdp-r-<disk>        while a resync runs: the filter node,
//	                             read-only, on QEMU's NBD server (one per
//	                             QEMU, on Config.NBDSocket, stopped after
//	                             the last resync of the VM)
//
// # States (what `qcdp status` shows)
//
//	initial-sync ──READY──► syncing ──target error──► tracking
//	                            ▲                      resume │  ▲ stops again
//	                            │                             ▼  │
//	                            └─────────converged─────── resync
//	any ──Pause──► paused ──Resume──► tracking (a resync bracket opens)
//	any ──the job ends during a Detach──► detached
//	any ──the job vanishes, QEMU goes away, the attach fails──► error
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
// A restarted daemon adopts the job it finds by name: one still in its
// initial copy goes on to READY; one that is ready or stopped is resumed and
// resynced, as writes were refused, or in flight, while no daemon listened.
//
// An operator's Pause is never resumed by the lifecycle: a job it finds
// stopped stays stopped, and a resume already scheduled is dropped, until
// Resume, which brackets the re-copy as a resync.
//
// # How it is built
//
// The lifecycle is a state machine written as a table (machine.go): each
// rule says, for an input (a QEMU event, a timer, the outcome of a command
// or marker, an operator's word) in a state and with some flags (operator
// pause, sync-complete written, detach under way, resume armed, poll on,
// ended), the next state and what to do. The first matching rule wins; step
// does no I/O and is tested rule by rule and over every state, input and
// flag combination. Run's loop (drive.go) is the only thing that acts: it
// turns events, the resume timer, the poll ticker and ctx into inputs, and
// carries out the actions (write a marker, block-job-resume,
// query-block-jobs, arm or stop a timer, end), feeding their outcomes back
// as inputs. Pause, Resume and Detach feed their inputs from the caller's
// goroutine, so State shows their effect at once; the actions they cause
// wait for Run's loop. Once Run has ended (the job ended, QEMU went, the
// attach failed), inputs change nothing but Detach's own end.
//
// Detach is block-job-cancel, never block-job-complete (that would switch the
// guest onto the NBD target); then the target node is deleted and the bitmap
// is left to go on tracking.
//
// # Resync: what a new job copies (invariant 4)
//
// Without Config.Resync a new job copies the whole disk (sync=full). With
// it (the host engine sets it), the new job starts with sync=none, the
// disk's resync bracket is held open (Config.Hold) and a goroutine of Run
// copies only what the replica lacks, through the export above:
//
//   - bitmap resync (resync.go), where the bitmap generations can say what
//     changed since the replica held the disk whole: after a detach, a
//     daemon restart, a VM that quit cleanly with a qcow2 v3 disk (the
//     persistent bitmap is stored at close). Their union is frozen in one
//     transaction with the start of a new live generation, and its dirty
//     extents (qemu:dirty-bitmap meta context) are copied.
//   - hash resync (hash.go), where no generation can be trusted: a raw or
//     qcow2 v2 disk after its VM restarted, QEMU killed (the persistent
//     bitmap comes back inconsistent and is removed), generations of
//     another spool, a spool that lost writes it had answered
//     (Config.Recopy). The replica hashes its newest state (stream.HashQuery,
//     once it holds every record up to the resync's start) and the source
//     is read and hashed, 64 KiB blocks, on four connections, at most
//     Config.ReadRate; only blocks that differ are copied. A .hashing mark
//     (an empty bitmap) stays until it is done, so that a daemon that
//     adopts the job compares again.
//   - a full copy (sync=full) only when the replica says it holds nothing
//     of the disk (a new disk, a journal the operator deleted).
//
// Every range a resync copies is read under a watch of the capture
// export's range lock (shipper.CaptureExport.WatchRange) and read again if
// a live write entered it meanwhile, so the stream never holds older bytes
// after newer ones; no restore point falls inside the bracket, and the
// first one after it is the source at that instant. A failed try is
// retried with a backoff from where it stopped, the bracket held.
//
// The sync-complete marker is written once per job: at BLOCK_JOB_READY, or,
// when the job got there through a resync (a refused write, a restarted
// daemon), when it has converged — without it the replica offers no restore
// point for the disk.
package filter
