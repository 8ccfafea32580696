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
//	Hello{group, host, last seq held}   ──►
//	                                    ◄──    Welcome{durable seq} | Refuse{code, message}
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
// byte is the stream protocol version of the peer that wrote the frame; in
// a Hello it is the version the host speaks, in a Welcome the version the
// replica agreed to. The payload length is bounded per type (MaxPayload)
// before anything is read or allocated, and the payload buffer grows only
// as bytes actually arrive.
//
// Payloads of version 1:
//
//	Hello   (1)  | last seq (8) | gl (1) | hl (1) | 0 (2) | group (gl) | host (hl) |
//	Welcome (2)  | durable seq (8) |
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
//
// Every value above (offsets, type numbers, flag bits, refusal codes,
// Version, the limits) is on the wire: never change it. A new layout takes
// a new protocol version; a peer of another version is refused during the
// handshake with a message naming both versions.
//
// # Identity
//
// A host certificate names the host in its Subject CommonName and its
// tenant in its only Subject OrganizationalUnit (see Identify, Issue); the
// replica authorizes the group a Hello asks for against that tenant.
package stream
