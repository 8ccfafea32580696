// Package spool is a protection group's local spool on the protected host:
// an append-only, segmented, checksummed log of records (package record) in
// one directory, kept until the replica acknowledges them.
//
// It owns the segment files, their recovery after a crash, the budget of
// retained bytes, the fsync policy and the acknowledged seq. It does not own
// seq assignment (the sequencer in package shipper does) nor sending.
//
// # Files
//
//	DIR/00000000000000000001.seg      a segment, named by its first seq (20 digits)
//	DIR/acked                         the last acknowledged seq (written with vfs.Publish)
//	DIR/identity                      which spool this is: id, creation time, epoch, intact seq, epoch last welcomed (vfs.Publish)
//	DIR/recopy                        disks owed a full re-copy after answered writes were lost (vfs.Publish; recopy.go)
//	DIR/<segment>.torn-<offset>       a torn tail cut off by recovery, kept for inspection
//
// A segment is a header followed by encoded records with consecutive seqs:
//
//	0      4      6   7   8           16          16+g   20+g
//	+------+------+---+---+-----------+-----------+------+---------+---------+--
//	|"QCDS"| vers |g  | 0 | first seq | group (g) |CRC32C| record  | record  | ...
//	+------+------+---+---+-----------+-----------+------+---------+---------+--
//
// The header CRC32C (Castagnoli) covers bytes [0, 16+g). The acked file is
// "QCDA", version (2 bytes), 2 zero bytes, the seq (8 bytes) and a CRC32C of
// those 16 bytes. The identity file is laid out in identity.go ("QCDI",
// 60 bytes in version 2, 52 in version 1, CRC32C). Integers are little-endian. These layouts are on
// disk: never change them; a new layout takes a new version.
//
// # Identity
//
// A spool has an identity (Identity): a random 16-byte id and the time it
// was made, created by the first Open of its directory and kept across
// restarts, and an epoch per Open that descends from the epoch the replica
// last welcomed (Identity.Epoch), so that of two copies of one stopped
// directory, a cloned host image or a restored backup, the replica takes
// the stream of one only (TestReviewCopiedSpoolSplicedAfterReopen). The sender names it in its
// Hello (package stream); the replica binds the group's journal to the
// first spool that streams into it and refuses any other as diverged, so
// a spool whose directory was lost (a new one starts again at seq 1), or
// another host using the same group name, is never spliced onto the
// journal. A spool written before identities existed gets one at its
// next Open; if the replica already holds a journal of its group that
// names no spool, it binds this one at its first stream.
//
// The identity file also keeps the intact seq (Intact): the highest seq up
// to which the spool vouches for every record it ever held since the
// replica last welcomed it. Open lowers it to what recovery kept, since
// records an earlier epoch held past that point (lost in a crash before
// their fsync, or missing from a directory restored from an older copy)
// may have been sent, and their seqs will now be taken by other records;
// Welcomed raises it again once the replica has accepted the spool holding
// no more than that. A replica holding more than the intact seq refuses
// the spool as diverged, for good: healing it is a resync.
//
// # Promises
//
// Append writes each record with one plain write(2) (writev for a large
// payload) into the page cache: once it returns, a kill -9 of the daemon
// loses nothing. Durability against power loss comes from Sync (the NBD
// FLUSH) and the optional background policy (Options.SyncInterval,
// Options.SyncBytes). Append never waits for an fsync nor for room: when
// the budget (Options.MaxBytes) would be exceeded it fails with ErrFull at
// once, so the capture export can answer EIO and the mirror job pauses.
//
// # Recovery
//
// Open scans every segment and tells three things apart: a clean end; a
// torn tail in the last segment (ErrTorn: a record cut short, or zeroes
// left by a crash; the bytes are saved beside the segment, the segment is
// truncated and the spool goes on); and corruption anywhere else (ErrCorrupt,
// naming the file, offset and seq: Open refuses the spool). What it keeps it
// reports as durable (Sync has nothing left to do for it), so it fsyncs every
// segment it keeps and the directory before Open returns, and Open fails if
// that fsync does: after a crash of the daemon, or a failed fsync before a
// reopen, the page cache may hold records no fsync has reached.
//
// A failed fsync breaks the spool (ErrBroken, and Broken's channel is
// closed): every later Append and Sync fails, since what is on disk is
// unknown, and it is never retried in place. The owner (package shipper's
// Group) closes it and opens the directory again, which recovers what is
// really there and starts a new epoch.
//
// A limit: on Linux, an fsync after a failed one may report success for
// pages the kernel has already given up writing; they stay readable in the
// page cache, to a new process too, until they are evicted. A spool reopened
// after ErrBroken from an fsync may therefore report such records as
// durable. Once those pages are gone a read of the records fails its
// checksum (ErrCorrupt): the loss is detected, never served.
package spool
