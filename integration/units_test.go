package integration

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// unitKeys reads the Key=Value lines of a systemd unit file.
func unitKeys(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			keys[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return keys
}

// TestSystemdUnits checks the shipped units: both daemons are Type=notify
// (they send READY=1); the host daemon's has the watchdog that bounds a
// hung daemon (invariant 1) and the restart after it, with the WatchdogSec
// the README promises; and systemd-analyze accepts both.
func TestSystemdUnits(t *testing.T) {
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(repo, "configs", "systemd")
	host := unitKeys(t, filepath.Join(dir, "qcdp-host.service"))
	replica := unitKeys(t, filepath.Join(dir, "qcdp-replica.service"))
	for _, c := range []struct {
		unit map[string]string
		key  string
		want string
	}{
		{host, "Type", "notify"},
		{host, "ExecStart", "/usr/bin/qcdp host --config /etc/qcdp/host.toml"},
		{host, "WatchdogSec", "10s"},
		{host, "Restart", "on-failure"},
		{replica, "Type", "notify"},
		{replica, "ExecStart", "/usr/bin/qcdp replica --config /etc/qcdp/replica.toml"},
	} {
		if got := c.unit[c.key]; got != c.want {
			t.Errorf("%s=%q, want %q", c.key, got, c.want)
		}
	}
	readme, err := os.ReadFile(filepath.Join(repo, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(readme), "`WatchdogSec="+host["WatchdogSec"]+"`") {
		t.Errorf("README.md does not document the unit's WatchdogSec=%s", host["WatchdogSec"])
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze missing (Debian package systemd): the units are not verified")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tmp := t.TempDir()
	bin := buildQCDP(ctx, t, tmp)
	var units []string
	for _, name := range []string{"qcdp-host.service", "qcdp-replica.service"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		// verify checks that ExecStart's binary exists: this test's.
		u := filepath.Join(tmp, name)
		writeFile(t, u, strings.ReplaceAll(string(b), "/usr/bin/qcdp", bin))
		units = append(units, u)
	}
	if out, err := exec.CommandContext(ctx, analyze, append([]string{"verify", "--man=no"}, units...)...).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
