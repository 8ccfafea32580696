package proc

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestMain doubles as a helper process: with QCDP_PROC_DIAL set it
// connects to that unix socket, waits for the other end to close, and exits.
func TestMain(m *testing.M) {
	if path := os.Getenv("QCDP_PROC_DIAL"); path != "" {
		c, err := net.Dial("unix", path)
		if err != nil {
			os.Exit(2)
		}
		var b [1]byte
		c.Read(b[:])
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestParseStat(t *testing.T) {
	tail := " S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 20 21 22\n"
	for _, tc := range []struct {
		name, line string
		want       uint64
		err        error
	}{
		{"plain", "123 (qemu-system-x86)" + tail, 424242, nil},
		{"spaces and parens in the name", "123 (a) b (c d)" + tail, 424242, nil},
		{"a ) with fields after it in the name", "123 (x) S 1 2 3)" + tail, 424242, nil},
		{"no name", "123 qemu" + tail, 0, ErrFormat},
		{"short", "123 (qemu) S 1 2 3\n", 0, ErrFormat},
		{"not a number", "123 (qemu) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 -5 20\n", 0, ErrFormat},
		{"empty", "", 0, ErrFormat},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStat([]byte(tc.line))
			if !errors.Is(err, tc.err) || got != tc.want {
				t.Fatalf("parseStat(%q) = %d, %v; want %d, %v", tc.line, got, err, tc.want, tc.err)
			}
		})
	}
}

func FuzzParseStat(f *testing.F) {
	self, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(self)
	f.Add([]byte("1 ((((( )))))) S"))
	f.Add([]byte(")"))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseStat(b) // must not panic
	})
}

func FuzzParseTgid(f *testing.F) {
	self, err := os.ReadFile("/proc/self/status")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(self)
	f.Add([]byte("Tgid:\n"))
	f.Add([]byte("Tgid: -1\nTgid: 2\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if tgid, err := parseTgid(b); err == nil && tgid <= 0 {
			t.Fatalf("parseTgid(%q) = %d without an error", b, tgid)
		}
	})
}

func TestLookupSelf(t *testing.T) {
	p, err := Lookup(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if p.PID != os.Getpid() || p.Start == 0 || !p.Alive() {
		t.Fatalf("Lookup(self) = %+v alive %v", p, p.Alive())
	}
	if again, err := Lookup(os.Getpid()); err != nil || again != p {
		t.Fatalf("a second Lookup gives %+v, %v; want %+v", again, err, p)
	}
	for _, pid := range []int{0, -1} {
		if _, err := Lookup(pid); !errors.Is(err, ErrNoProcess) {
			t.Errorf("Lookup(%d): %v, want ErrNoProcess", pid, err)
		}
	}
}

// TestLookupEnded: a process that ended is not Alive, and a Process with
// the right PID but another start time (a PID handed on) is not it.
func TestLookupEnded(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p, err := Lookup(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if !p.Alive() {
		t.Fatalf("%v is not alive before it is reaped", p)
	}
	cmd.Wait()
	if p.Alive() {
		t.Fatalf("%v alive after it ended", p)
	}
	if _, err := Lookup(p.PID); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("Lookup of an ended process: %v, want ErrNoProcess", err)
	}
	self, _ := Lookup(os.Getpid())
	if (Process{PID: self.PID, Start: self.Start + 1}).Alive() {
		t.Fatal("a Process with this PID and another start time is alive")
	}
}

func TestThreadGroup(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	tid := unix.Gettid()
	if got, err := ThreadGroup(tid); err != nil || got != os.Getpid() {
		t.Fatalf("ThreadGroup(%d) = %d, %v; want %d", tid, got, err, os.Getpid())
	}
	if _, err := ThreadGroup(0); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("ThreadGroup(0): %v, want ErrNoProcess", err)
	}
	max, err := os.ReadFile("/proc/sys/kernel/pid_max")
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(max)))
	if _, err := ThreadGroup(n + 1); !errors.Is(err, ErrNoProcess) {
		t.Fatalf("ThreadGroup beyond pid_max: %v, want ErrNoProcess", err)
	}
}

// TestPeerOf: the server's end of a connection names the process that
// connected, another process here; a TCP connection has no credentials.
func TestPeerOf(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "QCDP_PROC_DIAL="+path)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	cred, err := PeerOf(c)
	c.Close() // the helper exits
	if err != nil {
		t.Fatal(err)
	}
	want, _ := Lookup(cmd.Process.Pid)
	if cred.Process != want || cred.UID != uint32(os.Getuid()) || cred.GID != uint32(os.Getgid()) {
		t.Fatalf("PeerOf = %+v; want %+v uid %d gid %d", cred, want, os.Getuid(), os.Getgid())
	}

	// The client's end names the process that listens: this one.
	cc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if cred, err := PeerOf(cc); err != nil || cred.PID != os.Getpid() {
		t.Fatalf("PeerOf(client end) = %+v, %v; want pid %d", cred, err, os.Getpid())
	}

	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	tc, err := net.Dial("tcp", tl.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	if _, err := PeerOf(tc); !errors.Is(err, ErrNoCred) {
		t.Fatalf("PeerOf(tcp): %v, want ErrNoCred", err)
	}
}
