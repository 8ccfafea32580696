package shipper

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/qcdp/qcdp/shipper/sender"
	"github.com/qcdp/qcdp/shipper/spool"
	"github.com/qcdp/qcdp/vfs"
)

// A hash resync compares with the replica only once the replica has
// welcomed the group's spool: before (or if it refuses it as diverged)
// its journal may be another spool's, whose hashes say nothing of what
// this stream wrote.
func TestReplicaHashesOnlyWhenWelcomed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep := startReplica(t)
	open := func(addr string) *Group {
		t.Helper()
		opts := GroupOptions{
			Spool: spool.Options{Dir: "/state/spool/g1", Group: "g1", FS: vfs.NewMemFS()},
			Replica: &sender.Options{Addr: addr, TLS: rep.pki.Client("acme", "kvm1"), Host: "kvm1",
				MinBackoff: time.Millisecond, MaxBackoff: 20 * time.Millisecond, DialTimeout: 200 * time.Millisecond},
			Logger: quiet,
		}
		g, err := OpenGroup(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- g.Serve(ctx) }()
		t.Cleanup(func() {
			g.Shutdown(context.Background())
			<-served
		})
		return g
	}
	down := open("127.0.0.1:1")
	if _, err := down.ReplicaHashes(ctx, "vda", 0, 64<<10, 0, 0); !errors.Is(err, ErrNotWelcomed) {
		t.Fatalf("hashes from a replica that never welcomed the spool: %v, want ErrNotWelcomed", err)
	}
	up := open(rep.addr)
	for !up.Sender().Welcomed() {
		select {
		case <-ctx.Done():
			t.Fatal("never welcomed")
		case <-time.After(10 * time.Millisecond):
		}
	}
	if _, err := up.ReplicaHashes(ctx, "vda", 0, 64<<10, 0, 0); errors.Is(err, ErrNotWelcomed) {
		t.Fatalf("hashes once welcomed: %v", err)
	}
}
