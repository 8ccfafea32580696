package spool

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

// ErrUnmapped is returned by Apply when the spool has records for a disk
// that has no target image.
var ErrUnmapped = errors.New("spool: records for an unmapped disk")

// ApplyOptions tune Apply.
type ApplyOptions struct {
	FS vfs.FS // the spool's filesystem (images are always OS files); default vfs.Default
	// FromSeq and ToSeq bound the records applied (0: no bound).
	FromSeq, ToSeq uint64
	// SkipUnmapped skips records of disks with no target instead of failing.
	SkipUnmapped bool
}

// DiskSummary is what Apply did to one disk image.
type DiskSummary struct {
	Image   string `json:"image"`
	Created bool   `json:"created"`
	Size    int64  `json:"size"`
	Records int64  `json:"records"`
	Data    int64  `json:"data"`
	Zero    int64  `json:"zero"`
	Trim    int64  `json:"trim"`
	Bytes   int64  `json:"bytes"` // data bytes written
}

// ApplySummary is what Apply did.
type ApplySummary struct {
	Group    string                  `json:"group"`
	FirstSeq uint64                  `json:"first_seq"`
	LastSeq  uint64                  `json:"last_seq"`
	Records  int64                   `json:"records"`
	Skipped  int64                   `json:"skipped"` // records of unmapped disks
	Disks    map[string]*DiskSummary `json:"disks"`
	Markers  []MarkerInfo            `json:"markers"`
	Torn     string                  `json:"torn,omitempty"`
}

// Apply replays the records of the spool in dir, in seq order, onto raw
// image files: targets maps disk names to image paths. Data is written in
// place; Zero and Trim punch a hole keeping the size (or write zeroes where
// holes are not supported); markers are counted. A missing image is created
// at the size the records need; a smaller one is extended. The spool is only
// read. It refuses a spool with records for a disk not in targets unless
// opts.SkipUnmapped, before writing anything.
func Apply(ctx context.Context, dir string, targets map[string]string, opts ApplyOptions) (*ApplySummary, error) {
	for disk := range targets {
		if err := record.ValidDiskName(disk); err != nil {
			return nil, fmt.Errorf("spool: apply: %w", err)
		}
	}
	in := func(r *record.Record) bool {
		return r.Seq >= opts.FromSeq && (opts.ToSeq == 0 || r.Seq <= opts.ToSeq)
	}
	// Pass 1: which disks, and how large they must be.
	need := map[string]int64{}
	unmapped := map[string]bool{}
	rep, err := Inspect(ctx, dir, InspectOptions{FS: opts.FS, Visit: func(r *record.Record) error {
		if !in(r) || r.Kind == record.Marker || r.Kind == record.Members || r.Kind == record.Definition {
			return nil
		}
		if _, ok := targets[r.Disk]; !ok {
			unmapped[r.Disk] = true
			return nil
		}
		end := r.Offset + r.Length
		if end > math.MaxInt64 {
			return fmt.Errorf("spool: apply seq %d: range [%d,+%d) of %s is beyond any image", r.Seq, r.Offset, r.Length, r.Disk)
		}
		need[r.Disk] = max(need[r.Disk], int64(end))
		return nil
	}})
	if err != nil {
		return nil, err
	}
	if len(unmapped) > 0 && !opts.SkipUnmapped {
		var names []string
		for d := range unmapped {
			names = append(names, d)
		}
		sort.Strings(names)
		return nil, fmt.Errorf("%w: %q", ErrUnmapped, names)
	}
	sum := &ApplySummary{Group: rep.Group, Disks: map[string]*DiskSummary{}, Markers: []MarkerInfo{}, Torn: rep.Torn}
	files := map[string]*os.File{}
	defer func() {
		for _, f := range files {
			f.Close() // only reached on error paths after a close already failed or was skipped
		}
	}()
	for disk := range need {
		path := targets[disk]
		ds := &DiskSummary{Image: path}
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			ds.Created = true
		}
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("spool: apply disk %s: %w", disk, err)
		}
		files[disk] = f
		fi, err := f.Stat()
		if err != nil {
			return nil, fmt.Errorf("spool: apply disk %s: %w", disk, err)
		}
		ds.Size = fi.Size()
		if ds.Size < need[disk] {
			if err := f.Truncate(need[disk]); err != nil {
				return nil, fmt.Errorf("spool: apply disk %s: %w", disk, err)
			}
			ds.Size = need[disk]
		}
		sum.Disks[disk] = ds
	}
	// Pass 2: apply.
	var zeroes []byte
	_, err = Inspect(ctx, dir, InspectOptions{FS: opts.FS, Group: rep.Group, Visit: func(r *record.Record) error {
		if !in(r) || r.Kind == record.Members || r.Kind == record.Definition { // declarations and VM definitions write no disk
			return nil
		}
		if r.Kind == record.Marker {
			sum.Markers = append(sum.Markers, MarkerInfo{Seq: r.Seq, Time: r.Time, Kind: r.Marker.String(), Disk: r.Disk, Name: r.Name})
		} else if f, ok := files[r.Disk]; !ok {
			sum.Skipped++
		} else {
			ds := sum.Disks[r.Disk]
			ds.Records++
			var err error
			switch r.Kind {
			case record.Data:
				ds.Data++
				ds.Bytes += int64(len(r.Payload))
				_, err = f.WriteAt(r.Payload, int64(r.Offset))
			case record.Zero, record.Trim:
				if r.Kind == record.Zero {
					ds.Zero++
				} else {
					ds.Trim++
				}
				err = zeroRange(f, int64(r.Offset), int64(r.Length), &zeroes)
			}
			if err != nil {
				return fmt.Errorf("spool: apply seq %d to %s: %w", r.Seq, ds.Image, err)
			}
		}
		if sum.FirstSeq == 0 {
			sum.FirstSeq = r.Seq
		}
		sum.LastSeq = r.Seq
		sum.Records++
		return nil
	}})
	if err != nil {
		return sum, err
	}
	for disk, f := range files {
		delete(files, disk)
		err := f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return sum, fmt.Errorf("spool: apply disk %s: %w", disk, err)
		}
	}
	return sum, nil
}

// zeroRange makes [off, off+n) of f read as zeroes without changing its size.
func zeroRange(f *os.File, off, n int64, zeroes *[]byte) error {
	if n == 0 {
		return nil
	}
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) {
		return fmt.Errorf("punch hole [%d,+%d): %w", off, n, err)
	}
	if *zeroes == nil {
		*zeroes = make([]byte, 1<<20)
	}
	for n > 0 {
		c := min(n, int64(len(*zeroes)))
		if _, err := f.WriteAt((*zeroes)[:c], off); err != nil {
			return err
		}
		off += c
		n -= c
	}
	return nil
}
