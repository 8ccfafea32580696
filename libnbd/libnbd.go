package libnbd

/*
#cgo pkg-config: libnbd
#include "shim.h"
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/cgo"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Flags are libnbd command flags (LIBNBD_CMD_FLAG_*).
type Flags uint32

// Command flags.
const (
	FUA      Flags = C.LIBNBD_CMD_FLAG_FUA
	NoHole   Flags = C.LIBNBD_CMD_FLAG_NO_HOLE
	DF       Flags = C.LIBNBD_CMD_FLAG_DF
	ReqOne   Flags = C.LIBNBD_CMD_FLAG_REQ_ONE
	FastZero Flags = C.LIBNBD_CMD_FLAG_FAST_ZERO
)

// Status bits of the base:allocation context.
const (
	StateHole uint64 = 1 << 0
	StateZero uint64 = 1 << 1
)

// ContextBaseAllocation is the standard allocation metadata context.
const ContextBaseAllocation = "base:allocation"

// Sentinel errors of the wrapper itself.
var (
	ErrClosed   = errors.New("libnbd: handle closed")
	ErrShutDown = errors.New("libnbd: connection shut down after a cancelled call")
)

// Error is a failed libnbd call.
type Error struct {
	Op    string        // the libnbd function, e.g. "nbd_pread"
	Msg   string        // nbd_get_error()
	Errno syscall.Errno // nbd_get_errno(); 0 when libnbd gave none
}

func (e *Error) Error() string {
	if e.Errno != 0 {
		return fmt.Sprintf("libnbd: %s: %s (errno %d)", e.Op, e.Msg, int(e.Errno))
	}
	return fmt.Sprintf("libnbd: %s: %s", e.Op, e.Msg)
}

// Unwrap lets errors.Is(err, syscall.EPERM) see the errno.
func (e *Error) Unwrap() error {
	if e.Errno == 0 {
		return nil
	}
	return e.Errno
}

// Extent is one block status descriptor: a run of Length bytes whose status
// in the metadata context is Flags (for base:allocation, StateHole|StateZero).
type Extent struct {
	Length uint64
	Flags  uint64
}

// Handle is one libnbd handle: one NBD connection. Its methods are safe for
// concurrent use (libnbd serialises them); Close must not race with them.
type Handle struct {
	mu     sync.Mutex // guards h against Close and fd against cancellation
	h      *C.struct_nbd_handle
	fd     C.int // socket, once connected; -1 before
	killed bool  // a ctx ended during a call: the socket is shut down
}

// New creates a handle (nbd_create).
func New() (*Handle, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	h := C.nbd_create()
	if h == nil {
		return nil, lastError("nbd_create")
	}
	return &Handle{h: h, fd: -1}, nil
}

// Close closes the connection and frees the handle (nbd_close). It is safe to
// call more than once.
func (h *Handle) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.h != nil {
		C.nbd_close(h.h)
		h.h = nil
	}
	return nil
}

// lastError reads libnbd's thread-local error; the caller holds the OS thread.
func lastError(op string) error {
	msg := "unknown error"
	if m := C.nbd_get_error(); m != nil {
		msg = C.GoString(m)
	}
	return &Error{Op: op, Msg: msg, Errno: syscall.Errno(C.nbd_get_errno())}
}

// handle returns the C handle or ErrClosed.
func (h *Handle) handle() (*C.struct_nbd_handle, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.h == nil {
		return nil, ErrClosed
	}
	if h.killed {
		return nil, ErrShutDown
	}
	return h.h, nil
}

// call runs f on a locked OS thread and turns a -1 into an *Error. When ctx
// ends during the call, the socket is shut down so the call returns.
func (h *Handle) call(ctx context.Context, op string, f func(*C.struct_nbd_handle) C.int) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("libnbd: %s: %w", op, err)
	}
	ch, err := h.handle()
	if err != nil {
		return fmt.Errorf("libnbd: %s: %w", op, err)
	}
	stop := context.AfterFunc(ctx, h.kill)
	runtime.LockOSThread()
	r := f(ch)
	var cerr error
	if r == -1 {
		cerr = lastError(op)
	}
	runtime.UnlockOSThread()
	if !stop() && ctx.Err() != nil {
		return fmt.Errorf("libnbd: %s: %w (connection shut down)", op, ctx.Err())
	}
	return cerr
}

// kill shuts the socket down under a blocked call.
func (h *Handle) kill() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.killed = true
	if h.h != nil && h.fd >= 0 {
		unix.Shutdown(int(h.fd), unix.SHUT_RDWR)
	}
}

// SetExportName chooses the export to connect to (nbd_set_export_name).
func (h *Handle) SetExportName(name string) error {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	return h.call(context.Background(), "nbd_set_export_name", func(ch *C.struct_nbd_handle) C.int {
		return C.nbd_set_export_name(ch, cs)
	})
}

// AddMetaContext asks for a metadata context during negotiation
// (nbd_add_meta_context), e.g. ContextBaseAllocation or "qemu:dirty-bitmap:NAME".
func (h *Handle) AddMetaContext(name string) error {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	return h.call(context.Background(), "nbd_add_meta_context", func(ch *C.struct_nbd_handle) C.int {
		return C.nbd_add_meta_context(ch, cs)
	})
}

// RequestStructuredReplies sets whether to negotiate structured replies
// (nbd_set_request_structured_replies; libnbd's default is true).
func (h *Handle) RequestStructuredReplies(on bool) error {
	return h.call(context.Background(), "nbd_set_request_structured_replies", func(ch *C.struct_nbd_handle) C.int {
		return C.nbd_set_request_structured_replies(ch, C.bool(on))
	})
}

// ConnectUnix connects to a server's unix socket and negotiates
// (nbd_connect_unix).
func (h *Handle) ConnectUnix(ctx context.Context, path string) error {
	cs := C.CString(path)
	defer C.free(unsafe.Pointer(cs))
	err := h.call(ctx, "nbd_connect_unix", func(ch *C.struct_nbd_handle) C.int {
		return C.nbd_connect_unix(ch, cs)
	})
	return h.connected(err)
}

// ConnectSocket negotiates over sock, a connected socket, which the
// handle then owns and closes (nbd_connect_socket): the caller may check
// who is at the other end before anything is said.
func (h *Handle) ConnectSocket(ctx context.Context, sock int) error {
	err := h.call(ctx, "nbd_connect_socket", func(ch *C.struct_nbd_handle) C.int {
		return C.nbd_connect_socket(ch, C.int(sock))
	})
	return h.connected(err)
}

// ConnectURI connects to an NBD URI such as
// nbd+unix:///export?socket=/run/qcdp.sock (nbd_connect_uri).
func (h *Handle) ConnectURI(ctx context.Context, uri string) error {
	cs := C.CString(uri)
	defer C.free(unsafe.Pointer(cs))
	err := h.call(ctx, "nbd_connect_uri", func(ch *C.struct_nbd_handle) C.int {
		return C.nbd_connect_uri(ch, cs)
	})
	return h.connected(err)
}

// connected records the socket so a ctx can shut it down.
func (h *Handle) connected(err error) error {
	if err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.h != nil {
		h.fd = C.nbd_aio_get_fd(h.h)
	}
	return nil
}

// Size is the export size (nbd_get_size).
func (h *Handle) Size() (int64, error) {
	var size C.int64_t
	err := h.call(context.Background(), "nbd_get_size", func(ch *C.struct_nbd_handle) C.int {
		size = C.nbd_get_size(ch)
		if size < 0 {
			return -1
		}
		return 0
	})
	return int64(size), err
}

// IsReadOnly says whether the server exported read-only (nbd_is_read_only).
func (h *Handle) IsReadOnly() (bool, error) {
	var r C.int
	err := h.call(context.Background(), "nbd_is_read_only", func(ch *C.struct_nbd_handle) C.int {
		r = C.nbd_is_read_only(ch)
		return r
	})
	return r == 1, err
}

// CanMetaContext says whether the server agreed to the named metadata
// context (nbd_can_meta_context).
func (h *Handle) CanMetaContext(name string) (bool, error) {
	cs := C.CString(name)
	defer C.free(unsafe.Pointer(cs))
	var r C.int
	err := h.call(context.Background(), "nbd_can_meta_context", func(ch *C.struct_nbd_handle) C.int {
		r = C.nbd_can_meta_context(ch, cs)
		return r
	})
	return r == 1, err
}

// Pread fills p from offset (nbd_pread).
func (h *Handle) Pread(ctx context.Context, p []byte, offset uint64) error {
	if len(p) == 0 {
		return nil
	}
	return h.call(ctx, "nbd_pread", func(ch *C.struct_nbd_handle) C.int {
		return C.nbd_pread(ch, unsafe.Pointer(&p[0]), C.size_t(len(p)), C.uint64_t(offset), 0)
	})
}

// Pwrite writes p at offset (nbd_pwrite); flags may hold FUA.
func (h *Handle) Pwrite(ctx context.Context, p []byte, offset uint64, flags Flags) error {
	if len(p) == 0 {
		return nil
	}
	return h.call(ctx, "nbd_pwrite", func(ch *C.struct_nbd_handle) C.int {
		return C.nbd_pwrite(ch, unsafe.Pointer(&p[0]), C.size_t(len(p)), C.uint64_t(offset), C.uint32_t(flags))
	})
}

// Zero writes zeroes over count bytes at offset (nbd_zero); flags may hold
// FUA, NoHole, FastZero.
func (h *Handle) Zero(ctx context.Context, count, offset uint64, flags Flags) error {
	return h.call(ctx, "nbd_zero", func(ch *C.struct_nbd_handle) C.int {
		return C.nbd_zero(ch, C.uint64_t(count), C.uint64_t(offset), C.uint32_t(flags))
	})
}

// Flush asks the server to make every acknowledged write durable (nbd_flush).
func (h *Handle) Flush(ctx context.Context) error {
	return h.call(ctx, "nbd_flush", func(ch *C.struct_nbd_handle) C.int {
		return C.nbd_flush(ch, 0)
	})
}

// ExtentFunc receives the extents of one metadata context from offset on. An
// error stops the request; BlockStatus returns it.
type ExtentFunc func(metacontext string, offset uint64, entries []Extent) error

// extentState is what the C callback finds through its cgo.Handle.
type extentState struct {
	fn  ExtentFunc
	err error
}

// BlockStatus asks for the status of count bytes at offset in every
// negotiated metadata context (nbd_block_status, or nbd_block_status_64
// where libnbd has it); flags may hold ReqOne. The server may describe less
// than count bytes: callers loop from the last extent's end.
func (h *Handle) BlockStatus(ctx context.Context, count, offset uint64, flags Flags, fn ExtentFunc) error {
	st := &extentState{fn: fn}
	ref := cgo.NewHandle(st)
	defer ref.Delete()
	err := h.call(ctx, "nbd_block_status", func(ch *C.struct_nbd_handle) C.int {
		return C.qcdp_block_status(ch, C.uint64_t(count), C.uint64_t(offset), C.uintptr_t(ref), C.uint32_t(flags))
	})
	if st.err != nil {
		return st.err
	}
	return err
}

func deliver(ref C.uintptr_t, metacontext *C.char, offset C.uint64_t, ents []Extent, cerr *C.int) C.int {
	st := cgo.Handle(ref).Value().(*extentState)
	if st.err != nil {
		return -1
	}
	if err := st.fn(C.GoString(metacontext), uint64(offset), ents); err != nil {
		st.err = fmt.Errorf("libnbd: block status callback at %d: %w", uint64(offset), err)
		*cerr = C.int(syscall.EINVAL)
		return -1
	}
	return 0
}

//export qcdpExtent32
func qcdpExtent32(ref C.uintptr_t, metacontext *C.char, offset C.uint64_t, entries *C.uint32_t, n C.size_t, cerr *C.int) C.int {
	raw := unsafe.Slice((*uint32)(unsafe.Pointer(entries)), int(n))
	ents := make([]Extent, 0, len(raw)/2)
	for i := 0; i+1 < len(raw); i += 2 {
		ents = append(ents, Extent{Length: uint64(raw[i]), Flags: uint64(raw[i+1])})
	}
	return deliver(ref, metacontext, offset, ents, cerr)
}

//export qcdpExtent64
func qcdpExtent64(ref C.uintptr_t, metacontext *C.char, offset C.uint64_t, entries *C.uint64_t, n C.size_t, cerr *C.int) C.int {
	raw := unsafe.Slice((*uint64)(unsafe.Pointer(entries)), 2*int(n))
	ents := make([]Extent, 0, n)
	for i := 0; i+1 < len(raw); i += 2 {
		ents = append(ents, Extent{Length: raw[i], Flags: raw[i+1]})
	}
	return deliver(ref, metacontext, offset, ents, cerr)
}
