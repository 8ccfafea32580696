package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	goqmp "github.com/digitalocean/go-qemu/qmp"
	"github.com/qcdp/qcdp/proc"
)

// Client is one QMP connection. Its methods are safe for concurrent use;
// commands run one at a time in the order they reach the connection.
type Client struct {
	mon     monitor
	version Version
	peer    proc.Cred // the process serving a QMP unix socket (Dial)
	peerErr error     // why peer is unknown

	closing chan struct{} // closed by Close
	wake    chan struct{} // a subscriber's context ended

	mu     sync.Mutex
	closed bool // Close was called
	ended  bool // the event stream ended: no new subscriber would ever be served
	subs   []*subscriber
	wg     sync.WaitGroup // the fan-out goroutine and commands in flight
}

// Event is an asynchronous QMP event.
type Event struct {
	Name      string         // e.g. "BLOCK_JOB_READY"
	Data      map[string]any // the event's "data" member, nil when absent
	Timestamp time.Time      // QEMU's clock at emission
}

// Event names qcdp waits for. Never change: they are QEMU's.
const (
	EventBlockJobReady     = "BLOCK_JOB_READY"
	EventBlockJobCompleted = "BLOCK_JOB_COMPLETED"
	EventBlockJobCancelled = "BLOCK_JOB_CANCELLED"
	EventBlockJobError     = "BLOCK_JOB_ERROR"
	EventShutdown          = "SHUTDOWN" // QEMU is shutting down (data: guest, reason)
	EventJobStatusChange   = "JOB_STATUS_CHANGE"
)

// Str returns the string member key of the event data, or "".
func (e Event) Str(key string) string {
	s, _ := e.Data[key].(string)
	return s
}

// Decode unmarshals the event data into v.
func (e Event) Decode(v any) error {
	b, err := json.Marshal(e.Data)
	if err != nil {
		return fmt.Errorf("qmp: event %s: %w", e.Name, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("qmp: event %s: decode data: %w", e.Name, err)
	}
	return nil
}

type subscriber struct {
	names []string
	ch    chan Event
	ctx   context.Context
	stop  func() bool // releases the context.AfterFunc
}

// subscriberBuffer is how many events a subscriber may fall behind before it
// holds back delivery to the others.
const subscriberBuffer = 256

// Option changes how Dial sets up a Client.
type Option func(*socketMonitor)

// WithTrace writes every message sent and received, one line each, to w:
// "-> " before what the Client sent and "<- " before what QEMU sent. Writes
// come from several goroutines, one whole line per Write call.
func WithTrace(w io.Writer) Option {
	return func(m *socketMonitor) { m.trace = w }
}

// Dial connects to the QMP unix socket at socketPath and completes the
// capabilities handshake. ctx bounds the dial and the handshake only.
func Dial(ctx context.Context, socketPath string, opts ...Option) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", socketPath, err)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	mon := newSocketMonitor(conn)
	for _, o := range opts {
		o(mon)
	}
	err = mon.Connect()
	if !stop() {
		conn.Close()
		return nil, fmt.Errorf("qmp: handshake on %s: %w", socketPath, ctx.Err())
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: handshake on %s: %w", socketPath, err)
	}
	v := mon.version
	c, err := newClient(ctx, mon)
	if err != nil {
		return nil, err
	}
	c.version = Version{Major: v.QEMU.Major, Minor: v.QEMU.Minor, Micro: v.QEMU.Micro, Package: v.Package}
	c.peer, c.peerErr = proc.PeerOf(conn)
	return c, nil
}

// ErrNoPeer is Peer's answer for a connection that is not a unix socket
// of its own (libvirt's passthrough).
var ErrNoPeer = errors.New("qmp: the monitor's process is not known on this transport")

// Peer returns the process that listens on the QMP unix socket Dial
// connected to, as the kernel recorded it (SO_PEERCRED; see package proc):
// for `-qmp unix:PATH,server=on`, the QEMU process itself. A Client over
// libvirt's passthrough has none (ErrNoPeer).
func (c *Client) Peer() (proc.Cred, error) {
	if c.peerErr != nil {
		return proc.Cred{}, fmt.Errorf("qmp: peer of the monitor socket: %w", c.peerErr)
	}
	if c.peer.PID == 0 {
		return proc.Cred{}, ErrNoPeer
	}
	return c.peer, nil
}

// newClient starts a Client on a connected monitor.
func newClient(ctx context.Context, mon monitor) (*Client, error) {
	events, err := mon.Events(context.WithoutCancel(ctx))
	if err != nil {
		mon.Disconnect()
		return nil, fmt.Errorf("qmp: event stream: %w", err)
	}
	c := &Client{
		mon:     mon,
		closing: make(chan struct{}),
		wake:    make(chan struct{}, 1),
	}
	c.wg.Add(1)
	go c.fanOut(events)
	return c, nil
}

// Closed reports whether the client was closed or its connection ended.
func (c *Client) Closed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed || c.ended
}

// Greeting returns the QEMU version announced in the QMP greeting.
func (c *Client) Greeting() Version { return c.version }

// Close disconnects, ends every subscription and waits for the client's
// goroutines. Commands in flight return ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.closing)
	c.mu.Unlock()
	err := c.mon.Disconnect()
	c.wg.Wait()
	if err != nil {
		return fmt.Errorf("qmp: close: %w", err)
	}
	return nil
}

// Execute runs command with args (nil for none) and decodes the reply's
// "return" member into result (nil to discard it). A QMP error reply comes
// back as *Error. If ctx ends first, Execute returns ctx.Err(); QEMU still
// runs the command (see the package doc).
func (c *Client) Execute(ctx context.Context, command string, args any, result any) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b, err := json.Marshal(goqmp.Command{Execute: command, Args: args})
	if err != nil {
		return fmt.Errorf("qmp: %s: marshal arguments: %w", command, err)
	}
	type reply struct {
		raw []byte
		err error
	}
	done := make(chan reply, 1)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return fmt.Errorf("qmp: %s: %w", command, ErrClosed)
	}
	c.wg.Add(1)
	c.mu.Unlock()
	go func() {
		defer c.wg.Done()
		raw, err := c.mon.Run(b)
		done <- reply{raw, err}
	}()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case r := <-done:
		if r.err != nil {
			return fmt.Errorf("qmp: %s: %w", command, r.err)
		}
		return decodeReply(command, r.raw, result)
	}
}

// decodeReply turns one reply line into result or *Error.
func decodeReply(command string, raw []byte, result any) error {
	var r struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("qmp: %s: undecodable reply %.200q: %w", command, raw, err)
	}
	if r.Error != nil {
		return &Error{Class: r.Error.Class, Desc: r.Error.Desc, Command: command}
	}
	if r.Return == nil {
		return fmt.Errorf("qmp: %s: reply has neither return nor error: %.200q", command, raw)
	}
	if result == nil {
		return nil
	}
	if err := json.Unmarshal(r.Return, result); err != nil {
		return fmt.Errorf("qmp: %s: decode return: %w", command, err)
	}
	return nil
}

// Subscribe returns a channel of the events named (all events when none is
// named). The interest is registered before Subscribe returns. The channel is
// closed when ctx ends, the Client is closed, or the monitor goes away; the
// caller must keep reading it until then.
func (c *Client) Subscribe(ctx context.Context, names ...string) (<-chan Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s := &subscriber{names: slices.Clone(names), ch: make(chan Event, subscriberBuffer), ctx: ctx}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.ended {
		return nil, fmt.Errorf("qmp: subscribe: %w", ErrClosed)
	}
	c.subs = append(c.subs, s)
	s.stop = context.AfterFunc(ctx, func() {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	})
	return s.ch, nil
}

func (s *subscriber) wants(name string) bool {
	return len(s.names) == 0 || slices.Contains(s.names, name)
}

// fanOut is the one goroutine that delivers events and closes subscriber
// channels. It ends when the monitor's event stream ends.
func (c *Client) fanOut(events <-chan goqmp.Event) {
	defer c.wg.Done()
	defer c.dropSubscribers(func(*subscriber) bool { return true })
	defer func() {
		c.mu.Lock()
		c.ended = true
		c.mu.Unlock()
	}()
	for {
		select {
		case e, ok := <-events:
			if !ok {
				return
			}
			c.deliver(Event{
				Name:      e.Event,
				Data:      e.Data,
				Timestamp: time.Unix(e.Timestamp.Seconds, e.Timestamp.Microseconds*1000),
			})
		case <-c.wake:
			c.dropSubscribers(func(s *subscriber) bool { return s.ctx.Err() != nil })
		}
	}
}

func (c *Client) deliver(e Event) {
	c.mu.Lock()
	subs := slices.Clone(c.subs)
	c.mu.Unlock()
	for _, s := range subs {
		if !s.wants(e.Name) {
			continue
		}
		select {
		case s.ch <- e:
		case <-s.ctx.Done():
		case <-c.closing:
		}
	}
	c.dropSubscribers(func(s *subscriber) bool { return s.ctx.Err() != nil })
}

// dropSubscribers removes and closes the subscribers gone says are gone.
func (c *Client) dropSubscribers(gone func(*subscriber) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subs = slices.DeleteFunc(c.subs, func(s *subscriber) bool {
		if !gone(s) {
			return false
		}
		s.stop()
		close(s.ch)
		return true
	})
}

// Wait reads events until one satisfies match and returns it. It fails when
// ctx ends or the channel closes first.
func Wait(ctx context.Context, events <-chan Event, match func(Event) bool) (Event, error) {
	for {
		select {
		case <-ctx.Done():
			return Event{}, ctx.Err()
		case e, ok := <-events:
			if !ok {
				return Event{}, fmt.Errorf("qmp: wait for event: %w", ErrClosed)
			}
			if match(e) {
				return e, nil
			}
		}
	}
}
