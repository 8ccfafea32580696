package workload

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrMismatch is matched (errors.Is) by every *MismatchError.
var ErrMismatch = errors.New("workload: image does not match the workload")

// ErrNoState: the images are each valid but together match the guest's
// state after no single seq.
var ErrNoState = errors.New("workload: images match no single point of the workload")

// Kind is how a block differs from what it should be.
type Kind int

const (
	// Missing: blank where a write should be.
	Missing Kind = iota + 1
	// Stale: an older version of the block than expected.
	Stale
	// Future: a version newer than the point checked, or a write where
	// the block should still be blank.
	Future
	// Corrupt: not a valid block (torn, bit flips, foreign data).
	Corrupt
	// Misplaced: a valid block that the workload never wrote here (other
	// disk, block number, seed, or history).
	Misplaced
)

func (k Kind) String() string {
	switch k {
	case Missing:
		return "missing"
	case Stale:
		return "stale"
	case Future:
		return "future"
	case Corrupt:
		return "corrupt"
	case Misplaced:
		return "misplaced"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Mismatch is one block that is not what it should be.
type Mismatch struct {
	Kind  Kind
	Disk  int
	Block uint64
	Want  uint64 // seq expected, 0 for blank
	Got   uint64 // seq found, 0 for blank or unreadable
	Err   error  // the Decode error, for Corrupt
}

func (m Mismatch) String() string {
	s := fmt.Sprintf("disk %d block %d: %s (want seq %d, got seq %d)", m.Disk, m.Block, m.Kind, m.Want, m.Got)
	if m.Err != nil {
		s += ": " + m.Err.Error()
	}
	return s
}

// MismatchError lists the blocks of an image that do not match.
type MismatchError struct {
	What       string     // what was checked, e.g. "disk 0 at seq 1234"
	Mismatches []Mismatch // the first maxReported
	Count      int        // all mismatches
}

const maxReported = 16

func (e *MismatchError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "workload: %s: %d blocks do not match", e.What, e.Count)
	for _, m := range e.Mismatches {
		b.WriteString("\n\t" + m.String())
	}
	if e.Count > len(e.Mismatches) {
		fmt.Fprintf(&b, "\n\t... and %d more", e.Count-len(e.Mismatches))
	}
	return b.String()
}

// Is makes errors.Is(err, ErrMismatch) true.
func (e *MismatchError) Is(target error) bool { return target == ErrMismatch }

func (e *MismatchError) add(m Mismatch) {
	e.Count++
	if len(e.Mismatches) < maxReported {
		e.Mismatches = append(e.Mismatches, m)
	}
}

func (e *MismatchError) orNil() error {
	if e.Count == 0 {
		return nil
	}
	return e
}

// History is the workload replayed up to a horizon: which write went where,
// for every seq up to it.
type History struct {
	p      Params
	writes []Write    // writes[seq-1]
	next   []uint64   // next[seq-1]: seq of the next write to the same block, 0 if none up to the horizon
	first  [][]uint64 // [disk][block] seq of the first write, 0 if none
}

// Replay replays p's writes 1..upTo. Its cost is O(upTo + Disks*Blocks).
func Replay(p Params, upTo uint64) (*History, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if p.Writes != 0 && upTo > p.Writes {
		return nil, fmt.Errorf("workload: replay up to seq %d of a workload of %d writes", upTo, p.Writes)
	}
	if upTo > MaxWrites {
		return nil, fmt.Errorf("workload: replay up to seq %d, want at most %d", upTo, uint64(MaxWrites))
	}
	h := &History{p: p, writes: make([]Write, upTo), next: make([]uint64, upTo), first: make([][]uint64, p.Disks)}
	for d := range h.first {
		h.first[d] = make([]uint64, p.Blocks)
	}
	pl := NewPlan(p)
	for i := range h.writes {
		w := pl.Next()
		h.writes[i] = w
		if w.Prev == 0 {
			h.first[w.Disk][w.Block] = w.Seq
		} else {
			h.next[w.Prev-1] = w.Seq
		}
	}
	return h, nil
}

// Horizon is the last seq replayed.
func (h *History) Horizon() uint64 { return uint64(len(h.writes)) }

// Write returns write seq (1..Horizon).
func (h *History) Write(seq uint64) Write { return h.writes[seq-1] }

// Expected is the guest's disks right after write seq: [disk][block] the
// seq of the version the block holds, 0 for never written.
func (h *History) Expected(seq uint64) [][]uint64 {
	seq = min(seq, h.Horizon())
	want := make([][]uint64, h.p.Disks)
	for d := range want {
		want[d] = make([]uint64, h.p.Blocks)
	}
	for _, w := range h.writes[:seq] {
		want[w.Disk][w.Block] = w.Seq
	}
	return want
}

// Expected replays p and returns the guest's disks right after write seq;
// see History.Expected.
func Expected(p Params, seq uint64) ([][]uint64, error) {
	h, err := Replay(p, seq)
	if err != nil {
		return nil, err
	}
	return h.Expected(seq), nil
}

// Verify checks that image, the raw content of disk, holds exactly the
// guest's writes up to seq (seq at most Horizon). It reads the workload's
// area only; bytes past the end of image read as zero. The error is a
// *MismatchError listing the blocks that differ, or an I/O error.
func (h *History) Verify(disk int, image io.ReaderAt, seq uint64) error {
	if disk < 0 || disk >= h.p.Disks {
		return fmt.Errorf("workload: verify disk %d of a %d-disk workload", disk, h.p.Disks)
	}
	if seq > h.Horizon() {
		return fmt.Errorf("workload: verify at seq %d past the replayed horizon %d", seq, h.Horizon())
	}
	want := h.Expected(seq)[disk]
	merr := &MismatchError{What: fmt.Sprintf("disk %d at seq %d", disk, seq)}
	err := h.scan(disk, image, func(block uint64, hd Header, derr error) {
		w := want[block]
		m := Mismatch{Disk: disk, Block: block, Want: w, Got: hd.Seq}
		switch kind, ok := h.classify(disk, block, hd, derr); {
		case !ok:
			m.Kind, m.Err = kind, derr
		case hd.Seq == w:
			return
		case hd.Seq == 0:
			m.Kind = Missing
		case hd.Seq > seq:
			m.Kind = Future
		default:
			m.Kind = Stale
		}
		merr.add(m)
	})
	if err != nil {
		return err
	}
	return merr.orNil()
}

// Range is a span of seqs, both ends included.
type Range struct{ Lo, Hi uint64 }

func (r Range) String() string { return fmt.Sprintf("[%d, %d]", r.Lo, r.Hi) }

// Contains reports whether seq is in r.
func (r Range) Contains(seq uint64) bool { return r.Lo <= seq && seq <= r.Hi }

// Locate finds the points of the workload that images (the raw content of
// disk 0, 1, ...) show: the guest's disks held exactly these images right
// after every write in the returned Range. It is how a test checks a
// replica or a restore point whose seq it does not know. The error is a
// *MismatchError when a block is invalid on its own, or wraps ErrNoState
// when the blocks are valid but from incompatible points (a torn restore).
func (h *History) Locate(images []io.ReaderAt) (Range, error) {
	if len(images) != h.p.Disks {
		return Range{}, fmt.Errorf("workload: locate %d images of a %d-disk workload", len(images), h.p.Disks)
	}
	r := Range{Lo: 0, Hi: h.Horizon()}
	var loAt, hiAt string // the blocks that bound r, to explain an empty r
	merr := &MismatchError{What: "locate"}
	for disk, image := range images {
		err := h.scan(disk, image, func(block uint64, hd Header, derr error) {
			if kind, ok := h.classify(disk, block, hd, derr); !ok {
				merr.add(Mismatch{Kind: kind, Disk: disk, Block: block, Got: hd.Seq, Err: derr})
				return
			}
			lo, hi := hd.Seq, h.Horizon() // the block holds write lo until the next write to it
			if hd.Seq == 0 {
				if f := h.first[disk][block]; f != 0 {
					hi = f - 1
				}
			} else if n := h.next[hd.Seq-1]; n != 0 {
				hi = n - 1
			}
			where := fmt.Sprintf("disk %d block %d holds seq %d, valid %v", disk, block, hd.Seq, Range{lo, hi})
			if lo > r.Lo {
				r.Lo, loAt = lo, where
			}
			if hi < r.Hi {
				r.Hi, hiAt = hi, where
			}
		})
		if err != nil {
			return Range{}, err
		}
	}
	if merr.Count > 0 {
		return Range{}, merr
	}
	if r.Lo > r.Hi {
		return Range{}, fmt.Errorf("%w: %s, but %s", ErrNoState, loAt, hiAt)
	}
	return r, nil
}

// classify checks a decoded block against the history. ok is true for a
// blank block and for a block that write hd.Seq put at (disk, block).
func (h *History) classify(disk int, block uint64, hd Header, derr error) (Kind, bool) {
	if errors.Is(derr, ErrBlank) {
		return 0, true
	}
	if derr != nil {
		return Corrupt, false
	}
	if hd.Seed != h.p.Seed || hd.Disk != disk || hd.Block != block || hd.Seq == 0 {
		return Misplaced, false
	}
	if hd.Seq > h.Horizon() {
		return Future, false
	}
	if w := h.writes[hd.Seq-1]; w.Disk != disk || w.Block != block || w.Prev != hd.Prev {
		return Misplaced, false
	}
	return 0, true
}

// scan decodes every block of disk's area in image and calls fn for each;
// a blank block comes with ErrBlank and a zero Header.
func (h *History) scan(disk int, image io.ReaderAt, fn func(block uint64, hd Header, derr error)) error {
	const chunkBlocks = 256
	buf := make([]byte, chunkBlocks*BlockSize)
	for start := uint64(0); start < h.p.Blocks; start += chunkBlocks {
		n := min(chunkBlocks, h.p.Blocks-start)
		b := buf[:n*BlockSize]
		got, err := image.ReadAt(b, int64(start)*BlockSize)
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("workload: read disk %d at block %d: %w", disk, start, err)
		}
		clear(b[got:])
		for i := range n {
			hd, derr := Decode(b[i*BlockSize : (i+1)*BlockSize])
			if derr != nil {
				hd = Header{}
			}
			fn(start+i, hd, derr)
		}
	}
	return nil
}
