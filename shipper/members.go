package shipper

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/shipper/spool"
	"github.com/qcdp/qcdp/vfs"
)

// ErrUndeclared is why the sequencer refuses a record of a disk the group
// has not declared (see Sequencer.Declare). It wraps record.ErrMembership.
var ErrUndeclared = fmt.Errorf("shipper: disk not declared in the group's membership: %w", record.ErrMembership)

// members is the group's declared membership as the sequencer keeps it.
// Guarded by the sequencer's mu.
type members struct {
	decl record.Declaration // the whole membership, sorted by disk
	// on: a declaration was made (or found kept): from then on the
	// records of undeclared disks are refused. Before, every disk's
	// records are sequenced, as before groups declared their membership.
	on bool
	// owed: decl is not in the spool yet (the spool refused it, or it was
	// found kept at open): it is written before the next record.
	owed bool
	// in is the spool decl was last written to: a spool opened again
	// after it broke (Sequencer.reopened) may have lost it, so it is
	// written again at the start of every spool session.
	in   *spool.Spool
	fs   vfs.FS
	path string // where decl is kept across restarts; "" for nowhere
}

// declared reports whether the records of disk may be sequenced.
func (m *members) declared(disk string) bool {
	if !m.on || disk == "" {
		return true
	}
	_, ok := m.decl.Find(disk)
	return ok
}

// Declare sets the disks of one VM in the group's declared membership,
// replacing those it had (none: the VM leaves it), and appends the whole
// membership to the stream as a Members record (package record), which the
// replica's restore points and views follow: a point exists only once
// every declared disk is in sync, and a view's disk has its declared size.
// vm is the VM's stable id ("" for disks of no VM, as `qcdp capture` has);
// each member's VM is set to it. Declare the disks before their capture
// starts: from the first declaration on, the sequencer refuses the records
// of undeclared disks (a write is answered EIO and its disk owes a resync
// bracket, written once the disk is declared).
//
// It returns the declaration's seq, or 0 when the spool refused it: the
// membership holds all the same, and its record is written before the next
// record. An error means the membership did not change: an invalid or
// repeated disk, more than record.MaxGroupDisks disks, or a failure to keep
// it (KeepMembers).
func (s *Sequencer) Declare(vm string, disks []record.Member) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var next []record.Member
	for _, m := range s.mem.decl.Disks {
		if m.VM != vm {
			next = append(next, m)
		}
	}
	for _, m := range disks {
		m.VM = vm
		next = append(next, m)
	}
	return s.setMembersLocked(next)
}

// Undeclare removes disks from the group's declared membership (a disk
// detached by the operator) and appends the whole membership to the
// stream, as Declare does. Names not declared are ignored: when none is,
// nothing changes and it returns 0.
func (s *Sequencer) Undeclare(disks ...string) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var next []record.Member
	for _, m := range s.mem.decl.Disks {
		if !slices.Contains(disks, m.Disk) {
			next = append(next, m)
		}
	}
	if len(next) == len(s.mem.decl.Disks) {
		return 0, nil
	}
	return s.setMembersLocked(next)
}

// Members returns the group's declared membership; ok is false while the
// group has declared none.
func (s *Sequencer) Members() (d record.Declaration, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return record.Declaration{Disks: slices.Clone(s.mem.decl.Disks)}, s.mem.on
}

func (s *Sequencer) setMembersLocked(disks []record.Member) (uint64, error) {
	slices.SortFunc(disks, func(a, b record.Member) int { return strings.Compare(a.Disk, b.Disk) })
	d := record.Declaration{Disks: disks}
	if err := d.Validate(); err != nil {
		return 0, fmt.Errorf("shipper: declare the group's membership: %w", err)
	}
	if s.mem.path != "" {
		if err := vfs.Publish(s.mem.fs, s.mem.path, encodeKept(d)); err != nil {
			return 0, fmt.Errorf("shipper: keep the group's membership: %w", err)
		}
	}
	// A disk that leaves owes nothing more: when it comes back, the
	// replica wants its initial sync again anyway.
	for disk, seq := range s.resync {
		if _, ok := d.Find(disk); !ok {
			if seq == 0 {
				s.owed--
			}
			delete(s.resync, disk)
			delete(s.refused, disk)
		}
	}
	s.mem.decl, s.mem.on, s.mem.owed = d, true, true
	s.defs.forgetLocked(d) // a VM that left takes its definition along
	seq, err := s.declareOwedLocked()
	if err != nil {
		s.logger().Warn("capture: the spool refuses the group's membership; it is written before the next record", "err", err)
		return 0, nil
	}
	return seq, nil
}

// declareOwedLocked writes the membership if it is owed, and returns its
// seq (0 when nothing was owed).
func (s *Sequencer) declareOwedLocked() (uint64, error) {
	if !s.mem.owed {
		return 0, nil
	}
	r, err := record.MembersRecord(s.mem.decl)
	if err != nil {
		return 0, err // cannot happen: validated when set
	}
	seq, err := s.put(&r)
	if err != nil {
		return 0, fmt.Errorf("the group's membership owed: %w", err)
	}
	s.mem.owed, s.mem.in = false, s.sp
	return seq, nil
}

// admitLocked refuses a record of a disk the group has not declared, and
// writes the declaration first when it is owed.
func (s *Sequencer) admitLocked(r *record.Record) error {
	if !s.mem.declared(r.Disk) {
		return fmt.Errorf("capture %s: %w", r.Disk, ErrUndeclared)
	}
	if s.mem.on && s.mem.in != s.sp {
		s.mem.owed = true
	}
	_, err := s.declareOwedLocked()
	return err
}

// KeepMembers keeps the group's declared membership across restarts in the
// file at path (fs nil: the operating system's), published whole at every
// Declare. The membership found there becomes the group's, and is
// declared again at once (or before the next record, if the spool refuses
// it): a restarted host goes on with its membership, instead of dropping
// the VMs it has not attached again yet. The file is one Members record
// (package record) with seq 0; a damaged one is an error.
func (s *Sequencer) KeepMembers(fs vfs.FS, path string) error {
	if fs == nil {
		fs = vfs.Default
	}
	if err := fs.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("shipper: membership file: %w", err)
	}
	d, found, err := readKept(fs, path)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mem.fs, s.mem.path = fs, path
	if !found {
		return nil
	}
	// A spool that holds or has shipped records has this declaration in
	// its stream already: written again at every start it would stand
	// ahead of the adopted captures' resync brackets, and the replica
	// would offer it as a point stamped after writes nobody captured while
	// the daemon was down. Only a new spool needs it written.
	s.mem.decl, s.mem.on, s.mem.owed = d, true, s.next == 1
	if !s.mem.owed {
		s.mem.in = s.sp // in this spool's stream already: not owed at its first record either
		return nil
	}
	if _, err := s.declareOwedLocked(); err != nil {
		s.logger().Warn("capture: the spool refuses the group's membership; it is written before the next record", "err", err)
	}
	return nil
}

func encodeKept(d record.Declaration) []byte {
	r, _ := record.MembersRecord(d) // validated by the caller
	return record.AppendEncode(nil, &r)
}

// maxKept bounds the membership file: one Members record.
const maxKept = record.FrameLen + record.BodyHeaderLen + record.MaxDeclaration

func readKept(fs vfs.FS, path string) (record.Declaration, bool, error) {
	f, err := fs.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return record.Declaration{}, false, nil
	}
	if err != nil {
		return record.Declaration{}, false, fmt.Errorf("shipper: membership file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxKept+1))
	if err != nil {
		return record.Declaration{}, false, fmt.Errorf("shipper: read membership file %s: %w", path, err)
	}
	r, n, err := record.Decode(b)
	if err == nil && (n != len(b) || r.Kind != record.Members) {
		err = fmt.Errorf("%d bytes, a %v record of %d", len(b), r.Kind, n)
	}
	var d record.Declaration
	if err == nil {
		d, err = r.Declaration()
	}
	if err != nil {
		return record.Declaration{}, false, fmt.Errorf("shipper: membership file %s is damaged (remove it: the host declares its VMs again as it attaches them): %w", path, err)
	}
	return d, true, nil
}
