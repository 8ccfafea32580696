// Package libnbd is qcdp's small cgo wrapper over the system libnbd
// (libguestfs.org/libnbd, Debian package libnbd-dev): an NBD client the
// resync path uses to read qemu:dirty-bitmap extents from QEMU's NBD server,
// and the tests use to check qcdp's own server against a client it did not
// write.
//
// It owns the handle's life (nbd_create/nbd_close), connecting by unix
// socket or URI, metadata contexts, and the synchronous data calls: Pread,
// Pwrite, Zero, Flush and BlockStatus. It does not own retries,
// reconnection or the meaning of a metadata context's status bits.
//
// Errors. A failed call returns an *Error carrying libnbd's message
// (nbd_get_error) and errno (nbd_get_errno), read on the same OS thread as
// the call, since libnbd keeps them thread-local. errors.Is(err, syscall.EPERM)
// and the like work through Unwrap; never match the message text.
//
// Cancellation. libnbd's synchronous calls block; when a call's ctx ends
// the socket is shut down under it, the call fails, and the handle is dead
// (only Close is left to do).
//
// Callbacks. BlockStatus hands C a cgo.Handle, never a Go pointer; the C
// trampoline in shim.c passes it back. libnbd 1.14 (Debian 12) has only the
// 32-bit nbd_block_status; newer versions with LIBNBD_HAVE_NBD_BLOCK_STATUS_64
// use nbd_block_status_64. Either way the caller sees []Extent with 64-bit
// fields.
package libnbd
