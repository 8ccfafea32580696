// Package nbd is qcdp's NBD server: the protected host's capture exports
// (QEMU's write-blocking mirror writes into them) and the replica's
// point-in-time views are both served through it.
//
// It owns the wire protocol (NetworkBlockDevice/nbd doc/proto.md): fixed
// newstyle negotiation with NBD_OPT_GO, INFO (export, name, block size with
// a minimum of 1 so QEMU never read-modify-writes), LIST, ABORT,
// EXPORT_NAME, STRUCTURED_REPLY and LIST/SET_META_CONTEXT for
// base:allocation; every other option is answered NBD_REP_ERR_UNSUP and
// negotiation goes on (QEMU 8.2+ asks for extended headers first). In
// transmission it serves READ, WRITE, WRITE_ZEROES (NO_HOLE, FAST_ZERO),
// TRIM, FLUSH, CACHE, DISC and BLOCK_STATUS, with FUA.
//
// It does not own what an export is: the caller supplies a Catalog of
// Exports, and what each can do follows from the small interfaces it
// implements (Reader, Writer, Zeroer, Trimmer, Flusher, Extenter,
// Authorizer). It does not own durability either: a write is acknowledged
// when the export's WriteAt returns, so the export decides what that promise
// is.
//
// Who may open an export. Whoever can connect to the socket may negotiate;
// the socket's permissions are the first gate. On a unix socket the server
// asks the kernel who connected (SO_PEERCRED: PID, user, group, with the
// process's start time so that a reused PID is told apart; package proc)
// and hands that Peer to an export that implements Authorizer before it
// opens the export, describes it, or lists it. A refusal is answered exactly
// like a name that does not exist (NBD_REP_ERR_UNKNOWN, same text), so a
// stranger cannot learn which export names are open; it is logged with the
// peer and the reason, and the export stays out of that peer's NBD_OPT_LIST. Exports without Authorizer are
// open to every client, as before.
//
// Ordering and concurrency. Each connection has one request loop. It reads
// requests in arrival order and runs WRITE, WRITE_ZEROES and TRIM inline, so
// an export that keeps a log (the capture export) sees exactly the order the
// client sent; those exports must never block for long. READ, FLUSH and
// BLOCK_STATUS, and the flush half of a FUA write, run on goroutines the
// connection owns (up to Options.MaxInFlight at once) and are answered out of
// order. Replies of inline requests are batched and sent when the loop next
// waits for the client. Any number of connections may be open at once.
//
// Hostile peers. Every length is bounded before anything is read or
// allocated for it (option data 64 KiB, strings 4096 bytes, payloads
// MaxPayload); every request is checked against the export size and the
// negotiated session before its payload is read. A bad request gets the
// NBD error the protocol asks for and the connection stays usable; a bad
// magic or an oversized WRITE closes only that connection; a garbage
// handshake closes only that connection.
package nbd
