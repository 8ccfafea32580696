package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
)

// packages maps each tool the tests run to the Debian package that has it.
var packages = map[string]string{
	"qemu-system-x86_64": "qemu-system-x86",
	"qemu-img":           "qemu-utils",
	"qemu-io":            "qemu-utils",
	"qemu-nbd":           "qemu-utils",
	"nbdkit":             "nbdkit",
	"nbdcopy":            "libnbd-bin",
	"nbdinfo":            "libnbd-bin",
	"nbdsh":              "python3-libnbd",
	"libvirtd":           "libvirt-daemon-system",
	"virtlogd":           "libvirt-daemon-system",
	"virsh":              "libvirt-clients",
}

// ErrNotRoot is returned by Install when a tool is missing and installing
// it needs root.
var ErrNotRoot = errors.New("harness: not root, cannot install packages")

var (
	aptMu      sync.Mutex
	aptUpdated bool
)

// Install makes sure every tool is on PATH, installing the Debian packages
// that hold the missing ones with apt-get (apt-get update once first).
func Install(ctx context.Context, tools ...string) error {
	var missing []string
	seen := map[string]bool{}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err == nil {
			continue
		}
		pkg, ok := packages[tool]
		if !ok {
			return fmt.Errorf("harness: %s is missing and no Debian package is known for it", tool)
		}
		if !seen[pkg] {
			seen[pkg] = true
			missing = append(missing, pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: run as root or `apt-get install %s`", ErrNotRoot, strings.Join(missing, " "))
	}
	aptMu.Lock()
	defer aptMu.Unlock()
	if !aptUpdated {
		if out, err := exec.CommandContext(ctx, "apt-get", "update").CombinedOutput(); err != nil {
			return fmt.Errorf("harness: apt-get update: %w\n%s", err, tail(string(out), 20))
		}
		aptUpdated = true
	}
	cmd := exec.CommandContext(ctx, "apt-get", append([]string{"install", "-y", "--no-install-recommends"}, missing...)...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("harness: apt-get install %s: %w\n%s", strings.Join(missing, " "), err, tail(string(out), 20))
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("harness: %s still missing after installing %s", tool, strings.Join(missing, " "))
		}
	}
	return nil
}

// Need installs the tools a test needs, skipping the test when they are
// missing and cannot be installed because the test does not run as root.
func Need(t testing.TB, tools ...string) {
	t.Helper()
	err := Install(context.Background(), tools...)
	if errors.Is(err, ErrNotRoot) {
		t.Skipf("skipping: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d lines before)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
