package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestNeedLibvirtd checks what the libvirt tests rely on: a test's libvirtd
// is its own (another one, started beside it, does not see its domains),
// starts a domain well within a test's budget once warmed up (libvirt 9.0
// re-probing QEMU at every lookup takes 40 s and more per start), and when
// the test ends nothing it started is left running, not even a domain the
// test forgot.
func TestNeedLibvirtd(t *testing.T) {
	var lv *Libvirtd
	var pids []int
	name := fmt.Sprintf("qcdp-harness-%d", os.Getpid()) // unique on the host (see Libvirtd)
	t.Run("leaves a domain running", func(t *testing.T) {
		lv = NeedLibvirtd(context.Background(), t)
		other := NeedLibvirtd(context.Background(), t)
		for _, l := range []*Libvirtd{lv, other} {
			for _, d := range l.daemons {
				pids = append(pids, d.cmd.Process.Pid)
			}
		}

		xml := filepath.Join(t.TempDir(), "domain.xml")
		if err := os.WriteFile(xml, []byte(`<domain type='qemu'>
  <name>`+name+`</name>
  <memory unit='MiB'>32</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><emulator>`+LibvirtEmulator+`</emulator></devices>
</domain>`), 0o644); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		start := time.Now()
		if _, err := lv.Virsh(ctx, "create", xml); err != nil {
			t.Fatalf("a domain did not start within 30 s of warm-up: %v", err)
		}
		t.Logf("domain started in %v", time.Since(start).Round(time.Millisecond))
		b, err := os.ReadFile(filepath.Join(lv.Dir, "run", "qemu", name+".pid"))
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)

		if out, err := other.Virsh(ctx, "list", "--all", "--name"); err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("another test's libvirtd lists %q (%v), want no domain", out, err)
		}
	})
	if t.Failed() {
		return
	}
	for _, pid := range pids {
		if state := procState(pid); state != "" {
			t.Errorf("pid %d (state %s) outlived its test", pid, state)
		}
	}
	if _, err := os.Stat(lv.Dir); !os.IsNotExist(err) {
		t.Errorf("%s outlived a test that passed: %v", lv.Dir, err)
	}
}

// procState is a process's state letter, or "" when it has ended (a zombie
// has ended).
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) || s[i+2] == 'Z' {
		return ""
	}
	return s[i+2 : i+3]
}
