package qmptest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// Command is one command a client sent after negotiation.
type Command struct {
	Name string          // the "execute" member
	Args json.RawMessage // the "arguments" member, nil when absent
	At   time.Time       // when the server read it
}

// Decode unmarshals the command's arguments into v.
func (c Command) Decode(v any) error {
	if c.Args == nil {
		return fmt.Errorf("qmptest: %s has no arguments", c.Name)
	}
	if err := json.Unmarshal(c.Args, v); err != nil {
		return fmt.Errorf("qmptest: %s: decode arguments: %w", c.Name, err)
	}
	return nil
}

// Handler answers one command with the lines QEMU would send for it, in
// order: its reply (see Return and Error), then any events it causes (see
// Event). No lines leaves the command unanswered; the test may answer it
// later with Send. A Handler runs on the server's goroutine, one command at
// a time, and may call Send and HangUp.
type Handler func(cmd Command) []string

// Greeting is the greeting a Server sends: QEMU 7.2.0 as Debian 12 ships it.
const Greeting = `{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7"}, "capabilities": ["oob"]}}`

// Server is a QMP peer on a unix socket. Like a QEMU monitor it serves one
// client at a time and accepts the next when that one goes.
type Server struct {
	path   string
	ln     net.Listener
	handle Handler

	mu   sync.Mutex
	conn net.Conn
	cmds []Command
	wg   sync.WaitGroup
}

// NewServer listens on a fresh unix socket and serves clients until the test
// ends.
func NewServer(t testing.TB, handle Handler) *Server {
	t.Helper()
	// Not t.TempDir: a unix socket path must fit in 108 bytes.
	dir, err := os.MkdirTemp("", "qmptest")
	if err != nil {
		t.Fatalf("qmptest: %v", err)
	}
	s := &Server{path: filepath.Join(dir, "qmp.sock"), handle: handle}
	s.ln, err = net.Listen("unix", s.path)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatalf("qmptest: listen: %v", err)
	}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(func() {
		s.ln.Close()
		s.HangUp()
		s.wg.Wait()
		os.RemoveAll(dir)
	})
	return s
}

// Path is the socket to dial.
func (s *Server) Path() string { return s.path }

func (s *Server) serve() {
	defer s.wg.Done()
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conn = conn
		s.mu.Unlock()
		s.serveConn(conn)
		conn.Close()
		s.mu.Lock()
		s.conn = nil
		s.mu.Unlock()
	}
}

func (s *Server) serveConn(conn net.Conn) {
	s.Send(Greeting)
	sc := bufio.NewScanner(conn)
	sc.Buffer(nil, 16<<20)
	negotiated := false
	for sc.Scan() {
		var cmd struct {
			Execute   string          `json:"execute"`
			Arguments json.RawMessage `json:"arguments"`
		}
		if err := json.Unmarshal(sc.Bytes(), &cmd); err != nil || cmd.Execute == "" {
			s.Send(Error("GenericError", "JSON parse error"))
			continue
		}
		if !negotiated {
			if cmd.Execute != "qmp_capabilities" {
				s.Send(Error("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'"))
				continue
			}
			negotiated = true
			s.Send(Return(struct{}{}))
			continue
		}
		c := Command{Name: cmd.Execute, Args: cmd.Arguments, At: time.Now()}
		s.mu.Lock()
		s.cmds = append(s.cmds, c)
		s.mu.Unlock()
		s.Send(s.handle(c)...)
	}
}

// Send writes lines to the client in order, as QEMU does: CRLF-terminated.
// Nothing is sent when no client is connected.
func (s *Server) Send(lines ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn == nil {
		return
	}
	for _, l := range lines {
		if _, err := s.conn.Write([]byte(l + "\r\n")); err != nil {
			return
		}
	}
}

// HangUp closes the client's connection, as when QEMU exits.
func (s *Server) HangUp() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.conn != nil {
		s.conn.Close()
	}
}

// Commands returns the commands received so far, negotiation excluded.
func (s *Server) Commands() []Command {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.cmds)
}

// Return is a success reply carrying v as its "return" member.
func Return(v any) string {
	b, err := json.Marshal(map[string]any{"return": v})
	if err != nil {
		panic(fmt.Sprintf("qmptest: reply %#v: %v", v, err))
	}
	return string(b)
}

// Error is an error reply of a QMP error class, e.g. "GenericError".
func Error(class, desc string) string {
	b, _ := json.Marshal(map[string]any{"error": map[string]string{"class": class, "desc": desc}})
	return string(b)
}

// Event is an event stamped with the current time. data is marshalled as the
// event's "data" member (a json.RawMessage goes in as is); nil leaves it out.
func Event(name string, data any) string { return EventAt(name, data, time.Now()) }

// EventAt is an event stamped at.
func EventAt(name string, data any, at time.Time) string {
	m := map[string]any{
		"event":     name,
		"timestamp": map[string]int64{"seconds": at.Unix(), "microseconds": int64(at.Nanosecond() / 1000)},
	}
	if data != nil {
		m["data"] = data
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(fmt.Sprintf("qmptest: event %s data %#v: %v", name, data, err))
	}
	return string(b)
}
