package qmp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
)

// monitor is the transport under a Client, the part of go-qemu's
// qmp.Monitor a connected Client uses. Run returns the reply line exactly as
// QEMU sent it, error replies included; its error is for the transport only.
type monitor interface {
	Run(cmd []byte) ([]byte, error)
	Events(ctx context.Context) (<-chan goqmp.Event, error)
	Disconnect() error
}

// maxLine bounds one QMP message read from QEMU.
const maxLine = 64 << 20

// socketMonitor speaks QMP on a stream socket. It implements go-qemu's
// qmp.Monitor, but keeps error replies whole (see the package doc).
type socketMonitor struct {
	conn net.Conn

	mu sync.Mutex // serializes Run: one command in flight, as QEMU runs them

	version goqmp.Version
	caps    []string

	replies chan []byte      // reply lines, in order; closed when the reader ends
	events  chan goqmp.Event // closed when the reader ends
	readErr error            // why the reader ended; read after replies is closed
	trace   io.Writer        // optional, see WithTrace
	done    chan struct{}    // closed when the reader has ended
}

var _ goqmp.Monitor = (*socketMonitor)(nil)

func newSocketMonitor(conn net.Conn) *socketMonitor {
	return &socketMonitor{
		conn:    conn,
		replies: make(chan []byte),
		events:  make(chan goqmp.Event, 64),
		done:    make(chan struct{}),
	}
}

type greeting struct {
	QMP *struct {
		Version      goqmp.Version `json:"version"`
		Capabilities []string      `json:"capabilities"`
	} `json:"QMP"`
}

// Connect reads QEMU's greeting, leaves capabilities negotiation mode and
// starts the reader. The reader is stopped by Disconnect.
func (m *socketMonitor) Connect() error {
	br := bufio.NewReaderSize(m.conn, 64<<10)
	line, err := m.recv(br)
	if err != nil {
		return fmt.Errorf("qmp: read greeting: %w", err)
	}
	var g greeting
	if err := json.Unmarshal(line, &g); err != nil || g.QMP == nil {
		return fmt.Errorf("qmp: not a QMP greeting: %.200q", line)
	}
	m.version, m.caps = g.QMP.Version, g.QMP.Capabilities

	if err := m.send([]byte(`{"execute":"qmp_capabilities"}`)); err != nil {
		return fmt.Errorf("qmp: send qmp_capabilities: %w", err)
	}
	for {
		line, err := m.recv(br)
		if err != nil {
			return fmt.Errorf("qmp: read qmp_capabilities reply: %w", err)
		}
		if isEvent(line) {
			continue // none is expected before the handshake; nobody listens yet
		}
		if err := decodeReply("qmp_capabilities", line, nil); err != nil {
			return err
		}
		break
	}
	go m.read(br)
	return nil
}

// readLine reads one newline-terminated message, bounded by maxLine.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		frag, err := br.ReadSlice('\n')
		line = append(line, frag...)
		if len(line) > maxLine {
			return nil, fmt.Errorf("qmp: message over %d bytes", maxLine)
		}
		switch {
		case err == nil:
			return line, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return nil, io.ErrUnexpectedEOF
		default:
			return nil, err
		}
	}
}

// traceLine records one message in the trace, if any.
func (m *socketMonitor) traceLine(dir string, msg []byte) {
	if m.trace == nil {
		return
	}
	line := make([]byte, 0, len(dir)+len(msg)+40)
	line = time.Now().AppendFormat(line, "15:04:05.000000 ")
	line = append(line, dir...)
	line = append(line, bytes.TrimRight(msg, "\r\n")...)
	m.trace.Write(append(line, '\n'))
}

// send writes one message.
func (m *socketMonitor) send(msg []byte) error {
	m.traceLine("-> ", msg)
	_, err := m.conn.Write(append(msg, '\n'))
	return err
}

// recv reads one message.
func (m *socketMonitor) recv(br *bufio.Reader) ([]byte, error) {
	line, err := readLine(br)
	if err == nil {
		m.traceLine("<- ", line)
	}
	return line, err
}

func isEvent(line []byte) bool {
	var probe struct {
		Event string `json:"event"`
	}
	return json.Unmarshal(line, &probe) == nil && probe.Event != ""
}

// read sorts QEMU's messages into replies and events until the connection
// ends.
func (m *socketMonitor) read(br *bufio.Reader) {
	defer close(m.done)
	defer close(m.events)
	defer close(m.replies)
	for {
		line, err := m.recv(br)
		if err != nil {
			m.readErr = err
			return
		}
		var e goqmp.Event
		if err := json.Unmarshal(line, &e); err != nil {
			m.readErr = fmt.Errorf("qmp: undecodable message %.200q: %w", line, err)
			return
		}
		if e.Event != "" {
			m.events <- e
			continue
		}
		m.replies <- line
	}
}

// Run sends one command and returns its reply line.
func (m *socketMonitor) Run(cmd []byte) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.send(cmd); err != nil {
		return nil, fmt.Errorf("%w: write: %v", ErrClosed, err)
	}
	line, ok := <-m.replies
	if !ok {
		return nil, fmt.Errorf("%w: %v", ErrClosed, m.readErr)
	}
	return line, nil
}

// Events returns the one event stream of the connection. The Client is its
// only reader and drains it until it closes.
func (m *socketMonitor) Events(context.Context) (<-chan goqmp.Event, error) {
	return m.events, nil
}

// Disconnect closes the connection and waits for the reader to end.
func (m *socketMonitor) Disconnect() error {
	err := m.conn.Close()
	// Unblock a reader stuck handing over a message nobody waits for.
	replies, events := m.replies, m.events
	for {
		select {
		case <-m.done:
			return err
		case _, ok := <-replies:
			if !ok {
				replies = nil
			}
		case _, ok := <-events:
			if !ok {
				events = nil
			}
		}
	}
}
