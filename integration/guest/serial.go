package guest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Kinds of console events (package workload documents the protocol).
const (
	Ready  = "QCDP-READY"
	Synced = "QCDP-SYNCED"
	Done   = "QCDP-DONE"
	Error  = "QCDP-ERROR"
)

var (
	// ErrGuest: the guest reported an error (a QCDP-ERROR line).
	ErrGuest = errors.New("guest: guest reported an error")
	// ErrExited: the console ended (QEMU exited) before the awaited event.
	ErrExited = errors.New("guest: console closed")
)

// Event is one QCDP- line of the console.
type Event struct {
	Kind  string        // Ready, Synced, Done or Error
	Seq   uint64        // seq= of Synced and Done
	Guest time.Duration // t=: the guest's CLOCK_MONOTONIC
	// MaxWrite and MaxSync (Done only): the longest one write and one
	// fdatasync of the whole workload took, as the guest measured them.
	MaxWrite, MaxSync time.Duration
	At                time.Time // when the host read the line
	Line              string
}

// ParseEvent parses a console line holding a QCDP- event. Kernel output
// may precede the event on the same line.
func ParseEvent(line string) (Event, bool) {
	i := strings.Index(line, "QCDP-")
	if i < 0 {
		return Event{}, false
	}
	fields := strings.Fields(line[i:])
	ev := Event{Kind: fields[0], Line: line}
	switch ev.Kind {
	case Ready, Synced, Done:
	case Error:
		return ev, true
	default:
		return Event{}, false
	}
	for _, f := range fields[1:] {
		k, v, _ := strings.Cut(f, "=")
		n, err := strconv.ParseUint(v, 10, 63)
		if err != nil {
			continue
		}
		switch k {
		case "seq":
			ev.Seq = n
		case "t":
			ev.Guest = time.Duration(n)
		case "maxwrite":
			ev.MaxWrite = time.Duration(n)
		case "maxsync":
			ev.MaxSync = time.Duration(n)
		}
	}
	return ev, true
}

// Serial is the guest's console as the host reads it: every line is kept
// (and appended to a log file), and tests wait for events on it.
type Serial struct {
	LogPath string

	mu      sync.Mutex
	events  []Event
	changed chan struct{} // closed and replaced when events grow or at the end
	ended   bool
}

func newSerial(logPath string) *Serial {
	return &Serial{LogPath: logPath, changed: make(chan struct{})}
}

// copy reads r to its end, logging every line to log and recording events.
// Its caller owns it and waits for it to return.
func (s *Serial) copy(r io.Reader, log io.Writer) error {
	br := bufio.NewReader(r)
	var err error
	for {
		var line string
		line, err = br.ReadString('\n')
		if line != "" {
			io.WriteString(log, line) // best effort: the log is for people
			s.add(strings.TrimRight(line, "\r\n"))
		}
		if err != nil {
			break
		}
	}
	s.mu.Lock()
	s.ended = true
	close(s.changed)
	s.mu.Unlock()
	if errors.Is(err, io.EOF) {
		return nil
	}
	return fmt.Errorf("guest: read console: %w", err)
}

func (s *Serial) add(line string) {
	ev, ok := ParseEvent(line)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !ok {
		return
	}
	ev.At = time.Now()
	s.events = append(s.events, ev)
	close(s.changed)
	s.changed = make(chan struct{})
}

// Events returns the events so far.
func (s *Serial) Events() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Event(nil), s.events...)
}

// Wait returns the first event of kind with a seq of at least minSeq,
// waiting for it as long as ctx allows. It fails with ErrGuest as soon as
// the guest reports an error, and with ErrExited when the console ends
// first.
func (s *Serial) Wait(ctx context.Context, kind string, minSeq uint64) (Event, error) {
	seen := 0
	for {
		s.mu.Lock()
		events, changed, ended := s.events, s.changed, s.ended
		s.mu.Unlock()
		for ; seen < len(events); seen++ {
			ev := events[seen]
			if ev.Kind == Error {
				return Event{}, fmt.Errorf("%w: %s (console log %s)", ErrGuest, ev.Line, s.LogPath)
			}
			if ev.Kind == kind && ev.Seq >= minSeq {
				return ev, nil
			}
		}
		if ended {
			return Event{}, fmt.Errorf("%w before %s seq>=%d (console log %s)", ErrExited, kind, minSeq, s.LogPath)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return Event{}, fmt.Errorf("guest: wait for %s seq>=%d: %w (console log %s)", kind, minSeq, ctx.Err(), s.LogPath)
		}
	}
}
