package workload

import "math/bits"

// Write is one write of the workload.
type Write struct {
	Disk  int
	Block uint64
	Seq   uint64
	Prev  uint64 // seq of the previous write to this block, 0 if none
}

// Header is the block header this write puts on disk.
func (w Write) Header(seed uint64) Header {
	return Header{Disk: w.Disk, Seed: seed, Block: w.Block, Seq: w.Seq, Prev: w.Prev}
}

// Plan yields the workload's writes in order. The guest and the host run
// the same Plan.
type Plan struct {
	p    Params
	rng  uint64
	seq  uint64
	last [][]uint64 // [disk][block] seq of the latest write
}

// NewPlan starts the writes of p; p must be valid (Params.Validate).
func NewPlan(p Params) *Plan {
	last := make([][]uint64, p.Disks)
	for d := range last {
		last[d] = make([]uint64, p.Blocks)
	}
	return &Plan{p: p, rng: p.Seed, last: last}
}

// Next returns the next write. It does not stop at Params.Writes.
func (pl *Plan) Next() Write {
	disk, _ := bits.Mul64(splitmix(&pl.rng), uint64(pl.p.Disks))
	block, _ := bits.Mul64(splitmix(&pl.rng), pl.p.Blocks)
	pl.seq++
	w := Write{Disk: int(disk), Block: block, Seq: pl.seq, Prev: pl.last[disk][block]}
	pl.last[disk][block] = pl.seq
	return w
}
