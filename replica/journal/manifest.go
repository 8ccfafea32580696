package journal

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

// Stream state flags of a disk, as of a seq.
const (
	stSynced = 1 // its first sync-complete has been seen
	stResync = 2 // a resync bracket is open
)

// layerRef is what the manifest says of one layer file.
type layerRef struct {
	id     uint64 // the file is layerFile(id)
	from   uint64 // the layer holds the changes of seqs (from, to]
	to     uint64
	time   int64 // capture time of seq to
	marker record.MarkerKind
	name   string
	kept   bool        // a long-term restore point (else only a fold boundary)
	valid  bool        // seq to is a valid restore point
	mem    *membership // the declaration in effect at seq to; nil for none
}

// manifest is the journal's durable root, replaced whole with vfs.Publish.
//
//	"QCJM", version (2), group length (1), 0, generation (8), first retained
//	seq (8), next layer id (8), group, disk count (2), per disk: name length
//	(1), name, flags (1); layer count (4), per layer: id, from, to, time (8
//	each), marker (1), flags (1: 1 kept, 2 valid), name length (1), name;
//	[version 2 only: declaration count (2), per declaration: seq (8),
//	length (4), the declaration (record.AppendDeclaration); the declaration
//	in effect at seq first-1 (2); per layer, the one in effect at its seq
//	to (2)]; CRC32C of everything before (4).
//
// A declaration is named by its place in the table plus one, 0 for none.
// The table lists each declaration once, by ascending seq, and only those
// named. A manifest with no declaration to name is written as version 1,
// as before declarations existed.
type manifest struct {
	gen    uint64
	first  uint64 // records below first live in the layers
	nextID uint64
	state  map[string]uint8 // stream state as of seq first-1
	mem    *membership      // the declaration in effect at seq first-1; nil for none
	layers []layerRef       // oldest (the base) first
}

// manDecls returns the declarations the manifest names, by ascending seq,
// and each one's number (place plus one).
func (m *manifest) manDecls() ([]*membership, map[uint64]uint16) {
	bySeq := map[uint64]*membership{}
	for _, x := range append([]*membership{m.mem}, refMems(m.layers)...) {
		if x != nil {
			bySeq[x.seq] = x
		}
	}
	seqs := slices.Sorted(maps.Keys(bySeq))
	out := make([]*membership, len(seqs))
	num := map[uint64]uint16{}
	for i, s := range seqs {
		out[i], num[s] = bySeq[s], uint16(i+1)
	}
	return out, num
}

func refMems(ls []layerRef) []*membership {
	out := make([]*membership, len(ls))
	for i := range ls {
		out[i] = ls[i].mem
	}
	return out
}

func layerFile(id uint64) string { return fmt.Sprintf("%0*d%s", nameDigits, id, layerSuffix) }

func parseLayerName(name string) (uint64, bool) {
	s, ok := cutSuffix(name, layerSuffix)
	if !ok || len(s) != nameDigits {
		return 0, false
	}
	return parseDigits(s)
}

func cutSuffix(s, suf string) (string, bool) {
	if len(s) < len(suf) || s[len(s)-len(suf):] != suf {
		return s, false
	}
	return s[:len(s)-len(suf)], true
}

func encodeManifest(group string, m *manifest) []byte {
	decls, num := m.manDecls()
	version := uint16(manVersion)
	if len(decls) > 0 {
		version = manVersionDecls
	}
	b := []byte(manMagic)
	b = binary.LittleEndian.AppendUint16(b, version)
	b = append(b, byte(len(group)), 0)
	b = binary.LittleEndian.AppendUint64(b, m.gen)
	b = binary.LittleEndian.AppendUint64(b, m.first)
	b = binary.LittleEndian.AppendUint64(b, m.nextID)
	b = append(b, group...)
	names := sortedKeys(m.state)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(names)))
	for _, d := range names {
		b = append(b, byte(len(d)))
		b = append(b, d...)
		b = append(b, m.state[d])
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(m.layers)))
	for _, l := range m.layers {
		b = binary.LittleEndian.AppendUint64(b, l.id)
		b = binary.LittleEndian.AppendUint64(b, l.from)
		b = binary.LittleEndian.AppendUint64(b, l.to)
		b = binary.LittleEndian.AppendUint64(b, uint64(l.time))
		var fl byte
		if l.kept {
			fl |= 1
		}
		if l.valid {
			fl |= 2
		}
		b = append(b, byte(l.marker), fl, byte(len(l.name)))
		b = append(b, l.name...)
	}
	if len(decls) > 0 {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(decls)))
		for _, d := range decls {
			p := record.AppendDeclaration(nil, d.decl)
			b = binary.LittleEndian.AppendUint64(b, d.seq)
			b = binary.LittleEndian.AppendUint32(b, uint32(len(p)))
			b = append(b, p...)
		}
		ref := func(x *membership) uint16 {
			if x == nil {
				return 0
			}
			return num[x.seq]
		}
		b = binary.LittleEndian.AppendUint16(b, ref(m.mem))
		for _, l := range m.layers {
			b = binary.LittleEndian.AppendUint16(b, ref(l.mem))
		}
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

var errManifest = errors.New("journal: bad manifest")

func decodeManifest(group string, b []byte) (*manifest, error) {
	if len(b) < 36 {
		return nil, fmt.Errorf("%w: %d bytes", errManifest, len(b))
	}
	body := b[:len(b)-4]
	if crc32.Checksum(body, castagnoli) != binary.LittleEndian.Uint32(b[len(b)-4:]) {
		return nil, fmt.Errorf("%w: checksum", errManifest)
	}
	version := binary.LittleEndian.Uint16(b[4:])
	if string(b[:4]) != manMagic || version != manVersion && version != manVersionDecls || b[7] != 0 {
		return nil, fmt.Errorf("%w: magic or version", errManifest)
	}
	m := &manifest{
		gen:    binary.LittleEndian.Uint64(b[8:]),
		first:  binary.LittleEndian.Uint64(b[16:]),
		nextID: binary.LittleEndian.Uint64(b[24:]),
		state:  map[string]uint8{},
	}
	p := 32
	g := int(b[6])
	if p+g > len(body) {
		return nil, fmt.Errorf("%w: cut short", errManifest)
	}
	if string(body[p:p+g]) != group {
		return nil, fmt.Errorf("%w: %w: group %q, not %q", errManifest, ErrGroup, body[p:p+g], group)
	}
	p += g
	short := func(n int) bool { return p+n > len(body) }
	if short(2) {
		return nil, fmt.Errorf("%w: cut short", errManifest)
	}
	nd := int(binary.LittleEndian.Uint16(body[p:]))
	p += 2
	if nd > maxManDisks {
		return nil, fmt.Errorf("%w: %d disks", errManifest, nd)
	}
	for range nd {
		if short(1) {
			return nil, fmt.Errorf("%w: cut short", errManifest)
		}
		l := int(body[p])
		if short(2 + l) {
			return nil, fmt.Errorf("%w: cut short", errManifest)
		}
		d := string(body[p+1 : p+1+l])
		if err := record.ValidDiskName(d); err != nil {
			return nil, fmt.Errorf("%w: %w", errManifest, err)
		}
		m.state[d] = body[p+1+l]
		p += 2 + l
	}
	if short(4) {
		return nil, fmt.Errorf("%w: cut short", errManifest)
	}
	nl := int(binary.LittleEndian.Uint32(body[p:]))
	p += 4
	if nl > maxManLayers || nl > (len(body)-p)/35 {
		return nil, fmt.Errorf("%w: %d layers", errManifest, nl)
	}
	for range nl {
		if short(35) {
			return nil, fmt.Errorf("%w: cut short", errManifest)
		}
		l := layerRef{
			id:     binary.LittleEndian.Uint64(body[p:]),
			from:   binary.LittleEndian.Uint64(body[p+8:]),
			to:     binary.LittleEndian.Uint64(body[p+16:]),
			time:   int64(binary.LittleEndian.Uint64(body[p+24:])),
			marker: record.MarkerKind(body[p+32]),
			kept:   body[p+33]&1 != 0,
			valid:  body[p+33]&2 != 0,
		}
		n := int(body[p+34])
		if short(35 + n) {
			return nil, fmt.Errorf("%w: cut short", errManifest)
		}
		l.name = string(body[p+35 : p+35+n])
		p += 35 + n
		if l.to < l.from || len(m.layers) > 0 && l.from != m.layers[len(m.layers)-1].to || len(m.layers) == 0 && l.from != 0 {
			return nil, fmt.Errorf("%w: layer %d covers (%d, %d]", errManifest, l.id, l.from, l.to)
		}
		m.layers = append(m.layers, l)
	}
	if version == manVersionDecls {
		if err := decodeManDecls(m, body, &p); err != nil {
			return nil, err
		}
	}
	if p != len(body) {
		return nil, fmt.Errorf("%w: %d trailing bytes", errManifest, len(body)-p)
	}
	if n := len(m.layers); n > 0 && m.layers[n-1].to+1 != m.first || n == 0 && m.first != 1 {
		return nil, fmt.Errorf("%w: first retained seq %d does not follow the layers", errManifest, m.first)
	}
	return m, nil
}

// decodeManDecls reads the declarations of a version 2 manifest from
// body[*p:]: the table, then which one is in effect at first-1 and at the
// end of each layer. The table must be what encodeManifest writes: not
// empty, ascending seqs, each declaration named, none after the seq it is
// named for.
func decodeManDecls(m *manifest, body []byte, p *int) error {
	short := func(n int) bool { return *p+n > len(body) }
	if short(2) {
		return fmt.Errorf("%w: cut short", errManifest)
	}
	nd := int(binary.LittleEndian.Uint16(body[*p:]))
	*p += 2
	if nd == 0 || nd > len(m.layers)+1 {
		return fmt.Errorf("%w: %d declarations for %d layers", errManifest, nd, len(m.layers))
	}
	table := make([]*membership, 0, nd)
	for range nd {
		if short(12) {
			return fmt.Errorf("%w: cut short", errManifest)
		}
		seq := binary.LittleEndian.Uint64(body[*p:])
		n := int(binary.LittleEndian.Uint32(body[*p+8:]))
		*p += 12
		if n > record.MaxDeclaration || short(n) {
			return fmt.Errorf("%w: declaration of %d bytes", errManifest, n)
		}
		d, err := record.DecodeDeclaration(body[*p : *p+n])
		if err != nil {
			return fmt.Errorf("%w: declaration of seq %d: %w", errManifest, seq, err)
		}
		*p += n
		if k := len(table); k > 0 && table[k-1].seq >= seq {
			return fmt.Errorf("%w: declarations out of order at seq %d", errManifest, seq)
		}
		table = append(table, newMembership(seq, d))
	}
	named := make([]bool, nd)
	ref := func(at uint64) (*membership, error) {
		if short(2) {
			return nil, fmt.Errorf("%w: cut short", errManifest)
		}
		i := int(binary.LittleEndian.Uint16(body[*p:]))
		*p += 2
		if i == 0 {
			return nil, nil
		}
		if i > nd || table[i-1].seq > at {
			return nil, fmt.Errorf("%w: declaration %d named for seq %d", errManifest, i, at)
		}
		named[i-1] = true
		return table[i-1], nil
	}
	var err error
	if m.mem, err = ref(m.first - 1); err != nil {
		return err
	}
	for i := range m.layers {
		if m.layers[i].mem, err = ref(m.layers[i].to); err != nil {
			return err
		}
	}
	for i, ok := range named {
		if !ok {
			return fmt.Errorf("%w: declaration of seq %d is named by nothing", errManifest, table[i].seq)
		}
	}
	return nil
}

// readManifest returns the group's manifest, or an empty one when the
// journal is new.
func readManifest(fs vfs.FS, dir, group string) (*manifest, error) {
	path := filepath.Join(dir, manifestName)
	f, err := fs.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return &manifest{first: 1, nextID: 1, state: map[string]uint8{}}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("journal: %w", err)
	}
	if fi.Size() > 64<<20 {
		return nil, fmt.Errorf("%w: %s: %w: %d bytes", ErrCorrupt, path, errManifest, fi.Size())
	}
	b := make([]byte, fi.Size())
	if _, err := io.ReadFull(f, b); err != nil {
		return nil, fmt.Errorf("journal: read %s: %w", path, err)
	}
	m, err := decodeManifest(group, b)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrCorrupt, path, err)
	}
	return m, nil
}
