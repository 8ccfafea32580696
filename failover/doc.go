// Package failover brings a protected group's VMs up at the recovery site:
// standby libvirt domains started from any restore point in seconds,
// whatever the size of their disks, for a test (replication goes on) or for
// real (the group is fenced first), then committed onto local storage or
// undone. Failback (later) builds on it.
//
// It imports the site engine (package replica) through a small interface:
// a restore point with the group's membership and the VM definitions in
// effect there (Site.PointAt), views exported under stable names
// (ExportAs), an NBD socket QEMU may open (ListenNBD), and fencing.
//
// # How a standby is made
//
// Nothing is copied before a standby boots. Each protected disk becomes a
// qcow2 overlay (standby_dir/<tenant>/<group>/<domain>/<target>.qcow2)
// whose backing file is the replica's read-only view of the point, over
// NBD on a unix socket beside the site's own (standby-<hash>.sock, owned
// by the user QEMU runs as under libvirt, mode 0660). The domain XML names
// it as libvirt 9.0 accepts: a file disk with
// <backingStore type='network'><source protocol='nbd' name='EXPORT'>
// <host transport='unix' socket='…'/></source></backingStore>. The guest's
// writes go to the overlay; reads of untouched blocks go to the journal.
// The view's disk has the declared size at the point.
//
// The domain is built from the VM's definition at the point (package
// record, VMDefinition: vCPUs, memory, machine, firmware, disks with bus,
// target, boot order and serial, NICs with MAC and model), never from the
// host's XML, which is kept for the operator only: host paths, CPU models
// and devices of the protected host do not follow the VM. NICs go on the
// plan's networks (test: its test networks, an isolated libvirt network
// qcdp defines when missing). A kernel booted directly must lie in the
// plan's kernel_dirs. Every standby carries qcdp metadata (namespace
// https://qcdp.dev/xmlns/standby/1: tenant, group, VM, mode, seq); qcdp
// destroys only a domain whose UUID it recorded and which carries it, and
// never defines over an existing name.
//
// # State
//
// A group's failover is kept in standby_dir/<tenant>/<group>/state:
// "QCFO", version 1 (2 bytes), 0 (2), CRC32C of the JSON (4), its length
// (4), then State as JSON; published whole (vfs.Publish). It is written
// before each thing is made, so that a failure, a crash or a daemon
// restart leaves what undo or cleanup needs to remove it. At start the
// daemon calls Resume before it serves: groups fenced stay fenced, and the
// views of running standbys are served again under the same names on the
// same sockets (a standby's QEMU reconnects; until then its reads of
// untouched blocks wait or fail, as a SAN path loss would).
//
// # Operations
//
//   - Failover(ModeTest): standbys named <vm>-qcdp-test on the test
//     networks; the group keeps streaming (RPO stays bounded). Cleanup
//     removes every domain, overlay, export, socket and network it made.
//   - Failover(ModeStart): unplanned. The group is fenced first: the site
//     refuses its stream with stream.CodeFailedOver, and a host that
//     reconnects is told why. Then standbys named as the VMs start on the
//     production networks.
//   - Commit: libvirt block pull of every disk; when each overlay stands
//     alone the view is withdrawn. The group stays fenced.
//   - Undo (before commit): standbys destroyed, writes discarded, group
//     unfenced: it streams again from where it was.
//
// A failure during a failover undoes what it made, and reports what
// failed; bad input (a point that is none, names the nearest valid ones; a
// VM without definition; a NIC on an unmapped network; an existing domain
// name; libvirt unreachable; a second failover) is refused before
// anything is made.
package failover
