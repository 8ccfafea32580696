package chaos

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestStorage: the tmpfs is seen inside the namespace only, fills up and
// drains, and goes away with its holder.
func TestStorage(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipping: mounting a tmpfs in a mount namespace needs root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	mnt := filepath.Join(dir, "mnt")
	s, err := NewStorage(ctx, dir, mnt, 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	argv := s.Command("sh", "-c", "echo inside > "+filepath.Join(mnt, "f"))
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(mnt, "f")); err == nil {
		t.Error("the tmpfs is visible outside its namespace")
	}
	if b, err := os.ReadFile(s.Path(filepath.Join(mnt, "f"))); err != nil || string(b) != "inside\n" {
		t.Errorf("through Path: %q, %v", b, err)
	}
	n, err := s.Fill()
	if err != nil || n < 6<<20 {
		t.Fatalf("Fill: %d bytes, %v", n, err)
	}
	if free, err := s.Free(); err != nil || free != 0 {
		t.Errorf("after Fill: %d bytes free, %v", free, err)
	}
	if err := s.Drain(); err != nil {
		t.Fatal(err)
	}
	if free, err := s.Free(); err != nil || free < 6<<20 {
		t.Errorf("after Drain: %d bytes free, %v", free, err)
	}
}
