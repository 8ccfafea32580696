package hypervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"

	"github.com/digitalocean/go-libvirt"
	"github.com/qcdp/qcdp/qmp"
)

// A clean shutdown of a protected VM, as a planned failover's host half
// asks for it (package protect): the request is made and the call
// returns; the guest shuts down in its own time, and ListVMs reports the
// VM not running once its QEMU has ended.

// ShutdownVM asks vm's guest to shut down: through its QEMU guest agent
// when agent is set, else with the ACPI power button. A guest without an
// answering agent is ErrNoAgent.
func (s *Libvirt) ShutdownVM(ctx context.Context, vm VM, agent bool) error {
	d, err := s.lookup(ctx, vm)
	if err != nil {
		return err
	}
	flags := libvirt.DomainShutdownAcpiPowerBtn
	if agent {
		flags = libvirt.DomainShutdownGuestAgent
	}
	err = s.call(ctx, func() error { return s.l.DomainShutdownFlags(d, flags) })
	if err == nil {
		return nil
	}
	if code, ok := LibvirtCode(err); ok && agent {
		switch code {
		case errOperationInvalid, errAgentUnresponsive, errAgentUnsynced, libvirt.ErrArgumentUnsupported: // the last: "QEMU guest agent is not configured"
			return fmt.Errorf("%w: VM %s: shut down through the guest agent: %v", ErrNoAgent, vm.Name, err)
		}
	}
	return fmt.Errorf("hypervisor: VM %s: shut down: %w", vm.Name, err)
}

// ShutdownVM asks vm's guest to shut down: through its QEMU guest agent
// (guest-shutdown on the agent chardev, as FreezeFS finds it) when agent
// is set, else with QMP system_powerdown (the ACPI power button). It uses
// the VM's QMP connection QMP handed out when one is open (QEMU serves one
// client at a time).
func (s *Sockets) ShutdownVM(ctx context.Context, vm VM, agent bool) error {
	if agent {
		path, err := s.agentSocket(ctx, vm)
		if err != nil {
			return err
		}
		if err := agentShutdown(ctx, path); err != nil {
			return fmt.Errorf("VM %s: %w", vm.ID, err)
		}
		return nil
	}
	var c *qmp.Client
	if h, ok := s.holding(vm.Socket); ok {
		c = h.c
	} else {
		var err error
		if c, err = s.QMP(ctx, vm); err != nil {
			return err
		}
		defer c.Close()
	}
	if err := c.Execute(ctx, "system_powerdown", nil, nil); err != nil {
		return fmt.Errorf("hypervisor: VM %s: system_powerdown: %w", vm.ID, err)
	}
	return nil
}

// agentShutdown sends guest-shutdown (mode powerdown) to the guest agent
// on socket, after guest-sync so that the agent is known to answer. The
// agent does not reply to a guest-shutdown that succeeds.
func agentShutdown(ctx context.Context, socket string) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, agentTimeout)
		defer cancel()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return fmt.Errorf("%w: dial %s: %v", ErrNoAgent, socket, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	br := bufio.NewReaderSize(conn, 64<<10)
	enc := json.NewEncoder(conn)
	id := rand.Int64N(1 << 40)
	if err := enc.Encode(map[string]any{"execute": "guest-sync", "arguments": map[string]any{"id": id}}); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrNoAgent, socket, err)
	}
	for {
		var r struct {
			Return *int64 `json:"return"`
		}
		if err := readAgent(br, &r); err != nil {
			return fmt.Errorf("%w: guest-sync on %s: %v", ErrNoAgent, socket, err)
		}
		if r.Return != nil && *r.Return == id {
			break
		}
	}
	if err := enc.Encode(map[string]any{"execute": "guest-shutdown", "arguments": map[string]string{"mode": "powerdown"}}); err != nil {
		return fmt.Errorf("hypervisor: agent %s: guest-shutdown: %w", socket, err)
	}
	return nil
}
