package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/qcdp/qcdp/cmd/qcdp/internal/ctlapi"
	"github.com/qcdp/qcdp/protect"
	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica"
	"github.com/qcdp/qcdp/replica/journal"
)

// fakeDaemon is both daemons' control API as a peer of the real protocol
// (JSON over HTTP on a unix socket): it answers every request with what a
// daemon would and remembers the requests.
type fakeDaemon struct {
	sock string
	mu   sync.Mutex
	reqs []string // "POST /v1/export?group=g1&seq=5"
}

func startFakeDaemon(t *testing.T) *fakeDaemon {
	t.Helper()
	f := &fakeDaemon{sock: filepath.Join(t.TempDir(), "ctl.sock")}
	ln, err := net.Listen("unix", f.sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(f.serve)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return f
}

func (f *fakeDaemon) serve(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f.mu.Lock()
	f.reqs = append(f.reqs, r.Method+" "+r.URL.Path+"?"+q.Encode())
	f.mu.Unlock()
	at := time.Date(2026, 11, 21, 22, 15, 0, 0, time.UTC)
	var v any = struct{}{}
	switch r.URL.Path {
	case "/v1/status":
		v = protect.Status{Groups: []protect.GroupStatus{{Name: "g1", Disks: []protect.DiskStatus{
			{VM: "vm1", VMID: "vm1", Target: "vda", Stream: "vm1.vda", State: "detached"},
			{VM: "vm2", VMID: "vm2", Target: "vda", Stream: "vm2.vda", State: "syncing"},
		}}}}
	case "/metrics":
		w.Write([]byte("qcdp_rpo_seconds{group=\"g1\"} 0\n"))
		return
	case "/v1/bookmark":
		if q.Get("group") != "g1" {
			ctlapi.WriteJSON(w, http.StatusNotFound, &ctlapi.Error{Msg: `protect: no such group: "` + q.Get("group") + `"`, Code: ctlapi.CodeNotFound})
			return
		}
		v = protect.BookmarkResult{Seq: 7, Kind: record.UserBookmark.String()}
	case "/v1/points":
		v = replica.PointsInfo{Tenant: "acme", Group: q.Get("group"),
			Window: journal.Window{FirstSeq: 1, LastSeq: 9, FirstTime: at, LastTime: at},
			Points: []journal.Point{
				{Seq: 5, Time: at, Kind: record.SyncComplete},
				{Seq: 7, Time: at, Kind: record.UserBookmark, Name: "nightly"},
				{Seq: 8, Time: at, LongTerm: true},
			}}
	case "/v1/export":
		v = replica.ExportInfo{ID: "x1", Tenant: "acme", Group: q.Get("group"), Point: journal.Point{Seq: 5, Time: at},
			URIs: map[string]string{"vm1.vda": "nbd+unix:///x1/vm1.vda?socket=/run/qcdp/nbd.sock"}}
	case "/v1/exports":
		v = []replica.ExportInfo{}
	case "/v1/restore":
		v = replica.RestoreInfo{Point: journal.Point{Seq: 5, Time: at}, Disk: "vm1.vda", Path: q.Get("path"), Bytes: 4096}
	case "/v1/verify":
		v = journal.Report{Segments: 1, Records: 9}
	}
	ctlapi.WriteJSON(w, http.StatusOK, v)
}

// last returns the last request and forgets them all.
func (f *fakeDaemon) last() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) == 0 {
		return ""
	}
	r := f.reqs[len(f.reqs)-1]
	f.reqs = nil
	return r
}

func (f *fakeDaemon) all() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.reqs
	f.reqs = nil
	return r
}

// runQcdp runs the command line in-process, as the binary does.
func runQcdp(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func query(kv ...string) string {
	q := url.Values{}
	for i := 0; i < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	return q.Encode()
}

// The README's command lines, flags before or after the positional
// arguments, reach the daemon as the same request.
func TestFlagsAnywhere(t *testing.T) {
	f := startFakeDaemon(t)
	for _, c := range []struct {
		args []string
		want string // the request the daemon got
	}{
		{[]string{"export", "g1", "--seq", "5"}, "POST /v1/export?" + query("group", "g1", "seq", "5")},
		{[]string{"export", "--seq", "5", "g1"}, "POST /v1/export?" + query("group", "g1", "seq", "5")},
		{[]string{"export", "g1", "--bookmark", "nightly", "--writable", "--tenant", "acme"}, "POST /v1/export?" + query("group", "g1", "bookmark", "nightly", "writable", "1", "tenant", "acme")},
		{[]string{"export", "g1", "--time", "2026-11-21T22:15:00Z"}, "POST /v1/export?" + query("group", "g1", "time", "2026-11-21T22:15:00Z")},
		{[]string{"points", "g1", "--json"}, "GET /v1/points?" + query("group", "g1")},
		{[]string{"points", "--json", "g1"}, "GET /v1/points?" + query("group", "g1")},
		{[]string{"restore", "g1", "--seq", "5", "--disk", "vm1.vda", "--out", "/tmp/x.raw"}, "POST /v1/restore?" + query("group", "g1", "seq", "5", "disk", "vm1.vda", "path", "/tmp/x.raw", "format", "raw")},
		{[]string{"restore", "g1", "--seq", "5", "--disk", "vda", "--out", "/tmp/x.raw", "--format", "raw"}, "POST /v1/restore?" + query("group", "g1", "seq", "5", "disk", "vda", "path", "/tmp/x.raw", "format", "raw")},
		{[]string{"restore", "g1", "--bookmark", "nightly", "--disk", "vda", "--out", "/tmp/x.qcow2", "--format", "qcow2"}, "POST /v1/restore?" + query("group", "g1", "bookmark", "nightly", "disk", "vda", "path", "/tmp/x.qcow2", "format", "qcow2")},
		{[]string{"verify", "g1"}, "POST /v1/verify?" + query("group", "g1")},
		{[]string{"exports", "--json"}, "GET /v1/exports?"},
		{[]string{"unexport", "x1"}, "POST /v1/unexport?" + query("id", "x1")},
		{[]string{"bookmark", "--app", "g1", "nightly"}, "POST /v1/bookmark?" + query("group", "g1", "name", "nightly", "app", "1")},
		{[]string{"bookmark", "g1", "nightly", "--app"}, "POST /v1/bookmark?" + query("group", "g1", "name", "nightly", "app", "1")},
		{[]string{"bookmark", "g1", "before-upgrade"}, "POST /v1/bookmark?" + query("group", "g1", "name", "before-upgrade")},
		{[]string{"status", "--json"}, "GET /v1/status?"},
		{[]string{"status", "--metrics"}, "GET /v1/status?"},
		{[]string{"status"}, "GET /v1/status?"},
	} {
		args := append(c.args, "--socket", f.sock)
		code, out, errOut := runQcdp(args...)
		if got := f.last(); code != 0 || got != c.want {
			t.Errorf("qcdp %s: exit %d, request %q, want %q\n%s%s", strings.Join(c.args, " "), code, got, c.want, out, errOut)
		}
	}
	// The VM commands ask for the action, then for the VM's disks.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"detach", "vm1", "--disk", "vda"}, "POST /v1/detach?" + query("vm", "vm1", "disk", "vda")},
		{[]string{"detach", "--disk", "vm1.vda", "vm1"}, "POST /v1/detach?" + query("vm", "vm1", "disk", "vm1.vda")},
		{[]string{"attach", "vm1"}, "POST /v1/attach?" + query("vm", "vm1", "disk", "")},
		{[]string{"pause", "vm1", "--disk", "vda"}, "POST /v1/pause?" + query("vm", "vm1", "disk", "vda")},
		{[]string{"resume", "vm1"}, "POST /v1/resume?" + query("vm", "vm1", "disk", "")},
	} {
		code, out, errOut := runQcdp(append(c.args, "--socket", f.sock)...)
		reqs := f.all()
		if code != 0 || len(reqs) != 2 || reqs[0] != c.want || reqs[1] != "GET /v1/status?" {
			t.Errorf("qcdp %s: exit %d, requests %q, want %q then the status\n%s%s", strings.Join(c.args, " "), code, reqs, c.want, out, errOut)
		}
	}
}

// What --json prints: names, not numbers, and what a VM command did.
func TestJSONOutput(t *testing.T) {
	f := startFakeDaemon(t)
	code, out, errOut := runQcdp("points", "g1", "--json", "--socket", f.sock)
	if code != 0 {
		t.Fatalf("points: exit %d\n%s", code, errOut)
	}
	var pts struct {
		Points []struct {
			Seq  uint64 `json:"seq"`
			Kind string `json:"kind"`
		} `json:"points"`
	}
	if err := json.Unmarshal([]byte(out), &pts); err != nil {
		t.Fatalf("points --json: %v\n%s", err, out)
	}
	kinds := []string{}
	for _, p := range pts.Points {
		kinds = append(kinds, p.Kind)
	}
	if strings.Join(kinds, ",") != "sync-complete,user-bookmark,none" {
		t.Errorf("points --json kinds: %q\n%s", kinds, out)
	}
	// The text output names them too.
	if code, out, _ := runQcdp("points", "g1", "--socket", f.sock); code != 0 || !strings.Contains(out, "sync-complete") || !strings.Contains(out, "point (long-term)") {
		t.Errorf("points: exit %d\n%s", code, out)
	}

	code, out, errOut = runQcdp("detach", "vm1", "--disk", "vda", "--json", "--socket", f.sock)
	var res struct {
		VM     string `json:"vm"`
		Action string `json:"action"`
		Disk   string `json:"disk"`
		Disks  []struct {
			Target string `json:"target"`
			State  string `json:"state"`
		} `json:"disks"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil {
		t.Fatalf("detach --json: exit %d\n%s%s", code, out, errOut)
	}
	if res.VM != "vm1" || res.Action != "detach" || res.Disk != "vda" || len(res.Disks) != 1 || res.Disks[0].State != "detached" {
		t.Errorf("detach --json: %+v\n%s", res, out)
	}
	for _, args := range [][]string{
		{"attach", "vm1", "--json"}, {"pause", "vm1", "--json"}, {"resume", "vm1", "--json"},
		{"bookmark", "g1", "x", "--json"}, {"export", "g1", "--seq", "5", "--json"}, {"exports", "--json"},
		{"unexport", "x1", "--json"}, {"verify", "g1", "--json"}, {"status", "--json"}, {"version", "--json"},
		{"restore", "g1", "--seq", "5", "--disk", "vda", "--out", "/tmp/x.raw", "--json"},
	} {
		if args[0] != "version" {
			args = append(args, "--socket", f.sock)
		}
		code, out, errOut := runQcdp(args...)
		if code != 0 || !json.Valid([]byte(out)) || !strings.HasPrefix(out, "{") && !strings.HasPrefix(out, "[") {
			t.Errorf("qcdp %s: exit %d, not JSON:\n%s%s", strings.Join(args, " "), code, out, errOut)
		}
	}
}

// Nonsense is refused before anything runs, with the reason: exit 2.
func TestNonsenseRefused(t *testing.T) {
	nowhere := filepath.Join(t.TempDir(), "no.sock") // nothing may be asked
	dir := t.TempDir()
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"export", "g1", "--ago", "-5m"}, "--ago -5m: a duration cannot be negative"},
		{[]string{"export", "g1", "--ago", "soon"}, "--ago soon: want a duration"},
		{[]string{"export", "g1", "--seq", "0"}, "--seq 0: want a seq: a whole number from 1"},
		{[]string{"export", "g1", "--seq", "-5"}, "--seq -5: want a seq"},
		{[]string{"export", "g1", "--seq", "five"}, "--seq five: want a seq"},
		{[]string{"export", "g1", "--time", "yesterday"}, "--time yesterday: want an RFC 3339 time"},
		{[]string{"export", "g1", "--seq", "5", "--ago", "5m"}, "name exactly one restore point"},
		{[]string{"export", "g1"}, "name exactly one restore point"},
		{[]string{"export", "--seq", "5"}, "missing GROUP"},
		{[]string{"export", "g1", "g2", "--seq", "5"}, `unexpected argument "g2"`},
		{[]string{"export", "g1", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"points", "g1", "-json"}, "unknown flag -json: long flags take two dashes, --json"},
		{[]string{"export", "g1", "-seq", "5"}, "unknown flag -seq: long flags take two dashes, --seq"},
		{[]string{"points", "g1", "-x"}, "unknown shorthand flag: 'x' in -x"},
		{[]string{"points"}, "missing GROUP"},
		{[]string{"restore", "g1", "--seq", "5", "--disk", "vda", "--out", "/tmp/x", "--format", "vmdk"}, "--format vmdk: want raw or qcow2"},
		{[]string{"restore", "g1", "--seq", "5", "--out", "/tmp/x"}, "--disk and --out are required"},
		{[]string{"bookmark", "g1", "a/b"}, "must not contain a slash"},
		{[]string{"bookmark", "g1", "a b"}, "must not contain white space"},
		{[]string{"bookmark", "g1", "a\tb"}, "must not contain white space"},
		{[]string{"bookmark", "g1", "a\x01b"}, "must not contain control characters"},
		{[]string{"bookmark", "g1", ""}, "1 to 255 bytes"},
		{[]string{"bookmark", "g1"}, "missing NAME"},
		{[]string{"bookmark"}, "missing GROUP and NAME"},
		{[]string{"detach"}, "missing VM"},
		{[]string{"detach", "vm1", "vm2"}, `unexpected argument "vm2"`},
		{[]string{"attach", "vm1", "--disk", "vda"}, "unknown flag: --disk"},
		{[]string{"status", "--json", "--metrics"}, "--json or --metrics, not both"},
		{[]string{"status", "extra"}, `unexpected argument "extra"`},
		{[]string{"capture", "--socket", "s", "--spool", dir, "--group", "g", "--disk", "vda=20X"}, "--disk vda=20X: 20X: want a size"},
		{[]string{"capture", "--socket", "s", "--spool", dir, "--group", "g", "--disk", "vda=0"}, "cannot be of size 0"},
		{[]string{"capture", "--socket", "s", "--spool", dir, "--group", "g", "--disk", "vda"}, "--disk vda: want NAME=SIZE"},
		{[]string{"capture", "--socket", "s", "--spool", dir, "--group", "g", "--disk", "../x=1G"}, `--disk ../x=1G: record: invalid record: disk name "../x"`},
		{[]string{"capture", "--socket", "s", "--spool", dir, "--group", "g", "--disk", "vda=1G", "--disk", "vda=2G"}, "vda is given twice"},
		{[]string{"capture", "--socket", "s", "--spool", dir, "--group", "g", "--disk", "vda=1G", "--max-spool", "lots"}, "--max-spool lots: want a size"},
		{[]string{"capture", "--socket", "s", "--spool", dir, "--group", "g", "--disk", "vda=1G", "--sync-interval", "-1s"}, "--sync-interval -1s: a duration cannot be negative"},
		{[]string{"capture", "--socket", "s", "--spool", dir, "--group", "g", "--disk", "vda=1G", "--log-level", "loud"}, "--log-level loud: want debug, info, warn or error"},
		{[]string{"capture", "--spool", dir}, "--socket, --spool, --group and at least one --disk are required"},
		{[]string{"spool", "apply", "--spool", dir, "--disk", "vda=/x", "--to-seq", "-1"}, "--to-seq -1: want a whole number"},
		{[]string{"spool", "show"}, "--spool is required"},
		{[]string{"spool"}, "missing subcommand: want apply, show or verify"},
		{[]string{"spool", "shw"}, `unknown command "shw"; did you mean show?`},
		{[]string{"certs", "--dir", dir, "--ca", "--days", "-1"}, "--days -1: validity cannot be negative"},
		{[]string{"certs", "--dir", dir, "--days", "x"}, "--days x: want a whole number"},
		{[]string{"certs", "--dir", dir, "--host", "kvm1", "--tenant", "a/b"}, "--tenant: "},
		{[]string{"certs", "--dir", dir, "--ca", "--replica", "dr1"}, "exactly one of --ca, --host, --replica"},
		{[]string{"exprt", "g1"}, `unknown command "exprt"; did you mean export or exports?`},
		{[]string{"completion"}, "missing subcommand"},
		{[]string{"completion", "tcsh"}, `unknown command "tcsh"`},
		{[]string{"gen-man"}, "missing DIR"},
	} {
		args := c.args
		if args[0] != "capture" && args[0] != "spool" && args[0] != "certs" && args[0] != "completion" && args[0] != "gen-man" && args[0] != "exprt" {
			args = append(append([]string{}, args...), "--socket", nowhere)
		}
		code, out, errOut := runQcdp(args...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("qcdp %q: exit %d, want 2 with %q:\n%s%s", c.args, code, c.want, out, errOut)
		}
		if strings.Count(errOut, "\n") > 2 || !strings.Contains(errOut, "--help'") || strings.Contains(errOut, "Usage:") {
			t.Errorf("qcdp %q: want the error and a short hint only, got:\n%s", c.args, errOut)
		}
	}
}

// A runtime failure is exit 1, printed once as "qcdp CMD: message", with no
// usage, no URL and the daemon's words.
func TestRuntimeErrors(t *testing.T) {
	f := startFakeDaemon(t)
	nowhere := filepath.Join(t.TempDir(), "host.sock")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"status", "--socket", nowhere}, "qcdp status: cannot reach the host daemon at " + nowhere + ": is `qcdp host` running?\n"},
		{[]string{"points", "g1", "--socket", nowhere}, "qcdp points: cannot reach the replica daemon at " + nowhere + ": is `qcdp replica` running?\n"},
		{[]string{"bookmark", "g9", "x", "--socket", f.sock}, "qcdp bookmark: protect: no such group: \"g9\"\n"},
		{[]string{"host", "--config", filepath.Join(t.TempDir(), "missing.toml")}, "missing.toml"},
	} {
		code, out, errOut := runQcdp(c.args...)
		if code != 1 || !strings.Contains(errOut, c.want) || strings.Contains(errOut, "http://") || strings.Contains(errOut, "--help") {
			t.Errorf("qcdp %q: exit %d, want 1 with %q:\n%s%s", c.args, code, c.want, out, errOut)
		}
	}
}

func TestVersion(t *testing.T) {
	defer func(v string) { version = v }(version)
	version = "v1.2.3-4-gabcdef-dirty"
	for _, args := range [][]string{{"--version"}, {"version"}, {"-v"}} {
		code, out, errOut := runQcdp(args...)
		if code != 0 || out != "qcdp v1.2.3-4-gabcdef-dirty\n" {
			t.Errorf("qcdp %s: exit %d, %q %q", args, code, out, errOut)
		}
	}
	code, out, _ := runQcdp("version", "--json")
	if code != 0 || strings.TrimSpace(out) != "{\n  \"version\": \"v1.2.3-4-gabcdef-dirty\"\n}" {
		t.Errorf("version --json: exit %d, %q", code, out)
	}
}

func TestHelp(t *testing.T) {
	// Bare qcdp shows the help and fails; --help succeeds.
	if code, out, errOut := runQcdp(); code != 2 || !strings.Contains(errOut, "Available Commands") || out != "" {
		t.Errorf("qcdp: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ := runQcdp("export", "--help")
	if code != 0 || !strings.Contains(out, "qcdp export GROUP (--seq N") || !strings.Contains(out, "Examples:") ||
		!strings.Contains(out, "--ago duration") {
		t.Errorf("export --help: exit %d\n%s", code, out)
	}
	// Every command says what it takes and shows an example.
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Name() == "help" || sub.Name() == "__complete" || sub.Name() == "__completeNoDesc" {
				continue
			}
			if sub.Example == "" && c.Name() != "completion" {
				t.Errorf("qcdp %s has no example", sub.CommandPath())
			}
			if sub.Short == "" || sub.Long == "" && c.Name() != "completion" {
				t.Errorf("qcdp %s has no description", sub.CommandPath())
			}
			walk(sub)
		}
	}
	walk(newRootCommand(io.Discard, io.Discard))
}

func TestCompletion(t *testing.T) {
	for _, c := range []struct{ shell, want string }{
		{"bash", "__start_qcdp"},
		{"zsh", "#compdef qcdp"},
	} {
		code, out, errOut := runQcdp("completion", c.shell)
		if code != 0 || !strings.Contains(out, c.want) {
			t.Errorf("completion %s: exit %d, %d bytes without %q\n%s", c.shell, code, len(out), c.want, errOut)
		}
	}
	// The shell asks the binary: subcommands, and --format's words.
	code, out, _ := runQcdp("__complete", "ex")
	if code != 0 || !strings.Contains(out, "export") || !strings.Contains(out, "exports") {
		t.Errorf("completing ex: exit %d\n%s", code, out)
	}
	code, out, _ = runQcdp("__complete", "restore", "g1", "--format", "")
	if code != 0 || !strings.Contains(out, "raw") || !strings.Contains(out, "qcow2") {
		t.Errorf("completing --format: exit %d\n%s", code, out)
	}
}

func TestGenMan(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "man")
	code, out, errOut := runQcdp("gen-man", dir)
	if code != 0 {
		t.Fatalf("gen-man: exit %d\n%s%s", code, out, errOut)
	}
	for page, want := range map[string]string{
		"qcdp.1":             "qcdp",
		"qcdp-export.1":      `\fB--seq\fP`,
		"qcdp-restore.1":     `\fB--format\fP`,
		"qcdp-spool-apply.1": `\fB--to-seq\fP`,
		"qcdp-completion.1":  "completion",
	} {
		b, err := os.ReadFile(filepath.Join(dir, page))
		if err != nil || !bytes.Contains(b, []byte(".TH \"QCDP\" \"1\"")) || !bytes.Contains(b, []byte(want)) {
			t.Errorf("%s: %v, no %q:\n%.300s", page, err, want, b)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "qcdp-gen-man.1")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the hidden gen-man command has a man page: %v", err)
	}
}

// readmeCommands returns the qcdp command lines of README.md's "###
// Commands" block, comments and redirections cut, continuations joined.
func readmeCommands(t *testing.T) [][]string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(b), "### Commands\n")
	if ok {
		_, block, ok = strings.Cut(block, "```sh\n")
	}
	if ok {
		block, _, ok = strings.Cut(block, "```")
	}
	if !ok {
		t.Fatal("README.md has no ### Commands block")
	}
	var lines [][]string
	for _, l := range strings.Split(strings.ReplaceAll(block, "\\\n", " "), "\n") {
		l, _, _ = strings.Cut(l, " #")
		l, _, _ = strings.Cut(l, " > ")
		if f := strings.Fields(l); len(f) > 0 && f[0] == "qcdp" {
			lines = append(lines, f[1:])
		}
	}
	return lines
}

// Every qcdp line of the README's Commands block is a valid command line,
// and those that ask a daemon work as written.
func TestREADMECommands(t *testing.T) {
	f := startFakeDaemon(t)
	asks := map[string]bool{}
	for _, name := range []string{"status", "attach", "detach", "pause", "resume", "bookmark",
		"points", "export", "exports", "unexport", "restore", "verify"} {
		asks["qcdp "+name] = true
	}
	lines := readmeCommands(t)
	if len(lines) < 25 {
		t.Fatalf("only %d qcdp lines in the README's Commands block", len(lines))
	}
	for _, args := range lines {
		root := newRootCommand(io.Discard, io.Discard)
		cmd, rest, err := root.Find(args)
		if err == nil {
			cmd.InitDefaultHelpFlag()
			cmd.InitDefaultVersionFlag()
			err = cmd.ParseFlags(rest)
		}
		if err == nil {
			err = cmd.ValidateArgs(cmd.Flags().Args())
		}
		if err != nil || cmd == root && len(args) > 0 && args[0] != "--version" {
			t.Errorf("README: qcdp %s: %v", strings.Join(args, " "), err)
			continue
		}
		// A qcow2 restore converts a real NBD export: the integration
		// tests run it.
		if asks[cmd.CommandPath()] && !strings.Contains(strings.Join(args, " "), "qcow2") {
			code, out, errOut := runQcdp(append(args[:len(args):len(args)], "--socket", f.sock)...)
			if code != 0 {
				t.Errorf("README: qcdp %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
			}
		}
	}
}
