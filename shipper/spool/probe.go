package spool

import "context"

// A health check (the host daemon's watchdog, see package protect) proves
// that the spool still moves by going through its two locks without
// writing anything: the append lock every Append holds while it writes,
// and the sync semaphore every fsync (Sync, the background sync, Ack)
// holds. A write stuck in the kernel or a stuck fsync holds one of them,
// and so holds the probe.

// ProbeAppend returns once no Append is in progress: it takes the append
// lock and lets go of it. A caller holding the sequencer's lock around it
// goes through the same locks, in the same order, as a guest write.
func (s *Spool) ProbeAppend() {
	s.mu.Lock()
	defer s.mu.Unlock() // nothing to do inside: getting in is the proof
}

// ProbeSync returns once no fsync holds the spool, or ctx's error when ctx
// ends first. It does not sync anything.
func (s *Spool) ProbeSync(ctx context.Context) error {
	select {
	case s.syncSem <- struct{}{}:
		<-s.syncSem
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
