package nbd_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/nbd"
	"github.com/qcdp/qcdp/proc"
)

var errNotYours = errors.New("not this peer's export")

// gatedExport is a recordExport that only peers allow accepts may open; it
// remembers every peer it was asked about.
type gatedExport struct {
	recordExport
	allow func(nbd.Peer) bool

	mu    sync.Mutex
	asked []nbd.Peer
}

func (e *gatedExport) Allow(p nbd.Peer) error {
	e.mu.Lock()
	e.asked = append(e.asked, p)
	e.mu.Unlock()
	if !e.allow(p) {
		return fmt.Errorf("%w: pid %d", errNotYours, p.Cred.PID)
	}
	return nil
}

func (e *gatedExport) peers() []nbd.Peer {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.asked)
}

var _ nbd.Authorizer = (*gatedExport)(nil)

// authEnv serves "mine", open to peers that are this process, "theirs",
// open to no peer of this host, and "open", which asks nobody.
type authEnv struct {
	sock         string
	srv          *nbd.Server
	mine, theirs *gatedExport
	open         *recordExport
	self         proc.Process
	selfUID      uint32
}

func newAuthEnv(t *testing.T, mineAllows func(nbd.Peer) bool) *authEnv {
	t.Helper()
	self, err := proc.Lookup(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	env := &authEnv{
		self: self, selfUID: uint32(os.Getuid()),
		mine:   &gatedExport{recordExport: recordExport{size: 1 << 20}, allow: mineAllows},
		theirs: &gatedExport{recordExport: recordExport{size: 1 << 20}, allow: func(nbd.Peer) bool { return false }},
		open:   &recordExport{size: 1 << 20},
	}
	var cat nbd.Exports
	cat.Add("mine", env.mine)
	cat.Add("theirs", env.theirs)
	cat.Add("open", env.open)
	env.srv, env.sock = startServer(t, &cat)
	return env
}

func listNames(t *testing.T, c *rawClient) []string {
	t.Helper()
	var names []string
	for _, r := range c.option(wOptList, nil) {
		if r.typ == wRepServer {
			n := binary.BigEndian.Uint32(r.data)
			names = append(names, string(r.data[4:4+n]))
		}
	}
	return names
}

// TestAuthorizerRawClient: through the wire protocol, byte by byte: an
// export's Allow sees this process's credentials; a refused export is
// answered NBD_REP_ERR_UNKNOWN, like a missing name, for GO, INFO and the meta context options,
// left out of LIST, and closes the connection on EXPORT_NAME; the same
// connection can still open what it may; nothing is written to a refused
// export.
func TestAuthorizerRawClient(t *testing.T) {
	env := newAuthEnv(t, func(p nbd.Peer) bool { return p.HasCred && p.Cred.PID == os.Getpid() })

	c := newstyle(t, env.sock)
	if got, want := listNames(t, c), []string{"mine", "open"}; !slices.Equal(got, want) {
		t.Errorf("LIST shows %q, want %q (not the refused export)", got, want)
	}
	if r := c.option(wOptStructured, nil); r[len(r)-1].typ != wRepAck {
		t.Fatalf("structured reply: %+v", r)
	}
	for _, tc := range []struct {
		opt  uint32
		data []byte
	}{
		{wOptInfo, nameData("theirs")},
		{wOptListMeta, metaData("theirs", "base:allocation")},
		{wOptSetMeta, metaData("theirs", "base:allocation")},
		{wOptGo, nameData("theirs")},
	} {
		reps := c.option(tc.opt, tc.data)
		if len(reps) != 1 || reps[0].typ != wRepErrUnkn {
			t.Errorf("option %d on a refused export: replies %+v, want one NBD_REP_ERR_UNKNOWN (as a missing export)", tc.opt, reps)
		}
	}
	s := c.goExport("mine", true)
	if r := c.do(s, 0, wCmdWrite, 4096, 512, pattern(5, 512)); r.errno != 0 {
		t.Fatalf("write to the allowed export: errno %d", r.errno)
	}
	if ops := env.mine.snapshot(); len(ops) != 1 || ops[0].off != 4096 {
		t.Fatalf("allowed export saw %+v, want the one write", ops)
	}
	if ops := env.theirs.snapshot(); len(ops) != 0 {
		t.Fatalf("refused export saw %+v", ops)
	}

	for _, p := range append(env.mine.peers(), env.theirs.peers()...) {
		if !p.HasCred || p.Cred.Process != env.self || p.Cred.UID != env.selfUID {
			t.Fatalf("Allow was given peer %+v, want this process %v uid %d", p, env.self, env.selfUID)
		}
	}
	if got := env.srv.Stats().Refused; got != 4 {
		t.Errorf("Stats.Refused = %d, want 4", got)
	}

	// EXPORT_NAME cannot carry an error: the connection is closed.
	old := newstyle(t, env.sock)
	old.write(optBytes(wOptExportName, []byte("theirs")))
	old.expectClosed()
	if ops := env.theirs.snapshot(); len(ops) != 0 {
		t.Fatalf("refused export saw %+v", ops)
	}
}

// TestAuthorizerRealClients: libnbd's and QEMU's clients, other processes
// than the server, are refused as if the export did not exist and write nothing;
// allowed, they write.
func TestAuthorizerRealClients(t *testing.T) {
	libnbdTools(t)
	qemuTools(t)
	needPythonNBD(t)
	// "mine" is open to other processes of this user: the tools.
	env := newAuthEnv(t, func(p nbd.Peer) bool {
		return p.HasCred && p.Cred.PID != os.Getpid() && p.Cred.UID == uint32(os.Getuid())
	})

	// nbdinfo is refused
	// and does not list what it may not open.
	if _, errs, code := run(t, 20*time.Second, "nbdinfo", uri(env.sock, "theirs")); code == 0 {
		t.Errorf("nbdinfo opened a refused export: %s", errs)
	}
	out := mustRun(t, "nbdinfo", "--list", "--json", uri(env.sock, ""))
	if strings.Contains(out, `"theirs"`) || !strings.Contains(out, `"mine"`) || !strings.Contains(out, `"open"`) {
		t.Errorf("nbdinfo --list shows what it may not open, or hides what it may:\n%s", out)
	}

	// Writes with nbdsh and qemu-io are refused with the missing-export
	// error, and nothing reaches the export.
	script := "h.pwrite(b'\\xab' * 4096, 0); h.flush()"
	if _, errs, code := run(t, 20*time.Second, "nbdsh", "-u", uri(env.sock, "theirs"), "-c", script); code == 0 || !strings.Contains(errs, "has no export named 'theirs'") {
		t.Errorf("nbdsh on a refused export: exit %d, %q; want the answer a missing export gets", code, errs)
	}
	if out, errs, code := run(t, 20*time.Second, "qemu-io", "-f", "raw", "-c", "write -P 0xcd 0 4096", uri(env.sock, "theirs")); !strings.Contains(out+errs, "open to this client") {
		t.Errorf("qemu-io on a refused export: exit %d\n%s\n%s\nwant the answer a missing export gets", code, out, errs)
	}
	if ops := env.theirs.snapshot(); len(ops) != 0 {
		t.Fatalf("refused export saw %+v", ops)
	}
	for _, p := range env.theirs.peers() {
		if !p.HasCred || p.Cred.PID == os.Getpid() || p.Cred.PID <= 0 {
			t.Fatalf("refused export was asked about %+v, want another process's credentials", p)
		}
	}

	// The same tools, allowed, write.
	mustRun(t, "nbdsh", "-u", uri(env.sock, "mine"), "-c", script)
	mustRun(t, "qemu-io", "-f", "raw", "-c", "write -P 0xcd 8192 4096", uri(env.sock, "mine"))
	img := env.mine.replay()
	if !bytes.Equal(img[:4096], bytes.Repeat([]byte{0xab}, 4096)) || !bytes.Equal(img[8192:12288], bytes.Repeat([]byte{0xcd}, 4096)) {
		t.Fatalf("the allowed clients' writes did not arrive: %+v", env.mine.snapshot())
	}
}
