package qmp

import (
	"encoding/json"
	"reflect"
	"testing"
)

// TestMachineQueries: the commands that describe a VM decode QEMU 7.2's
// replies, and qom-get sends its path and property.
func TestMachineQueries(t *testing.T) {
	f := newFakeQEMU(t, func(cmd string, args json.RawMessage) string {
		switch cmd {
		case "query-cpus-fast":
			return `{"return": [{"thread-id": 4100, "props": {"core-id": 0, "thread-id": 0, "socket-id": 0}, "qom-path": "/machine/unattached/device[0]", "cpu-index": 0, "target": "x86_64"}, ` +
				`{"thread-id": 4101, "props": {"core-id": 0, "thread-id": 0, "socket-id": 1}, "qom-path": "/machine/unattached/device[2]", "cpu-index": 1, "target": "x86_64"}]}`
		case "query-memory-size-summary":
			return `{"return": {"base-memory": 536870912, "plugged-memory": 0}}`
		case "qom-get":
			var a struct {
				Path     string `json:"path"`
				Property string `json:"property"`
			}
			json.Unmarshal(args, &a)
			if a.Path == "/machine" && a.Property == "type" {
				return `{"return": "pc-q35-7.2-machine"}`
			}
			return `{"error": {"class": "DeviceNotFound", "desc": "Device '` + a.Path + `' not found"}}`
		case "query-rx-filter":
			return `{"return": [{"promiscuous": false, "name": "net0", "main-mac": "52:54:00:12:34:56", "unicast": "normal", "vlan": "normal", "broadcast-allowed": false, "multicast-overflow": false, "unicast-overflow": false, "multicast": "normal", "vlan-table": [], "unicast-table": [], "multicast-table": []}]}`
		}
		return `{"error": {"class": "CommandNotFound", "desc": "The command ` + cmd + ` has not been found"}}`
	})
	c := dialFake(t, f)
	ctx := testCtx(t)
	cpus, err := c.QueryCPUsFast(ctx)
	want := []CPUInfoFast{{CPUIndex: 0, ThreadID: 4100, QOMPath: "/machine/unattached/device[0]", Target: "x86_64"},
		{CPUIndex: 1, ThreadID: 4101, QOMPath: "/machine/unattached/device[2]", Target: "x86_64"}}
	if err != nil || !reflect.DeepEqual(cpus, want) {
		t.Fatalf("QueryCPUsFast = %+v, %v", cpus, err)
	}
	if m, err := c.QueryMemorySizeSummary(ctx); err != nil || m.BaseMemory != 512<<20 || m.PluggedMemory != 0 {
		t.Fatalf("QueryMemorySizeSummary = %+v, %v", m, err)
	}
	if m, err := c.QueryMachineType(ctx); err != nil || m != "pc-q35-7.2" {
		t.Fatalf("QueryMachineType = %q, %v", m, err)
	}
	var typ string
	if err := c.QOMGet(ctx, "/machine/peripheral/nope", "type", &typ); !IsDeviceNotFound(err) {
		t.Fatalf("qom-get of no object: %v", err)
	}
	nics, err := c.QueryRxFilter(ctx)
	if err != nil || !reflect.DeepEqual(nics, []RxFilterInfo{{Name: "net0", MainMAC: "52:54:00:12:34:56"}}) {
		t.Fatalf("QueryRxFilter = %+v, %v", nics, err)
	}
}
