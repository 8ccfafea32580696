package nbd

import (
	"errors"
	"fmt"
	"syscall"
)

// Errno is an error value of the NBD protocol, sent to the client in a reply.
// An export returns one (possibly wrapped) to choose what the client sees;
// any other error is sent as EIO, except the syscall errors mapped below.
type Errno uint32

// NBD error values (NetworkBlockDevice proto.md, "Error values"). Never change.
const (
	EPERM     Errno = 1
	EIO       Errno = 5
	ENOMEM    Errno = 12
	EINVAL    Errno = 22
	ENOSPC    Errno = 28
	EOVERFLOW Errno = 75
	ENOTSUP   Errno = 95
	ESHUTDOWN Errno = 108
)

func (e Errno) Error() string {
	switch e {
	case EPERM:
		return "nbd: operation not permitted"
	case EIO:
		return "nbd: input/output error"
	case ENOMEM:
		return "nbd: out of memory"
	case EINVAL:
		return "nbd: invalid argument"
	case ENOSPC:
		return "nbd: no space left"
	case EOVERFLOW:
		return "nbd: value too large"
	case ENOTSUP:
		return "nbd: operation not supported"
	case ESHUTDOWN:
		return "nbd: server shutting down"
	}
	return fmt.Sprintf("nbd: error %d", uint32(e))
}

// ErrNotSupported is what an export returns for a request it cannot honour
// as asked, such as a fast zero it cannot make fast.
var ErrNotSupported error = ENOTSUP

// errnoOf chooses the NBD error sent for err.
func errnoOf(err error) Errno {
	var e Errno
	if errors.As(err, &e) {
		return e
	}
	var se syscall.Errno
	if errors.As(err, &se) {
		switch se {
		case syscall.EPERM, syscall.EACCES, syscall.EROFS:
			return EPERM
		case syscall.ENOSPC, syscall.EDQUOT:
			return ENOSPC
		case syscall.ENOMEM:
			return ENOMEM
		case syscall.EINVAL:
			return EINVAL
		case syscall.EOPNOTSUPP:
			return ENOTSUP
		}
	}
	return EIO
}
