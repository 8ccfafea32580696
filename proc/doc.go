// Package proc names the processes of this host in a way that survives PID
// reuse, and says which process is at the other end of a unix socket.
//
// A Process is a PID and the process's start time (field 22 of
// /proc/PID/stat, clock ticks after boot). A PID alone is not an identity:
// when a process ends, the kernel hands its PID to a later one. Two
// processes never share both, so a Process recorded once still names the
// same process later, or none.
//
// PeerOf asks the kernel who connected a unix socket (SO_PEERCRED): the
// PID, user and group of the process that called connect (for the client's
// end of a connection, the process that called listen), then reads that
// PID's start time. The kernel's answer cannot be forged by the peer; the
// start time is read just after, so a peer that exited in between and
// whose PID was handed on at once would be mistaken for the new process: a
// window of microseconds that needs the PID space to wrap.
//
// It owns the reading of /proc/PID/stat and /proc/PID/status and nothing
// else: who may do what is decided by the packages that ask (the capture
// export's owner in package shipper, the QEMU of a VM in package
// hypervisor). Linux only.
package proc
