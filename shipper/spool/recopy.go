package spool

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"slices"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

// On-disk constants of the recopy file. Never change.
const (
	recopyMagic   = "QCDR"
	recopyVersion = 1
	recopyName    = "recopy"
	maxRecopy     = 1 << 16 // disks named in one file
)

// encodeRecopy lays out the recopy file: the disks owed a full re-copy.
//
//	0      4      6      8          12                          12+n
//	+------+------+------+----------+---------+---------+-----+--------+
//	|"QCDR"| vers | 0 0  | count    | len (1) | name    | ... | CRC32C |
//	+------+------+------+----------+---------+---------+-----+--------+
//
// Each name is a record.ValidDiskName, preceded by its length in one
// byte. The CRC32C covers every byte before it.
func encodeRecopy(disks []string) []byte {
	b := append([]byte(recopyMagic), 0, 0, 0, 0)
	binary.LittleEndian.PutUint16(b[4:], recopyVersion)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(disks)))
	for _, d := range disks {
		b = append(append(b, byte(len(d))), d...)
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func decodeRecopy(b []byte) ([]string, error) {
	bad := func(why string) error { return fmt.Errorf("%w: recopy file of %d bytes: %s", ErrCorrupt, len(b), why) }
	if len(b) < 16 || string(b[:4]) != recopyMagic || binary.LittleEndian.Uint16(b[4:]) != recopyVersion || b[6] != 0 || b[7] != 0 {
		return nil, bad("bad magic, version or length")
	}
	n := len(b) - 4
	if crc32.Checksum(b[:n], castagnoli) != binary.LittleEndian.Uint32(b[n:]) {
		return nil, bad("checksum mismatch")
	}
	count := binary.LittleEndian.Uint32(b[8:])
	if count > maxRecopy {
		return nil, bad(fmt.Sprintf("%d disks", count))
	}
	var disks []string
	p := b[12:n]
	for range count {
		if len(p) < 1 || len(p) < 1+int(p[0]) {
			return nil, bad("a name runs past the end")
		}
		d := string(p[1 : 1+int(p[0])])
		if err := record.ValidDiskName(d); err != nil {
			return nil, bad(err.Error())
		}
		disks = append(disks, d)
		p = p[1+int(p[0]):]
	}
	if len(p) != 0 {
		return nil, bad("bytes after the last name")
	}
	return disks, nil
}

// loadRecopy reads the recopy file at Open (none: nothing owed).
func (s *Spool) loadRecopy() error {
	path := s.path(recopyName)
	f, err := s.fs.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 16+maxRecopy*(1+record.MaxDisk)))
	if err != nil {
		return fmt.Errorf("spool: read %s: %w", path, err)
	}
	disks, err := decodeRecopy(b)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	s.recopy = disks
	return nil
}

// OweRecopy durably records that disks are owed a full re-copy: the
// spool lost records it had answered as written (a failed fsync whose
// pages the kernel dropped, then a reopen), so QEMU, which saw those
// writes succeed, no longer tracks them, and the replica never got them.
// What is owed survives restarts until RecopyStarted.
func (s *Spool) OweRecopy(disks ...string) error {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	s.mu.Lock()
	next := slices.Clone(s.recopy)
	s.mu.Unlock()
	for _, d := range disks {
		if err := record.ValidDiskName(d); err != nil {
			return fmt.Errorf("spool: recopy: %w", err)
		}
		if !slices.Contains(next, d) {
			next = append(next, d)
		}
	}
	return s.publishRecopy(next)
}

// RecopyOwed returns the disks owed a full re-copy, in the order they
// were owed.
func (s *Spool) RecopyOwed() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.recopy)
}

// RecopyStarted records that disk's full re-copy has started (a new
// capture job copies the whole disk): it is no longer owed.
func (s *Spool) RecopyStarted(disk string) error {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	s.mu.Lock()
	next := slices.DeleteFunc(slices.Clone(s.recopy), func(d string) bool { return d == disk })
	same := len(next) == len(s.recopy)
	s.mu.Unlock()
	if same {
		return nil
	}
	return s.publishRecopy(next)
}

// publishRecopy writes the recopy file (removes it when nothing is owed)
// and then makes disks what RecopyOwed returns. Callers hold idMu.
func (s *Spool) publishRecopy(disks []string) error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if len(disks) > maxRecopy {
		return fmt.Errorf("spool: recopy: %d disks, at most %d", len(disks), maxRecopy)
	}
	var err error
	if len(disks) == 0 {
		if err = s.fs.Remove(s.path(recopyName)); errors.Is(err, os.ErrNotExist) {
			err = nil
		} else if err == nil {
			err = s.fs.SyncDir(s.opts.Dir)
		}
	} else {
		err = vfs.Publish(s.fs, s.path(recopyName), encodeRecopy(disks))
	}
	if err != nil {
		return fmt.Errorf("spool: recopy: %w", err)
	}
	s.mu.Lock()
	s.recopy = disks
	s.mu.Unlock()
	return nil
}
