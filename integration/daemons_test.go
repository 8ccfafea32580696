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

// replicaSetup is a `qcdp replica` of a test: a CA, the replica's
// certificate (dr1, for 127.0.0.1) and host kvm1's of tenant acme, and a
// policy that lets kvm1 write group g1, listening on a free loopback port.
type replicaSetup struct {
	bin, dir string
	TLS      string // the certificates' directory
	Control  string // control socket
	Config   string // policy file
	Port     int
}

// newReplica makes the certificates and writes the policy; extra is more
// TOML after the [replica] table (a [defaults] table, say).
func newReplica(ctx context.Context, t *testing.T, bin, dir, extra string) *replicaSetup {
	t.Helper()
	r := &replicaSetup{bin: bin, dir: dir, TLS: filepath.Join(dir, "tls"), Control: filepath.Join(dir, "replica.sock"),
		Config: filepath.Join(dir, "replica.toml"), Port: freePort(t)}
	run(ctx, t, bin, "certs", "--dir", r.TLS, "--ca")
	run(ctx, t, bin, "certs", "--dir", r.TLS, "--replica", "dr1", "--san", "127.0.0.1,localhost")
	run(ctx, t, bin, "certs", "--dir", r.TLS, "--host", "kvm1", "--tenant", "acme")
	writeFile(t, r.Config, fmt.Sprintf(`[replica]
listen = "127.0.0.1:%d"
ca = %q
cert = %q
key = %q
storage_root = %q
control_socket = %q
nbd_socket = %q
log_level = "debug"
%s
[[tenant]]
name = "acme"
hosts = ["kvm1"]
groups = ["g1"]
`, r.Port, filepath.Join(r.TLS, "ca.pem"), filepath.Join(r.TLS, "dr1.pem"), filepath.Join(r.TLS, "dr1-key.pem"),
		filepath.Join(dir, "journals"), r.Control, filepath.Join(dir, "views.sock"), extra))
	return r
}

// start starts the replica daemon as process name and waits for its
// control socket.
func (r *replicaSetup) start(ctx context.Context, t *testing.T, name string) *harness.Proc {
	t.Helper()
	return startDaemon(ctx, t, r.dir, name, r.Control, r.bin, "replica", "--config", r.Config)
}

// HostKeys are the [host] lines of host kvm1's certificates.
func (r *replicaSetup) HostKeys() string {
	return fmt.Sprintf("tls_ca = %q\ntls_cert = %q\ntls_key = %q",
		filepath.Join(r.TLS, "ca.pem"), filepath.Join(r.TLS, "kvm1.pem"), filepath.Join(r.TLS, "kvm1-key.pem"))
}

// GroupKeys is the [[group]] line of the replica's address.
func (r *replicaSetup) GroupKeys() string { return fmt.Sprintf("replica = \"127.0.0.1:%d\"", r.Port) }
