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

// TestWriteAt: in-place writes on both filesystems, refused on an O_APPEND
// handle; on MemFS they are lost by a crash until fsync'd, and an injected
// error writes half.
func TestWriteAt(t *testing.T) {
	for _, tc := range []struct {
		name string
		fs   FS
		dir  string
	}{
		{"os", Default, t.TempDir()},
		{"mem", NewMemFS(), "/d"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := tc.fs
			if err := fs.MkdirAll(tc.dir, 0o755); err != nil {
				t.Fatal(err)
			}
			name := filepath.Join(tc.dir, "slots")
			if err := Publish(fs, name, []byte("aaaabbbb")); err != nil {
				t.Fatal(err)
			}
			f, err := fs.OpenFile(name, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range []struct {
				off int64
				s   string
			}{{4, "BB"}, {0, "A"}, {9, "z"}} {
				if n, err := f.WriteAt([]byte(w.s), w.off); err != nil || n != len(w.s) {
					t.Fatalf("WriteAt(%q, %d) = %d, %v", w.s, w.off, n, err)
				}
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			f.Close()
			if got := readAll(t, fs, name); string(got) != "AaaaBBbb\x00z" {
				t.Fatalf("contents %q", got)
			}
			a, err := fs.OpenFile(name, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := a.WriteAt([]byte("x"), 0); err == nil {
				t.Fatal("WriteAt on an O_APPEND handle succeeded")
			}
			a.Close()
		})
	}
	fs := NewCrashFS()
	fs.MkdirAll("/d", 0o755)
	if err := Publish(fs, "/d/s", []byte("0000")); err != nil {
		t.Fatal(err)
	}
	f, _ := fs.OpenFile("/d/s", os.O_RDWR, 0)
	f.WriteAt([]byte("11"), 0)
	f.Sync()
	f.WriteAt([]byte("22"), 2)
	fs.SetInjector(FailNth(OpWrite, 1, syscall.EIO))
	g, _ := fs.OpenFile("/d/s", os.O_RDWR, 0)
	if n, err := g.WriteAt([]byte("3333"), 0); !errors.Is(err, syscall.EIO) || n != 2 {
		t.Fatalf("injected WriteAt = %d, %v", n, err)
	}
	fs.SetInjector(nil)
	if got := readAll(t, fs, "/d/s"); string(got) != "3322" {
		t.Fatalf("before the crash %q", got)
	}
	fs.Crash()
	if got := readAll(t, fs, "/d/s"); string(got) != "1100" {
		t.Fatalf("after the crash %q, want the fsync'd %q", got, "1100")
	}
}

// TestDatasync: on the OS filesystem it is fdatasync(2); on MemFS it is
// Sync, so what it covers survives a crash and an injected OpSync error
// fails it.
func TestDatasync(t *testing.T) {
	dir := t.TempDir()
	f, err := Default.OpenFile(filepath.Join(dir, "f"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := f.(DataSyncer); !ok {
		t.Fatal("an OS file opened for writing has no Datasync")
	}
	f.WriteAt([]byte("x"), 0)
	if err := Datasync(f); err != nil {
		t.Fatal(err)
	}
	f.Close()

	fs := NewCrashFS()
	fs.MkdirAll("/d", 0o755)
	if err := Publish(fs, "/d/s", []byte("00")); err != nil {
		t.Fatal(err)
	}
	m, _ := fs.OpenFile("/d/s", os.O_RDWR, 0)
	m.WriteAt([]byte("1"), 0)
	if err := Datasync(m); err != nil {
		t.Fatal(err)
	}
	m.WriteAt([]byte("2"), 1)
	fs.SetInjector(FailNth(OpSync, 1, syscall.EIO))
	if err := Datasync(m); !errors.Is(err, syscall.EIO) {
		t.Fatalf("Datasync with an injected error: %v", err)
	}
	fs.SetInjector(nil)
	fs.Crash()
	if got := readAll(t, fs, "/d/s"); string(got) != "10" {
		t.Fatalf("after the crash %q, want %q", got, "10")
	}
}
