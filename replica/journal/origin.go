package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

// On-disk constants of the ORIGIN file. Never change.
const (
	originName    = "ORIGIN"
	originMagic   = "QCJO"
	originVersion = 2
	originFixed   = 64 // version 2; version 1's fixed part is 48 bytes
	originFixedV1 = 48
	maxOriginHost = 255
)

// SpoolID is the random id of a host's spool.
type SpoolID = record.SpoolID

// Origin is the spool whose records the journal holds: the receiver binds
// a journal to the first spool that streams into it and refuses every
// other spool as diverged (package replica/receiver), so that the records
// of two spools are never spliced into one journal.
type Origin struct {
	Spool   SpoolID `json:"spool_id"`
	Created int64   `json:"spool_created_unix_ns"`
	// Epoch is the newest epoch of the spool the journal took a stream
	// from (the spool raises it by a random step at every open): an
	// older one is a copy.
	Epoch uint64 `json:"epoch"`
	// Host is the host (of its certificate) that streamed the spool when
	// it was bound.
	Host string `json:"host"`
	// Since is the journal's last seq when the spool was bound: 0 for a
	// journal the spool started; more for a journal written before spools
	// had an identity, whose records up to Since came from a spool that
	// named none.
	Since uint64 `json:"bound_at_seq"`
	// Prev is the epoch bound before Epoch (0: none), and EpochAt the
	// journal's last seq when Epoch was bound (MaxUint64: unknown, as in
	// a version 1 file): while no record came after EpochAt, a spool
	// that crashed before it noted its welcome may come back descending
	// from Prev (package replica/receiver).
	Prev    uint64 `json:"prev_epoch,omitempty"`
	EpochAt uint64 `json:"epoch_bound_at_seq"`
}

// encodeOrigin lays out the ORIGIN file (version 2):
//
//	0      4      6   7   8         24        32       40      48      56         64         64+h
//	+------+------+---+---+---------+---------+--------+-------+-------+----------+----------+--------+
//	|"QCJO"| vers |h  | 0 | spool id| created | epoch  | since | prev  | epoch at | host (h) | CRC32C |
//	+------+------+---+---+---------+---------+--------+-------+-------+----------+----------+--------+
//
// The CRC32C covers every byte before it. Version 1 (still read) has no
// prev and epoch-at: its host starts at 48.
func encodeOrigin(o Origin) []byte {
	b := make([]byte, 0, originFixed+len(o.Host)+4)
	b = append(b, originMagic...)
	b = binary.LittleEndian.AppendUint16(b, originVersion)
	b = append(b, byte(len(o.Host)), 0)
	b = append(b, o.Spool[:]...)
	b = binary.LittleEndian.AppendUint64(b, uint64(o.Created))
	b = binary.LittleEndian.AppendUint64(b, o.Epoch)
	b = binary.LittleEndian.AppendUint64(b, o.Since)
	b = binary.LittleEndian.AppendUint64(b, o.Prev)
	b = binary.LittleEndian.AppendUint64(b, o.EpochAt)
	b = append(b, o.Host...)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func decodeOrigin(b []byte) (Origin, error) {
	fixed := 0
	if len(b) >= originFixedV1+4 && string(b[:4]) == originMagic {
		switch binary.LittleEndian.Uint16(b[4:]) {
		case 1:
			fixed = originFixedV1
		case 2:
			fixed = originFixed
		}
	}
	if fixed == 0 || b[7] != 0 || len(b) != fixed+int(b[6])+4 {
		return Origin{}, fmt.Errorf("%w: ORIGIN of %d bytes: bad magic, version or length", ErrCorrupt, len(b))
	}
	n := len(b) - 4
	if got, want := crc32.Checksum(b[:n], castagnoli), binary.LittleEndian.Uint32(b[n:]); got != want {
		return Origin{}, fmt.Errorf("%w: ORIGIN checksum %#08x, want %#08x", ErrCorrupt, got, want)
	}
	o := Origin{
		Spool:   SpoolID(b[8:24]),
		Created: int64(binary.LittleEndian.Uint64(b[24:])),
		Epoch:   binary.LittleEndian.Uint64(b[32:]),
		Since:   binary.LittleEndian.Uint64(b[40:]),
		EpochAt: math.MaxUint64,
		Host:    string(b[fixed:n]),
	}
	if fixed == originFixed {
		o.Prev, o.EpochAt = binary.LittleEndian.Uint64(b[48:]), binary.LittleEndian.Uint64(b[56:])
	}
	if err := o.check(); err != nil {
		return Origin{}, fmt.Errorf("%w: ORIGIN: %w", ErrCorrupt, err)
	}
	return o, nil
}

func (o Origin) check() error {
	switch {
	case o.Spool == SpoolID{}:
		return errors.New("no spool id")
	case o.Epoch == 0:
		return errors.New("epoch 0")
	case len(o.Host) > maxOriginHost:
		return fmt.Errorf("host name of %d bytes", len(o.Host))
	}
	return nil
}

// Origin returns the spool the journal is bound to; ok is false for a
// journal bound to none yet (a new one, or one written before spools had
// an identity). A damaged ORIGIN file is ErrCorrupt.
func (j *Journal) Origin() (o Origin, ok bool, err error) {
	path := j.path(originName)
	f, err := j.fs.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return Origin{}, false, nil
	}
	if err != nil {
		return Origin{}, false, fmt.Errorf("journal: %w", err)
	}
	defer f.Close()
	b := make([]byte, originFixed+maxOriginHost+4+1)
	n, err := io.ReadFull(f, b)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return Origin{}, false, fmt.Errorf("journal: read %s: %w", path, err)
	}
	if o, err = decodeOrigin(b[:n]); err != nil {
		return Origin{}, false, fmt.Errorf("%s: %w", path, err)
	}
	return o, true, nil
}

// BindOrigin durably records o as the spool the journal's records come
// from (vfs.Publish): at the first stream of a spool, and again when a
// newer epoch of it streams. The caller (the receiver, holding the
// group's one stream) checks that o is the same spool as the one bound.
func (j *Journal) BindOrigin(o Origin) error {
	if err := o.check(); err != nil {
		return fmt.Errorf("journal: bind spool: %w", err)
	}
	j.mu.RLock()
	closed := j.closed
	j.mu.RUnlock()
	if closed {
		return ErrClosed
	}
	if err := vfs.Publish(j.fs, j.path(originName), encodeOrigin(o)); err != nil {
		return fmt.Errorf("journal: bind spool %s: %w", o.Spool, err)
	}
	return nil
}
