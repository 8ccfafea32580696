// Package stream is the wire protocol between a protected host's sender
// (package shipper/sender) and the replica daemon's receiver (package
// replica/receiver): one TCP connection with TLS 1.3 and mutual
// certificates per protection group, carrying the group's records in seq
// order and the replica's acknowledgements back.
//
// It owns the frames, the handshake messages, the batch encoding (records of
// package record, concatenated and compressed with zstd), the TLS settings
// both sides use and the certificate conventions that carry a host's tenant.
// It does not own connections, retries, spools or journals.
//
// # Conversation
//
//	host (sender)                              replica (receiver)
//	Hello{group, host, spool id,        ──►
//	      last seq held, intact seq}
//	                                    ◄──    Welcome{durable seq, spool id} | Refuse{code, message}
//	Batch{first seq, count, records}    ──►    (verify, trim what is durable, append, fsync)
//	Batch ...                           ──►
//	                                    ◄──    Ack{seq}: every record up to seq is durable
//	Ping (when idle)                    ──►
//	                                    ◄──    Ack{durable seq} (the answer to a Ping)
//	                                    ◄──    Refuse{code, message}, then close, on any error
//
// The sender resumes after the Welcome's durable seq and never resends what
// an Ack or a Welcome declared durable; the receiver trims records at or
// below its durable seq (a resend after a reconnect) and refuses a batch
// that would leave a gap. So nothing durable is applied twice and no gap is
// ever applied.
//
// # Frames
//
// Every message is one frame. The 16-byte frame header is the same for
// every frame type and every protocol version, so that any peer can read a
// Hello (or a Refuse) of any version and say which version it speaks.
// Integers are little-endian.
//
//	0               4               8       9       10              12              16
//	+---------------+---------------+-------+-------+---------------+---------------+
//	| frame CRC32C  | header CRC32C | type  | vers. | flags (0)     | payload length|
//	+---------------+---------------+-------+-------+---------------+---------------+
//	| payload: payload length bytes, laid out by type ...                           |
//	+-------------------------------------------------------------------------------+
//
// As in package record, the frame CRC32C (Castagnoli) covers bytes
// [4, 16+payload length) and the header CRC32C bytes [8, 16), so a flipped
// length is reported as corruption before anything trusts it. The version
// byte is the stream protocol version of the frame's writer; in a Hello it
// is the version the host speaks, in a Welcome and every frame after it
// the version the replica agreed to: the host's own. The payload length is bounded per type (MaxPayload)
// before anything is read or allocated, and the payload buffer grows only
// as bytes actually arrive. A Reader whose Reserve is set asks for a
// frame's memory first (FrameCost: the payload and, for a Batch, what
// decoding it takes as its header declares) and reads only once it is
// granted; the replica pays for it from a budget shared by its streams.
//
// Payloads of versions 2 and 3 (the same layouts):
//
//	Hello   (1)  | last seq (8) | gl (1) | hl (1) | 0 (2) | spool id (16) | created (8) | epoch (8) |
//	             | intact seq (8) | group (gl) | host (hl) |
//	Welcome (2)  | durable seq (8) | spool id (16) | epoch (8) |
//	Refuse  (3)  | code (2) | ml (2) | message (ml) |
//	Batch   (4)  | first seq (8) | count (4) | flags (2) | 0 (2) | raw length (4) | data |
//	Ack     (5)  | seq (8) |
//	Ping    (6)  (empty)
//
// A Batch's data is count records encoded by record.AppendEncode and
// concatenated: raw length bytes, at most MaxBatchRaw. With flag
// BatchZstd the data is one zstd frame that decompresses to exactly raw
// length bytes (decompression is bounded by the declared raw length, so a
// compression bomb cannot make the receiver allocate more); without it the
// data is the raw bytes. Compressed data is never longer than raw length:
// a sender that cannot compress a batch sends it raw. The records carry
// consecutive seqs from first seq; Data records whose payload is all
// zeroes travel as Zero records. A record type the receiver does not know
// fails the batch: a new record type needs a new protocol version.
// Version 2 batches may carry Members records (record type 5: the group's
// declared membership, see package record), which version 1 batches never
// held; testdata/v2-batch-members.hex keeps one. Version 3 batches may
// carry Definition records (record type 6: one VM's definition, see
// package record), which version 2 batches never hold: a version 2 batch
// holding one is a protocol error (the replica refuses it with
// CodeProtocol, saying the host must speak v3 for definitions);
// testdata/v3-batch-definition.hex keeps one.
//
// # Versions
//
// This package writes version 3 (Version) and reads and writes versions 2
// and 3 (MinVersion to Version, see Speaks): the frames of version 2 are
// laid out as those of version 3. A replica answers a host in the host's
// own version: it welcomes a version 2 host with a version 2 Welcome and
// writes its Acks, the Refuse that ends its stream and the Hashes of its
// queries in version 2 (AppendWelcomeV and the other *V encoders; every
// peer reads a Refuse of any version). A version 3 host refuses a replica
// that welcomes it in another version, and a version 2 replica refuses a
// version 3 host ("replica speaks stream v2, host sent v3"): the host's
// error then says to upgrade the replica first. Upgrade replicas before
// hosts.
//
// Version 1 had the same frames but for the handshake: its Hello was
// | last seq (8) | gl (1) | hl (1) | 0 (2) | group (gl) | host (hl) | and
// its Welcome | durable seq (8) |. Both sides refuse a peer of version 1
// (a v1 host gets "replica speaks stream v3, host sent v1"; a host reads a
// v1 replica's Refuse, whose layout every version shares), and a data
// frame of version 1 is never read as one of a version this package
// speaks.
//
// Every value above (offsets, type numbers, flag bits, refusal codes,
// Version, MinVersion, the limits) is on the wire: never change it. A new
// layout takes a new protocol version; a peer of a version this package
// does not speak is refused during the handshake with a message naming
// both versions.
//
// # Spool identity
//
// A Hello names the spool its records come from (package shipper/spool):
// a random 16-byte id made with the spool, its creation time, and its
// epoch, new at every open of the spool and descending from the epoch the
// replica last welcomed (record.EpochParent). The intact seq is the highest
// seq up to which the spool vouches for every record it ever held since
// the replica last welcomed it (a spool that lost unsynced records in a
// host crash, or was restored from an older copy, vouches only for what
// it kept). The replica binds a group's journal to the first spool that
// streams into it and refuses, with CodeDiverged, a Hello of any other
// spool, of an older epoch of its own, or whose intact seq is below what
// the journal holds: records of two spools are never spliced into one
// journal. A Welcome echoes the spool id and epoch it bound; the host
// acknowledges to its spool (deletes) the records up to the durable seq
// only when they name its own spool.
//
// # Hash queries
//
// A host resyncing a disk whose dirty bitmap QEMU lost (package filter)
// asks the replica for block hashes of the disk's newest state on a
// connection of its own, beside the stream. Its first frame is a HashQ
// instead of a Hello; the replica authorizes it as it would a Hello for the
// group, answers with Hashes, and reads the next HashQ, until the host
// closes the connection (or a Refuse ends it):
//
//	host                                      replica
//	HashQ{group, disk, block size,      ──►    (wait until the journal holds every record up
//	      offset, count, after seq}                to after seq, at most 20 s; hash its newest state)
//	                                    ◄──    Hashes{status, offset, size, seq, hashes} | Refuse
//	HashQ ...                           ──►
//
//	HashQ   (7)  | gl (1) | dl (1) | 0 (2) | block size (4) | offset (8) | count (4) | 0 (4) |
//	             | after seq (8) | group (gl) | disk (dl) |
//	Hashes  (8)  | status (1) | 0 (3) | n (4) | offset (8) | disk size (8) | seq (8) | n × hash (16) |
//
// The block size is a power of two from MinHashBlock to MaxHashBlock, the
// offset a multiple of it, count at most MaxHashBlocks (0 asks only whether
// the replica holds the disk). A hash is BLAKE3 of the block's bytes cut
// to 16 bytes (BlockHash); a block cut by the disk's end is hashed over
// the bytes before it, and blocks past the end are not sent. Status 0 (ok)
// carries the hashes of the state after record seq; 1 (no-disk) says the
// replica holds nothing of the disk (the host copies it whole); 2 (behind)
// says the journal does not hold after seq yet (the host asks again). A
// replica that predates hash queries answers a HashQ with a Refuse
// (CodeProtocol): the host then copies disks whole.
//
// # Identity
//
// A host certificate names the host in its Subject CommonName and its
// tenant in its only Subject OrganizationalUnit (see Identify, Issue); the
// replica authorizes the group a Hello asks for against that tenant.
package stream
