package sender_test

import (
	"bufio"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/stream"
	"github.com/qcdp/qcdp/stream/streamtest"
)

// TestOldReplicaRefusesClearly: a replica that speaks stream v1 (it knows
// no spool identity) refuses this host's Hello with a Refuse of its own
// version; the host reads it and its status names both versions. Nothing
// is acknowledged to the spool.
func TestOldReplicaRefusesClearly(t *testing.T) {
	pki := streamtest.New(t)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", pki.Server)
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
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				f, err := stream.NewReader(bufio.NewReader(c)).Next()
				if err != nil || f.Type != stream.Hello {
					return
				}
				b := stream.AppendRefuse(nil, stream.CodeVersion, "replica speaks stream v1, host sent v2")
				b[9] = 1 // as a v1 replica writes it
				streamtest.Reseal(b)
				c.Write(b)
			}()
		}
	}()
	sp := openSpool(t, "g1")
	appendN(t, sp, 10, 100)
	r := startSender(t, &site{pki: pki, addr: ln.Addr().String()}, sp, nil)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(r.s.Stats().LastError, "replica refused (version): replica speaks stream v1, host sent v2") {
		if time.Now().After(deadline) {
			t.Fatalf("status after an old replica's refusal: %+v", r.s.Stats())
		}
		time.Sleep(2 * time.Millisecond)
	}
	r.stop(t)
	if sp.Acked() != 0 {
		t.Fatalf("acknowledged up to %d", sp.Acked())
	}
}
