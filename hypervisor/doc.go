// Package hypervisor finds the VMs on a host, their disks, and a QMP channel
// to each. It has two sources with the same shape (ListVMs, Disks, QMP):
//
//   - Libvirt: domains of a libvirt daemon through go-libvirt. VMs and labels
//     come from the domain XML (qcdp's <metadata> namespace, and Nova's
//     <nova:instance> for OpenStack); disks from the XML joined with
//     query-named-block-nodes; QMP through libvirt's passthrough
//     (qmp.DialLibvirt); lifecycle events (started, stopped, ...) from
//     libvirt's event subscription.
//   - Sockets: plain QEMU and Proxmox through QMP unix sockets given as paths
//     or globs (Proxmox: /var/run/qemu-server/<vmid>.qmp). The socket's base
//     name is the VM id; disks come from query-block.
//
// # Identity
//
// VM.ID and Disk.ID survive restarts of the VM and of qcdp: a libvirt VM is
// its domain UUID (for Nova, the instance UUID), a socket VM is its socket's
// base name (the Proxmox vmid). A disk is its VM's ID, "/", and its target
// (libvirt target dev such as "vda", or the QEMU drive/device id). Node names
// are not identities: libvirt numbers them anew at every start.
//
// # Labels
//
// libvirt domains carry qcdp labels in their metadata:
//
//	<metadata>
//	  <qcdp:labels xmlns:qcdp="https://qcdp.dev/xmlns/1">
//	    <qcdp:label key="tier">gold</qcdp:label>
//	  </qcdp:labels>
//	</metadata>
//
// Nova's <nova:instance> adds nova.name, nova.flavor, nova.project,
// nova.project-uuid, nova.user and nova.user-uuid; a qcdp label of the same
// key wins. Socket VMs have no labels.
//
// # Definitions
//
// Both sources describe a VM for the recovery site (Definition, a
// record.VMDefinition: vCPUs, memory, machine, firmware, disks named as the
// group's stream names them, NICs): libvirt from the domain XML (the
// persistent definition when there is one), which the definition also
// keeps; a socket VM from what its QEMU reports over QMP. What a
// definition cannot hold is left out and logged (SetLogger).
//
// # Connections
//
// Proxmox allows one QMP connection per VM at a time, and QEMU queues a
// second client until the first leaves. The Sockets source therefore holds
// no connection: discovery connects, asks and disconnects, and QMP dials when
// the caller asks for a channel, which the caller closes as soon as it can.
// Under libvirt, QMP passthrough taints the domain and libvirt does not see
// what qcdp adds through it (see qmp.DialLibvirt).
//
// # Not here
//
// What is done with a disk (bitmaps, the capture mirror, detach) belongs to
// package filter; the QMP protocol and commands to package qmp; standby
// domains at the recovery site to package failover. libvirt hook scripts
// must not call libvirt; they notify the daemon, which then uses this
// package.
package hypervisor
