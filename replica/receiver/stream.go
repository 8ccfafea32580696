package receiver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"
	"unsafe"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/stream"
)

// stream runs an authorized connection: it claims the group, welcomes the
// host with the durable seq, then appends batches and acknowledges them.
// ctx ends when the session is killed.
func (srv *Server) stream(ctx context.Context, s *session, c net.Conn, br *bufio.Reader, fr *stream.Reader, id stream.Identity, hello stream.HelloMsg, log *slog.Logger) {
	key := groupKey{id.Tenant, hello.Group}
	log = log.With("spool", hello.Spool, "epoch", hello.Spool.Epoch)
	if err := srv.foreign(key, hello); err != nil {
		srv.refuseDiverged(c, key, nil, hello, id, err, log)
		return
	}
	gs, ok := srv.claim(key, s)
	if !ok {
		return
	}
	defer srv.release(key, gs, s, true)
	// A fence set while this session waited for the group (Stop took it
	// in between) holds all the same.
	if srv.Fenced != nil {
		if err := srv.Fenced(id.Tenant, hello.Group); err != nil {
			log.Warn("receiver: refused", "code", stream.CodeFailedOver, "err", err)
			refuse(c, stream.CodeFailedOver, err.Error())
			return
		}
	}
	if gs.j == nil {
		j, err := srv.OpenJournal(srv.baseCtx, id.Tenant, hello.Group)
		if errors.Is(err, ErrLimit) {
			log.Warn("receiver: refused", "code", stream.CodeDenied, "err", err)
			refuse(c, stream.CodeDenied, err.Error())
			return
		}
		if err != nil {
			log.Error("receiver: open journal", "err", err)
			refuse(c, stream.CodeUnavailable, fmt.Sprintf("replica cannot open the journal of group %q", hello.Group))
			return
		}
		gs.j = j
		gs.lastTime, gs.lastHost, gs.lastAhead = 0, 0, false
		if lt, ok := j.(interface{ LastTime() int64 }); ok {
			gs.lastTime = lt.LastTime()
		}
	}
	durable := gs.j.LastSeq()
	origin, aerr := admit(gs.j, hello, id.Host)
	var de *divergedError
	switch {
	case errors.As(aerr, &de):
		srv.refuseDiverged(c, key, gs, hello, id, aerr, log)
		return
	case aerr != nil:
		log.Error("receiver: the journal's spool identity", "err", aerr)
		refuse(c, stream.CodeUnavailable, fmt.Sprintf("replica cannot read or record which spool feeds group %q", hello.Group))
		return
	}
	srv.noteOrigin(gs, &origin, nil)
	c.SetDeadline(time.Time{})
	// In the host's own version (stream.Speaks), as is every frame after.
	if err := srv.write(c, stream.AppendWelcomeV(nil, hello.Version, stream.WelcomeMsg{Durable: durable, Spool: hello.Spool.ID, Epoch: hello.Spool.Epoch})); err != nil {
		log.Warn("receiver: welcome", "err", err)
		return
	}
	log.Info("receiver: stream started", "durable", durable, "host_last", hello.LastSeq)
	r := &receiving{srv: srv, gs: gs, c: c, br: br, fr: fr, dec: stream.NewBatchDecoder(), log: log, version: hello.Version}
	defer r.dec.Close()
	err := r.run(ctx)
	if errors.Is(err, errJournal) {
		// Whatever ended the session, a journal that failed an append is
		// broken until reopened: the next session must not inherit it.
		log.Error("receiver: journal append failed", "err", err)
		if cerr := gs.j.Close(); cerr != nil {
			log.Warn("receiver: close broken journal", "err", cerr)
		}
		gs.j = nil
	}
	select {
	case <-s.killed:
		if gs.j != nil {
			log.Info("receiver: stream ended", "durable", gs.j.LastSeq(), "why", "replaced or shut down")
		}
		return
	default:
	}
	var code stream.Code
	switch {
	case err == nil:
		log.Info("receiver: stream ended", "durable", gs.j.LastSeq())
		return
	case errors.Is(err, errJournal):
		code = stream.CodeInternal
	case errors.Is(err, errBusy):
		code = stream.CodeUnavailable
		log.Warn("receiver: stream refused", "err", err)
	case errors.Is(err, stream.ErrCorrupt), errors.Is(err, stream.ErrProtocol), errors.Is(err, stream.ErrTooLarge),
		errors.Is(err, stream.ErrVersion), errors.Is(err, stream.ErrTruncated):
		code = stream.CodeProtocol
		log.Warn("receiver: stream refused", "err", err)
	default: // the connection broke or timed out
		log.Info("receiver: stream ended", "durable", gs.j.LastSeq(), "err", err)
		return
	}
	refuseIn(c, hello.Version, code, err.Error())
}

var errJournal = errors.New("receiver: journal append failed")

// refuseDiverged refuses a Hello whose spool may not stream into the
// group's journal, logs it, and keeps it for the group's status. gs is nil
// when the group was not claimed.
func (srv *Server) refuseDiverged(c net.Conn, key groupKey, gs *groupState, hello stream.HelloMsg, id stream.Identity, err error, log *slog.Logger) {
	log.Error("receiver: refused", "code", stream.CodeDiverged, "err", err)
	if gs == nil {
		srv.mu.Lock()
		gs = srv.groups[key]
		srv.mu.Unlock()
	}
	if gs != nil {
		srv.noteOrigin(gs, nil, srv.refusal(hello, id.Host, err))
	}
	refuse(c, stream.CodeDiverged, err.Error())
}

func (srv *Server) write(c net.Conn, b []byte) error {
	c.SetWriteDeadline(time.Now().Add(srv.IdleTimeout))
	_, err := c.Write(b)
	return err
}

// receiving is the state of one stream.
type receiving struct {
	srv *Server
	gs  *groupState
	c   net.Conn
	br  *bufio.Reader
	fr  *stream.Reader
	dec *stream.BatchDecoder
	log *slog.Logger
	// version is the protocol version of the host's Hello: the stream's
	// frames, both ways, are of it.
	version uint8

	warnedBack, warnedAhead bool // logged once per session

	// pending holds the records decoded and not yet appended. They alias
	// the payloads and decompressed data of their batches, which belong to
	// the stream (the Reader and the decoder keep none of them), until the
	// append: then all of it is dropped.
	pending []record.Record
	bytes   int // raw bytes of pending
	// cur is the in-flight budget taken for the frame being read and
	// decoded, held the budget taken for pending: everything it
	// references. flush returns held.
	cur, held int64
	ack       []byte
}

// recordSize is what a record takes in pending.
const recordSize = int64(unsafe.Sizeof(record.Record{}))

// run reads frames until the connection ends or fails. It returns nil when
// the host closed the connection between frames. ctx ends when the session
// is killed.
func (r *receiving) run(ctx context.Context) error {
	r.fr.Reserve = func(cost int64) error { return r.reserve(ctx, cost) }
	r.dec.Fresh = true
	defer func() { r.srv.budget.release(r.cur + r.held) }()
	for {
		r.c.SetReadDeadline(time.Now().Add(r.srv.IdleTimeout))
		f, err := r.fr.Next()
		if err != nil {
			if len(r.pending) > 0 {
				// What arrived whole is still worth keeping.
				if aerr := r.flush(); aerr != nil {
					return aerr
				}
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if f.Version != r.version {
			return fmt.Errorf("%w: a stream v%d %v frame in a stream v%d session", stream.ErrProtocol, f.Version, f.Type, r.version)
		}
		switch f.Type {
		case stream.Ping:
		case stream.Batch:
			if err := r.batch(f); err != nil {
				return err
			}
			// Coalesce: while more has already arrived, read it before
			// paying for an fsync.
			if r.br.Buffered() > 0 && r.bytes < maxPending {
				continue
			}
		default:
			return fmt.Errorf("%w: %v frame from the host", stream.ErrProtocol, f.Type)
		}
		if err := r.flush(); err != nil {
			return err
		}
	}
}

// reserve takes a frame's cost (stream.FrameCost) from the in-flight
// budget before the frame is read. The stream holds nothing else for it
// then (cur is 0): if it must wait, it first appends what is pending, so
// that no stream waits while holding what another one waits for.
func (r *receiving) reserve(ctx context.Context, cost int64) error {
	b := r.srv.budget
	if cost > b.size {
		return fmt.Errorf("%w: a frame that needs %d bytes of memory, more than the replica's whole in-flight budget of %d bytes (max_inflight)",
			stream.ErrTooLarge, cost, b.size)
	}
	if !b.tryAcquire(cost) {
		if len(r.pending) > 0 {
			if err := r.flush(); err != nil {
				return err
			}
		}
		wctx, cancel := context.WithTimeout(ctx, r.srv.IdleTimeout)
		err := b.acquire(wctx, cost)
		cancel()
		switch {
		case err == nil:
		case ctx.Err() != nil:
			return ctx.Err() // replaced, or shutting down
		default:
			return fmt.Errorf("%w: waited %v for %d bytes of the in-flight budget of %d bytes (max_inflight)", errBusy, r.srv.IdleTimeout, cost, b.size)
		}
		// The wait is the replica's: the host gets the whole idle
		// timeout for the payload.
		r.c.SetReadDeadline(time.Now().Add(r.srv.IdleTimeout))
	}
	r.cur += cost
	return nil
}

// batch decodes a batch, trims what is durable or pending already, and
// adds the rest to pending.
func (r *receiving) batch(f stream.Frame) error {
	bi, recs, err := r.dec.Decode(f)
	if err != nil {
		return err
	}
	next := r.gs.j.LastSeq() + uint64(len(r.pending)) + 1
	if bi.First > next {
		return fmt.Errorf("%w: batch starts at seq %d, the replica expects %d: a gap", stream.ErrProtocol, bi.First, next)
	}
	if skip := next - bi.First; skip >= uint64(len(recs)) {
		r.srv.budget.release(r.cur) // all of it is a resend
		r.cur = 0
		return nil
	} else {
		recs = recs[skip:]
	}
	r.checkTimes(recs)
	if need := len(r.pending) + len(recs); len(r.pending) > 0 && cap(r.pending) < need {
		// Coalescing: pending grows into a slice of its own, paid for
		// from the budget, or, if it cannot be at once, is appended first.
		grow := int64(2*need) * recordSize
		if r.srv.budget.tryAcquire(grow) {
			r.held += grow
			r.pending = append(make([]record.Record, 0, 2*need), r.pending...)
		} else if err := r.flush(); err != nil {
			return err
		}
	}
	if len(r.pending) == 0 {
		r.pending = recs // decoded into a slice of its own
	} else {
		r.pending = append(r.pending, recs...)
	}
	r.held += r.cur
	r.cur = 0
	r.bytes += bi.RawLen
	return nil
}

// flush appends what is pending, acknowledges the durable seq, and
// returns the budget pending held.
func (r *receiving) flush() error {
	if len(r.pending) > 0 {
		first, last := r.pending[0].Seq, r.pending[len(r.pending)-1].Seq
		if err := r.gs.j.Append(r.srv.baseCtx, r.pending); errors.Is(err, record.ErrMembership) {
			// Refused whole before anything was written: the host broke
			// the rules of its own declared membership. The journal is fine.
			return fmt.Errorf("%w: seqs %d..%d refused, nothing stored: %w", stream.ErrProtocol, first, last, err)
		} else if err != nil {
			return fmt.Errorf("%w: seqs %d..%d: %w", errJournal, first, last, err)
		}
	}
	// Drop the records and, with them, every buffer they alias.
	r.pending, r.bytes = nil, 0
	r.srv.budget.release(r.held)
	r.held = 0
	r.ack = stream.AppendAckV(r.ack[:0], r.version, r.gs.j.LastSeq())
	return r.srv.write(r.c, r.ack)
}

// checkTimes keeps capture times from going back along the group's stream
// and from running ahead of the replica's own clock: the journal searches
// them as sorted and retention folds by them, so a host whose clock stepped
// back (an old host, or a restart with its spool emptied) or runs ahead
// must not reorder or fold the any-point window. A time earlier than the
// last one is raised to it. A time ahead of the replica's clock by more
// than MaxClockAhead is lowered, and never to a time later than the write
// it stamps: a restore point's time must not claim writes it lacks
// (invariant 3), and the replica's receipt time is later than the write by
// however long the record waited (a stalled link, a stopped daemon). So
// the first record found ahead takes the last time, and each next one
// moves on from it by as much as the host's own clock moved (the host's
// capture clock keeps the pace of real time even when its wall clock is
// off), at most to the receipt time. Each is counted in the group's
// ClockReport and logged once per session.
func (r *receiving) checkTimes(recs []record.Record) {
	now := r.srv.now().UnixNano()
	gs := r.gs
	before := gs.clock
	defer func() {
		if gs.clock != before {
			r.srv.mu.Lock()
			gs.published = gs.clock
			r.srv.mu.Unlock()
		}
	}()
	for i := range recs {
		t := recs[i].Time
		host := t
		switch {
		case t < gs.lastTime:
			gs.clock.Back++
			gs.clock.MaxBack = max(gs.clock.MaxBack, time.Duration(gs.lastTime-t))
			if !r.warnedBack {
				r.warnedBack = true
				r.log.Warn("receiver: the host's capture times went back; kept in order at the last one (is the host's clock stepping?)",
					"seq", recs[i].Seq, "back", time.Duration(gs.lastTime-t))
			}
			t = gs.lastTime
		case t > now+int64(MaxClockAhead):
			gs.clock.Ahead++
			gs.clock.MaxAhead = max(gs.clock.MaxAhead, time.Duration(t-now))
			if !r.warnedAhead {
				r.warnedAhead = true
				r.log.Warn("receiver: the host's clock is ahead of the replica's; capture times lowered to the replica's clock",
					"seq", recs[i].Seq, "ahead", time.Duration(t-now))
			}
			switch {
			case gs.lastTime == 0: // nothing to count from
				t = now
			case gs.lastAhead && host > gs.lastHost:
				t = min(gs.lastTime+(host-gs.lastHost), now)
			default:
				t = gs.lastTime
			}
			t = max(t, gs.lastTime)
		}
		recs[i].Time = t
		gs.lastTime, gs.lastHost, gs.lastAhead = t, host, host != t && host > now+int64(MaxClockAhead)
	}
}
