package spool

import (
	"context"
	"errors"
	"fmt"
	"github.com/qcdp/qcdp/record/logfile"
	"path/filepath"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

// SegmentInfo describes one segment file.
type SegmentInfo struct {
	Name     string `json:"name"`
	FirstSeq uint64 `json:"first_seq"` // from the name and header
	LastSeq  uint64 `json:"last_seq"`  // of the last record; FirstSeq-1 when empty
	Records  int64  `json:"records"`
	Bytes    int64  `json:"bytes"` // file size
}

// MarkerInfo is a marker seen in the spool.
type MarkerInfo struct {
	Seq  uint64 `json:"seq"`
	Time int64  `json:"time"`
	Kind string `json:"kind"`
	Disk string `json:"disk,omitempty"`
	Name string `json:"name,omitempty"`
}

// Report is what Inspect found.
type Report struct {
	Dir   string `json:"dir"`
	Group string `json:"group"`
	Acked uint64 `json:"acked"`
	// Identity is the spool's identity as the last Open left it; nil for
	// a spool never opened since identities exist (its next Open makes one).
	Identity *Identity        `json:"identity,omitempty"`
	FirstSeq uint64           `json:"first_seq"`
	LastSeq  uint64           `json:"last_seq"`
	Records  int64            `json:"records"`
	Bytes    int64            `json:"bytes"`
	Kinds    map[string]int64 `json:"kinds"`
	Disks    map[string]int64 `json:"disks"` // records per disk
	Markers  []MarkerInfo     `json:"markers"`
	Segments []SegmentInfo    `json:"segments"`
	Torn     string           `json:"torn,omitempty"` // the torn tail, if any
	Unknown  int64            `json:"unknown_records,omitempty"`
}

// InspectOptions tune Inspect.
type InspectOptions struct {
	FS vfs.FS // default vfs.Default
	// Group, when set, must match the segment headers; when empty the first
	// segment's group is taken.
	Group string
	// Visit, when set, is called for every good record in seq order. The
	// record aliases a buffer reused after the call returns.
	Visit func(r *record.Record) error
}

// Inspect reads the spool in dir without changing anything (a torn tail is
// reported, not cut) and returns what it holds. It fails with ErrCorrupt
// (naming file, offset and seq) on corruption; the report then covers what
// came before. A torn tail is not an error: Report.Torn describes it.
func Inspect(ctx context.Context, dir string, opts InspectOptions) (*Report, error) {
	fs := opts.FS
	if fs == nil {
		fs = vfs.Default
	}
	rep := &Report{Dir: dir, Group: opts.Group, Kinds: map[string]int64{}, Disks: map[string]int64{}, Markers: []MarkerInfo{}, Segments: []SegmentInfo{}}
	acked, err := readAcked(fs, dir)
	if err != nil {
		return rep, err
	}
	rep.Acked = acked
	id, ok, err := readIdentity(fs, dir)
	if err != nil {
		return rep, err
	}
	if ok {
		rep.Identity = &id.Identity
	}
	names, firsts, err := listSegments(fs, dir)
	if err != nil {
		return rep, err
	}
	if rep.Group == "" && len(names) > 0 {
		rep.Group, err = peekGroup(fs, filepath.Join(dir, names[0]))
		if err != nil {
			return rep, err
		}
	}
	visit := func(r *record.Record) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if rep.FirstSeq == 0 {
			rep.FirstSeq = r.Seq
		}
		rep.LastSeq = r.Seq
		rep.Records++
		rep.Kinds[r.Kind.String()]++
		if r.Kind == record.Marker {
			rep.Markers = append(rep.Markers, MarkerInfo{Seq: r.Seq, Time: r.Time, Kind: r.Marker.String(), Disk: r.Disk, Name: r.Name})
		} else if r.Kind != record.Members && r.Kind != record.Definition {
			rep.Disks[r.Disk]++
		}
		if opts.Visit != nil {
			return opts.Visit(r)
		}
		return nil
	}
	var prevLast uint64
	for i, name := range names {
		path := filepath.Join(dir, name)
		sc, err := inspectFile(fs, path, rep.Group, firsts[i], i == len(names)-1, visit)
		rep.Bytes += sc.Size
		info := SegmentInfo{Name: name, FirstSeq: firsts[i], LastSeq: firsts[i] - 1, Records: sc.Records, Bytes: sc.Size}
		if sc.Records > 0 {
			info.LastSeq = sc.Last
		}
		rep.Segments = append(rep.Segments, info)
		if err != nil {
			return rep, err
		}
		if i > 0 && firsts[i] != prevLast+1 && sc.Header.Len > 0 {
			return rep, fmt.Errorf("%w: %s: first seq %d, previous segment ends at %d", ErrCorrupt, path, firsts[i], prevLast)
		}
		prevLast = info.LastSeq
		if sc.Torn != nil {
			rep.Torn = sc.Torn.Error()
		}
	}
	return rep, nil
}

func inspectFile(fs vfs.FS, path, group string, first uint64, isLast bool, visit func(*record.Record) error) (logfile.Result, error) {
	f, err := fs.Open(path)
	if err != nil {
		return logfile.Result{}, fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return logfile.Result{}, fmt.Errorf("spool: %w", err)
	}
	var each func(*record.Record, int64) error
	if visit != nil {
		each = func(r *record.Record, _ int64) error { return visit(r) }
	}
	return segFormat.Scan(f, path, fi.Size(), logfile.ScanOptions{Group: group, First: first, Ordered: true, MayTear: isLast}, each)
}

// peekGroup returns the group named in a segment header.
func peekGroup(fs vfs.FS, path string) (string, error) {
	f, err := fs.Open(path)
	if err != nil {
		return "", fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	b := make([]byte, logfile.MaxHeaderLen)
	n, err := f.ReadAt(b, 0)
	if err != nil && n == 0 {
		return "", fmt.Errorf("spool: read %s: %w", path, err)
	}
	h, err := segFormat.ParseHeader(b[:n])
	if err != nil {
		if errors.Is(err, logfile.ErrHeaderShort) {
			return "", fmt.Errorf("%w: %s offset 0: %w", ErrTorn, path, err)
		}
		return "", fmt.Errorf("%w: %s offset 0: segment header: %w", ErrCorrupt, path, err)
	}
	return h.Group, nil
}
