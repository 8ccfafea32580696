package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/qcdp/qcdp/integration/guest"
	"github.com/qcdp/qcdp/integration/guest/workload"
	"github.com/qcdp/qcdp/integration/harness"
)

// runProduct is part 2: guest → qcdp host → qcdp replica → a view.
func runProduct(ctx context.Context, s *story, dir, qcdp string) error {
	fmt.Fprintln(s.out, "\nPart 2: the whole path, a Linux guest protected by qcdp host and kept by qcdp replica.")
	if err := harness.Install(ctx, "nbdcopy"); err != nil {
		return err
	}
	cmd := func(args ...string) (string, error) {
		b, err := exec.CommandContext(ctx, qcdp, args...).CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("qcdp %s: %w\n%s", strings.Join(args, " "), err, b)
		}
		return string(b), nil
	}
	s.say("Building the test guest: Debian's cloud kernel (downloaded once, cached) and an initramfs whose /init is our workload.")
	art, err := guest.Build(ctx, "")
	if err != nil {
		return err
	}

	tls := filepath.Join(dir, "tls")
	s.say("Making a CA, a replica certificate and a host certificate of tenant \"acme\": qcdp certs --dir %s ...", tls)
	for _, a := range [][]string{{"--ca"}, {"--replica", "dr1", "--san", "127.0.0.1"}, {"--host", "kvm1", "--tenant", "acme"}} {
		if _, err := cmd(append([]string{"certs", "--dir", tls}, a...)...); err != nil {
			return err
		}
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	rctl, hctl := filepath.Join(dir, "replica.sock"), filepath.Join(dir, "host.sock")
	rcfg, hcfg := filepath.Join(dir, "replica.toml"), filepath.Join(dir, "host.toml")
	if err := os.WriteFile(rcfg, []byte(fmt.Sprintf(`[replica]
listen = "127.0.0.1:%d"
ca = %q
cert = %q
key = %q
storage_root = %q
control_socket = %q
nbd_socket = %q

[[tenant]]
name = "acme"
hosts = ["kvm1"]
groups = ["g1"]
`, port, filepath.Join(tls, "ca.pem"), filepath.Join(tls, "dr1.pem"), filepath.Join(tls, "dr1-key.pem"),
		filepath.Join(dir, "journals"), rctl, filepath.Join(dir, "views.sock"))), 0o600); err != nil {
		return err
	}
	vms := filepath.Join(dir, "vms")
	if err := os.MkdirAll(vms, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(hcfg, []byte(fmt.Sprintf(`[host]
state_dir = %q
control_socket = %q
nbd_socket_dir = %q
qmp_sockets = [%q]
tls_ca = %q
tls_cert = %q
tls_key = %q

[[group]]
name = "g1"
replica = "127.0.0.1:%d"
  [[group.vm]]
  name = "vm1"
`, filepath.Join(dir, "state"), hctl, filepath.Join(dir, "nbd"), filepath.Join(vms, "*.qmp"),
		filepath.Join(tls, "ca.pem"), filepath.Join(tls, "kvm1.pem"), filepath.Join(tls, "kvm1-key.pem"), port)), 0o600); err != nil {
		return err
	}
	start := func(name, config, ctl string) (*harness.Proc, error) {
		p, err := harness.StartProc(dir, name, qcdp, name, "--config", config)
		if err != nil {
			return nil, err
		}
		if err := harness.WaitSocket(ctx, ctl, p); err != nil {
			p.Stop(10 * time.Second)
			return nil, err
		}
		return p, nil
	}
	s.say("Starting the replica daemon: qcdp replica --config %s (journals, restore points, views).", rcfg)
	replica, err := start("replica", rcfg, rctl)
	if err != nil {
		return err
	}
	defer replica.Stop(10 * time.Second)
	s.say("Starting the host daemon: qcdp host --config %s (its policy protects the VM named vm1 in group g1).", hcfg)
	host, err := start("host", hcfg, hctl)
	if err != nil {
		return err
	}
	defer host.Stop(10 * time.Second)

	disks := []guest.Disk{
		{Path: filepath.Join(dir, "vda.qcow2"), Format: "qcow2", NodeName: "vda"},
		{Path: filepath.Join(dir, "vdb.raw"), Format: "raw", NodeName: "vdb"},
	}
	for _, d := range disks {
		if err := harness.CreateImage(ctx, d.Path, d.Format, 4<<20); err != nil {
			return err
		}
	}
	params := workload.Params{Seed: 42, Blocks: 512, Disks: 2, SyncEvery: 10, Rate: 200, Hold: true}
	s.say("Booting the guest under TCG with two disks (qcow2 and raw); it writes self-checking blocks at 200 writes/s and fsyncs every 10.")
	gdir := filepath.Join(dir, "guest")
	if err := os.MkdirAll(gdir, 0o755); err != nil {
		return err
	}
	vm, err := guest.Start(ctx, art, guest.Options{Workload: &params, Disks: disks, Dir: gdir, QMPSocket: filepath.Join(vms, "vm1.qmp")})
	if err != nil {
		return err
	}
	defer vm.Kill()
	if _, err := vm.Serial.Wait(ctx, guest.Ready, 0); err != nil {
		return err
	}
	if err := waitFor(ctx, qcdp, hctl, func(st status) bool {
		return len(st.Groups) == 1 && len(st.Groups[0].Disks) == 2 &&
			st.Groups[0].Disks[0].State == "syncing" && st.Groups[0].Disks[1].State == "syncing"
	}); err != nil {
		return fmt.Errorf("disks never syncing: %w\n%s", err, host.Log(20))
	}
	table, _ := cmd("status", "--socket", hctl)
	s.say("The host daemon found the VM and protects both disks: qcdp status")
	s.detail("%s", strings.TrimSpace(table))

	ev, err := vm.Serial.Wait(ctx, guest.Synced, 200)
	if err != nil {
		return err
	}
	s.say("The guest has fsync'd its write #%d; taking a bookmark now: qcdp bookmark g1 demo-point", ev.Seq)
	if _, err := cmd("bookmark", "--socket", hctl, "g1", "demo-point"); err != nil {
		return err
	}
	fsynced := ev.Seq
	for _, e := range vm.Serial.Events() {
		if e.Kind == guest.Synced && e.Seq > fsynced {
			fsynced = e.Seq
		}
	}
	if _, err := vm.Serial.Wait(ctx, guest.Synced, fsynced+200); err != nil {
		return err
	}
	if err := vm.Send("stop"); err != nil {
		return err
	}
	done, err := vm.Serial.Wait(ctx, guest.Done, 0)
	if err != nil {
		return err
	}
	s.say("The guest went on to write #%d and stopped; its slowest write took %v (protection never holds a write long).", done.Seq, done.MaxWrite.Round(time.Millisecond))
	if err := waitFor(ctx, qcdp, hctl, func(st status) bool {
		g := st.Groups[0]
		return g.Replica != nil && g.LastSeq > 0 && g.Replica.LastAcked == g.LastSeq
	}); err != nil {
		return fmt.Errorf("the replica never caught up: %w\n%s", err, host.Log(20))
	}
	points, _ := cmd("points", "--socket", rctl, "g1")
	s.say("The replica holds everything: qcdp points g1")
	s.detail("%s", strings.TrimSpace(points))

	s.say("Exporting the bookmark's point in time over NBD (nothing is copied): qcdp export g1 --bookmark demo-point")
	out, err := cmd("export", "--socket", rctl, "--json", "--bookmark", "demo-point", "g1")
	if err != nil {
		return err
	}
	var e struct {
		ID   string            `json:"id"`
		URIs map[string]string `json:"uris"`
	}
	if err := json.Unmarshal([]byte(out), &e); err != nil {
		return err
	}
	streams := make([]string, 0, len(e.URIs))
	for d := range e.URIs {
		streams = append(streams, d)
	}
	sort.Strings(streams)
	var readers []io.ReaderAt
	for _, d := range streams {
		f := filepath.Join(dir, "view-"+d+".raw")
		s.detail("%s: %s", d, e.URIs[d])
		if b, err := exec.CommandContext(ctx, "nbdcopy", e.URIs[d], f).CombinedOutput(); err != nil {
			return fmt.Errorf("nbdcopy %s: %w\n%s", e.URIs[d], err, b)
		}
		fh, err := os.Open(f)
		if err != nil {
			return err
		}
		defer fh.Close()
		readers = append(readers, fh)
	}
	if _, err := cmd("unexport", "--socket", rctl, e.ID); err != nil {
		return err
	}
	hist, err := workload.Replay(params, done.Seq)
	if err != nil {
		return err
	}
	rg, err := hist.Locate(readers)
	if err != nil {
		return fmt.Errorf("the view is not one state of the guest: %w", err)
	}
	s.say("Checking the view against the workload's model: both disks hold exactly the guest's state after its write #%d.", rg.Hi)
	if rg.Hi < fsynced {
		return fmt.Errorf("the view (guest write #%d) lacks writes the guest had fsync'd before the bookmark (#%d)", rg.Hi, fsynced)
	}
	s.detail("Every block checks out, both disks are from the same instant, and all %d writes the guest had fsync'd before the bookmark are in it.", fsynced)
	if err := vm.PowerOff(ctx); err != nil {
		return err
	}
	return nil
}

// status is the part of `qcdp status --json` the demo reads.
type status struct {
	Groups []struct {
		LastSeq uint64 `json:"last_seq"`
		Disks   []struct {
			State string `json:"state"`
		} `json:"disks"`
		Replica *struct {
			LastAcked uint64 `json:"last_acked"`
		} `json:"replica"`
	} `json:"groups"`
}

// waitFor asks the host daemon for its status with a bounded backoff until
// ok holds (the daemon is another process: there is no event to wait on).
func waitFor(ctx context.Context, qcdp, ctl string, ok func(status) bool) error {
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		b, err := exec.CommandContext(ctx, qcdp, "status", "--json", "--socket", ctl).Output()
		var st status
		if err == nil && json.Unmarshal(b, &st) == nil && len(st.Groups) > 0 && ok(st) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}

// freePort returns a loopback TCP port nothing listens on now.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}
