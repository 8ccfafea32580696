package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/qcdp/qcdp/integration/harness"
)

// hostSetup is a `qcdp host` of a test: its policy protects the VM "vm1"
// found through the QMP sockets in VMs, in group g1.
type hostSetup struct {
	bin, dir string
	Control  string // control socket
	Config   string // policy file
	VMs      string // directory of the VMs' QMP sockets
	SpoolDir string // the group's spool
}

// newHost writes the policy; hostKeys are more [host] lines, group more
// [[group]] lines (a replica, say).
func newHost(t *testing.T, bin, dir, hostKeys, group string) *hostSetup {
	t.Helper()
	h := &hostSetup{bin: bin, dir: dir, Control: filepath.Join(dir, "host.sock"),
		Config: filepath.Join(dir, "host.toml"), VMs: filepath.Join(dir, "vms"),
		SpoolDir: filepath.Join(dir, "state", "spool", "g1")}
	for _, sub := range []string{h.VMs, filepath.Join(dir, "guest")} {
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, h.Config, fmt.Sprintf(`[host]
state_dir = %q
control_socket = %q
nbd_socket_dir = %q
log_level = "debug"
qmp_sockets = [%q]
%s
[[group]]
name = "g1"
%s
  [[group.vm]]
  name = "vm1"
`, filepath.Join(dir, "state"), h.Control, filepath.Join(dir, "nbd"), filepath.Join(h.VMs, "*.qmp"), hostKeys, group))
	return h
}

// QMPSocket is where the VM "vm1" must put its QMP socket for the daemon.
func (h *hostSetup) QMPSocket() string { return filepath.Join(h.VMs, "vm1.qmp") }

// start starts the daemon as process name and waits for its control socket.
func (h *hostSetup) start(ctx context.Context, t *testing.T, name string) *harness.Proc {
	t.Helper()
	return startDaemon(ctx, t, h.dir, name, h.Control, h.bin, "host", "--config", h.Config)
}

// startDaemon starts a qcdp daemon and waits for its control socket.
func startDaemon(ctx context.Context, t *testing.T, dir, name, control string, argv ...string) *harness.Proc {
	t.Helper()
	p := harness.StartProcT(t, dir, name, argv...)
	if err := harness.WaitSocket(ctx, control, p); err != nil {
		t.Fatal(err)
	}
	return p
}
