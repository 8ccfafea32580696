// Package hypervisor finds protected VMs, their disks (node names, formats,
// sizes, qcow2 version) and a QMP channel to each: libvirt through go-libvirt
// (QMP passthrough, monitor and lifecycle events, domain XML) and plain QEMU
// or Proxmox through a QMP unix socket. A disk keeps its identity across
// restarts (domain UUID + target, or VM id + drive).
//
// It does not drive capture (package filter does) and never holds a QMP
// connection that Proxmox needs: it connects briefly.
//
// Status: planned (issue "Capture on running VMs"); nothing here yet.
package hypervisor
