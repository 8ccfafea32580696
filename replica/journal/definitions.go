package journal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

// On-disk constants of the DEFINITIONS file, and the bounds of what it
// keeps. Never change.
const (
	defsName    = "DEFINITIONS"
	defsMagic   = "QCJD"
	defsVersion = 1
	defsFixed   = 16 // magic, version, group length, reserved, count, reserved
	defEntryLen = 16 // seq, length, reserved
	// maxDefsPerVM is how many definitions of one VM the journal keeps:
	// its newest ones.
	maxDefsPerVM = 16
	// maxDefVMs bounds the VMs the journal keeps definitions of: a group
	// protects at most record.MaxGroupDisks disks at once, so at most as
	// many VMs. Beyond it, the VM defined least recently is dropped.
	maxDefVMs = record.MaxGroupDisks
	// maxDefHistory bounds the bytes of the definitions kept beside each
	// VM's newest one; beyond it the oldest are dropped.
	maxDefHistory = 64 << 20
	// maxDefsFile bounds the DEFINITIONS file a reader accepts.
	maxDefsFile = defsFixed + record.MaxName + maxDefVMs*maxDefsPerVM*defEntryLen +
		maxDefVMs*record.MaxDefinition + maxDefHistory + 4
)

// DefinitionAt is a VM's definition and the seq of the Definition record
// that carried it: it holds for that VM from Seq until the VM's next one.
type DefinitionAt struct {
	Seq uint64
	Def record.VMDefinition
}

// defEntry is one definition the journal keeps: its payload as this
// version encodes it (fields it does not know are not kept) and what it
// decodes to.
type defEntry struct {
	seq uint64
	raw []byte
	def record.VMDefinition
}

// defTable holds, per VM id, the definitions kept, oldest first. It is
// never changed once made: with adds a copy.
type defTable map[string][]defEntry

// with returns the table with the entries above last dropped (records
// never acknowledged: their seqs are taken again) and adds appended, then
// bounded (maxDefsPerVM, maxDefVMs, maxDefHistory).
func (t defTable) with(last uint64, adds []defEntry) defTable {
	out := defTable{}
	for id, l := range t {
		i := sort.Search(len(l), func(i int) bool { return l[i].seq > last })
		if i > 0 {
			out[id] = l[:i:i] // appends copy
		}
	}
	for _, e := range adds {
		// A definition the VM has already (a host sends its VMs'
		// definitions again at every spool session) holds from its
		// first seq on: kept once, it does not push older ones out.
		if l := out[e.def.ID]; len(l) > 0 && bytes.Equal(l[len(l)-1].raw, e.raw) {
			continue
		}
		out[e.def.ID] = append(out[e.def.ID], e)
	}
	for id, l := range out {
		if len(l) > maxDefsPerVM {
			out[id] = slices.Clone(l[len(l)-maxDefsPerVM:])
		}
	}
	for len(out) > maxDefVMs {
		// The VM defined least recently: most likely one that left the
		// group long ago.
		oldest, at := "", uint64(0)
		for id, l := range out {
			if s := l[len(l)-1].seq; oldest == "" || s < at || s == at && id < oldest {
				oldest, at = id, s
			}
		}
		delete(out, oldest)
	}
	history := 0
	for _, l := range out {
		for _, e := range l[:len(l)-1] {
			history += len(e.raw)
		}
	}
	for history > maxDefHistory {
		// Drop the oldest definition that is not its VM's newest.
		oldest, at := "", uint64(0)
		for id, l := range out {
			if len(l) > 1 && (oldest == "" || l[0].seq < at) {
				oldest, at = id, l[0].seq
			}
		}
		history -= len(out[oldest][0].raw)
		out[oldest] = slices.Clone(out[oldest][1:])
	}
	return out
}

// at returns, for every VM, its newest definition with a seq at most seq,
// sorted by VM id.
func (t defTable) at(seq uint64) []DefinitionAt {
	var out []DefinitionAt
	for _, id := range sortedKeys(t) {
		l := t[id]
		i := sort.Search(len(l), func(i int) bool { return l[i].seq > seq })
		if i == 0 {
			continue // only definitions newer than seq
		}
		d := l[i-1].def
		d.Disks, d.NICs = slices.Clone(d.Disks), slices.Clone(d.NICs)
		out = append(out, DefinitionAt{Seq: l[i-1].seq, Def: d})
	}
	return out
}

// top returns the highest seq the table holds, 0 for none.
func (t defTable) top() uint64 {
	var s uint64
	for _, l := range t {
		s = max(s, l[len(l)-1].seq)
	}
	return s
}

// encodeDefinitions lays out the DEFINITIONS file (version 1):
//
//	0      4      6   7   8       12      16          16+g
//	+------+------+---+---+-------+-------+-----------+---------+---------+--------+
//	|"QCJD"| vers |g  | 0 | count | 0     | group (g) | entry   | entry   | CRC32C |
//	+------+------+---+---+-------+-------+-----------+---------+---------+--------+
//
//	entry:  0         8            12      16
//	        +---------+------------+-------+--------------------------+
//	        | seq     | length (l) | 0     | definition (l bytes)     |
//	        +---------+------------+-------+--------------------------+
//
// An entry's definition is the payload of the Definition record of that
// seq as this version encodes it (record.DefinitionRecord: the fields it
// knows, a host's unknown ones dropped): a JSON record.VMDefinition. The entries are
// sorted by VM id (the definition's "id"), then by seq; a VM has at most
// maxDefsPerVM of them. The CRC32C covers every byte before it; integers
// are little-endian.
func encodeDefinitions(group string, t defTable) []byte {
	n, size := 0, defsFixed+len(group)+4
	for _, l := range t {
		n += len(l)
		for _, e := range l {
			size += defEntryLen + len(e.raw)
		}
	}
	b := make([]byte, 0, size)
	b = append(b, defsMagic...)
	b = binary.LittleEndian.AppendUint16(b, defsVersion)
	b = append(b, byte(len(group)), 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(n))
	b = binary.LittleEndian.AppendUint32(b, 0)
	b = append(b, group...)
	for _, id := range sortedKeys(t) {
		for _, e := range t[id] {
			b = binary.LittleEndian.AppendUint64(b, e.seq)
			b = binary.LittleEndian.AppendUint32(b, uint32(len(e.raw)))
			b = binary.LittleEndian.AppendUint32(b, 0)
			b = append(b, e.raw...)
		}
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// decodeDefinitions decodes a DEFINITIONS file and checks every
// definition (record.DecodeDefinition) and the bounds. Errors wrap
// ErrCorrupt, or ErrGroup for the file of another group.
func decodeDefinitions(group string, b []byte) (defTable, error) {
	if len(b) < defsFixed+4 || len(b) > maxDefsFile {
		return nil, fmt.Errorf("%w: %d bytes", ErrCorrupt, len(b))
	}
	n := len(b) - 4
	if got, want := crc32.Checksum(b[:n], castagnoli), binary.LittleEndian.Uint32(b[n:]); got != want {
		return nil, fmt.Errorf("%w: checksum %#08x, want %#08x", ErrCorrupt, got, want)
	}
	gl := int(b[6])
	count := int(binary.LittleEndian.Uint32(b[8:]))
	if string(b[:4]) != defsMagic || binary.LittleEndian.Uint16(b[4:]) != defsVersion || b[7] != 0 ||
		binary.LittleEndian.Uint32(b[12:]) != 0 || defsFixed+gl > n {
		return nil, fmt.Errorf("%w: bad magic, version or header", ErrCorrupt)
	}
	if g := string(b[defsFixed : defsFixed+gl]); g != group {
		return nil, fmt.Errorf("%w: of group %q, not %q", ErrGroup, g, group)
	}
	p := defsFixed + gl
	if count > maxDefVMs*maxDefsPerVM || count > (n-p)/defEntryLen {
		return nil, fmt.Errorf("%w: %d definitions in %d bytes", ErrCorrupt, count, len(b))
	}
	t := defTable{}
	prevID, prevSeq := "", uint64(0)
	for i := range count {
		if p+defEntryLen > n {
			return nil, fmt.Errorf("%w: definition %d cut short", ErrCorrupt, i)
		}
		seq := binary.LittleEndian.Uint64(b[p:])
		l := int(binary.LittleEndian.Uint32(b[p+8:]))
		if binary.LittleEndian.Uint32(b[p+12:]) != 0 || l > record.MaxDefinition || p+defEntryLen+l > n || seq == 0 {
			return nil, fmt.Errorf("%w: definition %d: seq %d, %d bytes", ErrCorrupt, i, seq, l)
		}
		p += defEntryLen
		raw := bytes.Clone(b[p : p+l])
		p += l
		d, err := record.DecodeDefinition(raw)
		if err != nil {
			return nil, fmt.Errorf("%w: definition %d (seq %d): %w", ErrCorrupt, i, seq, err)
		}
		if c := strings.Compare(d.ID, prevID); i > 0 && (c < 0 || c == 0 && seq <= prevSeq) {
			return nil, fmt.Errorf("%w: definition %d (seq %d of VM %q) out of order", ErrCorrupt, i, seq, d.ID)
		}
		if len(t[d.ID]) == maxDefsPerVM {
			return nil, fmt.Errorf("%w: more than %d definitions of VM %q", ErrCorrupt, maxDefsPerVM, d.ID)
		}
		t[d.ID] = append(t[d.ID], defEntry{seq: seq, raw: raw, def: d})
		prevID, prevSeq = d.ID, seq
	}
	if p != n {
		return nil, fmt.Errorf("%w: %d bytes after the definitions", ErrCorrupt, n-p)
	}
	if len(t) > maxDefVMs {
		return nil, fmt.Errorf("%w: definitions of %d VMs, at most %d", ErrCorrupt, len(t), maxDefVMs)
	}
	return t, nil
}

// readDefinitions reads the DEFINITIONS file; ok is false when there is
// none.
func (j *Journal) readDefinitions() (t defTable, ok bool, err error) {
	path := j.path(defsName)
	f, err := j.fs.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return defTable{}, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("journal: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, false, fmt.Errorf("journal: %w", err)
	}
	if fi.Size() > maxDefsFile {
		return nil, false, fmt.Errorf("%w: %s: %d bytes, at most %d", ErrCorrupt, path, fi.Size(), maxDefsFile)
	}
	b := make([]byte, fi.Size())
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, false, fmt.Errorf("journal: read %s: %w", path, err)
	}
	if t, err = decodeDefinitions(j.opts.Group, b); err != nil {
		return nil, false, fmt.Errorf("%s: %w", path, err)
	}
	return t, true, nil
}

// loadDefinitions reads the DEFINITIONS file at Open, once the journal
// knows its last seq. Definitions above it were published by an Append
// that never acknowledged their records: they are dropped, and the file
// published again without them, so that a record of another kind that
// takes their seq later cannot make them count. A journal whose window
// holds a Definition record and has no DEFINITIONS file lost it: Append
// publishes the file before it writes any such record.
func (j *Journal) loadDefinitions() error {
	t, ok, err := j.readDefinitions()
	if err != nil {
		return err
	}
	if !ok && len(j.defRecs) > 0 {
		return fmt.Errorf("%w: %s is missing, but seq %d is a definition record", ErrCorrupt, j.path(defsName), j.defRecs[0])
	}
	if t.top() > j.last {
		t = t.with(j.last, nil)
		if err := j.publishDefinitions(t); err != nil {
			return fmt.Errorf("journal: drop definitions past the acknowledged mark: %w", err)
		}
	}
	j.defs = t
	return nil
}

func (j *Journal) publishDefinitions(t defTable) error {
	return vfs.Publish(j.fs, j.path(defsName), encodeDefinitions(j.opts.Group, t))
}

// appendDefinitions publishes the definitions recs carry, before Append
// writes recs: a crash never loses a definition Append acknowledged. One
// published for a record Append then does not acknowledge is dropped when
// its seq is taken again (by the next Append, or Open). The caller holds
// appendMu; recs have been validated.
func (j *Journal) appendDefinitions(recs []record.Record) error {
	var adds []defEntry
	for i := range recs {
		r := &recs[i]
		if r.Kind != record.Definition {
			continue
		}
		d, err := r.Definition()
		if err != nil {
			return fmt.Errorf("journal: append seq %d: %w", r.Seq, err)
		}
		// Kept as this version reads it: fields it does not know (a
		// hostile host's padding among them) are not kept.
		dr, err := record.DefinitionRecord(d)
		if err != nil {
			return fmt.Errorf("journal: append seq %d: %w", r.Seq, err)
		}
		adds = append(adds, defEntry{seq: r.Seq, raw: dr.Payload, def: d})
	}
	j.mu.RLock()
	old, last := j.defs, j.last
	j.mu.RUnlock()
	if len(adds) == 0 && old.top() <= last {
		return nil
	}
	t := old.with(last, adds)
	if err := j.publishDefinitions(t); err != nil {
		// The file may hold the new table or the old: Open sorts it out.
		return j.breakOn(fmt.Errorf("publish %s: %w", j.path(defsName), err))
	}
	j.mu.Lock()
	j.defs = t
	j.mu.Unlock()
	return nil
}

// Definitions returns, for every VM the group defined, its newest
// definition with a seq at most seq (the definition in effect at the
// restore point seq), sorted by VM id. A VM whose definitions the journal
// keeps are all newer than seq is left out. The journal keeps each VM's
// newest 16 definitions (see the package doc), through compaction and
// retention.
func (j *Journal) Definitions(seq uint64) []DefinitionAt {
	j.mu.RLock()
	defer j.mu.RUnlock()
	return j.defs.at(min(seq, j.last))
}

// verifyDefinitions reads the DEFINITIONS file again and checks that it
// holds what the journal does. It waits for an Append in progress.
func (j *Journal) verifyDefinitions() error {
	j.appendMu.Lock()
	defer j.appendMu.Unlock()
	t, ok, err := j.readDefinitions()
	if err != nil {
		return err
	}
	j.mu.RLock()
	want := j.defs
	j.mu.RUnlock()
	if !ok && len(want) == 0 {
		return nil
	}
	if !bytes.Equal(encodeDefinitions(j.opts.Group, t), encodeDefinitions(j.opts.Group, want)) {
		return fmt.Errorf("%w: %s does not hold the definitions the journal read", ErrCorrupt, j.path(defsName))
	}
	return nil
}
