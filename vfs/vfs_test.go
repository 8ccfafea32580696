package vfs

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func readAll(t *testing.T, fs FS, name string) []byte {
	t.Helper()
	f, err := fs.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestFS runs the same behaviour checks on the OS filesystem and on MemFS.
func TestFS(t *testing.T) {
	for _, tc := range []struct {
		name string
		fs   FS
		dir  string
	}{
		{"os", Default, t.TempDir()},
		{"mem", NewMemFS(), "/spool"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs, dir := tc.fs, filepath.Join(tc.dir, "a", "b")
			if err := fs.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			name := filepath.Join(dir, "f")
			f, err := fs.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range []string{"hello ", "world"} {
				if _, err := f.Write([]byte(s)); err != nil {
					t.Fatal(err)
				}
			}
			if err := f.Truncate(5); err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write([]byte("!")); err != nil { // O_APPEND: lands at the new end
				t.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			if fi, err := f.Stat(); err != nil || fi.Size() != 6 {
				t.Fatalf("Stat = %v, %v", fi, err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			if got := readAll(t, fs, name); string(got) != "hello!" {
				t.Fatalf("contents %q", got)
			}
			r, err := fs.Open(name)
			if err != nil {
				t.Fatal(err)
			}
			p := make([]byte, 4)
			if n, err := r.ReadAt(p, 4); n != 2 || err != io.EOF || string(p[:n]) != "o!" {
				t.Fatalf("ReadAt = %d %v %q", n, err, p[:n])
			}
			if _, err := r.Write([]byte("x")); err == nil {
				t.Fatal("write on a read-only handle succeeded")
			}
			r.Close()
			if err := fs.Rename(name, name+"2"); err != nil {
				t.Fatal(err)
			}
			if _, err := fs.Stat(name); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("Stat after rename: %v", err)
			}
			if err := Publish(fs, filepath.Join(dir, "state"), []byte("v1")); err != nil {
				t.Fatal(err)
			}
			names, err := fs.ReadDir(dir)
			if err != nil || len(names) != 2 || names[0] != "f2" || names[1] != "state" {
				t.Fatalf("ReadDir = %v, %v", names, err)
			}
			if err := fs.SyncDir(dir); err != nil {
				t.Fatal(err)
			}
			if err := fs.Remove(name + "2"); err != nil {
				t.Fatal(err)
			}
			if _, err := fs.Open(name + "2"); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("Open removed: %v", err)
			}
		})
	}
}

func TestCrashDropsUnsynced(t *testing.T) {
	fs := NewCrashFS()
	if err := fs.MkdirAll("/d", 0o755); err != nil {
		t.Fatal(err)
	}
	f, _ := fs.Create("/d/synced")
	f.Write([]byte("durable"))
	f.Sync()
	f.Write([]byte(" lost"))
	if err := fs.SyncDir("/d"); err != nil {
		t.Fatal(err)
	}
	g, _ := fs.Create("/d/unsynced-entry")
	g.Write([]byte("x"))
	g.Sync() // contents synced, directory entry not
	fs.Crash()
	if got := readAll(t, fs, "/d/synced"); string(got) != "durable" {
		t.Fatalf("after crash %q", got)
	}
	if _, err := fs.Stat("/d/unsynced-entry"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("entry never SyncDir'd survived: %v", err)
	}
	if _, err := f.Write([]byte("x")); !errors.Is(err, ErrCrashed) {
		t.Fatalf("old handle after crash: %v", err)
	}
}

func TestPublishCrash(t *testing.T) {
	fs := NewCrashFS()
	fs.MkdirAll("/d", 0o755)
	if err := Publish(fs, "/d/state", []byte("one")); err != nil {
		t.Fatal(err)
	}
	fs.Crash()
	if got := readAll(t, fs, "/d/state"); string(got) != "one" {
		t.Fatalf("published then crashed: %q", got)
	}
	// A publish that fails at any step leaves the old contents after a crash.
	for _, op := range []Op{OpOpen, OpWrite, OpSync, OpRename, OpSyncDir} {
		fs.SetInjector(FailNth(op, 1, syscall.EIO))
		err := Publish(fs, "/d/state", []byte("two"))
		fs.SetInjector(nil)
		if !errors.Is(err, syscall.EIO) {
			t.Fatalf("%v: Publish = %v, want EIO", op, err)
		}
		fs.Crash()
		got := readAll(t, fs, "/d/state")
		if op == OpSyncDir {
			// The rename happened; only its durability was in doubt, and
			// the crash may go either way. MemFS drops it.
			if string(got) != "one" && string(got) != "two" {
				t.Fatalf("%v: %q", op, got)
			}
			continue
		}
		if string(got) != "one" {
			t.Fatalf("%v: after failed publish and crash: %q", op, got)
		}
	}
	if err := Publish(fs, "/d/state", []byte("three")); err != nil {
		t.Fatal(err)
	}
	fs.Crash()
	if got := readAll(t, fs, "/d/state"); !bytes.Equal(got, []byte("three")) {
		t.Fatalf("got %q", got)
	}
}

func TestInjectPartialWrite(t *testing.T) {
	fs := NewMemFS()
	f, _ := fs.Create("/f")
	fs.SetInjector(FailNth(OpWrite, 2, syscall.ENOSPC))
	f.Write([]byte("abcd"))
	n, err := f.Write([]byte("efgh"))
	if !errors.Is(err, syscall.ENOSPC) || n != 2 {
		t.Fatalf("Write = %d, %v", n, err)
	}
	if got := readAll(t, fs, "/f"); string(got) != "abcdef" {
		t.Fatalf("%q", got)
	}
}
