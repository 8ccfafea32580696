package hypervisor

import (
	"context"
	"fmt"

	"github.com/digitalocean/go-libvirt"
)

// What the recovery site does with libvirt (package failover): define,
// start, inspect, stop and remove standby domains, pull their disks onto
// local storage, and keep an isolated network for test failovers. Every
// method takes names, never a libvirt handle: a domain is looked up again
// at each call, so a domain someone removed in between is reported, not
// acted on.

// DomainInfo is what failover needs to know of an existing domain.
type DomainInfo struct {
	Name    string
	UUID    string
	Running bool
	XML     string // the live XML while it runs, else the persistent one
}

// IsNoNetwork reports a libvirt "no such network" error.
func IsNoNetwork(err error) bool { return isLibvirtCode(err, libvirt.ErrNoNetwork) }

// LookupDomain returns the domain called name; an error for which
// IsNoDomain is true when there is none.
func (s *Libvirt) LookupDomain(ctx context.Context, name string) (DomainInfo, error) {
	var info DomainInfo
	err := s.call(ctx, func() error {
		d, err := s.l.DomainLookupByName(name)
		if err != nil {
			return err
		}
		state, _, err := s.l.DomainGetState(d, 0)
		if err != nil {
			return err
		}
		x, err := s.l.DomainGetXMLDesc(d, 0)
		if err != nil {
			return err
		}
		info = DomainInfo{Name: d.Name, UUID: formatUUID(d.UUID), XML: x,
			Running: libvirt.DomainState(state) != libvirt.DomainShutoff && libvirt.DomainState(state) != libvirt.DomainNostate}
		return nil
	})
	if err != nil {
		return DomainInfo{}, fmt.Errorf("hypervisor: domain %q: %w", name, err)
	}
	return info, nil
}

// DefineDomain defines a persistent domain from xml and returns its UUID.
// libvirt refuses a name or UUID that exists (flag VALIDATE checks the XML
// against its schema first).
func (s *Libvirt) DefineDomain(ctx context.Context, xml string) (string, error) {
	var uuid string
	err := s.call(ctx, func() error {
		d, err := s.l.DomainDefineXMLFlags(xml, libvirt.DomainDefineValidate)
		uuid = formatUUID(d.UUID)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("hypervisor: define domain: %w", err)
	}
	return uuid, nil
}

// StartDomain starts the defined domain called name.
func (s *Libvirt) StartDomain(ctx context.Context, name string) error {
	return s.onDomain(ctx, "start", name, func(d libvirt.Domain) error { return s.l.DomainCreate(d) })
}

// DestroyDomain stops the domain called name at once (a domain not
// running is not an error).
func (s *Libvirt) DestroyDomain(ctx context.Context, name string) error {
	return s.onDomain(ctx, "destroy", name, func(d libvirt.Domain) error {
		state, _, err := s.l.DomainGetState(d, 0)
		if err != nil || libvirt.DomainState(state) == libvirt.DomainShutoff {
			return err
		}
		return s.l.DomainDestroy(d)
	})
}

// ShutdownDomain asks the guest to shut down: through its agent when
// agent is set, else with the ACPI power button.
func (s *Libvirt) ShutdownDomain(ctx context.Context, name string, agent bool) error {
	flags := libvirt.DomainShutdownAcpiPowerBtn
	if agent {
		flags = libvirt.DomainShutdownGuestAgent
	}
	return s.onDomain(ctx, "shut down", name, func(d libvirt.Domain) error { return s.l.DomainShutdownFlags(d, flags) })
}

// UndefineDomain removes the definition of the domain called name (its
// NVRAM too; its disks are the caller's).
func (s *Libvirt) UndefineDomain(ctx context.Context, name string) error {
	return s.onDomain(ctx, "undefine", name, func(d libvirt.Domain) error {
		return s.l.DomainUndefineFlags(d, libvirt.DomainUndefineNvram|libvirt.DomainUndefineManagedSave)
	})
}

// BlockPull starts pulling the backing data of a domain's disk (its
// target, "vda") into the disk's top image, while the guest runs.
func (s *Libvirt) BlockPull(ctx context.Context, name, target string) error {
	return s.onDomain(ctx, "block pull "+target+" of", name, func(d libvirt.Domain) error {
		return s.l.DomainBlockPull(d, target, 0, 0)
	})
}

// BlockJob is a disk's block job as libvirt reports it.
type BlockJob struct {
	Active   bool
	Cur, End uint64
}

// BlockJobInfo reports the block job of a domain's disk.
func (s *Libvirt) BlockJobInfo(ctx context.Context, name, target string) (BlockJob, error) {
	var j BlockJob
	err := s.onDomain(ctx, "block job of "+target+" of", name, func(d libvirt.Domain) error {
		found, _, _, cur, end, err := s.l.DomainGetBlockJobInfo(d, target, 0)
		j = BlockJob{Active: found == 1, Cur: cur, End: end}
		return err
	})
	return j, err
}

func (s *Libvirt) onDomain(ctx context.Context, what, name string, f func(libvirt.Domain) error) error {
	err := s.call(ctx, func() error {
		d, err := s.l.DomainLookupByName(name)
		if err != nil {
			return err
		}
		return f(d)
	})
	if err != nil {
		return fmt.Errorf("hypervisor: %s domain %q: %w", what, name, err)
	}
	return nil
}

// NetworkActive reports whether the libvirt network called name exists
// (an error for which IsNoNetwork is true when not) and runs.
func (s *Libvirt) NetworkActive(ctx context.Context, name string) (bool, error) {
	var active bool
	err := s.call(ctx, func() error {
		n, err := s.l.NetworkLookupByName(name)
		if err != nil {
			return err
		}
		a, err := s.l.NetworkIsActive(n)
		active = a == 1
		return err
	})
	if err != nil {
		return false, fmt.Errorf("hypervisor: network %q: %w", name, err)
	}
	return active, nil
}

// DefineNetwork defines a persistent network from xml and starts it.
func (s *Libvirt) DefineNetwork(ctx context.Context, xml string) error {
	err := s.call(ctx, func() error {
		n, err := s.l.NetworkDefineXML(xml)
		if err != nil {
			return err
		}
		if err := s.l.NetworkCreate(n); err != nil {
			s.l.NetworkUndefine(n)
			return err
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("hypervisor: define network: %w", err)
	}
	return nil
}

// StartNetwork starts a defined network that does not run.
func (s *Libvirt) StartNetwork(ctx context.Context, name string) error {
	err := s.call(ctx, func() error {
		n, err := s.l.NetworkLookupByName(name)
		if err != nil {
			return err
		}
		return s.l.NetworkCreate(n)
	})
	if err != nil {
		return fmt.Errorf("hypervisor: start network %q: %w", name, err)
	}
	return nil
}

// RemoveNetwork stops and undefines the network called name.
func (s *Libvirt) RemoveNetwork(ctx context.Context, name string) error {
	err := s.call(ctx, func() error {
		n, err := s.l.NetworkLookupByName(name)
		if err != nil {
			return err
		}
		if a, err := s.l.NetworkIsActive(n); err == nil && a == 1 {
			if err := s.l.NetworkDestroy(n); err != nil {
				return err
			}
		}
		return s.l.NetworkUndefine(n)
	})
	if err != nil {
		return fmt.Errorf("hypervisor: remove network %q: %w", name, err)
	}
	return nil
}
