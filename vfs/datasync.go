package vfs

import (
	"os"

	"golang.org/x/sys/unix"
)

// DataSyncer is a File that can make its contents durable without the
// metadata a later read does not need (fdatasync(2)): for a file rewritten
// in place, without the modification time's journal commit that Sync pays.
type DataSyncer interface {
	Datasync() error
}

// Datasync makes f's contents (and its size) durable: with fdatasync(2)
// when f supports it, else with Sync. On MemFS it is Sync, so an injected
// OpSync error fails it too.
func Datasync(f File) error {
	if d, ok := f.(DataSyncer); ok {
		return d.Datasync()
	}
	return f.Sync()
}

// Datasync implements DataSyncer.
func (f *osFile) Datasync() error {
	for {
		err := unix.Fdatasync(f.fd)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
		}
		return nil
	}
}
