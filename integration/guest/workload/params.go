package workload

import (
	"fmt"
	"strconv"
	"strings"
)

// CmdlineKey is the kernel command line parameter that carries Params.
const CmdlineKey = "qcdp.workload"

// Bounds on Params, so neither side allocates from an unchecked number.
const (
	MaxDisks  = 8
	MaxBlocks = 1 << 20 // 4 GiB per disk
	MaxWrites = 1 << 32
)

// Params is the whole job of a guest; the writes it makes are a pure
// function of it.
type Params struct {
	Seed   uint64
	Writes uint64 // 0: write until the host sends "stop" or "poweroff"
	Blocks uint64 // area written on each disk, in blocks from offset 0
	Disks  int    // disks with serial qcdp0 .. qcdp<Disks-1>
	// SyncEvery makes the guest fdatasync and print QCDP-SYNCED after
	// every SyncEvery writes; 0 syncs only at the end.
	SyncEvery uint64
	Rate      uint64 // writes per second at most; 0 is as fast as it can
	Hold      bool   // after QCDP-DONE stay up until "poweroff"
}

// Defaults for keys the command line leaves out.
func defaults() Params {
	return Params{Disks: 1, Blocks: 1024, SyncEvery: 1}
}

// Validate reports the first field out of bounds.
func (p Params) Validate() error {
	switch {
	case p.Disks < 1 || p.Disks > MaxDisks:
		return fmt.Errorf("workload: disks=%d, want 1..%d", p.Disks, MaxDisks)
	case p.Blocks < 1 || p.Blocks > MaxBlocks:
		return fmt.Errorf("workload: blocks=%d, want 1..%d", p.Blocks, MaxBlocks)
	case p.Writes > MaxWrites:
		return fmt.Errorf("workload: writes=%d, want at most %d", p.Writes, uint64(MaxWrites))
	}
	return nil
}

// AreaBytes is how many bytes of each disk the workload writes; disks must
// be at least this large.
func (p Params) AreaBytes() int64 { return int64(p.Blocks) * BlockSize }

// Cmdline is the kernel command line parameter for p.
func (p Params) Cmdline() string {
	after := "poweroff"
	if p.Hold {
		after = "wait"
	}
	return fmt.Sprintf("%s=seed=%d,writes=%d,blocks=%d,disks=%d,sync=%d,rate=%d,after=%s",
		CmdlineKey, p.Seed, p.Writes, p.Blocks, p.Disks, p.SyncEvery, p.Rate, after)
}

// ParseCmdline finds CmdlineKey in a kernel command line (the contents of
// /proc/cmdline) and parses it. ok is false when the key is absent.
func ParseCmdline(cmdline string) (p Params, ok bool, err error) {
	for _, f := range strings.Fields(cmdline) {
		v, found := strings.CutPrefix(f, CmdlineKey+"=")
		if !found {
			continue
		}
		p, err := parseParams(v)
		return p, true, err
	}
	return Params{}, false, nil
}

func parseParams(s string) (Params, error) {
	p := defaults()
	for kv := range strings.SplitSeq(s, ",") {
		k, v, found := strings.Cut(kv, "=")
		if !found {
			return Params{}, fmt.Errorf("workload: %s: %q is not key=value", CmdlineKey, kv)
		}
		if k == "after" {
			switch v {
			case "poweroff":
				p.Hold = false
			case "wait":
				p.Hold = true
			default:
				return Params{}, fmt.Errorf("workload: %s: after=%q, want poweroff or wait", CmdlineKey, v)
			}
			continue
		}
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return Params{}, fmt.Errorf("workload: %s: %s: %w", CmdlineKey, k, err)
		}
		switch k {
		case "seed":
			p.Seed = n
		case "writes":
			p.Writes = n
		case "blocks":
			p.Blocks = n
		case "disks":
			if n > MaxDisks {
				return Params{}, fmt.Errorf("workload: disks=%d, want 1..%d", n, MaxDisks)
			}
			p.Disks = int(n)
		case "sync":
			p.SyncEvery = n
		case "rate":
			p.Rate = n
		default:
			return Params{}, fmt.Errorf("workload: %s: unknown key %q", CmdlineKey, k)
		}
	}
	return p, p.Validate()
}
