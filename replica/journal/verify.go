package journal

import (
	"context"
	"errors"
	"fmt"

	"github.com/qcdp/qcdp/record"
)

// Report is what Verify checked and found.
type Report struct {
	Segments int      `json:"segments"`
	Layers   int      `json:"layers"`
	Records  int64    `json:"records"`
	Bytes    int64    `json:"bytes"`
	Corrupt  []string `json:"corrupt,omitempty"` // one line per damaged file: file, offset, seq
}

// Verify reads every record of every segment and layer, checks its
// checksums and that it is the record the index names. Damage is reported
// per file in Report.Corrupt and returned as ErrCorrupt (naming the file,
// offset and seq); Verify goes on with the other files.
func (j *Journal) Verify(ctx context.Context) (Report, error) {
	type job struct {
		path    string
		magic   string
		first   uint64
		size    int64
		entries func(pos int64, r *record.Record) error
	}
	var jobs []job
	j.mu.RLock()
	if j.closed {
		j.mu.RUnlock()
		return Report{}, ErrClosed
	}
	for _, s := range j.segs {
		jfirst, recs, disks := j.first, j.recs, j.disks
		jobs = append(jobs, job{path: s.path, magic: segMagic, first: s.first, size: s.size, entries: func(pos int64, r *record.Record) error {
			if r.Seq < jfirst {
				return nil
			}
			if r.Seq-jfirst >= uint64(len(recs)) {
				return fmt.Errorf("%w: %s offset %d: seq %d is not in the index", ErrCorrupt, s.path, pos, r.Seq)
			}
			e := &recs[r.Seq-jfirst]
			return matchEntry(s.path, pos, r, e, disks)
		}})
	}
	for _, l := range j.layers {
		byPos := map[int64]*lext{}
		for _, ext := range l.disks {
			for i := range ext {
				byPos[ext[i].pos] = &ext[i]
			}
		}
		path := l.path
		jobs = append(jobs, job{path: path, magic: layerMagic, first: l.ref.id, size: -1, entries: func(pos int64, r *record.Record) error {
			x, ok := byPos[pos]
			if !ok || x.seq != r.Seq || x.off != r.Offset || x.length != r.Length || x.kind != r.Kind {
				return fmt.Errorf("%w: %s offset %d, seq %d: not the record the index names", ErrCorrupt, path, pos, r.Seq)
			}
			return nil
		}})
	}
	j.mu.RUnlock()

	var rep Report
	var errs []error
	for _, jb := range jobs {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		f, err := j.fs.Open(jb.path)
		if err != nil {
			return rep, fmt.Errorf("journal: verify: %w", err)
		}
		size := jb.size
		if size < 0 {
			fi, err := f.Stat()
			if err != nil {
				f.Close()
				return rep, fmt.Errorf("journal: verify: %w", err)
			}
			size = fi.Size()
		}
		sc, err := scanFile(f, jb.path, size, jb.magic, j.opts.Group, jb.first, false, func(r *record.Record, pos int64) error {
			rep.Records++
			return jb.entries(pos, r)
		})
		f.Close()
		rep.Bytes += sc.End
		if jb.magic == segMagic {
			rep.Segments++
		} else {
			rep.Layers++
		}
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				return rep, err
			}
			rep.Corrupt = append(rep.Corrupt, err.Error())
			errs = append(errs, err)
		}
	}
	return rep, errors.Join(errs...)
}

func matchEntry(path string, pos int64, r *record.Record, e *entry, disks []string) error {
	disk := ""
	if e.disk != noDisk {
		disk = disks[e.disk]
	}
	if e.pos != pos || e.kind != r.Kind || e.off != r.Offset || e.length != r.Length || disk != r.Disk || e.marker != r.Marker {
		return fmt.Errorf("%w: %s offset %d, seq %d: not the record the index names", ErrCorrupt, path, pos, r.Seq)
	}
	return nil
}
