package shipper

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/libnbd"
	"github.com/qcdp/qcdp/nbd"
	"github.com/qcdp/qcdp/proc"
)

// TestCaptureExportAllow: without an owner every peer opens the export;
// with one, only the peer whose credentials name the owner's PID and start
// time, so an ended owner's PID handed to another process is refused.
func TestCaptureExportAllow(t *testing.T) {
	owner := proc.Process{PID: 4242, Start: 777}
	cred := func(pid int, start uint64) nbd.Peer {
		return nbd.Peer{Addr: "@", HasCred: true, Cred: proc.Cred{Process: proc.Process{PID: pid, Start: start}, UID: 64055, GID: 64055}}
	}
	for _, tc := range []struct {
		name  string
		owner *proc.Process
		peer  nbd.Peer
		ok    bool
	}{
		{"no owner, any process", nil, cred(1, 1), true},
		{"no owner, no credentials", nil, nbd.Peer{Addr: "127.0.0.1:5"}, true},
		{"the owner", &owner, cred(4242, 777), true},
		{"another process", &owner, cred(4243, 777), false},
		{"the owner's PID reused", &owner, cred(4242, 778), false},
		{"root, another process", &owner, nbd.Peer{HasCred: true, Cred: proc.Cred{Process: proc.Process{PID: 1, Start: 1}}}, false},
		{"no credentials", &owner, nbd.Peer{Addr: "127.0.0.1:5"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &CaptureExport{disk: "vm1.vda", size: 1 << 20}
			if tc.owner != nil {
				e.SetOwner(*tc.owner)
			}
			err := e.Allow(tc.peer)
			if tc.ok && err != nil || !tc.ok && !errors.Is(err, ErrNotOwner) {
				t.Fatalf("Allow(%+v) = %v, want ok %v", tc.peer, err, tc.ok)
			}
		})
	}
}

// TestGroupOwnedExport: on a served group, an export owned by this process
// takes this process's writes through a real client (libnbd); one owned by
// another process refuses this one and QEMU's qemu-io alike, as if the
// export did not exist, and none of their writes reaches the spool; an owner whose
// PID was reused is refused; a new owner (a VM's next QEMU) replaces the
// old one on the same export.
func TestGroupOwnedExport(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts := groupOptions(t, t.TempDir())
	g, err := OpenGroup(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- g.Serve(ctx) }()
	defer func() {
		g.Shutdown(context.Background())
		<-served
	}()

	self, err := proc.Lookup(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	other := exec.Command("sleep", "60") // stands for another VM's QEMU
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer other.Wait()
	defer other.Process.Kill()
	otherProc, err := proc.Lookup(other.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}

	mine, err := g.OwnedExport("vm1.vda", 1<<20, self)
	if err != nil {
		t.Fatal(err)
	}
	if o, ok := mine.Owner(); !ok || o != self {
		t.Fatalf("owner %v %v, want %v", o, ok, self)
	}
	if _, err := g.OwnedExport("vm2.vda", 1<<20, otherProc); err != nil {
		t.Fatal(err)
	}
	if _, err := g.OwnedExport("vm3.vda", 1<<20, proc.Process{PID: self.PID, Start: self.Start - 1}); err != nil {
		t.Fatal(err)
	}

	write := func(export string, off uint64) error {
		h, err := libnbd.New()
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		if err := h.SetExportName(export); err != nil {
			t.Fatal(err)
		}
		if err := h.ConnectUnix(ctx, opts.Socket); err != nil {
			return err
		}
		return h.Pwrite(ctx, bytes.Repeat([]byte{0xee}, 4096), off, 0)
	}
	if err := write("vm1.vda", 0); err != nil {
		t.Fatalf("the owner's write: %v", err)
	}
	if got := g.Spool().LastSeq(); got != 1 {
		t.Fatalf("spool last seq %d after the owner's write, want 1", got)
	}
	for _, export := range []string{"vm2.vda", "vm3.vda"} {
		if err := write(export, 0); err == nil {
			t.Errorf("this process wrote into %s, which it does not own", export)
		}
	}
	if path, err := exec.LookPath("qemu-io"); err == nil {
		uri := "nbd+unix:///vm2.vda?socket=" + opts.Socket
		out, _ := exec.CommandContext(ctx, path, "-f", "raw", "-c", "write -P 0xcd 0 4096", uri).CombinedOutput()
		if !strings.Contains(string(out), "open to this client") {
			t.Errorf("qemu-io into an export it does not own: %s; want the refusal a missing export gets", out)
		}
	} else {
		t.Logf("qemu-io not found (Debian qemu-utils): checked with libnbd only")
	}
	if got := g.Spool().LastSeq(); got != 1 {
		t.Fatalf("spool last seq %d after refused writers, want 1: a refused peer wrote", got)
	}
	if got := g.ServerStats().Refused; got < 2 {
		t.Errorf("server counted %d refusals, want at least 2", got)
	}

	// vm2's next QEMU is this process: the export is kept, its owner replaced.
	again, err := g.OwnedExport("vm2.vda", 1<<20, self)
	if err != nil {
		t.Fatal(err)
	}
	if err := write("vm2.vda", 8192); err != nil {
		t.Fatalf("the new owner's write: %v", err)
	}
	if got := g.Spool().LastSeq(); got != 2 {
		t.Fatalf("spool last seq %d, want 2", got)
	}
	if o, _ := again.Owner(); o != self {
		t.Fatalf("owner after the VM's restart %v, want %v", o, self)
	}
	// Export never loosens an owned export.
	if e, _ := g.Export("vm3.vda", 1<<20); e.owner.Load() == nil {
		t.Fatal("Export dropped the owner of an owned export")
	}
}
