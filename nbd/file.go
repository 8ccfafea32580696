package nbd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// ExtentFunc reports allocation for a read-only export; see Extenter.
type ExtentFunc func(ctx context.Context, off, length int64) ([]Extent, error)

// ReaderExport is a read-only export over any io.ReaderAt, with allocation
// information when an ExtentFunc is given. The replica serves point-in-time
// views through it.
type ReaderExport struct {
	r       io.ReaderAt
	size    int64
	extents ExtentFunc
}

// NewReaderExport serves size bytes of r read-only. extents may be nil: the
// export is then reported as all data.
func NewReaderExport(r io.ReaderAt, size int64, extents ExtentFunc) *ReaderExport {
	return &ReaderExport{r: r, size: size, extents: extents}
}

// Size implements Export.
func (e *ReaderExport) Size() int64 { return e.size }

// ReadAt implements Reader.
func (e *ReaderExport) ReadAt(_ context.Context, p []byte, off int64) error {
	n, err := e.r.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if errors.Is(err, io.EOF) {
		// A reader shorter than the export reads as zeroes past its end.
		clear(p[n:])
		return nil
	}
	return fmt.Errorf("read %d bytes at %d: %w", len(p), off, err)
}

// Extents implements Extenter.
func (e *ReaderExport) Extents(ctx context.Context, off, length int64) ([]Extent, error) {
	if e.extents == nil {
		return []Extent{{Length: length}}, nil
	}
	return e.extents(ctx, off, length)
}

// File is a writable export over a regular file or block device. Writes go to
// the page cache; Flush and FUA fsync.
type File struct {
	ReaderExport
	f *os.File
}

// OpenFile opens path as an export. A read-only export is a *ReaderExport
// with the file's holes as allocation information; a writable one is a *File.
// The caller closes the returned io.Closer when the export is withdrawn.
func OpenFile(path string, readOnly bool) (Export, io.Closer, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("nbd: open export file: %w", err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("nbd: size of %s: %w", path, err)
	}
	ro := NewReaderExport(f, size, func(ctx context.Context, off, length int64) ([]Extent, error) {
		return fileExtents(f, off, length)
	})
	if readOnly {
		return ro, f, nil
	}
	return &File{ReaderExport: *ro, f: f}, f, nil
}

// WriteAt implements Writer.
func (e *File) WriteAt(_ context.Context, p []byte, off int64) error {
	if _, err := e.f.WriteAt(p, off); err != nil {
		return fmt.Errorf("write %d bytes at %d: %w", len(p), off, err)
	}
	return nil
}

// Zero implements Zeroer with fallocate: a hole unless NoHole, else zeroed
// allocated blocks; without fallocate support, plain zero writes unless Fast.
func (e *File) Zero(_ context.Context, off, length int64, flags ZeroFlags) error {
	mode := uint32(unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE)
	if flags.NoHole {
		mode = unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE
	}
	err := unix.Fallocate(int(e.f.Fd()), mode, off, length)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("zero %d bytes at %d: %w", length, off, err)
	}
	if flags.Fast {
		return ErrNotSupported
	}
	zero := make([]byte, min(length, 1<<20))
	for done := int64(0); done < length; {
		n := min(int64(len(zero)), length-done)
		if _, err := e.f.WriteAt(zero[:n], off+done); err != nil {
			return fmt.Errorf("zero %d bytes at %d: %w", n, off+done, err)
		}
		done += n
	}
	return nil
}

// Trim implements Trimmer: a hole, keeping the size.
func (e *File) Trim(_ context.Context, off, length int64) error {
	err := unix.Fallocate(int(e.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("trim %d bytes at %d: %w", length, off, err)
	}
	return nil // trim is advisory
}

// Flush implements Flusher.
func (e *File) Flush(context.Context) error {
	if err := e.f.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", e.f.Name(), err)
	}
	return nil
}

// fileExtents reports data and holes with SEEK_DATA/SEEK_HOLE.
func fileExtents(f *os.File, off, length int64) ([]Extent, error) {
	fd := int(f.Fd())
	end := off + length
	var out []Extent
	for pos := off; pos < end && len(out) < maxExtents; {
		data, err := unix.Seek(fd, pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			data = end // no data from pos on
		} else if err != nil {
			return nil, fmt.Errorf("seek data in %s at %d: %w", f.Name(), pos, err)
		}
		if data > pos {
			l := min(data, end) - pos
			out = append(out, Extent{Length: l, Hole: true, Zero: true})
			pos += l
			continue
		}
		hole, err := unix.Seek(fd, pos, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole in %s at %d: %w", f.Name(), pos, err)
		}
		l := min(hole, end) - pos
		if l <= 0 {
			l = end - pos
		}
		out = append(out, Extent{Length: l})
		pos += l
	}
	return out, nil
}
