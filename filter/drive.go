package filter

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/qcdp/qcdp/qmp"
	"github.com/qcdp/qcdp/record"
)

// feed takes one input through the machine, from Run's loop or from an
// operator's call: the state is visible to State at once, and the actions
// wait, in order, for Run's loop to carry them out.
func (c *Capture) feed(in input) {
	c.mu.Lock()
	old := c.m.state
	next, acts, r := c.m.step(in)
	c.m = next
	c.todo = append(c.todo, acts...)
	if old != next.state {
		close(c.changed)
		c.changed = make(chan struct{})
		if next.state == Syncing && c.cfg.Resync != nil {
			c.syncRefusals = c.cfg.Resync.Refusals()
		}
	}
	c.mu.Unlock()
	if r == nil {
		c.log.Error("no capture rule takes this input", "input", in.kind, "state", old)
		return
	}
	if old != next.state {
		c.log.Info("capture state", "from", old, "to", next.state, "err", next.err)
	}
	if len(acts) > 0 {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// follow is Run's loop: it turns QEMU's events, the timers and ctx into
// inputs, and carries out the actions the machine asks for.
func (c *Capture) follow(ctx context.Context, events <-chan qmp.Event) error {
	job := JobID(c.cfg.Disk)
	t := timers{every: c.cfg.ConvergePoll}
	defer t.stop()
	for {
		if done, err := c.drain(ctx, &t); done {
			return err
		}
		c.maybePromote(ctx)
		var in input
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-events:
			if !ok && ctx.Err() != nil {
				// The subscription ends with ctx too: that is a cancel,
				// not QEMU going away.
				return ctx.Err()
			}
			if !ok {
				in = input{kind: inMonitorGone, err: fmt.Errorf("filter: disk %s: %w", c.cfg.Disk, ErrMonitorGone)}
			} else if in, ok = eventInput(ev, job); !ok {
				continue
			}
		case <-t.retryC:
			t.retryC = nil
			in = input{kind: inRetryDue}
		case <-t.pollC:
			in = input{kind: inPollDue}
		case <-c.wake:
			continue // an operator's input left actions
		}
		c.feed(in)
	}
}

// maybePromote makes the live bitmap generation once a full copy has
// converged (see promote); it is tried again at the next turn of the loop
// if QEMU refused.
func (c *Capture) maybePromote(ctx context.Context) {
	if c.cfg.Resync == nil || c.promoted {
		return
	}
	if st, _ := c.State(); st != Syncing {
		return
	}
	if err := c.promote(ctx); err != nil {
		c.log.Warn("live bitmap generation", "err", err)
		return
	}
	c.promoted = true
}

// drain carries out the actions waiting, feeding back their outcomes, until
// none waits. done is set when the machine ended Run, with Run's result.
func (c *Capture) drain(ctx context.Context, t *timers) (done bool, err error) {
	for {
		c.mu.Lock()
		if len(c.todo) == 0 {
			c.mu.Unlock()
			return false, nil
		}
		a := c.todo[0]
		c.todo = c.todo[1:]
		c.mu.Unlock()
		switch a.kind {
		case actEnd:
			c.endedOnce.Do(func() { close(c.ended) })
			return true, a.err
		case actArmRetry:
			t.armRetry(a.after)
		case actStartPoll:
			t.startPoll()
		case actStopPoll:
			t.stopPoll()
		case actMark:
			if in := c.markOutcome(a); in != inAny {
				c.feed(input{kind: in})
			}
		case actResume:
			if err := c.q.BlockJobResume(ctx, JobID(c.cfg.Disk)); err != nil && !qmp.IsClass(err, qmp.ClassGenericError) {
				// GenericError: the job was not paused (it ran again by
				// itself, or READY came without a stop).
				c.log.Warn("resume capture job", "err", err)
			}
			c.feed(input{kind: inResumed})
		case actQuery:
			info, err := c.findJob(ctx)
			if err != nil {
				c.log.Warn("query capture job", "err", err)
				c.feed(input{kind: inQueryFailed})
				continue
			}
			c.feed(input{kind: jobInput(info)})
		default:
			panic(fmt.Sprintf("filter: unknown action %v", a))
		}
	}
}

// markOutcome writes a marker and returns the input its outcome feeds.
func (c *Capture) markOutcome(a action) inputKind {
	if _, err := c.mark.MarkDisk(a.marker, c.cfg.Disk); err != nil {
		level := slog.LevelWarn
		if a.marker == record.ResyncEnd {
			// The sequencer refuses it while refused writes are owed a
			// re-copy; the next convergence tries again.
			level = slog.LevelDebug
		}
		c.log.Log(context.Background(), level, a.marker.String()+" marker not written", "err", err)
		return a.fail
	}
	return a.ok
}

// eventInput returns the input a QMP event is for the job, if any.
func eventInput(ev qmp.Event, job string) (input, bool) {
	if ev.Name == qmp.EventShutdown {
		return input{kind: inShutdown}, true
	}
	if ev.Str("device") != job && ev.Str("id") != job {
		return input{}, false
	}
	switch ev.Name {
	case qmp.EventBlockJobReady:
		return input{kind: inReady}, true
	case qmp.EventBlockJobError:
		// report would have killed the job and ignore goes on: the job
		// is started with on-target-error=stop.
		return input{kind: inStopped}, ev.Str("action") == qmp.ErrorActionStop
	case qmp.EventBlockJobCompleted, qmp.EventBlockJobCancelled:
		return input{kind: inJobEnded, err: fmt.Errorf("%w: %s %s", ErrJobVanished, ev.Name, ev.Str("error"))}, true
	}
	return input{}, false
}

// jobInput returns what query-block-jobs says about the job for the poll.
func jobInput(job *qmp.BlockJobInfo) inputKind {
	switch {
	case job == nil:
		return inJobAbsent
	case job.Paused || job.IOStatus != "ok":
		return inJobStopped
	case job.Ready && job.Offset == job.Len && !job.Busy:
		return inJobConverged
	}
	return inJobRunning
}

// adoptInput returns what an earlier daemon's job needs.
func adoptInput(job *qmp.BlockJobInfo) inputKind {
	if job.Paused || job.Status == "paused" || job.IOStatus != "ok" || job.Ready {
		return inAdoptedResync
	}
	return inAdoptedCopying
}

// timers are Run's loop's two clocks: the resume backoff and the converge
// poll. A nil channel is a clock that is off.
type timers struct {
	every  time.Duration
	retry  *time.Timer
	retryC <-chan time.Time
	poll   *time.Ticker
	pollC  <-chan time.Time
}

func (t *timers) armRetry(d time.Duration) {
	if t.retry == nil {
		t.retry = time.NewTimer(d)
	} else {
		t.retry.Reset(d)
	}
	t.retryC = t.retry.C
}

func (t *timers) startPoll() {
	if t.pollC != nil {
		return
	}
	if t.poll == nil {
		t.poll = time.NewTicker(t.every)
	} else {
		t.poll.Reset(t.every)
	}
	t.pollC = t.poll.C
}

func (t *timers) stopPoll() {
	if t.poll != nil {
		t.poll.Stop()
	}
	t.pollC = nil
}

func (t *timers) stop() {
	if t.retry != nil {
		t.retry.Stop()
	}
	t.stopPoll()
}
