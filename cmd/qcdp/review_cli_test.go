package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestReviewCaptureBadGroupName: a group name that is not a valid name is
// a nonsense value of the command line, which the CLI promises to refuse
// with exit 2 and one sentence; `qcdp capture --group ../x` exits 1 with
// the spool's and the record package's internals stacked in the message.
func TestReviewCaptureBadGroupName(t *testing.T) {
	dir := t.TempDir()
	code, _, stderr := runQcdp("capture", "--socket", filepath.Join(dir, "s.sock"), "--spool", filepath.Join(dir, "sp"),
		"--group", "../x", "--disk", "vda=1G")
	if code != 2 || strings.Contains(stderr, "record: invalid record") {
		t.Fatalf("exit %d, stderr %q; want exit 2 naming --group", code, stderr)
	}
}
