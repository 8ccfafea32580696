package journal

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/qcdp/qcdp/record"
)

// Report is what Verify checked and found.
type Report struct {
	Segments int      `json:"segments"`
	Layers   int      `json:"layers"`
	Records  int64    `json:"records"`
	Bytes    int64    `json:"bytes"`
	AckedSeq uint64   `json:"acked_seq"`         // the acknowledged mark: every seq up to it is held
	Corrupt  []string `json:"corrupt,omitempty"` // one line per damaged file: file, offset, seq
}

// Verify reads every record of every segment and layer, checks its
// checksums and that it is the record the index names, and checks both
// slots of the acknowledged mark and the DEFINITIONS file. Damage is
// reported per file in Report.Corrupt and returned as ErrCorrupt (naming
// the file, offset and seq); Verify goes on with the other files.
func (j *Journal) Verify(ctx context.Context) (Report, error) {
	var rep Report
	var errs []error
	m, damage, err := j.verifyMark()
	if err != nil {
		return rep, err
	}
	if err := j.verifyDefinitions(); errors.Is(err, ErrCorrupt) || errors.Is(err, ErrGroup) {
		damage = append(damage, err)
	} else if err != nil {
		return rep, err
	}
	for _, err := range damage {
		rep.Corrupt = append(rep.Corrupt, err.Error())
	}
	errs = append(errs, damage...)
	rep.AckedSeq = m.seq
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
		sc, err := scanFile(f, jb.path, size, jb.magic, j.opts.Group, jb.first, false, 0, func(r *record.Record, pos int64) error {
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

// verifyMark checks that both slots of the ACKED file check and that the
// newer one is the mark the journal holds, and returns that mark and the
// damage found (ErrCorrupt naming file, offset and seq). It waits for an
// Append in progress.
func (j *Journal) verifyMark() (mark, []error, error) {
	j.appendMu.Lock()
	defer j.appendMu.Unlock()
	j.mu.RLock()
	closed, last := j.closed, j.last
	j.mu.RUnlock()
	if closed {
		return mark{}, nil, ErrClosed
	}
	path := j.path(ackedName)
	b := make([]byte, 2*ackedSlotLen)
	n, err := j.ackf.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return j.mark, nil, fmt.Errorf("journal: verify: read %s: %w", path, err)
	}
	fi, err := j.ackf.Stat()
	if err != nil {
		return j.mark, nil, fmt.Errorf("journal: verify: %w", err)
	}
	var errs []error
	if fi.Size() != int64(len(b)) {
		errs = append(errs, fmt.Errorf("%w: %s offset %d, seq %d: the file ends there, want %d bytes", ErrCorrupt, path, fi.Size(), j.mark.seq, len(b)))
	}
	for i := range 2 {
		lo, hi := min(i*ackedSlotLen, n), min((i+1)*ackedSlotLen, n)
		m, err := decodeMarkSlot(j.opts.Group, b[lo:hi])
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%w: %s offset %d, seq %d: %w", ErrCorrupt, path, lo, j.mark.seq, err))
		case i == j.ackSlot && m != j.mark:
			errs = append(errs, fmt.Errorf("%w: %s offset %d, seq %d: says seq %d in segment %d at offset %d, not the mark written",
				ErrCorrupt, path, lo, j.mark.seq, m.seq, m.seg, m.end))
		}
	}
	if last != j.mark.seq {
		errs = append(errs, fmt.Errorf("%w: %s: acknowledged seq %d, but the journal holds up to %d", ErrCorrupt, path, j.mark.seq, last))
	}
	return j.mark, errs, nil
}
