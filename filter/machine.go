package filter

import (
	"fmt"
	"time"

	"github.com/qcdp/qcdp/record"
)

// The capture lifecycle is a state machine: machine.step takes one input (a
// QEMU event, a timer, a command's outcome, an operator's word) and, by the
// first rule of the table below that matches, returns the next machine and
// the actions to carry out. step does no I/O; Run's loop (drive.go) carries
// the actions out and feeds their outcomes back as inputs.

// inputKind is what the lifecycle reacts to.
type inputKind uint8

const (
	inAny inputKind = iota // in a rule: any input

	// Run's start.
	inAttached       // Run started a new job
	inAttachFailed   // Run could not start it (input.err)
	inAdoptedCopying // Run found an earlier daemon's job still in its initial copy
	inAdoptedResync  // ... one that is ready or stopped: what it copied may be lost

	// QEMU's events for the job.
	inReady       // BLOCK_JOB_READY
	inStopped     // BLOCK_JOB_ERROR with action stop: the target refused a write
	inJobEnded    // BLOCK_JOB_COMPLETED or BLOCK_JOB_CANCELLED (input.err says which)
	inMonitorGone // the QMP connection closed (input.err)
	inShutdown    // SHUTDOWN: QEMU is going away (a guest poweroff, a stop); it ends its jobs

	// Timers and the outcomes of actions.
	inRetryDue           // the resume backoff elapsed
	inResumed            // block-job-resume answered, whatever it said
	inPollDue            // the converge poll's tick
	inJobAbsent          // query-block-jobs: no such job (its end event is on the way)
	inJobStopped         // ... the job is paused or its I/O failed
	inJobRunning         // ... the job copies
	inJobConverged       // ... ready, everything copied, idle
	inQueryFailed        // ... the query failed
	inResyncEndMarked    // the resync-end marker is in the stream
	inResyncEndFailed    // ... it was refused
	inLateSyncMarked     // the sync-complete marker after a resync is in the stream
	inLateSyncMarkFailed // ... it was refused

	// The operator.
	inPause    // Pause
	inResume   // Resume
	inDetach   // Detach starts: the job's end is expected from now on
	inDetached // Detach is done: no job, no target node

	numInputs // not an input
)

var inputNames = [numInputs]string{
	inAny: "any", inAttached: "attached", inAttachFailed: "attach-failed",
	inAdoptedCopying: "adopted-copying", inAdoptedResync: "adopted-resync",
	inReady: "ready", inStopped: "stopped", inJobEnded: "job-ended", inMonitorGone: "monitor-gone", inShutdown: "shutdown",
	inRetryDue: "retry-due", inResumed: "resumed", inPollDue: "poll-due",
	inJobAbsent: "job-absent", inJobStopped: "job-stopped", inJobRunning: "job-running",
	inJobConverged: "job-converged", inQueryFailed: "query-failed",
	inResyncEndMarked: "resync-end-marked", inResyncEndFailed: "resync-end-failed",
	inLateSyncMarked: "late-sync-marked", inLateSyncMarkFailed: "late-sync-mark-failed",
	inPause: "pause", inResume: "resume", inDetach: "detach", inDetached: "detached",
}

func (k inputKind) String() string {
	if k < numInputs {
		return inputNames[k]
	}
	return fmt.Sprintf("input(%d)", uint8(k))
}

// input is one input; err is the cause for inputs that lead to Error.
type input struct {
	kind inputKind
	err  error
}

// flags are the machine's memory besides its State.
type flags uint8

const (
	userPaused flags = 1 << iota // the operator paused capture: never resume on our own
	syncDone                     // this job's sync-complete marker is in the stream
	detaching                    // a Detach is under way: the job's end is expected
	retrying                     // the resume timer is armed
	polling                      // the converge poll is on
	ended                        // the job ended or the monitor went: Run is over
	vmDown                       // QEMU said SHUTDOWN: the job's end is its normal end

	allFlags = userPaused | syncDone | detaching | retrying | polling | ended | vmDown
)

func (f flags) String() string {
	names := []string{"user-paused", "sync-done", "detaching", "retrying", "polling", "ended", "vm-down"}
	s := ""
	for i, n := range names {
		if f&(1<<i) != 0 {
			if s != "" {
				s += "|"
			}
			s += n
		}
	}
	if s == "" {
		return "-"
	}
	return s
}

// actionKind is what Run's loop does for the machine.
type actionKind uint8

const (
	actMark      actionKind = iota + 1 // write action.marker; feed action.ok or action.fail
	actResume                          // block-job-resume; feed inResumed
	actQuery                           // query-block-jobs; feed inJob* or inQueryFailed
	actArmRetry                        // (re)arm the resume timer for action.after
	actStartPoll                       // start the converge poll
	actStopPoll                        // stop it
	actEnd                             // Run returns action.err
)

// action is one thing to do. Only actMark, actResume and actQuery have an
// outcome, fed back as an input; a rule puts at most one of them, last.
type action struct {
	kind     actionKind
	marker   record.MarkerKind // actMark
	ok, fail inputKind         // actMark: inputs to feed after; inAny feeds none
	after    time.Duration     // actArmRetry
	err      error             // actEnd
}

func (a action) String() string {
	switch a.kind {
	case actMark:
		return "mark " + a.marker.String()
	case actResume:
		return "resume"
	case actQuery:
		return "query"
	case actArmRetry:
		return "arm-retry " + a.after.String()
	case actStartPoll:
		return "start-poll"
	case actStopPoll:
		return "stop-poll"
	case actEnd:
		return fmt.Sprintf("end %v", a.err)
	}
	return fmt.Sprintf("action(%d)", uint8(a.kind))
}

// effect is one thing a rule does: to the machine's flags, or an action it
// asks for (most do both, e.g. armRetry sets retrying and arms the timer).
type effect uint8

const (
	setUserPaused effect = iota + 1
	clearUserPaused
	setSyncDone
	setDetaching
	setVMDown
	clearRetrying // the resume timer fired
	resetBackoff
	armRetry        // retrying; arm the timer for the backoff, then double it
	startPoll       // polling; start the poll
	stopPoll        // not polling; stop the poll
	markResyncBegin // no outcome: the sequencer keeps a refused one owed
	markResyncEnd   // feeds inResyncEndMarked / inResyncEndFailed
	markLateSync    // sync-complete after a resync: inLateSyncMarked / inLateSyncMarkFailed
	resumeJob       // feeds inResumed
	queryJob        // feeds inJob* / inQueryFailed
	end             // ended; Run returns the new state's error
)

// stay in a rule's to: the state does not change.
const stay State = ""

// rule is one row of the transition table.
type rule struct {
	name string
	in   inputKind // inAny: every input
	from []State   // nil: every state
	need flags     // all of these set
	to   State     // stay: unchanged; Error takes input.err
	err  error     // with to: the error the new state carries instead
	do   []effect  // in order
}

func (r *rule) matches(m machine, in inputKind) bool {
	if r.in != inAny && r.in != in {
		return false
	}
	if r.from != nil && !contains(r.from, m.state) {
		return false
	}
	return m.flags&r.need == r.need
}

func contains(states []State, s State) bool {
	for _, x := range states {
		if x == s {
			return true
		}
	}
	return false
}

func do(e ...effect) []effect { return e }

// table is the capture lifecycle. The first rule that matches wins.
var table = []rule{
	// Detach's end is taken even after Run is over: the job vanished or
	// the monitor went, and Detach removed what was left.
	{name: "detach done", in: inDetached, to: Detached},
	{name: "over", need: ended},

	// Run's start. A new job's copy (sync=full) is not a write log: it is
	// bracketed as a resync, so no restore point is offered inside it even
	// when the replica has points of the disk from before (a re-attach);
	// the bracket closes at READY.
	{name: "attached", in: inAttached, to: InitialSync, do: do(markResyncBegin)},
	{name: "attach failed", in: inAttachFailed, to: Error, do: do(end)},
	// The earlier daemon opened the bracket; READY closes it.
	{name: "adopted copying", in: inAdoptedCopying, to: InitialSync},
	// Writes were refused while no daemon listened, or in-flight writes of
	// the old daemon may be lost: they are re-copied out of order.
	{name: "adopted resync", in: inAdoptedResync, to: Tracking, do: do(markResyncBegin, armRetry)},

	// READY: from here the target stream is a write log. The copy's
	// bracket closes, then the sync-complete marker follows (the rules of
	// the resync's end below). A refused resync-end is retried when the
	// job has converged again.
	{name: "ready", in: inReady, from: []State{InitialSync}, do: do(markResyncEnd)},
	{name: "ready again", in: inReady},

	// The target refused a write and the job stopped.
	{name: "stopped while paused", in: inStopped, need: userPaused, to: Paused},
	{name: "stopped again", in: inStopped, from: []State{Tracking}, do: do(armRetry)},
	{name: "stopped", in: inStopped, to: Tracking, do: do(markResyncBegin, armRetry)},

	// The job's end. A VM that shuts down (the guest powers off, QEMU is
	// stopped) cancels its jobs: that is a normal end, not an error, and
	// the disk is protected again at the VM's next start.
	{name: "vm shutting down", in: inShutdown, do: do(setVMDown)},
	{name: "detached", in: inJobEnded, need: detaching, to: Detached, do: do(end)},
	{name: "vm shut down", in: inJobEnded, need: vmDown, to: Detached, err: ErrVMShutdown, do: do(end)},
	{name: "vm gone", in: inMonitorGone, need: vmDown, to: Detached, err: ErrVMShutdown, do: do(end)},
	{name: "job vanished", in: inJobEnded, to: Error, do: do(end)},
	{name: "monitor gone", in: inMonitorGone, to: Error, do: do(end)},

	// Resume with backoff; whether the job runs shows in the poll, or in a
	// new BLOCK_JOB_ERROR.
	{name: "retry while paused", in: inRetryDue, need: userPaused, do: do(clearRetrying)},
	{name: "retry", in: inRetryDue, do: do(clearRetrying, resumeJob)},
	{name: "resumed", in: inResumed, to: Resync, do: do(startPoll)},

	// The converge poll. No event says that a resumed job has caught up.
	{name: "poll", in: inPollDue, need: polling, do: do(queryJob)},
	{name: "poll off", in: inPollDue},
	{name: "job absent", in: inJobAbsent}, // its end event is on the way
	{name: "query failed", in: inQueryFailed},
	{name: "job running", in: inJobRunning},
	{name: "job stopped while paused", in: inJobStopped, need: userPaused, to: Paused, do: do(stopPoll)},
	{name: "job stopped, retry armed", in: inJobStopped, need: retrying},
	{name: "job stopped", in: inJobStopped, to: Tracking, do: do(armRetry)},
	{name: "converged", in: inJobConverged, do: do(stopPoll, resetBackoff, markResyncEnd)},
	{name: "resync end marked", in: inResyncEndMarked, need: syncDone, to: Syncing},
	// The job got to READY through a resync: without this marker the
	// replica would offer no restore point for the disk.
	{name: "resync end marked, sync owed", in: inResyncEndMarked, do: do(markLateSync)},
	{name: "resync end failed", in: inResyncEndFailed, do: do(startPoll)},
	{name: "late sync marked", in: inLateSyncMarked, to: Syncing, do: do(setSyncDone)},
	// Polls again; the next convergence writes resync-end again too.
	{name: "late sync mark failed", in: inLateSyncMarkFailed, do: do(startPoll)},

	// The operator. A pause is never resumed but by Resume.
	{name: "pause", in: inPause, to: Paused, do: do(setUserPaused)},
	{name: "resume", in: inResume, need: userPaused, to: Tracking,
		do: do(clearUserPaused, markResyncBegin, resetBackoff, armRetry)},
	{name: "resume unpaused", in: inResume},
	{name: "detach", in: inDetach, do: do(setDetaching)},
}

// machine is the lifecycle's state: what `qcdp status` shows, why when in
// Error, its flags, and the next resume backoff.
type machine struct {
	state State
	err   error
	flags flags
	// backoff is the next wait before resuming a stopped job; it doubles
	// from minBackoff up to maxBackoff at each retry.
	backoff, minBackoff, maxBackoff time.Duration
}

func newMachine(minBackoff, maxBackoff time.Duration) machine {
	return machine{state: Detached, backoff: minBackoff, minBackoff: minBackoff, maxBackoff: maxBackoff}
}

// match returns the rule that takes in, nil if none does (the table's tests
// make sure one always does).
func (m machine) match(in inputKind) *rule {
	for i := range table {
		if table[i].matches(m, in) {
			return &table[i]
		}
	}
	return nil
}

// step takes one input and returns the next machine, the actions to carry
// out in order, and the rule it followed.
func (m machine) step(in input) (machine, []action, *rule) {
	r := m.match(in.kind)
	if r == nil {
		return m, nil, nil
	}
	if r.to != stay {
		m.state, m.err = r.to, r.err
		if r.to == Error {
			m.err = in.err
		}
	}
	var acts []action
	for _, e := range r.do {
		switch e {
		case setUserPaused:
			m.flags |= userPaused
		case clearUserPaused:
			m.flags &^= userPaused
		case setSyncDone:
			m.flags |= syncDone
		case setDetaching:
			m.flags |= detaching
		case setVMDown:
			m.flags |= vmDown
		case clearRetrying:
			m.flags &^= retrying
		case resetBackoff:
			m.backoff = m.minBackoff
		case armRetry:
			m.flags |= retrying
			acts = append(acts, action{kind: actArmRetry, after: m.backoff})
			m.backoff = min(2*m.backoff, m.maxBackoff)
		case startPoll:
			m.flags |= polling
			acts = append(acts, action{kind: actStartPoll})
		case stopPoll:
			m.flags &^= polling
			acts = append(acts, action{kind: actStopPoll})
		case markResyncBegin:
			acts = append(acts, action{kind: actMark, marker: record.ResyncBegin})
		case markResyncEnd:
			acts = append(acts, action{kind: actMark, marker: record.ResyncEnd, ok: inResyncEndMarked, fail: inResyncEndFailed})
		case markLateSync:
			acts = append(acts, action{kind: actMark, marker: record.SyncComplete, ok: inLateSyncMarked, fail: inLateSyncMarkFailed})
		case resumeJob:
			acts = append(acts, action{kind: actResume})
		case queryJob:
			acts = append(acts, action{kind: actQuery})
		case end:
			m.flags |= ended
			acts = append(acts, action{kind: actEnd, err: m.err})
		default:
			panic(fmt.Sprintf("filter: rule %q: unknown effect %d", r.name, e))
		}
	}
	return m, acts, r
}

// hasOutcome reports whether a carries an outcome Run's loop feeds back.
func (a action) hasOutcome() bool {
	switch a.kind {
	case actResume, actQuery:
		return true
	case actMark:
		return a.ok != inAny || a.fail != inAny
	}
	return false
}
