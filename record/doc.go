// Package record is the byte format of one captured write or marker: the unit
// the host spool stores, the stream carries and the replica journal keeps.
//
// It owns the encoding, the checksums and the bounds on every field. It does
// not own files, segments, ordering or the group a record belongs to: the
// group is named once in the spool segment header and the stream header, and
// seq order is the sequencer's business.
//
// # Byte layout
//
// Every record starts with a 16-byte frame that all record types and all
// versions share, so that a reader can check and skip a type it does not
// know. Integers are little-endian.
//
//	0               4               8       9       10              12              16
//	+---------------+---------------+-------+-------+---------------+---------------+
//	| record CRC32C | header CRC32C | type  | vers. | flags (0)     | body length   |
//	+---------------+---------------+-------+-------+---------------+---------------+
//	| body: body length bytes, laid out by (type, version) ...                      |
//	+-------------------------------------------------------------------------------+
//
// The record CRC32C (Castagnoli) covers bytes [4, 16+body length): the
// header CRC, the rest of the frame and the whole body, payload included.
// The header CRC32C covers bytes [8, 16): type, version, flags and body
// length. A reader trusts the length only once it matches, so a flipped bit
// in the length is reported as corruption, never mistaken for a record that
// runs past the end of the data (a torn tail). The body length is at most
// MaxBody; nothing is allocated from it.
//
// Body of types Data (1), Zero (2), Trim (3), Marker (4), Members (5) and
// Definition (6), version 1:
//
//	0       8       16      24      32  33  34  35  36
//	+-------+-------+-------+-------+---+---+---+---+------+------+---------+
//	| seq   | time  | offset| length|mk |dl |nl | 0 | disk | name | payload |
//	+-------+-------+-------+-------+---+---+---+---+------+------+---------+
//
// seq is the group's sequence number (uint64); time the capture time in unix
// nanoseconds (int64); offset and length the byte range of the disk (uint64).
// mk is the marker kind (Marker records only, else 0), dl the disk name
// length, nl the marker name length; the disk and name bytes follow. The
// payload is the rest of the body: exactly length bytes for Data and
// Members, empty for Zero, Trim and Marker.
//
// Members (5), version 1, has the same body: offset 0, length the length
// of the payload, mk, dl and nl 0; the payload is the group's whole
// membership, a Declaration (integers little-endian):
//
//	0       2       4
//	+-------+-------+-----------+-----------+--
//	| count | 0     | member    | member    | ...   count members, sorted by disk name
//	+-------+-------+-----------+-----------+--
//
//	member: 0      8    9    10   11   12
//	        +------+----+----+----+----+------+----+--------+--------+
//	        | size | dl | vl | nl | tl | disk | vm | vmname | target |
//	        +------+----+----+----+----+------+----+--------+--------+
//
// size is the disk's exact size in bytes (1..MaxDiskSize); disk its name in
// the stream (ValidDiskName, unique); vm the stable id of its VM, vmname
// the VM's name and target the disk's name in the VM (at most MaxLabel
// bytes of UTF-8 each, possibly empty). count is at most MaxGroupDisks. A
// declaration holds from its record's seq until the next one replaces it
// whole: the group's records of a disk name a declared disk, and their
// ranges end within its size (Declaration.Admit; ErrMembership).
//
// Definition (6), version 1, has the same body as Members: offset 0,
// length the length of the payload, mk and dl 0; the name is the VM's
// stable id (as in its disks' Member.VM, 1..MaxName bytes) and the payload
// is that VM's definition (VMDefinition: hardware, disks by their names in
// the stream, NICs, and the libvirt domain XML for the operator) as one
// JSON object of at most MaxDefinition bytes, whose "id" is the record's
// name. Readers ignore JSON fields they do not know, so a field can be
// added without a new layout; a definition must pass VMDefinition.Validate
// to be read at all. A definition holds for its VM from its record's seq
// until the next Definition record of the same VM. Streams carry them from
// stream version 3 on.
//
// All values above (offsets, sizes, type, version and marker numbers,
// MaxPayload, MaxGroupDisks, MaxDiskSize, MaxLabel, MaxDefinition and the
// other definition bounds) are on disk and on the wire: never change them.
// A new layout gets a new type or version number, and readers skip types
// they do not know (ErrUnknownType); testdata/ keeps a fixture of every
// version ever written (v1.hex, v1-members.hex, v1-definition.hex) and
// TestGolden, TestGoldenMembers and TestGoldenDefinition read them all. A
// skipped record still took a seq, though: a reader that checks that seqs
// follow each other (a spool's or a journal's recovery scan) sees a gap
// after it. So the version that added Members (or Definition) cannot be
// replaced by an older one over a spool or journal that holds one: the
// older one reports it corrupt (it never serves it).
package record
