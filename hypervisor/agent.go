package hypervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/qcdp/qcdp/qmp"
)

// ErrNoAgent: the VM has no QEMU guest agent, or it does not answer.
var ErrNoAgent = errors.New("hypervisor: no guest agent answers")

// agentTimeout bounds one agent command when ctx has no earlier deadline: a
// frozen guest must be thawed quickly, so nothing here may hang.
const agentTimeout = 10 * time.Second

// libvirt error codes of an absent or silent agent.
const (
	errOperationInvalid  = 55 // "QEMU guest agent is not configured"
	errAgentUnresponsive = 86
	errAgentUnsynced     = 97
)

// FreezeFS freezes the guest's filesystems through its agent (libvirt's
// fsfreeze) and returns how many it froze.
func (s *Libvirt) FreezeFS(ctx context.Context, vm VM) (int, error) {
	return s.agentFS(ctx, vm, "freeze", s.l.DomainFsfreeze)
}

// ThawFS thaws what FreezeFS froze.
func (s *Libvirt) ThawFS(ctx context.Context, vm VM) (int, error) {
	return s.agentFS(ctx, vm, "thaw", s.l.DomainFsthaw)
}

func (s *Libvirt) agentFS(ctx context.Context, vm VM, op string, call func(libvirt.Domain, []string, uint32) (int32, error)) (int, error) {
	d, err := s.lookup(ctx, vm)
	if err != nil {
		return 0, err
	}
	var n int32
	err = s.call(ctx, func() error {
		var cerr error
		n, cerr = call(d, nil, 0)
		return cerr
	})
	if err != nil {
		if code, ok := LibvirtCode(err); ok {
			switch code {
			case errOperationInvalid, errAgentUnresponsive, errAgentUnsynced:
				return 0, fmt.Errorf("%w: VM %s: fs%s: %v", ErrNoAgent, vm.Name, op, err)
			}
		}
		return 0, fmt.Errorf("hypervisor: VM %s: fs%s: %w", vm.Name, op, err)
	}
	return int(n), nil
}

// FreezeFS freezes the guest's filesystems through the QEMU guest agent on
// the VM's agent chardev (Proxmox: qga0).
func (s *Sockets) FreezeFS(ctx context.Context, vm VM) (int, error) {
	return s.agentFS(ctx, vm, "guest-fsfreeze-freeze")
}

// ThawFS thaws what FreezeFS froze.
func (s *Sockets) ThawFS(ctx context.Context, vm VM) (int, error) {
	return s.agentFS(ctx, vm, "guest-fsfreeze-thaw")
}

func (s *Sockets) agentFS(ctx context.Context, vm VM, cmd string) (int, error) {
	path, err := s.agentSocket(ctx, vm)
	if err != nil {
		return 0, err
	}
	n, err := AgentCommand(ctx, path, cmd)
	if err != nil {
		return 0, fmt.Errorf("VM %s: %w", vm.ID, err)
	}
	return n, nil
}

// agentSocket finds the unix socket of the VM's guest agent chardev from
// query-chardev: the chardev behind the org.qemu.guest_agent.0 port is
// conventionally labelled qga0 (Proxmox, libvirt) or qga.
func (s *Sockets) agentSocket(ctx context.Context, vm VM) (string, error) {
	c := (*qmp.Client)(nil)
	if h, ok := s.holding(vm.Socket); ok {
		c = h.c
	} else {
		var err error
		if c, err = s.QMP(ctx, vm); err != nil {
			return "", err
		}
		defer c.Close()
	}
	var devs []struct {
		Label    string `json:"label"`
		Filename string `json:"filename"`
	}
	if err := c.Execute(ctx, "query-chardev", nil, &devs); err != nil {
		return "", fmt.Errorf("hypervisor: VM %s: query-chardev: %w", vm.ID, err)
	}
	for _, d := range devs {
		if d.Label != "qga0" && d.Label != "qga" {
			continue
		}
		// "unix:/run/qemu-server/100.qga,server=on" or "disconnected:unix:…"
		f := strings.TrimPrefix(d.Filename, "disconnected:")
		if p, ok := strings.CutPrefix(f, "unix:"); ok {
			p, _, _ = strings.Cut(p, ",")
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: VM %s has no agent chardev (qga0) on a unix socket", ErrNoAgent, vm.ID)
}

// AgentCommand runs one argument-less guest agent command that returns an
// integer (guest-fsfreeze-freeze, -thaw) over the agent's unix socket,
// after guest-sync so that a stale reply from an earlier client is skipped.
func AgentCommand(ctx context.Context, socket, command string) (int, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, agentTimeout)
		defer cancel()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return 0, fmt.Errorf("%w: dial %s: %v", ErrNoAgent, socket, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	enc := json.NewEncoder(conn)
	id := rand.Int64N(1 << 40)
	if err := enc.Encode(map[string]any{"execute": "guest-sync", "arguments": map[string]any{"id": id}}); err != nil {
		return 0, fmt.Errorf("%w: %s: %v", ErrNoAgent, socket, err)
	}
	for {
		var r struct {
			Return *int64 `json:"return"`
		}
		if err := readAgent(br, &r); err != nil {
			return 0, fmt.Errorf("%w: guest-sync on %s: %v", ErrNoAgent, socket, err)
		}
		if r.Return != nil && *r.Return == id {
			break
		}
	}
	if err := enc.Encode(map[string]string{"execute": command}); err != nil {
		return 0, fmt.Errorf("hypervisor: agent %s: %s: %w", socket, command, err)
	}
	var r struct {
		Return *int `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := readAgent(br, &r); err != nil {
		return 0, fmt.Errorf("hypervisor: agent %s: %s: %w", socket, command, err)
	}
	if r.Error != nil {
		return 0, fmt.Errorf("hypervisor: agent %s: %s: %s (%s)", socket, command, r.Error.Desc, r.Error.Class)
	}
	if r.Return == nil {
		return 0, fmt.Errorf("hypervisor: agent %s: %s: reply without return", socket, command)
	}
	return *r.Return, nil
}

// readAgent reads one JSON reply line, bounded in size.
func readAgent(br *bufio.Reader, v any) error {
	line, err := br.ReadSlice('\n')
	if err != nil {
		return err
	}
	return json.Unmarshal(line, v)
}
