package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcdp/qcdp/cmd/qcdp/internal/ctlapi"
	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/failover"
	"github.com/qcdp/qcdp/protect"
)

// The host writes the final bookmark the recovery site looks for: the
// host's engine repeats the recovery site's constant rather than import
// its engine.
func TestFinalBookmarkAgrees(t *testing.T) {
	if protect.FinalBookmark != failover.FinalBookmark {
		t.Fatalf("the host marks %q, the recovery site looks for %q", protect.FinalBookmark, failover.FinalBookmark)
	}
}

// `qcdp failover prepare` asks the host daemon (not the replica daemon the
// other failover subcommands ask), with its flags before or after the
// subcommand, and says what to run next.
func TestFailoverPrepareCLI(t *testing.T) {
	f := startFakeDaemon(t)
	code, out, errOut := runQcdp("failover", "prepare", "g1", "--timeout", "2m", "--agent", "--socket", f.sock)
	if code != 0 {
		t.Fatalf("failover prepare: exit %d\n%s%s", code, out, errOut)
	}
	if got, want := f.last(), "POST /v1/prepare-failover?"+query("agent", "1", "group", "g1", "timeout", "2m0s"); got != want {
		t.Errorf("request %q, want %q", got, want)
	}
	if !strings.Contains(out, "now run `qcdp failover planned g1` at the recovery site") {
		t.Errorf("output:\n%s", out)
	}
	code, out, errOut = runQcdp("failover", "--socket", f.sock, "prepare", "g1", "--json")
	if code != 0 || !json.Valid([]byte(out)) || !strings.HasPrefix(out, "{") {
		t.Fatalf("failover prepare --json: exit %d\n%s%s", code, out, errOut)
	}
	if got, want := f.last(), "POST /v1/prepare-failover?"+query("group", "g1", "timeout", "5m0s"); got != want {
		t.Errorf("request %q, want %q", got, want)
	}
	nowhere := filepath.Join(t.TempDir(), "no.sock")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"failover", "prepare", "g1", "--timeout", "0"}, "a duration of zero means nothing here"},
		{[]string{"failover", "prepare", "g1", "--timeout", "-1m"}, "a duration cannot be negative"},
		{[]string{"failover", "prepare"}, "missing GROUP"},
	} {
		code, out, errOut := runQcdp(append(c.args, "--socket", nowhere)...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("qcdp %q: exit %d, want 2 with %q:\n%s%s", c.args, code, c.want, out, errOut)
		}
	}
	code, _, errOut = runQcdp("failover", "prepare", "g1", "--socket", nowhere)
	if code != 1 || !strings.Contains(errOut, "cannot reach the host daemon") {
		t.Errorf("prepare with no host daemon: exit %d\n%s", code, errOut)
	}
}

// The host daemon's POST /v1/prepare-failover: the engine's refusals come
// back with their codes.
func TestPrepareFailoverAPI(t *testing.T) {
	dir := t.TempDir()
	pol, err := configs.Parse("host.toml", []byte(fmt.Sprintf(`[host]
state_dir = %q
control_socket = %q
nbd_socket_dir = %q
qmp_sockets = ["/nonexistent/*.qmp"]

[[group]]
name = "g1"
  [[group.vm]]
  name = "vm1"
`, filepath.Join(dir, "state"), filepath.Join(dir, "host.sock"), filepath.Join(dir, "nbd"))))
	if err != nil {
		t.Fatal(err)
	}
	e, err := protect.New(context.Background(), pol, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	h := hostAPI(e)
	for _, c := range []struct {
		query  string
		status int
		code   string
		want   string
	}{
		{"group=g9", http.StatusNotFound, ctlapi.CodeNotFound, "no such group"},
		{"group=g1&timeout=soon", http.StatusBadRequest, ctlapi.CodeInvalid, "timeout"},
		{"group=g1&timeout=1m", http.StatusBadRequest, ctlapi.CodeInvalid, "no replica"},
	} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/prepare-failover?"+c.query, nil))
		var e ctlapi.Error
		if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || w.Code != c.status || e.Code != c.code || !strings.Contains(e.Msg, c.want) {
			t.Errorf("POST /v1/prepare-failover?%s: %d %s, want %d %s with %q", c.query, w.Code, w.Body, c.status, c.code, c.want)
		}
	}
}
