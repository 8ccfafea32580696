//go:build linux

package main

import (
	"fmt"
	"io"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/qcdp/qcdp/integration/guest/workload"
)

// VerifyKey on the kernel command line (qcdp.verify=1) makes /init check
// its disks instead of writing: a standby started from a restore point
// (package failover) proves it holds one state of the workload. It
// reports
//
//	QCDP-VERIFIED lo=N hi=M t=NS   the disks hold the state right after any write in [N, M]
//	QCDP-MARKED block=B t=NS       it wrote a block past the workload's area on disk 0
//
// or QCDP-ERROR, then waits for "verify" (check again, reading the
// devices: O_DIRECT, no cache) or "poweroff".
const VerifyKey = "qcdp.verify=1"

func verifyMode(cmdline string) bool {
	for _, f := range strings.Fields(cmdline) {
		if f == VerifyKey {
			return true
		}
	}
	return false
}

// directReader reads an O_DIRECT file descriptor through an aligned
// buffer, at block-aligned offsets.
type directReader struct {
	fd  int
	buf []byte
}

func (r *directReader) ReadAt(p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		chunk := min(len(p)-n, len(r.buf))
		got, err := unix.Pread(r.fd, r.buf[:chunk], off+int64(n))
		if err != nil {
			return n, err
		}
		if got == 0 {
			return n, io.EOF
		}
		copy(p[n:], r.buf[:got])
		n += got
	}
	return n, nil
}

// verify locates the disks' state in the workload's history.
func verify(p workload.Params, disks []*disk) error {
	buf, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return fmt.Errorf("allocate aligned buffer: %w", err)
	}
	defer unix.Munmap(buf)
	images := make([]io.ReaderAt, len(disks))
	var horizon uint64
	for i, d := range disks {
		r := &directReader{fd: d.fd, buf: buf}
		images[i] = r
		blk := make([]byte, workload.BlockSize)
		for b := uint64(0); b < p.Blocks; b++ {
			if _, err := r.ReadAt(blk, int64(b)*workload.BlockSize); err != nil {
				return fmt.Errorf("read %s block %d: %w", d.name, b, err)
			}
			if h, err := workload.Decode(blk); err == nil {
				horizon = max(horizon, h.Seq)
			}
		}
	}
	h, err := workload.Replay(p, horizon)
	if err != nil {
		return err
	}
	rg, err := h.Locate(images)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	report("QCDP-VERIFIED lo=%d hi=%d t=%d", rg.Lo, rg.Hi, monotonic())
	return nil
}

// mark writes one block past the workload's area on disk 0: what the
// standby wrote, which must land in its overlay and nowhere else.
func mark(p workload.Params, d *disk) error {
	buf, err := unix.Mmap(-1, 0, workload.BlockSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	copy(buf, "QCDP-STANDBY-WROTE-THIS")
	off := int64(p.Blocks) * workload.BlockSize
	if _, err := unix.Pwrite(d.fd, buf, off); err != nil {
		return fmt.Errorf("mark %s at block %d: %w", d.name, p.Blocks, err)
	}
	if err := unix.Fdatasync(d.fd); err != nil {
		return fmt.Errorf("fdatasync %s: %w", d.name, err)
	}
	report("QCDP-MARKED block=%d t=%d", p.Blocks, monotonic())
	return nil
}

// standby runs verify mode until "poweroff".
func standby(p workload.Params, disks []*disk, cmds <-chan string) error {
	if err := verify(p, disks); err != nil {
		report("QCDP-ERROR %s", strings.ReplaceAll(err.Error(), "\n", " | "))
	} else if err := mark(p, disks[0]); err != nil {
		report("QCDP-ERROR %s", err)
	}
	for c := range cmds {
		switch c {
		case "poweroff":
			return nil
		case "verify":
			if err := verify(p, disks); err != nil {
				report("QCDP-ERROR %s", strings.ReplaceAll(err.Error(), "\n", " | "))
			}
		default:
			report("QCDP-ERROR unknown command %q", c)
		}
	}
	return nil
}
