package hypervisor

import (
	"context"
	"errors"
	"fmt"

	"github.com/qcdp/qcdp/proc"
	"github.com/qcdp/qcdp/qmp"
)

// ErrNoProcess is returned when the QEMU process of a VM cannot be told.
var ErrNoProcess = errors.New("hypervisor: cannot tell the QEMU process")

// errNoVCPU is vcpuProcess's answer when QEMU names no vCPU thread.
var errNoVCPU = errors.New("QEMU names no vCPU thread")

// QEMUProcess returns the QEMU process at the other end of q, the VM's QMP
// channel from either source: the process whose NBD connections a capture
// export of the VM's disks lets in (package shipper), with its start time
// so that its PID cannot be taken over once it ends.
//
// QEMU says which it is: query-cpus-fast gives the thread id of each vCPU,
// and they must all be threads of one process. This works the same under
// libvirt, whose API does not give the PID (its status files under
// /run/libvirt/qemu do, but not to a daemon that sees another /run), and
// over a QMP socket whatever relays it. Trusting QEMU's answer is safe for
// isolation: each VM's answer decides only who may write into that VM's
// own exports, so a QEMU that lies locks its own disks' exports against
// itself and opens no other VM's.
//
// A QEMU that names no vCPU (a machine without CPUs, a QEMU before 2.12)
// is found, over a QMP unix socket, as the socket's peer as the kernel
// recorded it (qmp.Client.Peer: the process that listens on the socket,
// QEMU itself for -qmp unix:PATH,server=on). Otherwise ErrNoProcess.
func QEMUProcess(ctx context.Context, q *qmp.Client) (proc.Process, error) {
	p, err := vcpuProcess(ctx, q)
	if !errors.Is(err, errNoVCPU) {
		return p, err
	}
	cred, perr := q.Peer()
	if perr != nil {
		return proc.Process{}, fmt.Errorf("%w: %w, and %w", ErrNoProcess, err, perr)
	}
	return cred.Process, nil
}

// vcpuProcess finds QEMU's process through its vCPU threads.
func vcpuProcess(ctx context.Context, q *qmp.Client) (proc.Process, error) {
	var cpus []struct {
		Index    int `json:"cpu-index"`
		ThreadID int `json:"thread-id"`
	}
	err := q.Execute(ctx, "query-cpus-fast", nil, &cpus)
	if qmp.IsCommandNotFound(err) {
		return proc.Process{}, fmt.Errorf("%w: %w", errNoVCPU, err)
	}
	if err != nil {
		return proc.Process{}, fmt.Errorf("%w: query-cpus-fast: %w", ErrNoProcess, err)
	}
	if len(cpus) == 0 {
		return proc.Process{}, errNoVCPU
	}
	pid := 0
	for _, c := range cpus {
		tgid, err := proc.ThreadGroup(c.ThreadID)
		if err != nil {
			return proc.Process{}, fmt.Errorf("%w: vCPU %d thread %d: %w", ErrNoProcess, c.Index, c.ThreadID, err)
		}
		if pid != 0 && tgid != pid {
			return proc.Process{}, fmt.Errorf("%w: vCPU threads of two processes, %d and %d", ErrNoProcess, pid, tgid)
		}
		pid = tgid
	}
	p, err := proc.Lookup(pid)
	if err != nil {
		return proc.Process{}, fmt.Errorf("%w: %w", ErrNoProcess, err)
	}
	return p, nil
}
