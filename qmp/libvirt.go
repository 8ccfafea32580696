package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/digitalocean/go-libvirt"
	goqmp "github.com/digitalocean/go-qemu/qmp"
)

// DialLibvirt returns a Client for the QEMU monitor of the running libvirt
// domain dom, reached through the libvirt connection l, which the caller
// owns and keeps open for the Client's lifetime. Closing the Client leaves
// l open.
//
// Commands go through libvirt's QMP passthrough (virDomainQemuMonitorCommand)
// and come back as the raw reply, so an error reply keeps its class (*Error).
// Events come from libvirt's QEMU monitor event subscription
// (virConnectDomainQemuMonitorEventRegister).
//
// Passthrough has consequences the caller must live with: libvirt marks the
// domain tainted ("custom-monitor" in its log), and libvirt does not know
// what is done through it: it does not see the block jobs, filter nodes or
// NBD exports added this way, and its own snapshots, blockresize and backup
// fail while they exist. Detach around such operations.
//
// Events without data (STOP, RESUME, SHUTDOWN, ...) never arrive: go-libvirt
// (v0.0.0-20260217163227) decodes the event's optional details as if they
// were always there and drops an event that has none. Block job and
// JOB_STATUS_CHANGE events carry data and do arrive; follow a domain's run
// state through libvirt's lifecycle events.
//
// libvirt tracks one monitor event registration per domain and connection,
// so all Clients of one domain on l share one subscription, and nothing
// else may call l.SubscribeQEMUEvents for that domain.
//
// libvirt RPCs cannot be cancelled: ctx bounds the wait in Execute, but a
// call libvirt never answers ends only when the libvirt connection does. A
// libvirt error (libvirt.Error, with its code) is kept in the chain of what
// Execute returns; one meaning the monitor is gone (the domain stopped or
// disappeared, or the connection broke) also matches ErrClosed.
func DialLibvirt(ctx context.Context, l *libvirt.Libvirt, dom libvirt.Domain) (*Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	mon := &libvirtMonitor{l: l, dom: dom}
	if err := mon.attach(ctx); err != nil {
		return nil, fmt.Errorf("qmp: libvirt domain %s: %w", dom.Name, err)
	}
	c, err := newClient(ctx, mon)
	if err != nil {
		return nil, fmt.Errorf("qmp: libvirt domain %s: %w", dom.Name, err)
	}
	v, err := c.QueryVersion(ctx)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp: libvirt domain %s: %w", dom.Name, err)
	}
	c.version = v
	return c, nil
}

// libvirtMonitor is the monitor of one libvirt domain, through libvirt.
type libvirtMonitor struct {
	l   *libvirt.Libvirt
	dom libvirt.Domain

	mu sync.Mutex // serializes Run, so commands reach QEMU in call order

	hub    *libvirtHub
	events chan goqmp.Event // fed by hub; closed by hub or by detach
}

var _ monitor = (*libvirtMonitor)(nil)

// Run sends cmd through QMP passthrough and returns QEMU's reply as is,
// error replies included.
func (m *libvirtMonitor) Run(cmd []byte) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	reply, err := m.l.QEMUDomainMonitorCommand(m.dom, string(cmd), 0)
	if err != nil {
		if monitorGone(err) {
			return nil, fmt.Errorf("%w: libvirt domain %s: %w", ErrClosed, m.dom.Name, err)
		}
		return nil, fmt.Errorf("libvirt domain %s: monitor command: %w", m.dom.Name, err)
	}
	return []byte(reply), nil
}

// monitorGone reports a libvirt error that means the domain's monitor is
// not there any more.
func monitorGone(err error) bool {
	var le libvirt.Error
	if errors.As(err, &le) {
		switch libvirt.ErrorNumber(le.Code) {
		case libvirt.ErrNoDomain, libvirt.ErrOperationInvalid, libvirt.ErrNoConnect:
			return true
		}
	}
	return errors.Is(err, libvirt.ErrInterrupted)
}

// Events returns the stream set up by attach; the Client is its only reader
// and drains it until it closes.
func (m *libvirtMonitor) Events(context.Context) (<-chan goqmp.Event, error) {
	return m.events, nil
}

// Disconnect detaches from the domain's event subscription, ending it when
// this was its last Client. The libvirt connection stays open: it belongs to
// the caller of DialLibvirt.
func (m *libvirtMonitor) Disconnect() error {
	m.hub.detach(m)
	return nil
}

// libvirtHub is the one monitor event subscription of a domain on a libvirt
// connection, shared by the Clients of that domain.
type libvirtHub struct {
	key    hubKey
	cancel context.CancelFunc // ends the subscription
	done   chan struct{}      // closed when the hub's goroutine has ended
	refs   int                // monitors attached or attaching; guarded by hubs.mu

	mu       sync.Mutex // held while delivering an event
	attached map[*libvirtMonitor]bool
	ended    bool // the subscription ended; attached monitors' channels are closed
}

type hubKey struct {
	l    *libvirt.Libvirt
	uuid libvirt.UUID
}

var hubs = struct {
	mu sync.Mutex
	m  map[hubKey]*libvirtHub
}{m: map[hubKey]*libvirtHub{}}

// attach joins m to its domain's subscription, starting one if there is
// none. hubs.mu is never held while waiting for a hub's mu: a hub blocks
// while a Client is slow to take an event, and that must not hold back
// other domains.
func (m *libvirtMonitor) attach(ctx context.Context) error {
	key := hubKey{m.l, m.dom.UUID}
	hubs.mu.Lock()
	h := hubs.m[key]
	if h != nil && h.isDone() { // the connection went away under it
		delete(hubs.m, key)
		h = nil
	}
	if h == nil {
		var err error
		if h, err = startHub(ctx, key, m.dom); err != nil {
			hubs.mu.Unlock()
			return err
		}
		hubs.m[key] = h
	}
	h.refs++
	hubs.mu.Unlock()

	m.hub = h
	m.events = make(chan goqmp.Event, 64)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ended {
		close(m.events)
	} else {
		h.attached[m] = true
	}
	return nil
}

func (h *libvirtHub) isDone() bool {
	select {
	case <-h.done:
		return true
	default:
		return false
	}
}

// detach leaves m's subscription and closes m's event channel; the last
// monitor to leave ends the subscription and waits for its goroutine.
func (h *libvirtHub) detach(m *libvirtMonitor) {
	h.mu.Lock()
	if h.attached[m] {
		delete(h.attached, m)
		close(m.events)
	}
	h.mu.Unlock()

	hubs.mu.Lock()
	h.refs--
	last := h.refs == 0
	if last && hubs.m[h.key] == h {
		delete(hubs.m, h.key)
	}
	hubs.mu.Unlock()
	if last {
		h.cancel()
		<-h.done
	}
}

// startHub subscribes to dom's monitor events. libvirt deregisters a
// subscription only after go-libvirt has closed its channel, so right after
// a hub of the same domain ended libvirt may still say "already tracked"
// (VIR_ERR_INVALID_ARG): then try again until ctx ends.
func startHub(ctx context.Context, key hubKey, dom libvirt.Domain) (*libvirtHub, error) {
	sub, cancel := context.WithCancel(context.Background())
	wait := 5 * time.Millisecond
	for {
		in, err := key.l.SubscribeQEMUEvents(sub, dom.Name)
		if err == nil {
			h := &libvirtHub{key: key, cancel: cancel, done: make(chan struct{}), attached: map[*libvirtMonitor]bool{}}
			go h.run(sub, in)
			return h, nil
		}
		var le libvirt.Error
		if !errors.As(err, &le) || libvirt.ErrorNumber(le.Code) != libvirt.ErrInvalidArg {
			cancel()
			return nil, fmt.Errorf("subscribe to monitor events: %w", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			cancel()
			return nil, fmt.Errorf("subscribe to monitor events: %w (last: %w)", ctx.Err(), err)
		case <-t.C:
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}

// run hands each event to every attached monitor until in closes: the
// subscription was cancelled or the libvirt connection ended. It keeps
// draining in after sub ends: go-libvirt's sender does not watch the
// context while it hands over an event. A monitor's Client reads its
// channel until the channel closes, so a delivery always completes.
func (h *libvirtHub) run(sub context.Context, in <-chan libvirt.DomainEvent) {
	defer close(h.done)
	defer func() {
		h.mu.Lock()
		defer h.mu.Unlock()
		h.ended = true
		for m := range h.attached {
			close(m.events)
		}
		clear(h.attached)
	}()
	for e := range in {
		if sub.Err() != nil {
			continue
		}
		qe := goqmp.Event{Event: e.Event, Data: eventData(e.Details)}
		qe.Timestamp.Seconds = int64(e.Seconds)
		qe.Timestamp.Microseconds = int64(e.Microseconds)
		h.mu.Lock()
		for m := range h.attached {
			m.events <- qe
		}
		h.mu.Unlock()
	}
}

// eventData decodes an event's details, QEMU's "data" member as JSON text.
// Details that do not decode to an object are kept under "details".
func eventData(details []byte) map[string]any {
	details = bytes.TrimRight(details, "\x00")
	if len(bytes.TrimSpace(details)) == 0 {
		return nil
	}
	var data map[string]any
	if err := json.Unmarshal(details, &data); err != nil {
		return map[string]any{"details": string(details)}
	}
	return data
}
