package journal

import (
	"fmt"
	"sort"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

// layer is a loaded layer file: for each disk, the extents the layer
// changes, sorted by offset and not overlapping.
type layer struct {
	ref   layerRef
	path  string
	file  blob
	disks map[string][]lext
	ends  map[string]uint64 // highest byte written, this layer and older
	n     int
}

// lext is one record of a layer file.
type lext struct {
	entry
	bit int // the record's number in the file, for its verified bit
}

func (l *layer) close() { l.file.closeReader() }

// loadLayer loads the layer file the manifest names, through its index file
// when that is valid, else by scanning (and checking) the whole file.
func (j *Journal) loadLayer(ref layerRef, prev *layer) (*layer, error) {
	path := j.path(layerFile(ref.id))
	fi, err := j.fs.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: layer of seqs (%d, %d]: %w", ErrCorrupt, ref.from, ref.to, err)
	}
	l := &layer{ref: ref, path: path, file: blob{path: path}, disks: map[string][]lext{}, ends: map[string]uint64{}}
	x := j.readIndex(path+idxSuffix, idxKindLayer)
	if x == nil || x.covered != fi.Size() {
		f, err := j.fs.Open(path)
		if err != nil {
			return nil, fmt.Errorf("journal: %w", err)
		}
		x = &idxFile{kind: idxKindLayer, covered: fi.Size()}
		ids := map[string]uint16{}
		_, err = scanFile(f, path, fi.Size(), layerMagic, j.opts.Group, ref.id, false, 0, func(r *record.Record, pos int64) error {
			if !isWrite(r.Kind) {
				return fmt.Errorf("%w: %s offset %d: a %v record in a layer", ErrCorrupt, path, pos, r.Kind)
			}
			id, ok := ids[r.Disk]
			if !ok {
				id = uint16(len(x.disks))
				ids[r.Disk] = id
				x.disks = append(x.disks, r.Disk)
			}
			x.entries = append(x.entries, entry{seq: r.Seq, time: r.Time, off: r.Offset, length: r.Length, pos: pos, disk: id, kind: r.Kind,
				hlen: uint16(record.FrameLen + record.BodyHeaderLen + len(r.Disk))})
			return nil
		})
		f.Close()
		if err != nil {
			return nil, err
		}
		if err := vfs.Publish(j.fs, path+idxSuffix, encodeIndex(x)); err != nil {
			j.log.Warn("journal: write layer index", "layer", path, "err", err)
		}
	}
	for i, e := range x.entries {
		if !isWrite(e.kind) || e.disk == noDisk {
			return nil, fmt.Errorf("%w: %s: index entry %d is no data", ErrCorrupt, path, i)
		}
		d := x.disks[e.disk]
		ext := l.disks[d]
		if n := len(ext); n > 0 && ext[n-1].off+ext[n-1].length > e.off {
			return nil, fmt.Errorf("%w: %s offset %d: extents of %s overlap or are out of order", ErrCorrupt, path, e.pos, d)
		}
		l.disks[d] = append(ext, lext{entry: e, bit: i})
		l.ends[d] = max(l.ends[d], e.off+e.length)
	}
	l.n = len(x.entries)
	l.file.verified = make([]uint64, (l.n+63)/64)
	if prev != nil {
		for d, e := range prev.ends {
			l.ends[d] = max(l.ends[d], e)
		}
	}
	return l, nil
}

// find returns the index of the first extent of ext that ends after off.
func findExt(ext []lext, off uint64) int {
	return sort.Search(len(ext), func(i int) bool { return ext[i].off+ext[i].length > off })
}
