package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A bad policy is refused before anything starts, with the file, the line
// and the key, and the documented exit codes hold.
func TestExitCodesAndBadPolicy(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "host.toml")
	if err := os.WriteFile(bad, []byte("[host]\nqmp_sockets = [\"/run/*.qmp\"]\n\n[[group]]\nname = \"../etc\"\nvm = [{name = \"x\"}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"host", "--config", bad}, 1, bad + ":5:"},
		{[]string{"host", "--config", bad}, 1, "group[0].name"},
		{[]string{"replica", "--config", filepath.Join(dir, "missing.toml")}, 1, "missing.toml"},
		{[]string{"no-such-command"}, 2, "unknown command"},
		{[]string{"export", "g1"}, 2, "exactly one restore point"},
		{[]string{"spool", "apply"}, 2, ""},
		{[]string{"version"}, 0, "qcdp"},
	} {
		var out, errOut bytes.Buffer
		code := run(c.args, &out, &errOut)
		if code != c.code || !strings.Contains(out.String()+errOut.String(), c.want) {
			t.Errorf("qcdp %v: exit %d, want %d with %q:\n%s%s", c.args, code, c.code, c.want, out.String(), errOut.String())
		}
	}
}
