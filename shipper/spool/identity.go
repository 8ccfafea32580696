package spool

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

// On-disk constants of the identity file. Never change.
const (
	identityMagic   = "QCDI"
	identityVersion = 2
	identityLen     = 60 // version 2; version 1 is 52 bytes (no welcomed epoch)
	identityLenV1   = 52
	identityName    = "identity"
)

// ID is a spool's random identifier, made when the spool is created.
type ID = record.SpoolID

// Identity names one spool: the replica binds a group's journal to the
// first spool that streams into it and refuses every other (see package
// stream). It is kept in the spool directory and survives restarts; a new
// directory, or one whose identity file was removed, is a new spool.
type Identity struct {
	ID      ID    `json:"id"`
	Created int64 `json:"created_unix_ns"` // tells an operator which of two spools is older
	// Epoch names one Open of the spool. Once the replica has welcomed
	// the spool, each Open's epoch descends from the epoch last welcomed
	// (record.EpochParent: bit 63 set, the parent's 31-bit tag, 32 random
	// bits). The replica takes a new epoch only if it descends
	// from the one it took (or, when nothing came since, from the one
	// before), so of two copies of one stopped spool directory (a cloned
	// host image, a restored backup) only one can ever stream: the other
	// descends from an epoch the replica has left behind. A spool never
	// welcomed since it had an identity (0 welcomed) steps its epoch by a
	// random 1 to 2^32 instead, starting at 1; the replica orders those.
	Epoch uint64 `json:"epoch"`
}

// identity is the content of the identity file.
type identity struct {
	Identity
	// intact is the highest seq up to which every record the spool ever
	// held is unchanged since the replica last welcomed it; MaxUint64
	// when nothing was lost since then.
	intact uint64
	// welcomed is the epoch the replica last welcomed (0: none known).
	welcomed uint64
}

// encodeIdentity lays out the identity file (version 2, identityLen bytes):
//
//	0      4      6      8         24        32       40       48         56       60
//	+------+------+------+---------+---------+--------+--------+----------+--------+
//	|"QCDI"| vers | 0 0  | id (16) | created | epoch  | intact | welcomed | CRC32C |
//	+------+------+------+---------+---------+--------+--------+----------+--------+
//
// The CRC32C covers every byte before it. Version 1 (still read) is the
// same without welcomed: 52 bytes, its CRC32C at 48.
func encodeIdentity(id identity) []byte {
	b := make([]byte, 0, identityLen)
	b = append(b, identityMagic...)
	b = binary.LittleEndian.AppendUint16(b, identityVersion)
	b = append(b, 0, 0)
	b = append(b, id.ID[:]...)
	b = binary.LittleEndian.AppendUint64(b, uint64(id.Created))
	b = binary.LittleEndian.AppendUint64(b, id.Epoch)
	b = binary.LittleEndian.AppendUint64(b, id.intact)
	b = binary.LittleEndian.AppendUint64(b, id.welcomed)
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

func decodeIdentity(b []byte) (identity, error) {
	n := len(b) - 4
	ok := len(b) >= identityLenV1 && string(b[:4]) == identityMagic && b[6] == 0 && b[7] == 0
	if ok {
		switch binary.LittleEndian.Uint16(b[4:]) {
		case 1:
			ok = len(b) == identityLenV1
		case 2:
			ok = len(b) == identityLen
		default:
			ok = false
		}
	}
	if !ok || crc32.Checksum(b[:n], castagnoli) != binary.LittleEndian.Uint32(b[n:]) {
		return identity{}, fmt.Errorf("%w: identity file of %d bytes is invalid", ErrCorrupt, len(b))
	}
	id := identity{
		Identity: Identity{
			ID:      ID(b[8:24]),
			Created: int64(binary.LittleEndian.Uint64(b[24:])),
			Epoch:   binary.LittleEndian.Uint64(b[32:]),
		},
		intact: binary.LittleEndian.Uint64(b[40:]),
	}
	if len(b) == identityLen {
		id.welcomed = binary.LittleEndian.Uint64(b[48:])
	}
	if id.ID == (ID{}) || id.Epoch == 0 {
		return identity{}, fmt.Errorf("%w: identity file names no spool (id %s, epoch %d)", ErrCorrupt, id.ID, id.Epoch)
	}
	return id, nil
}

// readIdentity reads the identity file of the spool in dir; ok is false
// when there is none.
func readIdentity(fs vfs.FS, dir string) (id identity, ok bool, err error) {
	path := filepath.Join(dir, identityName)
	f, err := fs.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return identity{}, false, nil
	}
	if err != nil {
		return identity{}, false, fmt.Errorf("spool: %w", err)
	}
	defer f.Close()
	b := make([]byte, identityLen+1)
	n, err := io.ReadFull(f, b)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return identity{}, false, fmt.Errorf("spool: read %s: %w", path, err)
	}
	if id, err = decodeIdentity(b[:n]); err != nil {
		return identity{}, false, fmt.Errorf("%s: %w", path, err)
	}
	return id, true, nil
}

// openIdentity runs at the end of a successful recovery: it makes the
// spool's identity (an old spool gets one now) or reads it, starts a new
// epoch, lowers the intact seq to what recovery kept, and publishes it
// before the spool is used.
func (s *Spool) openIdentity() error {
	id, ok, err := readIdentity(s.fs, s.opts.Dir)
	if err != nil {
		return err
	}
	if !ok {
		id.intact = math.MaxUint64
		id.Created = time.Now().UnixNano()
		if _, err := rand.Read(id.ID[:]); err != nil {
			return fmt.Errorf("spool: new identity: %w", err)
		}
		if s.last > 0 {
			s.log.Info("spool: a spool written before spools had an identity gets one; a replica whose journal of the group names no spool binds it at its first stream",
				"spool_id", id.ID, "last_seq", s.last)
		}
	}
	if id.welcomed != 0 {
		if id.Epoch, err = descendant(id.welcomed, id.Epoch); err != nil {
			return err
		}
	} else {
		step, err := epochStep(ok)
		if err != nil {
			return err
		}
		if id.Epoch > math.MaxUint64-step {
			return fmt.Errorf("%w: %s: epoch exhausted", ErrCorrupt, s.path(identityName))
		}
		id.Epoch += step
	}
	// What recovery kept is all this epoch can vouch for: records after
	// it that an earlier epoch held (and may have sent) are gone, and
	// their seqs will be taken by new records.
	id.intact = min(id.intact, s.last)
	if err := vfs.Publish(s.fs, s.path(identityName), encodeIdentity(id)); err != nil {
		return fmt.Errorf("spool: identity: %w", err)
	}
	s.id = id
	return nil
}

// epochStep is how much an Open raises the epoch: 1 for a new spool
// (existed false), else a random step in [1, 2^32].
func epochStep(existed bool) (uint64, error) {
	if !existed {
		return 1, nil
	}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, fmt.Errorf("spool: epoch step: %w", err)
	}
	return uint64(binary.LittleEndian.Uint32(b[:])) + 1, nil
}

// descendant returns a new epoch descending from welcomed, random below
// (record.EpochDescending), other than cur.
func descendant(welcomed, cur uint64) (uint64, error) {
	for {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return 0, fmt.Errorf("spool: epoch: %w", err)
		}
		if e := record.EpochDescending(welcomed, binary.LittleEndian.Uint32(b[:])); e != cur {
			return e, nil
		}
	}
}

// Identity returns the spool's identity.
func (s *Spool) Identity() Identity {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.id.Identity
}

// Intact returns the highest seq up to which the spool vouches that every
// record it ever held is unchanged since the replica last welcomed it: the
// last seq, unless records that an earlier epoch held were lost (a crash
// before their fsync, a directory restored from an older copy). A replica
// holding more than Intact holds records this spool no longer has.
func (s *Spool) Intact() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return min(s.id.intact, s.last)
}

// Welcomed records that the replica took this spool's stream holding its
// records up to durable (at most Intact): the replica's records are this
// spool's, so from now on the spool vouches for every record it holds
// again. The sender calls it before it sends anything in the session, so
// that no record past the old intact seq reaches the replica before this
// is durable.
func (s *Spool) Welcomed(durable uint64) error {
	s.idMu.Lock()
	defer s.idMu.Unlock()
	s.mu.Lock()
	closed, id, intact := s.closed, s.id, min(s.id.intact, s.last)
	s.mu.Unlock()
	switch {
	case closed:
		return ErrClosed
	case durable > intact:
		return fmt.Errorf("%w: the replica holds up to seq %d, the spool vouches only up to %d", ErrSeq, durable, intact)
	case id.intact == math.MaxUint64 && id.welcomed == id.Epoch:
		return nil
	}
	id.intact, id.welcomed = math.MaxUint64, id.Epoch
	if err := vfs.Publish(s.fs, s.path(identityName), encodeIdentity(id)); err != nil {
		return fmt.Errorf("spool: identity: %w", err)
	}
	s.mu.Lock()
	s.id = id
	s.mu.Unlock()
	return nil
}
