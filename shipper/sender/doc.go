// Package sender ships one protection group's spool (package
// shipper/spool) to its replica daemon over the stream protocol (package
// stream): TLS 1.3 with the host's client certificate, batches of records
// compressed with zstd, a token-bucket bandwidth limit, and the measured
// RPO of the group.
//
// It owns the connection to the replica, reconnecting with capped
// exponential backoff, and the acknowledgement of the spool: a seq is
// acknowledged to the spool (spool.Ack, which lets the spool drop it) only
// once the replica has said it is durable, in a Welcome or an Ack. After
// any disconnect it resumes after the replica's durable seq: records the
// replica holds are never sent again, and records are always sent in seq
// order from there, so there is never a gap. It does not own the spool,
// the sequencer, or what the replica does with the records.
//
// # Spool identity
//
// The Hello names the spool (its id, creation time and epoch) and the seq
// up to which it vouches for its records (spool.Intact). An Ack
// acknowledges what this session sent (an Ack past it is ErrAckBeyond).
// A Welcome's durable seq acknowledges records this session has not sent,
// so it is taken only when it holds the records of this very spool: the
// Welcome must name the spool and epoch of the Hello, and the durable seq
// may be past neither the spool's last seq nor its intact seq (else
// ErrDiverged). Before anything is sent the spool records that it was
// welcomed (spool.Welcomed). A refusal as diverged (stream.CodeDiverged:
// another spool's journal, an older copy of this spool, or records this
// spool lost) is kept in Stats.Diverged until a session is welcomed; the
// sender retries, and nothing is acknowledged meanwhile.
//
// # Failed over
//
// When the group fails over at the recovery site (package failover), the
// replica refuses its stream, and any running session ends, with
// stream.CodeFailedOver. The sender keeps the replica's message in
// Stats.FailedOver (logged once), goes on saying Hello at its backoff,
// never waiting longer than FailedOverRetry between two, and clears it when
// a Hello is welcomed again (the recovery site undid the failover). The
// host engine (package protect) follows Stats.FailedOver to stop and
// resume the group's captures. WaitAcked, which a planned failover's host
// half waits on, fails with ErrFailedOver meanwhile.
//
// # Protocol version
//
// The sender speaks stream.Version only (3: its batches may carry
// Definition records). A replica of an older version refuses its Hello,
// and one that welcomes it in another version is not streamed to: the
// error, kept in Stats.LastError, says to upgrade the replica first.
// Replicas are upgraded before their hosts; a replica of version 3 still
// serves hosts of version 2.
//
// # RPO
//
// Stats.RPO is DESIGN.md's: now minus the capture time of the oldest
// record not yet durable at the replica, 0 when nothing is pending. It
// grows while the replica is unreachable, and includes records still in
// the spool that were never sent.
package sender
