package filter

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A resync reads only from a socket the VM's QEMU listens on: another
// process that put its own server at the path (another VM's QEMU, which
// can write the directory) is refused before a byte is read.
func TestDialQEMUChecksTheListener(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ctx := context.Background()
	c := &Capture{cfg: Config{Disk: "disk0", NBDSocket: path, QEMU: os.Getpid()}}
	sock, err := c.dialQEMU(ctx)
	if err != nil {
		t.Fatalf("the VM's own listener: %v", err)
	}
	unix.Close(sock)
	c.cfg.QEMU = os.Getpid() + 1
	if _, err := c.dialQEMU(ctx); !errors.Is(err, ErrForeignServer) {
		t.Fatalf("a listener of another pid: %v, want ErrForeignServer", err)
	}
	c.cfg.QEMU = 0 // not checked (tests of the lifecycle alone)
	if sock, err := c.dialQEMU(ctx); err != nil {
		t.Fatal(err)
	} else {
		unix.Close(sock)
	}
}
