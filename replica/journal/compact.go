package journal

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

// maxLayerRecord bounds the payload of one record a fold writes.
const maxLayerRecord = 1 << 20

// Compact applies the retention policy as of now: records that have left
// the short-term window are folded into layers, one per long-term restore
// point kept (each a sparse delta over the next older one, the oldest being
// the base), layers whose point expired are merged into their newer
// neighbour, and segments wholly folded are deleted.
//
// It is crash-safe: new layer files are written and fsync'd under new names,
// then the manifest naming them and the new first retained seq is published
// with vfs.Publish; only then are the old files removed. A crash before the
// publish leaves the old journal intact (Open removes the unnamed files), a
// crash after it the new one (Open removes the leftovers). Open views keep
// their point: Compact keeps it as a layer boundary until they are closed.
func (j *Journal) Compact(ctx context.Context, now time.Time) error {
	ret := j.opts.Retention
	if ret.zero() {
		return nil
	}
	j.compactMu.Lock()
	defer j.compactMu.Unlock()

	j.mu.RLock()
	if j.closed {
		j.mu.RUnlock()
		return ErrClosed
	}
	plan := j.planLocked(ret, now)
	j.mu.RUnlock()
	if plan == nil {
		return nil
	}
	var made []layerRef
	fail := func(err error) error {
		for _, r := range made {
			j.removeQuiet(layerFile(r.id))
			j.removeQuiet(layerFile(r.id) + idxSuffix)
		}
		return err
	}
	for i := range plan.refs {
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
		if plan.reuse[i] != nil {
			continue
		}
		if err := j.writeLayer(plan, i); err != nil {
			return fail(err)
		}
		made = append(made, plan.refs[i])
	}
	if len(made) > 0 {
		if err := j.fs.SyncDir(j.opts.Dir); err != nil {
			return fail(fmt.Errorf("journal: compact: %w", err))
		}
	}
	man := &manifest{gen: plan.old.gen + 1, first: plan.first, nextID: plan.nextID, state: plan.state.flags, mem: plan.state.mem, layers: plan.refs}
	if err := vfs.Publish(j.fs, j.path(manifestName), encodeManifest(j.opts.Group, man)); err != nil {
		// The new manifest may or may not be durable: keep the new files
		// (Open removes them if it is not) and never reuse their ids.
		j.mu.Lock()
		m := *j.man
		m.nextID = plan.nextID
		j.man = &m
		j.mu.Unlock()
		return fmt.Errorf("journal: compact: publish manifest: %w", err)
	}
	var layers []*layer
	var prev *layer
	for i, ref := range plan.refs {
		l := plan.reuse[i]
		if l == nil {
			var err error
			if l, err = j.loadLayer(ref, prev); err != nil {
				return j.breakOn(fmt.Errorf("compact: load new layer: %w", err))
			}
		}
		layers = append(layers, l)
		prev = l
	}

	j.mu.Lock()
	saved := j.layers
	for i, l := range layers {
		l.ref = plan.refs[i]
	}
	obsoleteLayers := []*layer{}
	keep := map[*layer]bool{}
	for _, l := range layers {
		keep[l] = true
	}
	for _, l := range saved {
		if !keep[l] {
			obsoleteLayers = append(obsoleteLayers, l)
		}
	}
	j.layers = layers
	j.man = man
	cut := plan.first - j.first
	j.recs = slices.Clone(j.recs[cut:])
	j.first = plan.first
	j.start = plan.state.clone()
	for _, di := range j.index {
		di.trim(j.first)
	}
	var inv []span
	for _, s := range j.invalid {
		if s.to+1 < j.first {
			continue
		}
		s.from = max(s.from, j.first-1)
		inv = append(inv, s)
	}
	j.invalid = inv
	m := sort.Search(len(j.marks), func(i int) bool { return j.marks[i] >= j.first })
	for _, s := range j.marks[:m] {
		delete(j.names, s)
	}
	j.marks = slices.Clone(j.marks[m:])
	m = sort.Search(len(j.mems), func(i int) bool { return j.mems[i].seq >= j.first })
	j.mems = slices.Clone(j.mems[m:])
	// Folded Definition records leave the window; their definitions stay
	// in DEFINITIONS.
	m = sort.Search(len(j.defRecs), func(i int) bool { return j.defRecs[i] >= j.first })
	for _, s := range j.defRecs[:m] {
		delete(j.names, s)
	}
	j.defRecs = slices.Clone(j.defRecs[m:])
	var obsoleteSegs []*segment
	for len(j.segs) > 1 && j.segs[0].last < j.first {
		obsoleteSegs = append(obsoleteSegs, j.segs[0])
		j.segs = j.segs[1:]
	}
	j.gen++
	j.mu.Unlock()

	var errs []error
	for _, l := range obsoleteLayers {
		l.close()
		errs = append(errs, j.remove(l.path), j.remove(l.path+idxSuffix))
	}
	for _, s := range obsoleteSegs {
		s.file.closeReader()
		errs = append(errs, j.remove(s.path), j.remove(s.path+idxSuffix))
	}
	if len(obsoleteLayers)+len(obsoleteSegs) > 0 {
		errs = append(errs, j.fs.SyncDir(j.opts.Dir))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("journal: compact: clean up (Open finishes it): %w", err)
	}
	return nil
}

func (j *Journal) remove(path string) error {
	if err := j.fs.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// plan is what one Compact does.
type plan struct {
	old    *manifest
	first  uint64 // new first retained seq
	nextID uint64
	state  streamState // as of first-1
	refs   []layerRef
	reuse  []*layer   // per ref: the old layer kept as it is, or nil
	srcs   [][]source // per new layer: what it folds, oldest first
}

// source is an old layer or a run of records folded into a new layer.
type source struct {
	layer    *layer
	from, to uint64 // records (from, to], when layer is nil
}

// planLocked decides the new window start and layers (the rules are in
// retention.go), or returns nil when the layers stay as they are.
func (j *Journal) planLocked(ret Retention, now time.Time) *plan {
	first := windowStart(j.recs, j.first, ret, now)
	cands := j.candidatesLocked(first)
	keep := keptPoints(cands, ret, now)
	bounds := layerBounds(keep, j.pins, first)
	if len(bounds) == 0 {
		return nil
	}
	old := make([]layerRef, len(j.layers))
	for i, l := range j.layers {
		old[i] = l.ref
	}
	layout := planLayers(old, bounds, j.first)
	if unchanged(layout, old, keep, first != j.first) {
		return nil
	}
	cmap := map[uint64]candidate{}
	for _, c := range cands {
		cmap[c.seq] = c
	}
	p := &plan{old: j.man, first: first, nextID: j.man.nextID}
	for _, nl := range layout {
		ref := layerRef{from: nl.from, to: nl.to, time: j.timeOfLocked(nl.to), kept: keep[nl.to], mem: j.memAtLocked(nl.to)}
		if c, ok := cmap[nl.to]; ok { // the candidates are all the valid points
			ref.valid, ref.marker, ref.name = true, c.mk, c.name
		}
		var srcs []source
		for _, i := range nl.olds {
			srcs = append(srcs, source{layer: j.layers[i]})
		}
		if nl.recs {
			srcs = append(srcs, source{from: nl.recFrom, to: nl.to})
		}
		var reuse *layer
		if nl.reuse >= 0 {
			reuse = j.layers[nl.reuse]
			ref.id = reuse.ref.id
		} else {
			ref.id = p.nextID
			p.nextID++
		}
		p.refs = append(p.refs, ref)
		p.reuse = append(p.reuse, reuse)
		p.srcs = append(p.srcs, srcs)
	}
	p.state = j.stateAtLocked(first - 1)
	return p
}

// candidatesLocked returns the restore points a retention rule may keep
// when the window moves to start at first: the ends of the old layers
// below the window, and the valid boundaries that leave it.
func (j *Journal) candidatesLocked(first uint64) []candidate {
	var cands []candidate
	for _, l := range j.layers {
		if l.ref.valid && l.ref.to < j.first-1 {
			cands = append(cands, candidate{l.ref.to, l.ref.time, l.ref.marker, l.ref.name})
		}
	}
	for s := max(j.first, 2) - 1; s < first && s <= j.last; s++ {
		if !inSpans(j.invalid, s) {
			c := candidate{seq: s, time: j.timeOfLocked(s)}
			if s >= j.first && j.recs[s-j.first].kind == record.Marker {
				c.mk, c.name = j.recs[s-j.first].marker, j.names[s]
			}
			cands = append(cands, c)
		}
	}
	return cands
}

// item is one extent of a source in a fold; newer items have a higher prio.
type item struct {
	lo, hi uint64
	prio   int
	kind   record.Kind
	b      *blob
	bit    int
	e      entry
}

type itemHeap []*item

func (h itemHeap) Len() int           { return len(h) }
func (h itemHeap) Less(a, b int) bool { return h[a].prio > h[b].prio }
func (h itemHeap) Swap(a, b int)      { h[a], h[b] = h[b], h[a] }
func (h *itemHeap) Push(x any)        { *h = append(*h, x.(*item)) }
func (h *itemHeap) Pop() any {
	o := *h
	x := o[len(o)-1]
	*h = o[:len(o)-1]
	return x
}

// fold returns the pieces of the newest version of every byte the items
// cover, sorted by offset: a sweep over their ends with a heap of the items
// open at each point, newest on top.
func fold(items []*item) []piece {
	sort.Slice(items, func(a, b int) bool { return items[a].lo < items[b].lo })
	pts := make([]uint64, 0, 2*len(items))
	for _, it := range items {
		pts = append(pts, it.lo, it.hi)
	}
	slices.Sort(pts)
	pts = slices.Compact(pts)
	var out []piece
	var h itemHeap
	next := 0
	for k := 0; k+1 < len(pts); k++ {
		x, y := pts[k], pts[k+1]
		for next < len(items) && items[next].lo <= x {
			heap.Push(&h, items[next])
			next++
		}
		for h.Len() > 0 && h[0].hi <= x {
			heap.Pop(&h)
		}
		if h.Len() == 0 {
			continue
		}
		it := h[0]
		if n := len(out); n > 0 && out[n-1].off+out[n-1].n == x && out[n-1].b == it.b && out[n-1].bit == it.bit && out[n-1].e.seq == it.e.seq && out[n-1].kind == it.kind {
			out[n-1].n += y - x
			continue
		}
		out = append(out, piece{off: x, n: y - x, kind: it.kind, b: it.b, bit: it.bit, e: it.e, delta: x - it.e.off})
	}
	return out
}

// writeLayer writes the i-th layer of the plan and its index file, fsync'd.
func (j *Journal) writeLayer(p *plan, i int) error {
	ref := p.refs[i]
	perDisk := map[string][]*item{}
	prio := 0
	j.mu.RLock()
	for _, s := range p.srcs[i] {
		if s.layer != nil {
			for d, ext := range s.layer.disks {
				for k := range ext {
					x := &ext[k]
					perDisk[d] = append(perDisk[d], &item{lo: x.off, hi: x.off + x.length, prio: prio, kind: x.kind, b: &s.layer.file, bit: x.bit, e: x.entry})
				}
			}
			prio++
			continue
		}
		for q := s.from + 1; q <= s.to; q++ {
			e := j.recs[q-j.first]
			if !isWrite(e.kind) || e.length == 0 {
				continue
			}
			it := &item{lo: e.off, hi: e.off + e.length, prio: prio, kind: e.kind, e: e}
			if e.kind == record.Data {
				seg := j.segmentOfLocked(q)
				it.b, it.bit = &seg.file, int(q-seg.first)
			}
			d := j.disks[e.disk]
			perDisk[d] = append(perDisk[d], it)
			prio++
		}
	}
	j.mu.RUnlock()

	path := j.path(layerFile(ref.id))
	f, err := j.fs.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("journal: compact: %w", err)
	}
	defer f.Close() // closed explicitly below on success
	buf := layerFormat.AppendHeader(nil, j.opts.Group, ref.id)
	if _, err := f.Write(buf); err != nil {
		return fmt.Errorf("journal: compact: write %s: %w", path, err)
	}
	size := int64(len(buf))
	x := &idxFile{kind: idxKindLayer}
	payload := make([]byte, 0, maxLayerRecord)
	emit := func(disk string, id uint16, r *record.Record) error {
		buf = record.AppendEncode(buf[:0], r)
		if _, err := f.Write(buf); err != nil {
			return fmt.Errorf("journal: compact: write %s: %w", path, err)
		}
		x.entries = append(x.entries, entry{seq: r.Seq, time: r.Time, off: r.Offset, length: r.Length, pos: size, disk: id, kind: r.Kind,
			hlen: uint16(record.FrameLen + record.BodyHeaderLen + len(disk))})
		size += int64(len(buf))
		return nil
	}
	for _, disk := range sortedKeys(perDisk) {
		id := uint16(len(x.disks))
		x.disks = append(x.disks, disk)
		pieces := fold(perDisk[disk])
		var cur *record.Record
		flush := func() error {
			if cur == nil {
				return nil
			}
			if cur.Kind == record.Data {
				cur.Payload = payload
			}
			err := emit(disk, id, cur)
			cur, payload = nil, payload[:0]
			return err
		}
		for _, pc := range pieces {
			for done := uint64(0); done < pc.n; {
				n := pc.n - done
				if cur != nil && (cur.Kind != pc.kind || cur.Offset+cur.Length != pc.off+done ||
					pc.kind == record.Data && cur.Length >= maxLayerRecord) {
					if err := flush(); err != nil {
						return err
					}
				}
				if cur == nil {
					cur = &record.Record{Seq: pc.e.seq, Time: pc.e.time, Kind: pc.kind, Disk: disk, Offset: pc.off + done}
				}
				if pc.kind == record.Data {
					n = min(n, maxLayerRecord-cur.Length)
					k := len(payload)
					payload = payload[:k+int(n)]
					if err := j.readPayload(pc.b, pc.bit, &pc.e, disk, payload[k:], pc.delta+done); err != nil {
						return fmt.Errorf("journal: compact: %w", err)
					}
				}
				cur.Length += n
				cur.Seq, cur.Time = max(cur.Seq, pc.e.seq), max(cur.Time, pc.e.time)
				done += n
			}
		}
		if err := flush(); err != nil {
			return err
		}
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("journal: compact: fsync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("journal: compact: close %s: %w", path, err)
	}
	x.covered = size
	if err := vfs.Publish(j.fs, path+idxSuffix, encodeIndex(x)); err != nil {
		return fmt.Errorf("journal: compact: %w", err)
	}
	return nil
}
