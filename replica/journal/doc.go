// Package journal is one protection group's journal at the recovery site:
// the durable, checksummed log of the group's records (package record), the
// index that finds the newest version of every byte of every disk at any
// seq, the layers (a base image and long-term restore points) that records
// are folded into as they age, the restore points, retention, and the
// point-in-time views served over NBD (package nbd).
//
// It does not own the stream (the receiver hands it batches of records in
// seq order), the NBD server, nor the storage root's layout: the receiver
// creates <root>/<tenant>/<group> and validates the names it takes from the
// wire; the journal validates its group and every disk name again
// (record.ValidDiskName) before any path use.
//
// # Files
//
//	DIR/MANIFEST                          root: layers, first retained seq, stream state, declarations (vfs.Publish)
//	DIR/ACKED                             the acknowledged mark: the newest seq Append acknowledged
//	DIR/ORIGIN                            the host spool the records come from (origin.go; vfs.Publish)
//	DIR/DEFINITIONS                       the VMs' definitions: per VM its newest 16, with their seqs (definitions.go; vfs.Publish)
//	DIR/00000000000000000001.seg          a segment, named by its first seq
//	DIR/00000000000000000001.seg.idx      its index file, written when the segment is sealed
//	DIR/00000000000000000007.lay          a layer, named by its id
//	DIR/00000000000000000007.lay.idx      its index file
//	DIR/<segment>.torn-<offset>           a torn tail (or what followed the mark) cut off by recovery, kept for inspection
//	DIR/overlays/                         scratch files of writable views, removed at Close and Open
//
// A segment or layer file is a header followed by encoded records (package
// record: frame, CRC32C over header and payload):
//
//	0      4      6   7   8           16          16+g   20+g
//	+------+------+---+---+-----------+-----------+------+---------+---------+--
//	|magic | vers |g  | 0 | first/id  | group (g) |CRC32C| record  | record  | ...
//	+------+------+---+---+-----------+-----------+------+---------+---------+--
//
// magic is "QCJS" for a segment (records of consecutive seqs from the
// header's first seq) and "QCJL" for a layer (Data, Zero and Trim records
// sorted by disk and offset, not overlapping; each keeps the seq and time of
// the newest write it holds). The header CRC32C covers bytes [0, 16+g).
//
// An index file ("QCJI") lists, for every record of its segment or layer,
// seq, time, offset, length, file offset, disk, kind, marker and name, with
// one CRC32C over the whole file; it also says which file size it covers.
// It is a cache: when it is missing, stale or damaged, Open scans the file
// (checking every checksum) and writes it again. The manifest ("QCJM") is
// laid out in manifest.go: version 1, and version 2 (written only when it
// names declarations of the group's membership) with a table of them at
// its end.
//
// ACKED is two 512-byte slots, each a mark followed by zeroes:
//
//	0      4      6   7   8          16          24         32      32+g     36+g  512
//	+------+------+---+---+----------+-----------+----------+-------+--------+-----+
//	|"QCJA"| vers |g  | 0 | seq      | segment   | end      | group | CRC32C | 0.. |
//	+------+------+---+---+----------+-----------+----------+-------+--------+-----+
//
// seq is the newest acknowledged seq, segment the first seq (the name) of
// the segment holding its record and end the offset where that record ends
// (both 0 when no segment holds it: it was folded). The CRC32C covers bytes
// [0, 32+g). Each write goes to the slot that does not hold the newest
// mark, in place, then is fsync'd: a crash during it leaves the other
// slot. The newer of two slots that check is the mark. Integers are
// little-endian. All these layouts are on disk: never change them; a new
// layout takes a new version.
//
// DEFINITIONS holds the definitions of the group's VMs (Definition
// records, see Definitions below), laid out in definitions.go: a header
// naming the group, then per definition its record's seq and its JSON as
// the host sent it, sorted by VM id and seq, and one CRC32C over the whole
// file. A journal that never held a definition has none.
//
// ORIGIN names the spool of the host the journal's records come from (its
// random id, creation time and newest epoch seen, the host, the seq at
// which it was bound, and, since version 2, the epoch bound before and the
// seq at which the newest was bound), laid out in origin.go with a CRC32C
// over it; version 1 files are still read. The
// receiver binds it at the first stream of a spool and refuses every
// other spool; a journal without it takes the first spool that streams.
//
// # Promises
//
// Append returns once the records are written and fsync'd (and the
// directory too when a segment was created), and then the mark naming the
// newest of them is written and fsync'd: nothing it acknowledged is lost by
// a crash, and what it acknowledged is known after one. LastSeq moves only
// once the mark is durable, so an acknowledgement (the receiver's Ack and
// Welcome carry LastSeq) never gets ahead of the mark. The mark costs one
// 512-byte in-place write and one fdatasync per Append (per segment when a
// batch spans segments); the receiver appends the batches that arrived
// together with one Append. The index lives in memory: for each disk, the records
// touching each 64 KiB chunk (16 MiB chunks for records of 4 MiB and more,
// one list for records of 1 GiB and more), by seq. Open rebuilds it from
// the index files (about 1 s for a million records); opening a view is a
// binary search (well under a millisecond) and reading it walks back from
// the view's seq through the chunk's records, then the layers, newest
// first. Nothing is copied.
//
// A record is checked whole (both CRCs, and that it is the record the index
// names) the first time any of its bytes is served; a damaged record fails
// the read with ErrCorrupt, never serves wrong bytes. Verify checks every
// record of every file, and both slots of ACKED against the mark held.
//
// # Restore points
//
// A record boundary (the state after seq S) is a restore point when every
// disk of the group has completed its initial sync (its sync-complete
// marker; one without a disk counts for every disk of the group) and no
// disk is inside a resync bracket (ResyncBegin .. ResyncEnd of that disk).
// The group's disks are those its host declared (see Membership); in a
// journal whose host had declared none by S, those the stream has named
// so far. Inside the short-term window every such boundary is one;
// markers (crash-consistent, app-consistent, bookmarks) are listed by
// Points. A target (seq, time or bookmark) inside the window that is no
// restore point is refused with ErrNoPoint naming why; one before the
// window resolves to the newest long-term point at or before it.
//
// # Membership
//
// The host declares the group's membership in the stream: a Members record
// (package record) lists every disk with its exact size and VM, and holds
// until the next one replaces it whole. Append refuses, whole and before
// writing anything, records outside it (an error wrapping
// record.ErrMembership, which the receiver turns into a refusal of the
// stream): a record of a disk not declared, a range past its disk's
// declared size. A disk a declaration adds, one back after leaving, or one
// whose size changed must complete its initial sync again (its writes while
// it was out were not captured); one that leaves no longer counts for
// restore points, and views from then on do not show it. A view's disks are
// those declared at its point, each exactly as large as declared.
//
// The declarations are kept where their records are: in the segments
// (an index entry of a Members record has no disk; its declaration is
// read, and checked whole, from the record at Open), and, for the
// boundaries below the window, in the manifest: the declaration in effect
// at the window's start and at the end of every layer (a folded base layer
// still knows its disks and their sizes).
//
// A journal written before hosts declared (or whose host never does) keeps
// its old guarantees and limits: its disks are those the stream named,
// restore points need every one of them in sync (so a disk whose first
// record is late can be missing from the earliest points), and a view's
// disk is as large as its highest written byte, rounded up to 512 bytes.
// Its records are bounded all the same: at most record.MaxGroupDisks disks,
// no range past record.MaxDiskSize. At the host's first declaration the
// disks named before keep their sync state. An open journal indexes at
// most 4096 disk names (those of its retained records and of its state);
// Append refuses one more, and Open reports a journal naming more (written
// before the bound: its disk ids wrapped) as corrupt.
//
// # Definitions
//
// The host defines each VM of the group in the stream: a Definition record
// (package record; stream version 3) carries one VM's hardware, disks and
// NICs, and holds for that VM from its seq until the VM's next one.
// Definitions(seq) returns, for every VM, the definition in effect at a
// restore point: its newest with a seq at most seq (a VM all of whose
// definitions kept are newer is left out). Like every record a Definition
// takes a seq and lies in its segment (its index entry has no disk and is
// named by the VM's id); it writes no disk bytes and makes or breaks no
// restore point. Since compaction folds segments into layers, which keep
// disk bytes only, the definitions are kept in the DEFINITIONS file too:
// per VM its newest 16 different ones (a definition equal to the VM's
// newest, as a host sends again at every spool session, is not kept
// twice), as this version encodes them (fields it does not know are not
// kept), at most 256 VMs (beyond, the VM defined least recently is
// dropped) and at most 64 MiB of definitions besides each VM's newest
// (beyond, the oldest are dropped). Append publishes the file
// (vfs.Publish) before it writes the records of a batch that holds
// definitions, so an acknowledged definition is never lost; a failed
// publish breaks the journal until it is reopened. A definition whose
// record was then never acknowledged (a crash or a failed write between
// the publish and the mark) is ignored and dropped, at Open or by the
// next Append, before its seq is taken again. A damaged DEFINITIONS file,
// or a missing one while a retained record is a definition, is ErrCorrupt
// at Open naming the file; Verify checks it too.
//
// # Retention and crash safety
//
// Compact moves the window start to what Retention allows, keeps the
// long-term points its schedules and bookmark rule pick (and the point of
// every open view), and rebuilds the layers (the rules are in retention.go,
// the mechanics in compact.go): layer i holds, as a sparse
// delta, the newest version of every byte written in (point i-1, point i];
// the oldest layer is the base (the state at the oldest retained point).
// A layer whose range is unchanged is kept as it is; a layer whose point
// expired is merged with its newer neighbour. New layer files are written
// and fsync'd under new names, then the manifest naming them and the new
// first retained seq is published; only then are the old layers and the
// wholly folded segments removed. A crash at any step leaves either the old
// or the new journal, never a half-applied base; Open removes the files the
// manifest does not name.
//
// # Recovery
//
// Open tells three things apart: a clean end; a torn tail (a record cut
// short, or zeroes, or records never acknowledged: the bytes are saved
// beside the segment, the segment is truncated, and the journal goes on);
// and corruption (ErrCorrupt naming file, offset and seq: Open refuses the
// journal and the registry quarantines its group).
//
// The mark decides which is which. Every record up to it was acknowledged:
// one that does not check, is cut short or is missing is corruption, the
// newest one too. Only what follows the mark may be a torn tail, and all
// of it is cut, complete records too: Append never acknowledged them (a
// crash came between their fsync and the mark's, or their fsync failed and
// the page cache still held them), and the host sends them again. Cutting
// them rather than fsyncing them again is what makes a reopen after a
// failed fsync safe: a second fsync may report success for pages the
// kernel already gave up on. When one slot of ACKED does not check (a
// crash during its write, or damage), the other is a lower bound: the
// intact records after it are kept, since they may have been acknowledged,
// and fsync'd before Open reports them. Both slots damaged is corruption.
//
// Before it returns, Open writes the mark again (into the slot that does
// not hold it) naming exactly what LastSeq reports, so a mark read from a
// page whose fsync failed becomes durable, or Open fails.
//
// A journal written before the mark existed has no ACKED. Open recovers it
// as it always did: only the newest segment may tear, and there a bit flip
// or a cut in the newest record cannot be told from a torn write and is
// treated as one (only for that first Open: the newest record, though
// fsync'd and acknowledged, may be cut with a warning). It fsyncs the
// newest segment, then creates ACKED naming what it kept; from then on the
// journal has the full guarantee.
//
// # Limits
//
// Folding rewrites only the
// layers whose range changes, but merging an expired point into the base
// rewrites the base. A chunk written by very many small, disjoint writes
// makes a read of its unwritten part walk back through all of them.
package journal
