package hypervisor

import (
	"errors"

	"github.com/digitalocean/go-libvirt"
)

var (
	// ErrNotRunning is returned for a VM that has no QEMU process.
	ErrNotRunning = errors.New("hypervisor: VM not running")
	// ErrNoNode is returned when a disk's QEMU node cannot be found.
	ErrNoNode = errors.New("hypervisor: no QEMU node for disk")
	// ErrWrongSource is returned for a VM another source found.
	ErrWrongSource = errors.New("hypervisor: VM from another source")
)

// LibvirtCode returns the code of the libvirt error in err's chain
// (libvirt's virErrorNumber), and whether there is one.
func LibvirtCode(err error) (libvirt.ErrorNumber, bool) {
	var le libvirt.Error
	if errors.As(err, &le) {
		return libvirt.ErrorNumber(le.Code), true
	}
	return 0, false
}

func isLibvirtCode(err error, code libvirt.ErrorNumber) bool {
	c, ok := LibvirtCode(err)
	return ok && c == code
}

// IsNoDomain reports a libvirt error for a domain libvirt does not know
// (VIR_ERR_NO_DOMAIN): it was undefined, or was transient and stopped.
func IsNoDomain(err error) bool { return isLibvirtCode(err, libvirt.ErrNoDomain) }

// IsOperationInvalid reports VIR_ERR_OPERATION_INVALID, which libvirt
// returns among others for a monitor command to a domain that is not running.
func IsOperationInvalid(err error) bool { return isLibvirtCode(err, libvirt.ErrOperationInvalid) }

// IsAccessDenied reports VIR_ERR_ACCESS_DENIED (libvirt's access control
// refused the call).
func IsAccessDenied(err error) bool { return isLibvirtCode(err, libvirt.ErrAccessDenied) }
