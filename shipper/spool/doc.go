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
// those 16 bytes. Integers are little-endian. These layouts are on disk:
// never change them; a new layout takes a new version.
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
// A limit: on Linux, an fsync after a failed one may report success for
// pages the kernel has already given up writing; they stay readable in the
// page cache, to a new process too, until they are evicted. A spool reopened
// after ErrBroken from an fsync may therefore report such records as
// durable. Once those pages are gone a read of the records fails its
// checksum (ErrCorrupt): the loss is detected, never served.
package spool
