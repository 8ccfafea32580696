package chaos

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/qcdp/qcdp/integration/guest/workload"
)

// An Epoch is one boot of the test guest. A guest that restarts runs its
// workload again from write 1 over the disks the last boot left behind,
// with a seed of its own, so package workload's History (which starts
// from blank disks) cannot tell its states; an Epoch can: the state after
// write s of epoch e is the disks as they were when e booted (its base)
// with e's writes 1..s on top.
type Epoch struct {
	N      int // 1 for the first boot
	Params workload.Params
	Boot   time.Time // just before QEMU started: every record of e is later
	// Base is each disk's workload area (Params.AreaBytes) as the boot
	// found it; nil for blank disks.
	Base [][]byte

	plan   *workload.Plan
	writes []workload.Write // writes[seq-1]
	next   []uint64         // next[seq-1]: the next write to the same block, 0 if none yet
	last   [][]uint64       // [disk][block] the latest write replayed so far
	first  [][]uint64       // [disk][block] the first write, 0 if none yet
}

// maxAhead bounds how far past what the guest reported a block's seq may
// be before the model calls it foreign rather than replaying that far.
const maxAhead = 1 << 22

// NewEpoch starts the model of a boot whose disks held base.
func NewEpoch(n int, p workload.Params, base [][]byte, boot time.Time) (*Epoch, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if base != nil && len(base) != p.Disks {
		return nil, fmt.Errorf("chaos: epoch %d: %d base images for %d disks", n, len(base), p.Disks)
	}
	for i, b := range base {
		if int64(len(b)) != p.AreaBytes() {
			return nil, fmt.Errorf("chaos: epoch %d: base of disk %d has %d bytes, want %d", n, i, len(b), p.AreaBytes())
		}
	}
	e := &Epoch{N: n, Params: p, Boot: boot, Base: base, plan: workload.NewPlan(p),
		last: make([][]uint64, p.Disks), first: make([][]uint64, p.Disks)}
	for d := range p.Disks {
		e.last[d] = make([]uint64, p.Blocks)
		e.first[d] = make([]uint64, p.Blocks)
	}
	return e, nil
}

// extend replays the plan up to seq.
func (e *Epoch) extend(seq uint64) {
	for uint64(len(e.writes)) < seq {
		w := e.plan.Next()
		e.writes = append(e.writes, w)
		e.next = append(e.next, 0)
		if w.Prev != 0 {
			e.next[w.Prev-1] = w.Seq
		} else {
			e.first[w.Disk][w.Block] = w.Seq
		}
		e.last[w.Disk][w.Block] = w.Seq
	}
}

// ErrNotState: images that match no state of the epoch. It wraps
// workload.ErrNoState or workload.ErrMismatch for the reason.
var ErrNotState = errors.New("chaos: not a state of the guest")

// Locate returns the span of seqs after which epoch e's disks held
// exactly images (each the workload area of one disk, in disk order).
// known is the highest seq the guest is known to have completed (its
// console said so): the span's upper end is exact at least up to there,
// so a view that lacks a write the guest completed by then has Hi below
// it. An error wraps ErrNotState and says which blocks disagree.
func (e *Epoch) Locate(images [][]byte, known uint64) (workload.Range, error) {
	p := e.Params
	if len(images) != p.Disks {
		return workload.Range{}, fmt.Errorf("chaos: locate %d images in a %d-disk workload", len(images), p.Disks)
	}
	type block struct {
		base bool
		hd   workload.Header
		err  error
	}
	blocks := make([][]block, p.Disks)
	horizon := known
	mis := &workload.MismatchError{What: fmt.Sprintf("epoch %d", e.N)}
	for d, img := range images {
		if int64(len(img)) < p.AreaBytes() {
			return workload.Range{}, fmt.Errorf("chaos: disk %d image has %d bytes, the workload area is %d", d, len(img), p.AreaBytes())
		}
		blocks[d] = make([]block, p.Blocks)
		for b := range p.Blocks {
			raw := img[b*workload.BlockSize : (b+1)*workload.BlockSize]
			if e.isBase(d, b, raw) {
				blocks[d][b].base = true
				continue
			}
			hd, err := workload.Decode(raw)
			switch {
			case err != nil:
				addMismatch(mis, workload.Mismatch{Kind: workload.Corrupt, Disk: d, Block: b, Err: err})
			case hd.Seed != p.Seed || hd.Disk != d || hd.Block != b || hd.Seq == 0 || hd.Seq > known+maxAhead:
				addMismatch(mis, workload.Mismatch{Kind: workload.Misplaced, Disk: d, Block: b, Got: hd.Seq})
			default:
				horizon = max(horizon, hd.Seq)
			}
			blocks[d][b] = block{hd: hd, err: err}
		}
	}
	if mis.Count > 0 {
		return workload.Range{}, fmt.Errorf("%w: %w", ErrNotState, mis)
	}
	e.extend(horizon)
	r := workload.Range{Lo: 0, Hi: math.MaxUint64}
	var loAt, hiAt string
	for d := range blocks {
		for b, bl := range blocks[d] {
			lo, hi := uint64(0), uint64(math.MaxUint64)
			if bl.base {
				if f := e.first[d][b]; f != 0 {
					hi = f - 1
				}
			} else {
				w := e.writes[bl.hd.Seq-1]
				if w.Disk != d || w.Block != uint64(b) || w.Prev != bl.hd.Prev {
					return workload.Range{}, fmt.Errorf("%w: disk %d block %d holds seq %d, which the workload wrote to disk %d block %d",
						ErrNotState, d, b, bl.hd.Seq, w.Disk, w.Block)
				}
				lo = bl.hd.Seq
				if n := e.next[lo-1]; n != 0 {
					hi = n - 1
				}
			}
			where := fmt.Sprintf("disk %d block %d valid %d..%s", d, b, lo, hiString(hi))
			if lo > r.Lo {
				r.Lo, loAt = lo, where
			}
			if hi < r.Hi {
				r.Hi, hiAt = hi, where
			}
		}
	}
	if r.Lo > r.Hi {
		return workload.Range{}, fmt.Errorf("%w: %w: %s, but %s", ErrNotState, workload.ErrNoState, loAt, hiAt)
	}
	return r, nil
}

// isBase reports whether raw is the block the epoch booted with.
func (e *Epoch) isBase(disk int, block uint64, raw []byte) bool {
	if e.Base == nil {
		return isZero(raw)
	}
	return bytes.Equal(raw, e.Base[disk][block*workload.BlockSize:(block+1)*workload.BlockSize])
}

func addMismatch(e *workload.MismatchError, m workload.Mismatch) {
	e.Count++
	if len(e.Mismatches) < 16 {
		e.Mismatches = append(e.Mismatches, m)
	}
}

func hiString(hi uint64) string {
	if hi == math.MaxUint64 {
		return "now"
	}
	return fmt.Sprint(hi)
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// EpochSeed is the workload seed of boot n of a run: distinct for every
// boot, so a block always tells which boot wrote it.
func EpochSeed(run uint64, n int) uint64 {
	s := run ^ uint64(n)*0x9e3779b97f4a7c15
	s ^= s >> 31
	s *= 0xbf58476d1ce4e5b9
	s ^= s >> 29
	return s | 1
}
