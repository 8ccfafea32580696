// Package protect is the protected host's engine, what `qcdp host` runs:
// it wires a policy (package configs) to the VMs the hypervisors report
// (package hypervisor), gives each protection group a shipper.Group (its
// spool, sequencer, NBD capture server and sender), and runs one capture
// lifecycle (package filter) per protected disk. Its methods (Status,
// Attach, Detach, Pause, Resume, Bookmark, PrepareFailover) are what the
// control API of cmd/qcdp serves; it owns no socket of its own but the
// groups'.
//
// Names. A group's capture server listens on <nbd_socket_dir>/<group>.sock;
// each disk is an export named by its stream name, the disk's stable
// identity (VM id and target, "/" written as ".") — the same across VM and
// daemon restarts, so records of one disk keep one name in the stream.
//
// Restarts. Stopping the engine (or killing the daemon) leaves the capture
// jobs in QEMU: with reconnect-delay 0 the guest is not held, QEMU tracks
// what the dead daemon refused, and the next daemon adopts each job by its
// name, resumes it and brackets the re-copy with resync markers. Detach is
// the clean way out: it cancels the job (never completes it).
//
// Discovery. libvirt lifecycle events attach a VM when it starts and notice
// when it stops; QMP sockets (plain QEMU, Proxmox) have no event for a new
// VM, so their patterns are rescanned every few seconds. A plain QEMU or
// Proxmox VM's QMP connection is held while its disks are captured (the
// lifecycle needs its events); under Proxmox, which allows one connection
// at a time, that keeps `qm monitor` out while protected.
//
// Supervision. Under systemd (Type=notify, WatchdogSec) the Supervisor
// sends READY=1, STOPPING=1, and WATCHDOG=1 only just after every group's
// write path was seen to move (shipper.Group.ProbeAppend) and while no
// fsync is stuck: a hung daemon holds a guest write at most about
// WatchdogSec before systemd ends it and QEMU goes on without it
// (invariant 1; see watchdog.go).
//
// Failover (failover.go). A group that failed over at the recovery site
// (its replica refuses the stream with stream.CodeFailedOver) has its
// captures detached, keeps its disks declared, shows them failed-over, and
// is not attached again until the recovery site undoes the failover; then
// its VMs are attached again and resync what changed. PrepareFailover is a
// planned failover's host half: the group's libvirt VMs shut down cleanly,
// a final bookmark, and the replica holding it (RPO 0).
//
// It does not own the NBD protocol, the spool or stream formats, the QMP
// commands of a capture (package filter), nor the control socket.
package protect
