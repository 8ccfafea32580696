package replica

import (
	"bufio"
	"crypto/tls"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/qcdp/qcdp/stream"
)

// TestTenantLimits: the policy's max_groups and max_streams hold at the
// daemon. A stream that would create a journal beyond the tenant's
// max_groups is refused as denied, naming the limit, and creates nothing
// (journals already on disk count; their groups still stream); one
// connection beyond max_streams is refused as unavailable, naming it.
func TestTenantLimits(t *testing.T) {
	d, hostTLS := newDaemonWith(t, `
[[tenant]]
name = "g"
hosts = ["*"]
groups = ["g-*"]
max_groups = 2

[[tenant]]
name = "s"
hosts = ["*"]
groups = ["s-*"]
max_streams = 1
`)
	last := fill(t, d, "g", "g-0", "vda").LastSeq() // already there
	open := func(tenant, group string, last uint64) (*tls.Conn, error) {
		t.Helper()
		c, err := tls.Dial("tcp", d.Addr().String(), hostTLS(tenant, "kvm1"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		b, err := stream.AppendHello(nil, stream.HelloMsg{Group: group, Host: "kvm1", LastSeq: last, Intact: last,
			Spool: stream.SpoolID{ID: [16]byte{1, 2, 3}, Created: 1, Epoch: 1}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		f, err := stream.NewReader(bufio.NewReader(c)).Next()
		if err != nil {
			t.Fatal(err)
		}
		if f.Type == stream.Refuse {
			re, err := stream.DecodeRefuse(f)
			if err != nil {
				t.Fatal(err)
			}
			return c, re
		}
		_, err = stream.DecodeWelcome(f)
		return c, err
	}
	refused := func(err error, code stream.Code, says string) {
		t.Helper()
		var re *stream.RefusedError
		if !errors.As(err, &re) || re.Code != code || !strings.Contains(re.Message, says) {
			t.Fatalf("got %v, want a refusal (%v) that says %q", err, code, says)
		}
	}

	c, err := open("g", "g-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	_, err = open("g", "g-2", 0)
	refused(err, stream.CodeDenied, "max_groups is 2")
	if dir, _ := d.cfg.JournalDir("g", "g-2"); !notExist(dir) {
		t.Errorf("the refused group's journal %s was created", dir)
	}
	for _, g := range []struct {
		name string
		last uint64
	}{{"g-0", last}, {"g-1", 0}} {
		c, err := open("g", g.name, g.last)
		if err != nil {
			t.Fatalf("group %s, which has a journal: %v", g.name, err)
		}
		c.Close()
	}

	if _, err := open("s", "s-1", 0); err != nil {
		t.Fatal(err)
	}
	_, err = open("s", "s-2", 0)
	refused(err, stream.CodeUnavailable, "max_streams is 1")
}

func notExist(path string) bool {
	_, err := os.Stat(path)
	return errors.Is(err, os.ErrNotExist)
}
