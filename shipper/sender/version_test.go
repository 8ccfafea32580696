package sender_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/shipper/spool"
	"github.com/qcdp/qcdp/stream"
	"github.com/qcdp/qcdp/stream/streamtest"
)

// oldReplica listens as a replica of stream version v would: it answers
// every Hello with answer(hello frame), written as version v writes it.
func oldReplica(t *testing.T, pki *streamtest.PKI, v uint8, answer func(f stream.Frame) []byte) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", pki.Server)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				f, err := stream.NewReader(bufio.NewReader(c)).Next()
				if err != nil || f.Type != stream.Hello {
					return
				}
				b := answer(f)
				b[9] = v // as a replica of version v writes it
				streamtest.Reseal(b)
				c.Write(b)
			}()
		}
	}()
	return ln.Addr().String()
}

// waitError waits until the sender's status holds want, then stops it;
// nothing may have been acknowledged to the spool.
func waitError(t *testing.T, r *running, sp *spool.Spool, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(r.s.Stats().LastError, want) {
		if time.Now().After(deadline) {
			t.Fatalf("status %+v, want its error to say %q", r.s.Stats(), want)
		}
		time.Sleep(2 * time.Millisecond)
	}
	r.stop(t)
	if sp.Acked() != 0 {
		t.Fatalf("acknowledged up to %d", sp.Acked())
	}
}

// TestOldReplicaRefusesClearly: a replica that speaks stream v1 (it knows
// no spool identity) refuses this host's Hello with a Refuse of its own
// version; the host reads it and its status names both versions. Nothing
// is acknowledged to the spool.
func TestOldReplicaRefusesClearly(t *testing.T) {
	pki := streamtest.New(t)
	addr := oldReplica(t, pki, 1, func(stream.Frame) []byte {
		return stream.AppendRefuse(nil, stream.CodeVersion, "replica speaks stream v1, host sent v2")
	})
	sp := openSpool(t, "g1")
	appendN(t, sp, 10, 100)
	r := startSender(t, &site{pki: pki, addr: addr}, sp, nil)
	waitError(t, r, sp, "replica refused (version): replica speaks stream v1, host sent v2")
}

// TestV2ReplicaSaysUpgradeIt: a replica of stream v2 refuses this host of
// v3 (as a v2 replica refuses every other version); the host's status says
// to upgrade the replica first. One that welcomed this host in v2 instead
// is not streamed to either.
func TestV2ReplicaSaysUpgradeIt(t *testing.T) {
	if stream.Version != 3 {
		t.Skip("written for a host of stream v3")
	}
	pki := streamtest.New(t)
	addr := oldReplica(t, pki, 2, func(f stream.Frame) []byte {
		return stream.AppendRefuse(nil, stream.CodeVersion, fmt.Sprintf("replica speaks stream v2, host sent v%d", f.Version))
	})
	sp := openSpool(t, "g1")
	appendN(t, sp, 10, 100)
	r := startSender(t, &site{pki: pki, addr: addr}, sp, nil)
	waitError(t, r, sp, "replica speaks stream v2, host sent v3 (the replica speaks stream v2, older than this host's v3: upgrade the replica first)")

	id := sp.Identity()
	addr = oldReplica(t, pki, 2, func(stream.Frame) []byte {
		return stream.AppendWelcome(nil, stream.WelcomeMsg{Durable: 0, Spool: id.ID, Epoch: id.Epoch})
	})
	r = startSender(t, &site{pki: pki, addr: addr}, sp, nil)
	waitError(t, r, sp, "welcomed this host in stream v2, the host speaks v3 (upgrade the replica first)")
}
