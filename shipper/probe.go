package shipper

import "context"

// The group's write path can be probed without writing a record, for a
// health check (package protect's watchdog): a write stuck in the kernel,
// a stuck fsync or a deadlock holds a probe for as long as it lasts, which
// is what probes are for. A caller that must stay responsive runs them on
// a goroutine of its own and treats one that has not come back as a wedged
// path. A probe holds no lock while it waits, so it never delays a guest
// write by more than one empty critical section.

// ProbeAppend returns once a guest write could take the group's write
// path: it takes the sequencer's lock and, under it, the spool's append
// lock, as a guest write does, and lets go of both.
func (g *Group) ProbeAppend() { g.seq.ProbeAppend() }

// ProbeSync returns once no fsync holds the group's spool (a FLUSH, the
// background sync, an acknowledgement), or ctx's error when ctx ends
// first. A long fsync holds no guest write (appends do not wait for it),
// so callers give it a longer bound than ProbeAppend.
func (g *Group) ProbeSync(ctx context.Context) error { return g.seq.ProbeSync(ctx) }

// ProbeAppend is Group.ProbeAppend for the sequencer and its spool.
func (s *Sequencer) ProbeAppend() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sp.ProbeAppend()
}

// ProbeSync is Group.ProbeSync for the sequencer's spool (healing may
// replace it: the one appended to now).
func (s *Sequencer) ProbeSync(ctx context.Context) error { return s.spool().ProbeSync(ctx) }
