package hypervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// fakeAgent is a QEMU guest agent peer speaking the real JSON protocol: it
// first sends a stale reply (as a previous client's leftovers would be),
// answers guest-sync with its id, and freeze/thaw with the given result.
func fakeAgent(t *testing.T, reply string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qga.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			br := bufio.NewReader(c)
			c.Write([]byte(`{"return": 12345}` + "\n"))
			for {
				line, err := br.ReadBytes('\n')
				if err != nil {
					break
				}
				var m struct {
					Execute   string `json:"execute"`
					Arguments struct {
						ID int64 `json:"id"`
					} `json:"arguments"`
				}
				json.Unmarshal(line, &m)
				switch m.Execute {
				case "guest-sync":
					b, _ := json.Marshal(map[string]int64{"return": m.Arguments.ID})
					c.Write(append(b, '\n'))
				default:
					c.Write([]byte(reply + "\n"))
				}
			}
			c.Close()
		}
	}()
	return path
}

func TestAgentCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := AgentCommand(ctx, fakeAgent(t, `{"return": 2}`), "guest-fsfreeze-freeze")
	if err != nil || n != 2 {
		t.Fatalf("freeze through a working agent: %d, %v", n, err)
	}
	_, err = AgentCommand(ctx, fakeAgent(t, `{"error": {"class": "GenericError", "desc": "fsfreeze is disabled"}}`), "guest-fsfreeze-freeze")
	if err == nil || errors.Is(err, ErrNoAgent) {
		t.Fatalf("an agent's error reply: %v, want its error, not ErrNoAgent", err)
	}
	if _, err := AgentCommand(ctx, filepath.Join(t.TempDir(), "none.sock"), "guest-fsfreeze-freeze"); !errors.Is(err, ErrNoAgent) {
		t.Fatalf("no agent socket: %v, want ErrNoAgent", err)
	}
}

// A VM whose agent port exists but whose guest runs no agent (QEMU is
// paused: nothing answers) and a VM with no agent port at all are both
// ErrNoAgent, within the caller's deadline.
func TestSocketsFreezeWithoutAgent(t *testing.T) {
	needTools(t, map[string]string{"qemu-system-x86_64": "qemu-system-x86"})
	dir := t.TempDir()
	withPort := filepath.Join(dir, "a.qmp")
	q := startQEMU(t, dir, withPort,
		"-chardev", "socket,path="+filepath.Join(dir, "a.qga")+",server=on,wait=off,id=qga0",
		"-device", "virtio-serial", "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0")
	defer q.stop(t)
	bare := filepath.Join(dir, "b.qmp")
	q2 := startQEMU(t, dir, bare)
	defer q2.stop(t)

	s := NewSockets(filepath.Join(dir, "*.qmp"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vms, err := s.ListVMs(ctx)
	if err != nil || len(vms) != 2 {
		t.Fatalf("ListVMs: %+v %v", vms, err)
	}
	for _, vm := range vms {
		fctx, fcancel := context.WithTimeout(ctx, 2*time.Second)
		start := time.Now()
		_, err := s.FreezeFS(fctx, vm)
		fcancel()
		if !errors.Is(err, ErrNoAgent) {
			t.Errorf("VM %s: freeze without an agent: %v, want ErrNoAgent", vm.ID, err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("VM %s: freeze without an agent took %v", vm.ID, d)
		}
	}
}
