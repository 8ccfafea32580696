package protect

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// The host daemon under a supervisor: systemd's service notification
// protocol (sd_notify(3)) and its watchdog.
//
// Invariant 1 says protection never holds a guest write without bound.
// Inside the daemon every refusal is immediate (EIO), but a daemon that
// hangs (SIGSTOPped, a write stuck in the kernel, a stuck fsync, a
// deadlock) holds the write QEMU's mirror sent it for as long as it hangs,
// and QEMU's whole monitor with it: QEMU 7.2's NBD client has no request
// timeout. The bound comes from outside: systemd ends a Type=notify
// service that sends no WATCHDOG=1 for WatchdogSec; its sockets close,
// QEMU's NBD client (reconnect-delay 0) fails the request, the mirror job
// stops (on-target-error=stop) and the guest's write completes.
//
// So WATCHDOG=1 is sent only just after every group's write path was seen
// to move: shipper.Group.ProbeAppend takes the sequencer's lock and the
// spool's append lock as a guest write does. The loop probes, pets, waits
// half the watchdog interval and probes again; a probe that does not come
// back holds the loop, and systemd's deadline passes. Hence:
//   - a guest write held by the daemon is held at most WatchdogSec after
//     the write path last moved, plus the time the kill takes;
//   - a write path that stalls for less than about half of WatchdogSec
//     does not cost a restart (one that stalls longer may).
//
// An fsync holds no guest write (appends do not wait for it), and a long
// one is normal (a FLUSH after a large initial copy writes back gigabytes),
// so the spool's fsync semaphore (shipper.Group.ProbeSync) is probed on the
// side, and only an fsync that has held it for SyncStuckAfter (the
// kernel's own hung-task threshold) stops the petting: a disk that stopped
// answering, whose stuck fsync would stall QEMU's monitor at the job's
// next drain (detach), and which soon stops the writes too.

// SyncStuckAfter is how long an fsync may hold a group's spool before the
// watchdog is no longer petted.
const SyncStuckAfter = 2 * time.Minute

// writePath is what the watchdog probes: a protection group's.
type writePath interface {
	Name() string
	ProbeAppend()
	ProbeSync(ctx context.Context) error
}

// Supervisor speaks systemd's notification protocol for `qcdp host`:
// READY=1 (Ready), WATCHDOG=1 while the write paths move (Run), STOPPING=1
// when Run ends. Without NOTIFY_SOCKET every notification is a no-op;
// without WATCHDOG_USEC (or with a WATCHDOG_PID that is not this process)
// there is no watchdog to pet.
type Supervisor struct {
	interval  time.Duration // WATCHDOG_USEC; 0: no watchdog
	syncStuck time.Duration // SyncStuckAfter, shorter in tests
	paths     []writePath
	log       *slog.Logger
	status    string // the STATUS= of Ready, told again after a stall
	failing   bool   // the last notification failed (logged once a run)

	// syncs[i] is paths[i]'s fsync probe in flight, if any; wg waits
	// for them.
	syncs []syncProbe
	wg    sync.WaitGroup
}

// syncProbe is one group's fsync probe.
type syncProbe struct {
	since    time.Time     // when the one in flight started
	done     chan struct{} // closed when it came back; nil: none in flight
	reported bool          // its stall was logged
}

// NewSupervisor returns the supervisor of e's groups, with the watchdog
// interval systemd set in the environment (WATCHDOG_USEC, WATCHDOG_PID).
func NewSupervisor(e *Engine, log *slog.Logger) (*Supervisor, error) {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		return nil, fmt.Errorf("protect: systemd watchdog: %w", err)
	}
	names := make([]string, 0, len(e.groups))
	for n := range e.groups {
		names = append(names, n)
	}
	sort.Strings(names)
	paths := make([]writePath, 0, len(names))
	for _, n := range names {
		paths = append(paths, e.groups[n])
	}
	return newSupervisor(interval, SyncStuckAfter, paths, log), nil
}

func newSupervisor(interval, syncStuck time.Duration, paths []writePath, log *slog.Logger) *Supervisor {
	return &Supervisor{interval: interval, syncStuck: syncStuck, paths: paths, log: log,
		syncs: make([]syncProbe, len(paths))}
}

// Watchdog is the watchdog interval systemd asked for, 0 for none.
func (s *Supervisor) Watchdog() time.Duration { return s.interval }

// Ready tells systemd the daemon serves (READY=1), with a status line.
// Systemd's watchdog starts counting from here.
func (s *Supervisor) Ready(status string) error {
	s.status = status
	return notify(daemon.SdNotifyReady + "\nSTATUS=" + status)
}

// Run pets systemd's watchdog until ctx ends, each time only after every
// write path was just seen to move, then tells systemd the daemon is
// stopping (STOPPING=1). Without a watchdog it only waits for ctx. Call it
// once, after Ready. An append probe stuck on a wedged write path holds
// Run until the path moves again, even after ctx ends: such a daemon is
// ended by systemd (the watchdog, or TimeoutStopSec), not by itself.
func (s *Supervisor) Run(ctx context.Context) {
	defer s.tell(daemon.SdNotifyStopping)
	if s.interval <= 0 {
		<-ctx.Done()
		return
	}
	defer s.wg.Wait() // the fsync probes end with ctx
	s.log.Info("systemd watchdog on: petted while the write paths move", "watchdog", s.interval, "groups", len(s.paths))
	next := time.NewTimer(0)
	defer next.Stop()
	stalled := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-next.C:
		}
		moving := s.checkSyncs(ctx)
		took := s.probeAppends()
		if ctx.Err() != nil {
			return
		}
		slow := took >= s.stallAfter()
		switch {
		case !moving:
			stalled = true
		case slow:
			stalled = true
			s.tell(daemon.SdNotifyWatchdog)
		case stalled:
			stalled = false
			s.log.Info("the write paths move again; petting the watchdog")
			s.tell(daemon.SdNotifyWatchdog + "\nSTATUS=" + s.status)
		default:
			s.tell(daemon.SdNotifyWatchdog)
		}
		next.Reset(s.interval / 2)
	}
}

// stallAfter is how long an append probe may take before it is reported:
// a quarter of the interval, so the report comes well before systemd acts.
func (s *Supervisor) stallAfter() time.Duration { return s.interval / 4 }

// checkSyncs starts an fsync probe for every group that has none in
// flight, and reports whether none has been in flight for syncStuck.
func (s *Supervisor) checkSyncs(ctx context.Context) bool {
	ok := true
	now := time.Now()
	for i, p := range s.paths {
		sp := &s.syncs[i]
		if sp.done != nil {
			select {
			case <-sp.done:
				if sp.reported {
					s.log.Warn("fsync moved again", "group", p.Name(), "held", now.Sub(sp.since).Round(time.Millisecond))
				}
				sp.done, sp.reported = nil, false
			default:
			}
		}
		if sp.done == nil {
			done := make(chan struct{})
			sp.since, sp.done = now, done
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer close(done)
				p.ProbeSync(ctx) // nil, or ctx's error: Run ends then
			}()
			continue
		}
		if held := now.Sub(sp.since); held >= s.syncStuck {
			ok = false
			if !sp.reported {
				sp.reported = true
				s.log.Error("fsync stuck: the spool's disk does not answer; the watchdog is not petted, systemd ends the daemon",
					"group", p.Name(), "held", held.Round(time.Millisecond), "watchdog", s.interval)
				s.tell(fmt.Sprintf("STATUS=group %s: fsync stuck for %v; watchdog not petted", p.Name(), held.Round(time.Second)))
			}
		}
	}
	return ok
}

// probeAppends probes every group's append path in turn and returns how
// long the slowest took.
func (s *Supervisor) probeAppends() time.Duration {
	var slowest time.Duration
	for _, p := range s.paths {
		slowest = max(slowest, s.probeAppend(p))
	}
	return slowest
}

// probeAppend runs one append probe on a goroutine it waits for, and
// reports (log and STATUS=) a probe that has not come back after
// stallAfter.
func (s *Supervisor) probeAppend(p writePath) time.Duration {
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.ProbeAppend()
	}()
	stall := time.NewTimer(s.stallAfter())
	defer stall.Stop()
	for {
		select {
		case <-done:
			took := time.Since(start)
			if took >= s.stallAfter() {
				s.log.Warn("write path moved again after a stall", "group", p.Name(), "stalled", took.Round(time.Millisecond))
			}
			return took
		case <-stall.C:
			s.log.Error("write path stalled: guest writes may be held; the watchdog is not petted, systemd ends the daemon if it stays so",
				"group", p.Name(), "for", s.stallAfter(), "watchdog", s.interval)
			s.tell(fmt.Sprintf("STATUS=group %s: write path stalled; watchdog not petted", p.Name()))
		}
	}
}

// tell sends a notification, logging the first failure of a run (a
// missed WATCHDOG=1 lets systemd's deadline pass: the safe side).
func (s *Supervisor) tell(state string) {
	err := notify(state)
	switch {
	case err != nil && !s.failing:
		s.log.Warn("systemd notification failed", "err", err)
	case err == nil && s.failing:
		s.log.Info("systemd notifications go through again")
	}
	s.failing = err != nil
}

func notify(state string) error {
	if _, err := daemon.SdNotify(false, state); err != nil {
		return fmt.Errorf("protect: sd_notify %q: %w", state, err)
	}
	return nil
}
