package workload

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

var testParams = Params{Seed: 7, Writes: 3000, Blocks: 256, Disks: 2, SyncEvery: 16}

// simulate applies writes 1..upTo of p to in-memory disk images, the way
// the guest does.
func simulate(p Params, upTo uint64) [][]byte {
	disks := make([][]byte, p.Disks)
	for d := range disks {
		disks[d] = make([]byte, p.AreaBytes())
	}
	pl := NewPlan(p)
	for range upTo {
		w := pl.Next()
		Encode(disks[w.Disk][w.Block*BlockSize:(w.Block+1)*BlockSize], w.Header(p.Seed))
	}
	return disks
}

func readers(disks [][]byte) []io.ReaderAt {
	rs := make([]io.ReaderAt, len(disks))
	for i, d := range disks {
		rs[i] = bytes.NewReader(d)
	}
	return rs
}

func TestBlockRoundTrip(t *testing.T) {
	b := make([]byte, BlockSize)
	want := Header{Disk: 3, Seed: 99, Block: 12345, Seq: 1 << 40, Prev: 17}
	Encode(b, want)
	got, err := Decode(b)
	if err != nil || got != want {
		t.Fatalf("Decode = %+v, %v; want %+v", got, err, want)
	}
	if _, err := Decode(make([]byte, BlockSize)); !errors.Is(err, ErrBlank) {
		t.Errorf("Decode(zero block) = %v, want ErrBlank", err)
	}
	if _, err := Decode(b[:BlockSize-1]); err == nil {
		t.Error("Decode(short block) succeeded")
	}
}

// TestBlockBitFlips flips every bit of a block: none may decode cleanly.
func TestBlockBitFlips(t *testing.T) {
	b := make([]byte, BlockSize)
	Encode(b, Header{Disk: 1, Seed: 5, Block: 9, Seq: 77, Prev: 3})
	for i := range BlockSize * 8 {
		b[i/8] ^= 1 << (i % 8)
		if hd, err := Decode(b); err == nil {
			t.Fatalf("bit %d flipped: Decode = %+v, nil", i, hd)
		}
		b[i/8] ^= 1 << (i % 8)
	}
}

// TestBlockTorn writes a new version over an old one cut at every 512-byte
// sector boundary, as a torn write leaves it.
func TestBlockTorn(t *testing.T) {
	old, new := make([]byte, BlockSize), make([]byte, BlockSize)
	Encode(old, Header{Seed: 1, Block: 4, Seq: 10})
	Encode(new, Header{Seed: 1, Block: 4, Seq: 20, Prev: 10})
	for cut := 512; cut < BlockSize; cut += 512 {
		torn := append(append([]byte{}, new[:cut]...), old[cut:]...)
		if _, err := Decode(torn); !errors.Is(err, ErrCRC) {
			t.Errorf("torn at %d: Decode error %v, want ErrCRC", cut, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	b := make([]byte, BlockSize)
	Encode(b, Header{Disk: 1, Seed: 2, Block: 3, Seq: 4, Prev: 1})
	f.Add(b)
	f.Add(make([]byte, BlockSize))
	f.Fuzz(func(t *testing.T, in []byte) {
		hd, err := Decode(in)
		if err != nil {
			return
		}
		again := make([]byte, BlockSize)
		Encode(again, hd)
		if !bytes.Equal(again, in) {
			t.Fatalf("block decodes as %+v but encodes differently", hd)
		}
	})
}

func TestCmdline(t *testing.T) {
	for _, p := range []Params{
		testParams,
		{Seed: 1, Blocks: 1, Disks: 8, Rate: 50, Hold: true},
	} {
		line := "console=ttyS0 quiet " + p.Cmdline() + " panic=-1"
		got, ok, err := ParseCmdline(line)
		if err != nil || !ok || got != p {
			t.Errorf("ParseCmdline(%q) = %+v, %v, %v; want %+v", line, got, ok, err, p)
		}
	}
	if _, ok, err := ParseCmdline("console=ttyS0"); ok || err != nil {
		t.Errorf("ParseCmdline without the key: ok %v, err %v", ok, err)
	}
	for _, bad := range []string{
		"qcdp.workload=seed=x", "qcdp.workload=disks=0", "qcdp.workload=disks=9",
		"qcdp.workload=blocks=0", "qcdp.workload=after=reboot", "qcdp.workload=color=1", "qcdp.workload=seed",
	} {
		if _, _, err := ParseCmdline(bad); err == nil {
			t.Errorf("ParseCmdline(%q) succeeded", bad)
		}
	}
}

func FuzzParseCmdline(f *testing.F) {
	f.Add(testParams.Cmdline())
	f.Add("qcdp.workload=disks=99999999999999999999")
	f.Fuzz(func(t *testing.T, line string) {
		p, ok, err := ParseCmdline(line)
		if !ok || err != nil {
			return
		}
		again, _, err := ParseCmdline(p.Cmdline())
		if err != nil || again != p {
			t.Fatalf("%+v does not survive its own command line: %+v, %v", p, again, err)
		}
	})
}

func TestPlanHistory(t *testing.T) {
	h, err := Replay(testParams, testParams.Writes)
	if err != nil {
		t.Fatal(err)
	}
	last := map[[2]uint64]uint64{}
	overwrites := 0
	for seq := uint64(1); seq <= h.Horizon(); seq++ {
		w := h.Write(seq)
		k := [2]uint64{uint64(w.Disk), w.Block}
		if w.Seq != seq || w.Prev != last[k] || w.Block >= testParams.Blocks {
			t.Fatalf("write %d = %+v, previous write to the block %d", seq, w, last[k])
		}
		if w.Prev != 0 {
			overwrites++
		}
		last[k] = seq
	}
	if overwrites < int(h.Horizon())/2 {
		t.Errorf("only %d of %d writes overwrite a block; the area is too large to test versions", overwrites, h.Horizon())
	}
	if _, err := Replay(testParams, testParams.Writes+1); err == nil {
		t.Error("Replay past Writes succeeded")
	}
}

func TestVerify(t *testing.T) {
	const at = 2000
	p := testParams
	h, err := Replay(p, p.Writes)
	if err != nil {
		t.Fatal(err)
	}
	// A block overwritten up to at and written again after it, to make
	// stale and future versions of.
	var w Write
	for seq := uint64(at); ; seq-- {
		if w = h.Write(seq); w.Prev != 0 && h.next[seq-1] != 0 {
			break
		}
	}
	blk := func(img []byte) []byte { return img[w.Block*BlockSize : (w.Block+1)*BlockSize] }
	blank := uint64(0) // a block of disk 0 never written up to at
	want := h.Expected(at)
	for want[0][blank] != 0 {
		blank++
	}
	tests := []struct {
		name   string
		mangle func(disks [][]byte)
		kind   Kind // 0: must verify
	}{
		{"exact", func([][]byte) {}, 0},
		{"zeroed block", func(d [][]byte) { clear(blk(d[w.Disk])) }, Missing},
		{"previous version", func(d [][]byte) {
			pw := h.Write(w.Prev)
			Encode(blk(d[w.Disk]), pw.Header(p.Seed))
		}, Stale},
		{"version from the future", func(d [][]byte) {
			nw := h.Write(h.next[w.Seq-1])
			Encode(blk(d[w.Disk]), nw.Header(p.Seed))
		}, Future},
		{"write where blank", func(d [][]byte) {
			Encode(d[0][blank*BlockSize:], Header{Seed: p.Seed, Block: blank, Seq: h.first[0][blank]})
		}, Future},
		{"bit flip", func(d [][]byte) { blk(d[w.Disk])[100] ^= 4 }, Corrupt},
		{"torn write", func(d [][]byte) { clear(blk(d[w.Disk])[2048:]) }, Corrupt},
		{"other seed", func(d [][]byte) {
			Encode(blk(d[w.Disk]), Header{Disk: w.Disk, Seed: p.Seed + 1, Block: w.Block, Seq: w.Seq, Prev: w.Prev})
		}, Misplaced},
		{"block of the other disk", func(d [][]byte) { copy(blk(d[w.Disk]), blk(d[1-w.Disk])) }, Misplaced},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			disks := simulate(p, at)
			tt.mangle(disks)
			var errs []error
			for d, r := range readers(disks) {
				if err := h.Verify(d, r, at); err != nil {
					errs = append(errs, err)
				}
			}
			if tt.kind == 0 {
				if len(errs) > 0 {
					t.Fatalf("Verify: %v", errs)
				}
				return
			}
			var merr *MismatchError
			if len(errs) != 1 || !errors.As(errs[0], &merr) || !errors.Is(errs[0], ErrMismatch) {
				t.Fatalf("Verify errors %v, want one *MismatchError", errs)
			}
			if merr.Count != 1 || merr.Mismatches[0].Kind != tt.kind {
				t.Fatalf("Verify: %v; want one %s block", merr, tt.kind)
			}
		})
	}
}

// TestVerifyShortImage: an image shorter than the area reads as blank.
func TestVerifyShortImage(t *testing.T) {
	p := Params{Seed: 3, Writes: 10, Blocks: 64, Disks: 1}
	h, _ := Replay(p, 10)
	if err := h.Verify(0, bytes.NewReader(nil), 0); err != nil {
		t.Errorf("empty image at seq 0: %v", err)
	}
	if err := h.Verify(0, bytes.NewReader(nil), 10); !errors.Is(err, ErrMismatch) {
		t.Errorf("empty image at seq 10: %v, want ErrMismatch", err)
	}
}

func TestLocate(t *testing.T) {
	p := testParams
	h, err := Replay(p, p.Writes)
	if err != nil {
		t.Fatal(err)
	}
	for _, at := range []uint64{0, 1, 17, 1500, p.Writes} {
		r, err := h.Locate(readers(simulate(p, at)))
		if err != nil || !r.Contains(at) {
			t.Errorf("Locate(images at %d) = %v, %v", at, r, err)
		}
		// The range is tight: the write before it and the one after it
		// change the images.
		if r.Lo > 0 {
			if r2, _ := h.Locate(readers(simulate(p, r.Lo-1))); r2.Contains(at) {
				t.Errorf("images at %d: range %v, but the images at %d are in %v too", at, r, r.Lo-1, r2)
			}
		}
		if r.Hi < h.Horizon() {
			if r2, _ := h.Locate(readers(simulate(p, r.Hi+1))); r2.Contains(at) {
				t.Errorf("images at %d: range %v, but the images at %d are in %v too", at, r, r.Hi+1, r2)
			}
		}
	}

	// Disk 0 from one point, disk 1 from a much later one: no single
	// point of the guest's life looks like that.
	early, late := simulate(p, 500), simulate(p, 2500)
	_, err = h.Locate(readers([][]byte{early[0], late[1]}))
	if !errors.Is(err, ErrNoState) {
		t.Errorf("Locate(torn restore) = %v, want ErrNoState", err)
	}

	bad := simulate(p, 1000)
	bad[1][5*BlockSize+77] ^= 1
	if _, err := h.Locate(readers(bad)); !errors.Is(err, ErrMismatch) {
		t.Errorf("Locate(corrupt) = %v, want ErrMismatch", err)
	}
}
