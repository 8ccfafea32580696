// Package hostd is the host daemon behind `qcdp host`: it wires a policy
// (package configs) to the VMs the hypervisors report (package hypervisor),
// gives each protection group its spool, sequencer and NBD capture server
// (package shipper, package nbd), and runs one capture lifecycle (package
// filter) per protected disk. It serves the control API that `qcdp status`,
// `qcdp attach` and `qcdp detach` use, JSON over HTTP on a unix socket.
//
// Names. A group's capture server listens on <nbd_socket_dir>/<group>.sock;
// each disk is an export named by its stream name, the disk's stable
// identity (VM id and target, "/" written as ".") — the same across VM and
// daemon restarts, so records of one disk keep one name in the stream.
//
// Restarts. Stopping the daemon (or killing it) leaves the capture jobs in
// QEMU: with reconnect-delay 0 the guest is not held, QEMU tracks what the
// dead daemon refused, and the next daemon adopts each job by its name,
// resumes it and brackets the re-copy with resync markers. `qcdp detach`
// is the clean way out: it cancels the job (never completes it).
//
// Discovery. libvirt lifecycle events attach a VM when it starts and notice
// when it stops; QMP sockets (plain QEMU, Proxmox) have no event for a new
// VM, so their patterns are rescanned every few seconds. A plain QEMU or
// Proxmox VM's QMP connection is held while its disks are captured (the
// lifecycle needs its events); under Proxmox, which allows one connection
// at a time, that keeps `qm monitor` out while protected.
package hostd
