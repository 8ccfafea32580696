package record

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// Membership bounds. On the wire and on disk: never change them.
const (
	// MaxGroupDisks bounds the disks of one protection group: a declaration
	// lists at most this many, and a replica takes records of no more
	// disks than this from a group that never declared its membership.
	MaxGroupDisks = 256
	// MaxDiskSize bounds a declared disk size, and every range of a group
	// that never declared its membership: 1 PiB, far above any virtual
	// disk in use, far below where offsets and sizes overflow int64.
	MaxDiskSize = 1 << 50
	// MaxLabel bounds a member's VM id, VM name and target.
	MaxLabel = 255
	// declFixed and memberFixed are the fixed parts of a declaration and of
	// one member in it.
	declFixed   = 4
	memberFixed = 12
	// MaxDeclaration bounds the encoded length of a declaration.
	MaxDeclaration = declFixed + MaxGroupDisks*(memberFixed+MaxDisk+3*MaxLabel)
)

// ErrMembership is a record outside its group's declared membership: of a
// disk the group has not declared, past the end of its disk, or one disk
// too many. Whoever refuses such a record (the sequencer, the replica's
// journal) wraps it with the seq and the disk.
var ErrMembership = errors.New("record: outside the group's declared membership")

// Member is one disk of a protection group as its host declares it.
type Member struct {
	Disk   string `json:"disk"`              // the disk's name in the stream (ValidDiskName)
	Size   uint64 `json:"size"`              // its exact size in bytes, 1..MaxDiskSize
	VM     string `json:"vm,omitempty"`      // the stable id of its VM (libvirt UUID, Proxmox vmid); "" for none
	VMName string `json:"vm_name,omitempty"` // the VM's name, for people
	Target string `json:"target,omitempty"`  // the disk's name in the VM ("vda")
}

// Declaration is a group's whole membership: every disk it protects, sorted
// by disk name. A Members record carries one; it holds from its seq until
// the next one replaces it whole.
type Declaration struct {
	Disks []Member `json:"disks"`
}

// Validate checks d against the rules DecodeDeclaration enforces.
func (d Declaration) Validate() error {
	if len(d.Disks) > MaxGroupDisks {
		return fmt.Errorf("%w: %d disks declared, at most %d", ErrInvalid, len(d.Disks), MaxGroupDisks)
	}
	for i := range d.Disks {
		m := &d.Disks[i]
		if err := ValidDiskName(m.Disk); err != nil {
			return fmt.Errorf("declared disk %d: %w", i, err)
		}
		if m.Size == 0 || m.Size > MaxDiskSize {
			return fmt.Errorf("%w: disk %s: size %d not in 1..%d", ErrInvalid, m.Disk, m.Size, uint64(MaxDiskSize))
		}
		for _, s := range []string{m.VM, m.VMName, m.Target} {
			if len(s) > MaxLabel || !utf8.ValidString(s) {
				return fmt.Errorf("%w: disk %s: a label of %d bytes, or not UTF-8", ErrInvalid, m.Disk, len(s))
			}
		}
		if i > 0 && d.Disks[i-1].Disk >= m.Disk {
			return fmt.Errorf("%w: declared disks not sorted or repeated at %s", ErrInvalid, m.Disk)
		}
	}
	return nil
}

// Find returns the member named disk.
func (d Declaration) Find(disk string) (Member, bool) {
	i, ok := slices.BinarySearchFunc(d.Disks, disk, func(m Member, s string) int { return strings.Compare(m.Disk, s) })
	if !ok {
		return Member{}, false
	}
	return d.Disks[i], true
}

// Admit checks that r stays inside d: a record of a disk (data, zero, trim
// or a disk's marker) names a declared disk, and a range ends within that
// disk's size. Records of no disk are always inside. The error wraps
// ErrMembership.
func (d Declaration) Admit(r *Record) error {
	if r.Disk == "" || r.Kind == Members {
		return nil
	}
	m, ok := d.Find(r.Disk)
	if !ok {
		return fmt.Errorf("%w: seq %d: disk %q is not declared", ErrMembership, r.Seq, r.Disk)
	}
	if r.Offset+r.Length > m.Size { // Validate rules out the overflow
		return fmt.Errorf("%w: seq %d: %v [%d,+%d) ends past disk %s of %d bytes", ErrMembership, r.Seq, r.Kind, r.Offset, r.Length, r.Disk, m.Size)
	}
	return nil
}

// AppendDeclaration appends the encoding of d (the payload of a Members
// record) to dst. d must pass Validate.
func AppendDeclaration(dst []byte, d Declaration) []byte {
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(d.Disks)))
	dst = binary.LittleEndian.AppendUint16(dst, 0)
	for _, m := range d.Disks {
		dst = binary.LittleEndian.AppendUint64(dst, m.Size)
		dst = append(dst, byte(len(m.Disk)), byte(len(m.VM)), byte(len(m.VMName)), byte(len(m.Target)))
		dst = append(dst, m.Disk...)
		dst = append(dst, m.VM...)
		dst = append(dst, m.VMName...)
		dst = append(dst, m.Target...)
	}
	return dst
}

// DecodeDeclaration decodes the payload of a Members record. It accepts
// exactly what AppendDeclaration writes for a valid declaration; the count
// is bounded by the bytes present before anything is allocated from it.
func DecodeDeclaration(p []byte) (Declaration, error) {
	if len(p) < declFixed || len(p) > MaxDeclaration {
		return Declaration{}, fmt.Errorf("%w: declaration of %d bytes", ErrInvalid, len(p))
	}
	n := int(binary.LittleEndian.Uint16(p))
	if binary.LittleEndian.Uint16(p[2:]) != 0 || n > MaxGroupDisks || n > (len(p)-declFixed)/(memberFixed+1) {
		return Declaration{}, fmt.Errorf("%w: declaration of %d disks in %d bytes", ErrInvalid, n, len(p))
	}
	d := Declaration{Disks: make([]Member, 0, n)}
	off := declFixed
	for range n {
		if off+memberFixed > len(p) {
			return Declaration{}, fmt.Errorf("%w: declaration cut short at disk %d", ErrInvalid, len(d.Disks))
		}
		h := p[off : off+memberFixed]
		dl, vl, nl, tl := int(h[8]), int(h[9]), int(h[10]), int(h[11])
		off += memberFixed
		if off+dl+vl+nl+tl > len(p) {
			return Declaration{}, fmt.Errorf("%w: declaration cut short at disk %d", ErrInvalid, len(d.Disks))
		}
		s := func(l int) string { v := string(p[off : off+l]); off += l; return v }
		d.Disks = append(d.Disks, Member{Size: binary.LittleEndian.Uint64(h), Disk: s(dl), VM: s(vl), VMName: s(nl), Target: s(tl)})
	}
	if off != len(p) {
		return Declaration{}, fmt.Errorf("%w: %d bytes after the declaration", ErrInvalid, len(p)-off)
	}
	if err := d.Validate(); err != nil {
		return Declaration{}, err
	}
	return d, nil
}

// MembersRecord returns the Members record (its seq and time unset) that
// declares d.
func MembersRecord(d Declaration) (Record, error) {
	if err := d.Validate(); err != nil {
		return Record{}, err
	}
	p := AppendDeclaration(nil, d)
	return Record{Kind: Members, Length: uint64(len(p)), Payload: p}, nil
}

// Declaration decodes the declaration a Members record carries.
func (r *Record) Declaration() (Declaration, error) {
	if r.Kind != Members {
		return Declaration{}, fmt.Errorf("%w: a %v record declares nothing", ErrInvalid, r.Kind)
	}
	return DecodeDeclaration(r.Payload)
}
