package harness

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// TestQemuIOReportsFailures checks that the harness sees qemu-io's
// failures, which QEMU 7.2 prints on its stdout and not in the HMP reply.
func TestQemuIOReportsFailures(t *testing.T) {
	Need(t, "qemu-system-x86_64", "qemu-img")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := TempDir(t)
	img := filepath.Join(dir, "d.raw")
	if err := CreateImage(ctx, img, "raw", 1<<20); err != nil {
		t.Fatal(err)
	}
	q := Start(ctx, t, Options{Dir: dir, Disks: []Disk{{Name: "disk0", Path: img, Format: "raw"}}})

	tests := []struct {
		node, cmd string
		ok        bool
	}{
		{"disk0", "write -P 0x5a 0 512", true},
		{"disk0", "read -P 0x5a 0 512", true},
		{"disk0", "read -P 0x5b 0 512", false},     // pattern mismatch
		{"disk0", "write -P 1 1048576 512", false}, // past the end
		{"nosuch", "write -P 1 0 512", false},      // HMP's own error
		{"disk0", "write -z 4096 4096", true},
		{"disk0", "read -P 0 4096 4096", true},
	}
	for _, tt := range tests {
		err := q.QemuIO(ctx, tt.node, tt.cmd)
		if tt.ok && err != nil {
			t.Errorf("qemu-io %s %q: %v", tt.node, tt.cmd, err)
		}
		if !tt.ok && !errors.Is(err, ErrQemuIO) {
			t.Errorf("qemu-io %s %q = %v, want ErrQemuIO", tt.node, tt.cmd, err)
		}
	}
}
