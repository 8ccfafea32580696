package filter

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/qmp"
	"github.com/qcdp/qcdp/record"
)

const (
	minB = 10 * time.Millisecond
	maxB = 40 * time.Millisecond
)

var allStates = []State{InitialSync, Syncing, Tracking, Resync, Paused, Error, Detached}

// at is a machine in state s with flags f and the first backoff next.
func at(s State, f flags) machine {
	m := newMachine(minB, maxB)
	m.state, m.flags = s, f
	return m
}

func (m machine) withBackoff(d time.Duration) machine { m.backoff = d; return m }

// Actions as the table's rules emit them.
var (
	aMarkLateSync   = action{kind: actMark, marker: record.SyncComplete, ok: inLateSyncMarked, fail: inLateSyncMarkFailed}
	aMarkBegin      = action{kind: actMark, marker: record.ResyncBegin}
	aMarkEnd        = action{kind: actMark, marker: record.ResyncEnd, ok: inResyncEndMarked, fail: inResyncEndFailed}
	aResume         = action{kind: actResume}
	aQuery          = action{kind: actQuery}
	aStartPoll      = action{kind: actStartPoll}
	aStopPoll       = action{kind: actStopPoll}
	errCause        = errors.New("cause")
	aEnd            = action{kind: actEnd, err: errCause}
	aEndNil         = action{kind: actEnd}
	arm             = func(d time.Duration) action { return action{kind: actArmRetry, after: d} }
	noActions       []action
	userPausedRetry = userPaused | retrying
)

// transitionCase is one transition: machine from takes in and becomes want,
// asking for acts, by the rule named.
type transitionCase struct {
	rule string
	from machine
	in   inputKind
	want machine
	acts []action
}

// transitionCases has at least one case for every rule of the table
// (TestTableCoveredByCases checks it).
var transitionCases = []transitionCase{
	// Detach's end and Run's end.
	{"detach done", at(Syncing, detaching), inDetached, at(Detached, detaching), noActions},
	{"detach done", at(Error, ended), inDetached, at(Detached, ended), noActions},
	{"over", at(Error, ended), inResume, at(Error, ended), noActions},
	{"over", at(Detached, ended|detaching), inStopped, at(Detached, ended|detaching), noActions},
	{"over", at(Error, ended|userPaused), inRetryDue, at(Error, ended|userPaused), noActions},

	// Start.
	{"attached", at(Detached, 0), inAttached, at(InitialSync, 0), []action{aMarkBegin}},
	{"attached", at(Paused, userPaused), inAttached, at(InitialSync, userPaused), []action{aMarkBegin}},
	{"attach failed", at(Detached, 0), inAttachFailed, machine{state: Error, err: errCause, flags: ended, backoff: minB, minBackoff: minB, maxBackoff: maxB}, []action{aEnd}},
	{"adopted copying", at(Detached, 0), inAdoptedCopying, at(InitialSync, 0), noActions},
	{"adopted resync", at(Detached, 0), inAdoptedResync, at(Tracking, retrying).withBackoff(2 * minB), []action{aMarkBegin, arm(minB)}},

	// READY.
	{"ready", at(InitialSync, 0), inReady, at(InitialSync, 0), []action{aMarkEnd}},
	{"ready", at(InitialSync, userPaused), inReady, at(InitialSync, userPaused), []action{aMarkEnd}},
	{"ready again", at(Resync, polling), inReady, at(Resync, polling), noActions},
	{"ready again", at(Syncing, syncDone), inReady, at(Syncing, syncDone), noActions},
	{"ready again", at(Paused, userPaused), inReady, at(Paused, userPaused), noActions},
	{"ready again", at(Tracking, retrying), inReady, at(Tracking, retrying), noActions},

	// The target refused a write.
	{"stopped while paused", at(Syncing, userPaused|syncDone), inStopped, at(Paused, userPaused|syncDone), noActions},
	{"stopped while paused", at(Paused, userPaused|polling), inStopped, at(Paused, userPaused|polling), noActions},
	{"stopped again", at(Tracking, retrying).withBackoff(2 * minB), inStopped, at(Tracking, retrying).withBackoff(4 * minB), []action{arm(2 * minB)}},
	{"stopped again", at(Tracking, retrying).withBackoff(maxB), inStopped, at(Tracking, retrying).withBackoff(maxB), []action{arm(maxB)}},
	{"stopped", at(Syncing, syncDone), inStopped, at(Tracking, syncDone|retrying).withBackoff(2 * minB), []action{aMarkBegin, arm(minB)}},
	{"stopped", at(InitialSync, 0), inStopped, at(Tracking, retrying).withBackoff(2 * minB), []action{aMarkBegin, arm(minB)}},
	{"stopped", at(Resync, polling).withBackoff(2 * minB), inStopped, at(Tracking, polling|retrying).withBackoff(4 * minB), []action{aMarkBegin, arm(2 * minB)}},

	// The job's end.
	{"detached", at(Paused, userPaused|detaching), inJobEnded, at(Detached, userPaused|detaching|ended), []action{aEndNil}},
	{"vm shutting down", at(Syncing, syncDone), inShutdown, at(Syncing, syncDone|vmDown), noActions},
	{"vm shutting down", at(Tracking, retrying), inShutdown, at(Tracking, retrying|vmDown), noActions},
	{"vm shut down", at(Syncing, syncDone|vmDown), inJobEnded, machine{state: Detached, err: ErrVMShutdown, flags: syncDone | vmDown | ended, backoff: minB, minBackoff: minB, maxBackoff: maxB}, []action{{kind: actEnd, err: ErrVMShutdown}}},
	{"vm gone", at(Resync, polling|vmDown), inMonitorGone, machine{state: Detached, err: ErrVMShutdown, flags: polling | vmDown | ended, backoff: minB, minBackoff: minB, maxBackoff: maxB}, []action{{kind: actEnd, err: ErrVMShutdown}}},
	{"job vanished", at(Syncing, syncDone), inJobEnded, machine{state: Error, err: errCause, flags: syncDone | ended, backoff: minB, minBackoff: minB, maxBackoff: maxB}, []action{aEnd}},
	{"monitor gone", at(Tracking, retrying|detaching), inMonitorGone, machine{state: Error, err: errCause, flags: retrying | detaching | ended, backoff: minB, minBackoff: minB, maxBackoff: maxB}, []action{aEnd}},

	// Resume.
	{"retry while paused", at(Paused, userPausedRetry), inRetryDue, at(Paused, userPaused), noActions},
	{"retry", at(Tracking, retrying), inRetryDue, at(Tracking, 0), []action{aResume}},
	{"resumed", at(Tracking, 0), inResumed, at(Resync, polling), []action{aStartPoll}},
	{"resumed", at(Paused, userPaused), inResumed, at(Resync, userPaused|polling), []action{aStartPoll}},

	// The converge poll.
	{"poll", at(Resync, polling), inPollDue, at(Resync, polling), []action{aQuery}},
	{"poll off", at(Syncing, 0), inPollDue, at(Syncing, 0), noActions},
	{"job absent", at(Resync, polling), inJobAbsent, at(Resync, polling), noActions},
	{"query failed", at(Resync, polling), inQueryFailed, at(Resync, polling), noActions},
	{"job running", at(Resync, polling), inJobRunning, at(Resync, polling), noActions},
	{"job stopped while paused", at(Paused, userPaused|polling), inJobStopped, at(Paused, userPaused), []action{aStopPoll}},
	{"job stopped, retry armed", at(Tracking, retrying|polling), inJobStopped, at(Tracking, retrying|polling), noActions},
	{"job stopped", at(Resync, polling).withBackoff(2 * minB), inJobStopped, at(Tracking, polling|retrying).withBackoff(4 * minB), []action{arm(2 * minB)}},
	{"converged", at(Resync, polling).withBackoff(maxB), inJobConverged, at(Resync, 0), []action{aStopPoll, aMarkEnd}},
	{"converged", at(Paused, userPaused|polling|syncDone), inJobConverged, at(Paused, userPaused|syncDone), []action{aStopPoll, aMarkEnd}},
	{"resync end marked", at(Resync, syncDone), inResyncEndMarked, at(Syncing, syncDone), noActions},
	{"resync end marked, sync owed", at(Resync, 0), inResyncEndMarked, at(Resync, 0), []action{aMarkLateSync}},
	{"resync end failed", at(Resync, 0), inResyncEndFailed, at(Resync, polling), []action{aStartPoll}},
	{"late sync marked", at(Resync, 0), inLateSyncMarked, at(Syncing, syncDone), noActions},
	{"late sync mark failed", at(Resync, 0), inLateSyncMarkFailed, at(Resync, polling), []action{aStartPoll}},

	// The operator.
	{"pause", at(Syncing, syncDone), inPause, at(Paused, syncDone|userPaused), noActions},
	{"pause", at(Detached, 0), inPause, at(Paused, userPaused), noActions},
	{"pause", at(Tracking, retrying|polling), inPause, at(Paused, userPaused|retrying|polling), noActions},
	{"resume", at(Paused, userPaused|syncDone).withBackoff(maxB), inResume, at(Tracking, syncDone|retrying).withBackoff(2 * minB), []action{aMarkBegin, arm(minB)}},
	{"resume unpaused", at(Syncing, syncDone), inResume, at(Syncing, syncDone), noActions},
	{"detach", at(Paused, userPaused), inDetach, at(Paused, userPaused|detaching), noActions},
}

func TestTransitions(t *testing.T) {
	for i, tc := range transitionCases {
		t.Run(fmt.Sprintf("%d %s", i, tc.rule), func(t *testing.T) {
			var err error
			if tc.want.state == Error {
				err = errCause
			}
			got, acts, r := tc.from.step(input{kind: tc.in, err: err})
			if r == nil || r.name != tc.rule {
				t.Fatalf("%s in %s [%v] followed rule %v, want %q", tc.in, tc.from.state, tc.from.flags, ruleName(r), tc.rule)
			}
			if got.state != tc.want.state || got.flags != tc.want.flags || got.backoff != tc.want.backoff || !errors.Is(got.err, tc.want.err) || (tc.want.err == nil) != (got.err == nil) {
				t.Errorf("%s in %s [%v] → %s [%v] backoff %v err %v, want %s [%v] backoff %v err %v", tc.in, tc.from.state, tc.from.flags,
					got.state, got.flags, got.backoff, got.err, tc.want.state, tc.want.flags, tc.want.backoff, tc.want.err)
			}
			if !slices.EqualFunc(acts, tc.acts, sameAction) {
				t.Errorf("%s in %s [%v]: actions %v, want %v", tc.in, tc.from.state, tc.from.flags, acts, tc.acts)
			}
		})
	}
}

func sameAction(a, b action) bool {
	return a.kind == b.kind && a.marker == b.marker && a.ok == b.ok && a.fail == b.fail && a.after == b.after && errors.Is(a.err, b.err) && (a.err == nil) == (b.err == nil)
}

func ruleName(r *rule) string {
	if r == nil {
		return "none"
	}
	return fmt.Sprintf("%q", r.name)
}

// Every rule of the table has a case, so a rule added or changed without a
// test fails here.
func TestTableCoveredByCases(t *testing.T) {
	tested := map[string]bool{}
	for _, tc := range transitionCases {
		tested[tc.rule] = true
	}
	names := map[string]bool{}
	for _, r := range table {
		if names[r.name] {
			t.Errorf("two rules are named %q", r.name)
		}
		names[r.name] = true
		if !tested[r.name] {
			t.Errorf("rule %q has no transition case", r.name)
		}
	}
	for name := range tested {
		if !names[name] {
			t.Errorf("transition case for rule %q, which the table does not have", name)
		}
	}
}

// eachMachine calls fn for every state with every combination of flags.
func eachMachine(fn func(m machine)) {
	for _, s := range allStates {
		for f := flags(0); f <= allFlags; f++ {
			fn(at(s, f))
		}
	}
}

func eachInput(fn func(in inputKind)) {
	for in := inAny + 1; in < numInputs; in++ {
		fn(in)
	}
}

// No input is ever dropped on the floor: some rule takes every input in
// every state with any flags, and no later rule is hidden by earlier ones.
func TestEveryInputHasARule(t *testing.T) {
	used := map[string]bool{}
	eachMachine(func(m machine) {
		eachInput(func(in inputKind) {
			r := m.match(in)
			if r == nil {
				t.Errorf("no rule takes %s in %s [%v]", in, m.state, m.flags)
				return
			}
			used[r.name] = true
		})
	})
	for _, r := range table {
		if !used[r.name] {
			t.Errorf("rule %q can never match: earlier rules take all its inputs", r.name)
		}
	}
}

// Operator pause has no auto-resume: while paused, nothing but Resume makes
// the lifecycle resume the job or forget the pause.
func TestPausedNeverResumesByItself(t *testing.T) {
	eachMachine(func(m machine) {
		if m.flags&userPaused == 0 {
			return
		}
		eachInput(func(in inputKind) {
			if in == inResume {
				return
			}
			next, acts, r := m.step(input{kind: in, err: errCause})
			if slices.ContainsFunc(acts, func(a action) bool { return a.kind == actResume }) {
				t.Errorf("%s in %s [%v] resumes the job (rule %s)", in, m.state, m.flags, ruleName(r))
			}
			if next.flags&userPaused == 0 {
				t.Errorf("%s in %s [%v] forgets the operator's pause (rule %s)", in, m.state, m.flags, ruleName(r))
			}
		})
	})
}

// Once Run is over, only Detach's end changes the machine, and nothing is
// asked of Run's loop, which is gone.
func TestEndedTakesNothing(t *testing.T) {
	eachMachine(func(m machine) {
		if m.flags&ended == 0 {
			return
		}
		eachInput(func(in inputKind) {
			next, acts, r := m.step(input{kind: in, err: errCause})
			if len(acts) > 0 {
				t.Errorf("%s after the end asks for %v (rule %s)", in, acts, ruleName(r))
			}
			if in != inDetached && (next.state != m.state || next.flags != m.flags) {
				t.Errorf("%s after the end changes %s [%v] to %s [%v] (rule %s)", in, m.state, m.flags, next.state, next.flags, ruleName(r))
			}
		})
	})
}

// Run ends exactly when the job ended, the monitor went or attach failed,
// in Error with the cause, in Detached after a Detach, or in Detached with
// ErrVMShutdown once QEMU said SHUTDOWN (a guest poweroff is no error).
func TestRunEndsOnlyAtTheEnd(t *testing.T) {
	eachMachine(func(m machine) {
		if m.flags&ended != 0 {
			return
		}
		eachInput(func(in inputKind) {
			next, acts, r := m.step(input{kind: in, err: errCause})
			ends := slices.ContainsFunc(acts, func(a action) bool { return a.kind == actEnd })
			wantEnd := in == inJobEnded || in == inMonitorGone || in == inAttachFailed
			if ends != wantEnd {
				t.Errorf("%s in %s [%v]: ends Run %v, want %v (rule %s)", in, m.state, m.flags, ends, wantEnd, ruleName(r))
			}
			if !ends {
				return
			}
			if next.flags&ended == 0 {
				t.Errorf("%s in %s [%v] ends Run but not the machine", in, m.state, m.flags)
			}
			switch {
			case in == inJobEnded && m.flags&detaching != 0:
				if next.state != Detached || acts[len(acts)-1].err != nil {
					t.Errorf("the job's end during a Detach: %s, %v; want detached and Run returning nil", next.state, acts)
				}
			case m.flags&vmDown != 0 && in != inAttachFailed:
				if next.state != Detached || !errors.Is(next.err, ErrVMShutdown) || !errors.Is(acts[len(acts)-1].err, ErrVMShutdown) {
					t.Errorf("%s in %s [%v] after SHUTDOWN: %s (%v), %v; want detached with ErrVMShutdown", in, m.state, m.flags, next.state, next.err, acts)
				}
			default:
				if next.state != Error || !errors.Is(next.err, errCause) || !errors.Is(acts[len(acts)-1].err, errCause) {
					t.Errorf("%s in %s [%v]: %s (%v), %v; want error with the cause", in, m.state, m.flags, next.state, next.err, acts)
				}
			}
		})
	})
}

// Run's loop feeds an action's outcome back after the actions before it:
// every rule asks for at most one action with an outcome, and last.
func TestOutcomeComesLast(t *testing.T) {
	eachMachine(func(m machine) {
		eachInput(func(in inputKind) {
			_, acts, r := m.step(input{kind: in})
			for i, a := range acts {
				if a.hasOutcome() && i != len(acts)-1 {
					t.Errorf("rule %s: %v has an outcome but is not last in %v", ruleName(r), a, acts)
				}
			}
		})
	})
}

// The resume backoff doubles at each retry up to its maximum, and starts
// again from the minimum after the job converged or the operator resumed.
func TestBackoff(t *testing.T) {
	m := at(Syncing, syncDone)
	var waits []time.Duration
	step := func(in inputKind) {
		t.Helper()
		var acts []action
		m, acts, _ = m.step(input{kind: in})
		for _, a := range acts {
			if a.kind == actArmRetry {
				waits = append(waits, a.after)
			}
		}
	}
	step(inStopped)
	for range 4 {
		step(inRetryDue)
		step(inResumed)
		step(inStopped)
	}
	step(inRetryDue)
	step(inResumed)
	step(inPollDue)
	step(inJobConverged)
	step(inResyncEndMarked)
	if m.state != Syncing {
		t.Fatalf("state %s after convergence, want syncing", m.state)
	}
	step(inStopped)
	step(inPause)
	step(inResume)
	want := []time.Duration{minB, 2 * minB, 4 * minB, maxB, maxB, minB, minB}
	if !slices.Equal(waits, want) {
		t.Errorf("resume waits %v, want %v", waits, want)
	}
}

func TestEventInput(t *testing.T) {
	const job = "qcdp-disk0"
	ev := func(name string, data map[string]any) qmp.Event { return qmp.Event{Name: name, Data: data} }
	tests := []struct {
		name string
		ev   qmp.Event
		want inputKind // inAny: not for the lifecycle
	}{
		{"ready", ev(qmp.EventBlockJobReady, map[string]any{"device": job, "len": 1.0}), inReady},
		{"ready of another job", ev(qmp.EventBlockJobReady, map[string]any{"device": "qcdp-disk1"}), inAny},
		{"ready of a job named like a prefix", ev(qmp.EventBlockJobReady, map[string]any{"device": "qcdp-disk"}), inAny},
		{"error stop", ev(qmp.EventBlockJobError, map[string]any{"device": job, "operation": "write", "action": "stop"}), inStopped},
		{"error report", ev(qmp.EventBlockJobError, map[string]any{"device": job, "operation": "write", "action": "report"}), inAny},
		{"error ignore", ev(qmp.EventBlockJobError, map[string]any{"device": job, "operation": "write", "action": "ignore"}), inAny},
		{"cancelled", ev(qmp.EventBlockJobCancelled, map[string]any{"device": job}), inJobEnded},
		{"completed", ev(qmp.EventBlockJobCompleted, map[string]any{"device": job, "error": "Input/output error"}), inJobEnded},
		{"status change", ev(qmp.EventJobStatusChange, map[string]any{"id": job, "status": "paused"}), inAny},
		{"no data", ev(qmp.EventBlockJobReady, nil), inAny},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, ok := eventInput(tt.ev, job)
			if got := map[bool]inputKind{true: in.kind, false: inAny}[ok]; got != tt.want {
				t.Fatalf("input %v, want %v", got, tt.want)
			}
			if in.kind == inJobEnded && ok {
				if !errors.Is(in.err, ErrJobVanished) || !strings.Contains(in.err.Error(), tt.ev.Name) {
					t.Errorf("job end cause %v: want ErrJobVanished naming %s", in.err, tt.ev.Name)
				}
			}
		})
	}
}

func TestJobInputs(t *testing.T) {
	tests := []struct {
		name        string
		job         *qmp.BlockJobInfo
		poll, adopt inputKind
	}{
		{"copying", &qmp.BlockJobInfo{Len: 100, Offset: 10, Busy: true, IOStatus: "ok", Status: "running"}, inJobRunning, inAdoptedCopying},
		{"ready, converged", &qmp.BlockJobInfo{Len: 100, Offset: 100, Ready: true, IOStatus: "ok", Status: "ready"}, inJobConverged, inAdoptedResync},
		{"ready, busy", &qmp.BlockJobInfo{Len: 100, Offset: 100, Busy: true, Ready: true, IOStatus: "ok", Status: "ready"}, inJobRunning, inAdoptedResync},
		{"ready, behind", &qmp.BlockJobInfo{Len: 200, Offset: 100, Ready: true, IOStatus: "ok", Status: "ready"}, inJobRunning, inAdoptedResync},
		{"stopped by an error", &qmp.BlockJobInfo{Len: 100, Offset: 10, Paused: true, IOStatus: "failed", Status: "paused"}, inJobStopped, inAdoptedResync},
		{"failed I/O, not paused", &qmp.BlockJobInfo{Len: 100, Offset: 10, IOStatus: "failed", Status: "running"}, inJobStopped, inAdoptedResync},
		{"status paused", &qmp.BlockJobInfo{Len: 100, Offset: 10, IOStatus: "ok", Status: "paused"}, inJobRunning, inAdoptedResync},
		{"ready, paused", &qmp.BlockJobInfo{Len: 100, Offset: 100, Ready: true, Paused: true, IOStatus: "ok", Status: "standby"}, inJobStopped, inAdoptedResync},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := jobInput(tt.job); got != tt.poll {
				t.Errorf("poll input %v, want %v", got, tt.poll)
			}
			if got := adoptInput(tt.job); got != tt.adopt {
				t.Errorf("adopt input %v, want %v", got, tt.adopt)
			}
		})
	}
	if got := jobInput(nil); got != inJobAbsent {
		t.Errorf("no job: %v, want %v", got, inJobAbsent)
	}
}
