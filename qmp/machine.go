package qmp

import (
	"context"
	"strings"
)

// The commands here describe the VM itself (its vCPUs, memory, machine
// type and NICs), as the recovery site needs it to start a standby.

// CPUInfoFast is one entry of query-cpus-fast: one vCPU.
type CPUInfoFast struct {
	CPUIndex int    `json:"cpu-index"`
	ThreadID int    `json:"thread-id"` // the host thread running it
	QOMPath  string `json:"qom-path"`
	Target   string `json:"target"` // the target architecture, "x86_64"
}

// QueryCPUsFast runs query-cpus-fast (QEMU 2.12 and later): the vCPUs that
// exist now, without interrupting them.
func (c *Client) QueryCPUsFast(ctx context.Context) ([]CPUInfoFast, error) {
	var r []CPUInfoFast
	if err := c.Execute(ctx, "query-cpus-fast", nil, &r); err != nil {
		return nil, err
	}
	return r, nil
}

// MemorySizeSummary is the reply of query-memory-size-summary.
type MemorySizeSummary struct {
	BaseMemory    uint64 `json:"base-memory"`              // bytes of boot memory (-m)
	PluggedMemory uint64 `json:"plugged-memory,omitempty"` // bytes of hot-plugged memory devices
}

// QueryMemorySizeSummary runs query-memory-size-summary.
func (c *Client) QueryMemorySizeSummary(ctx context.Context) (MemorySizeSummary, error) {
	var r MemorySizeSummary
	if err := c.Execute(ctx, "query-memory-size-summary", nil, &r); err != nil {
		return MemorySizeSummary{}, err
	}
	return r, nil
}

// QOMGet runs qom-get: the property of the QOM object at path, decoded
// into result ("type" is every object's QOM type name, a string).
func (c *Client) QOMGet(ctx context.Context, path, property string, result any) error {
	return c.Execute(ctx, "qom-get", map[string]string{"path": path, "property": property}, result)
}

// QueryMachineType returns the machine type QEMU runs, as -machine names it
// ("pc-i440fx-7.2", "pc-q35-7.2"): the QOM type of /machine without its
// "-machine" suffix.
func (c *Client) QueryMachineType(ctx context.Context) (string, error) {
	var t string
	if err := c.QOMGet(ctx, "/machine", "type", &t); err != nil {
		return "", err
	}
	return strings.TrimSuffix(t, "-machine"), nil
}

// RxFilterInfo is one entry of query-rx-filter, the members qcdp uses: one
// NIC whose model reports its receive filter (virtio-net does; e1000 and
// other emulated NICs do not, and are not listed).
type RxFilterInfo struct {
	Name    string `json:"name"`     // the NIC's net client name: its -device id
	MainMAC string `json:"main-mac"` // "52:54:00:12:34:56"
}

// QueryRxFilter runs query-rx-filter for every NIC.
func (c *Client) QueryRxFilter(ctx context.Context) ([]RxFilterInfo, error) {
	var r []RxFilterInfo
	if err := c.Execute(ctx, "query-rx-filter", nil, &r); err != nil {
		return nil, err
	}
	return r, nil
}
