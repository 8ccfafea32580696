package qmp

import (
	"errors"
	"fmt"
)

// ErrClosed is returned for commands issued on, or cut short by, a closed
// Client or a monitor connection that went away.
var ErrClosed = errors.New("qmp: connection closed")

// QMP error classes (QEMU qapi/error.json). Never change: they are QEMU's.
const (
	ClassGenericError    = "GenericError"
	ClassCommandNotFound = "CommandNotFound"
	ClassDeviceNotActive = "DeviceNotActive"
	ClassDeviceNotFound  = "DeviceNotFound"
	ClassKVMMissingCap   = "KVMMissingCap"
)

// Error is an error reply from QEMU to one command.
type Error struct {
	Class   string // QMP error class, e.g. "GenericError"
	Desc    string // QEMU's human-readable description
	Command string // the command that failed
}

func (e *Error) Error() string {
	return fmt.Sprintf("qmp: %s: %s (%s)", e.Command, e.Desc, e.Class)
}

// IsClass reports whether err is, or wraps, a QMP error reply of class.
func IsClass(err error, class string) bool {
	var e *Error
	return errors.As(err, &e) && e.Class == class
}

// IsDeviceNotFound reports a reply of class DeviceNotFound (a device or
// node QEMU does not know).
func IsDeviceNotFound(err error) bool { return IsClass(err, ClassDeviceNotFound) }

// IsDeviceNotActive reports a reply of class DeviceNotActive; QEMU uses it,
// among others, for a block job id that does not exist.
func IsDeviceNotActive(err error) bool { return IsClass(err, ClassDeviceNotActive) }

// IsCommandNotFound reports a command this QEMU does not have.
func IsCommandNotFound(err error) bool { return IsClass(err, ClassCommandNotFound) }
