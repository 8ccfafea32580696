package receiver

import (
	"fmt"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica/journal"
	"github.com/qcdp/qcdp/stream"
)

// Refusal is a stream the receiver refused as diverged: which spool, from
// which host, when, and why. The newest one of each group is kept in
// memory for the group's status (Server.Refused).
type Refusal struct {
	Spool   journal.SpoolID `json:"spool_id"`
	Created int64           `json:"spool_created_unix_ns"`
	Epoch   uint64          `json:"epoch"`
	Host    string          `json:"host"`
	Time    time.Time       `json:"time"`
	Reason  string          `json:"reason"`
}

// Refused returns the newest stream of a group refused as diverged since
// the server started.
func (srv *Server) Refused(tenant, group string) (Refusal, bool) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if gs, ok := srv.groups[groupKey{tenant, group}]; ok && gs.refused != nil {
		return *gs.refused, true
	}
	return Refusal{}, false
}

// divergedError says why a spool may not stream into a journal; its
// message is what the host is told.
type divergedError struct{ reason string }

func (e *divergedError) Error() string { return e.reason }

func diverged(format string, args ...any) error {
	return &divergedError{reason: fmt.Sprintf(format, args...)}
}

func when(ns int64) string { return time.Unix(0, ns).UTC().Format(time.RFC3339) }

// foreign is the check made before a connection claims its group: while
// the group's journal is known to be bound to another spool, the
// connection is refused without displacing the stream of the bound one
// (a second host using the same group name must not knock the first off).
func (srv *Server) foreign(key groupKey, hello stream.HelloMsg) error {
	srv.mu.Lock()
	gs := srv.groups[key]
	var bound *journal.Origin
	live := false
	if gs != nil {
		bound, live = gs.bound, gs.cur != nil
	}
	srv.mu.Unlock()
	if bound == nil {
		return nil
	}
	if bound.Spool != journal.SpoolID(hello.Spool.ID) {
		return otherSpool(hello, *bound)
	}
	if !related(*bound, hello.Spool.Epoch) { // a copy: it must not knock the bound one off
		return olderCopy(hello, *bound)
	}
	if viaPrev(*bound, hello.Spool.Epoch) && live {
		// Taken only while nothing came from the bound epoch, which a
		// live stream may be sending: the other copy, or a spool whose
		// crashed session the replica has not seen end yet (it retries).
		return diverged("spool %s of group %q is at epoch %#x, descending from the epoch before %#x, whose stream is live: "+
			"the spool directory is a copy (restored or cloned) of the one the replica streams from, or its last session has not ended yet",
			hello.Spool, hello.Group, hello.Spool.Epoch, bound.Epoch)
	}
	return nil
}

func otherSpool(hello stream.HelloMsg, o journal.Origin) error {
	return diverged("the replica holds group %q from spool %s (host %s, created %s); this is spool %s (created %s): "+
		"the host's spool directory was lost or recreated, or another host uses the same group name; the records are never spliced (resync needed)",
		hello.Group, o.Spool, o.Host, when(o.Created), hello.Spool, when(hello.Spool.Created))
}

func olderCopy(hello stream.HelloMsg, o journal.Origin) error {
	return diverged("spool %s of group %q is at epoch %#x, which does not follow epoch %#x the replica took its stream at: "+
		"the spool directory is a copy (restored or cloned) of the one the replica streams from; resync needed",
		hello.Spool, hello.Group, hello.Spool.Epoch, o.Epoch)
}

// related reports whether a spool at epoch may follow the bound epoch
// o.Epoch: the same open, a later open descending from it (or from the
// epoch bound before it: viaPrev, see admit), or, for legacy epochs
// (record.EpochParent 0: spools not welcomed since they had an identity),
// a higher one.
func related(o journal.Origin, epoch uint64) bool {
	parent := record.EpochParent(epoch)
	switch {
	case epoch == o.Epoch:
		return true
	case parent == 0:
		return epoch > o.Epoch && record.EpochParent(o.Epoch) == 0
	case parent == record.EpochTag(o.Epoch):
		return true
	}
	return viaPrev(o, epoch)
}

// viaPrev reports whether epoch descends from the epoch bound before the
// bound one, and not from the bound one.
func viaPrev(o journal.Origin, epoch uint64) bool {
	parent := record.EpochParent(epoch)
	return epoch != o.Epoch && parent != 0 && parent != record.EpochTag(o.Epoch) &&
		o.Prev != 0 && parent == record.EpochTag(o.Prev)
}

// admit checks the Hello's spool against the one the journal is bound to,
// binds the journal to it at its first stream (and notes a newer epoch),
// and returns the origin now bound. A spool that may not stream into the
// journal is a *divergedError; any other error is the journal's.
func admit(j Journal, hello stream.HelloMsg, host string) (journal.Origin, error) {
	durable := j.LastSeq()
	o, bound, err := j.Origin()
	if err != nil {
		return journal.Origin{}, err
	}
	hs := hello.Spool
	switch {
	case bound && o.Spool != journal.SpoolID(hs.ID):
		return o, otherSpool(hello, o)
	case bound && !related(o, hs.Epoch):
		return o, olderCopy(hello, o)
	case bound && viaPrev(o, hs.Epoch) && durable != o.EpochAt:
		// It descends from the epoch bound before: allowed only while
		// nothing came since (the spool crashed before it noted that the
		// replica took its newer epoch); else it is the other copy.
		return o, olderCopy(hello, o)
	case durable > hello.LastSeq:
		return o, diverged("the replica holds group %q up to seq %d, spool %s only up to %d: "+
			"the host's spool lost records the replica holds; resync needed", hello.Group, durable, hs, hello.LastSeq)
	case durable > hello.Intact && !bound && hello.Intact == 0:
		return o, diverged("the replica holds group %q up to seq %d from a spool that named no identity, and spool %s is new (created %s): "+
			"the host's spool directory was lost, or another host uses the same group name; the records are never spliced (resync needed)",
			hello.Group, durable, hs, when(hs.Created))
	case durable > hello.Intact:
		return o, diverged("the replica holds group %q up to seq %d, but spool %s vouches only for seqs up to %d: "+
			"it lost records it had sent (a host crash before their fsync, or an older copy of the directory); resync needed",
			hello.Group, durable, hs, hello.Intact)
	}
	switch {
	case !bound:
		o = journal.Origin{Spool: journal.SpoolID(hs.ID), Created: hs.Created, Epoch: hs.Epoch, Host: host, Since: durable, EpochAt: durable}
	case hs.Epoch == o.Epoch:
		return o, nil
	default:
		if !viaPrev(o, hs.Epoch) {
			o.Prev = o.Epoch // else it descends from Prev, which stays
		}
		o.Epoch, o.EpochAt = hs.Epoch, durable
	}
	if err := j.BindOrigin(o); err != nil {
		return journal.Origin{}, err
	}
	return o, nil
}

// noteOrigin records, after a handshake, the spool the group's journal is
// bound to, or the refusal of a diverged one.
func (srv *Server) noteOrigin(gs *groupState, bound *journal.Origin, refused *Refusal) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if bound != nil {
		gs.bound = bound
	}
	if refused != nil {
		gs.refused = refused
	}
}

// refusal describes a refused Hello.
func (srv *Server) refusal(hello stream.HelloMsg, host string, err error) *Refusal {
	return &Refusal{Spool: journal.SpoolID(hello.Spool.ID), Created: hello.Spool.Created, Epoch: hello.Spool.Epoch,
		Host: host, Time: srv.now(), Reason: err.Error()}
}
