package vfs

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// VectorWriter is a File that can write several buffers with one system
// call, so that a caller need not copy a large payload behind its header.
type VectorWriter interface {
	Writev(bufs [][]byte) (int, error)
}

// Writev writes the buffers in order, with one writev(2) when f supports it
// and one Write per buffer otherwise. Like Write, it returns an error when it
// writes less than everything. It may modify the slice bufs (not the bytes).
func Writev(f File, bufs [][]byte) (int, error) {
	if v, ok := f.(VectorWriter); ok {
		return v.Writev(bufs)
	}
	total := 0
	for _, b := range bufs {
		n, err := f.Write(b)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// osFile is an *os.File that also writes vectors.
type osFile struct {
	*os.File
	fd int
}

func wrapOS(f *os.File) File {
	return &osFile{File: f, fd: int(f.Fd())}
}

// Writev implements VectorWriter. The file must be a regular file (Fd puts
// it in blocking mode, which regular files are anyway).
func (f *osFile) Writev(bufs [][]byte) (int, error) {
	total := 0
	for len(bufs) > 0 {
		n, err := unix.Writev(f.fd, bufs)
		if err == unix.EINTR {
			continue
		}
		if n > 0 {
			total += n
		}
		if err != nil {
			return total, &os.PathError{Op: "writev", Path: f.Name(), Err: err}
		}
		if n == 0 {
			return total, &os.PathError{Op: "writev", Path: f.Name(), Err: io.ErrShortWrite}
		}
		for n > 0 && len(bufs) > 0 {
			if n < len(bufs[0]) {
				bufs[0] = bufs[0][n:]
				n = 0
				break
			}
			n -= len(bufs[0])
			bufs = bufs[1:]
		}
		for len(bufs) > 0 && len(bufs[0]) == 0 {
			bufs = bufs[1:]
		}
	}
	return total, nil
}

// Writev implements VectorWriter by concatenating: MemFS has no system calls
// to save, but a partial write fails the same way as Write.
func (f *memFile) Writev(bufs [][]byte) (int, error) {
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	p := make([]byte, 0, n)
	for _, b := range bufs {
		p = append(p, b...)
	}
	return f.Write(p)
}
