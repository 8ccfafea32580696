package nbd_test

import (
	"strings"
	"testing"

	"github.com/qcdp/qcdp/nbd"
)

// TestReviewRefusedExportNamesLeak: an export the peer may not open is
// hidden from LIST, and NBD_OPT_INFO/GO must not tell it apart from a name that
// does not exist (it once answered NBD_REP_ERR_POLICY vs NBD_REP_ERR_UNKNOWN),
// or any process that reaches a group's socket can probe which disks
// (stream names "<vm uuid>.vda") the other VMs of the group have.
func TestReviewRefusedExportNamesLeak(t *testing.T) {
	env := newAuthEnv(t, func(nbd.Peer) bool { return false })
	c := newstyle(t, env.sock)
	refused := c.option(wOptInfo, nameData("theirs"))
	unknown := c.option(wOptInfo, nameData("nosuch"))
	if len(refused) != 1 || len(unknown) != 1 || refused[0].typ != unknown[0].typ ||
		strings.ReplaceAll(string(refused[0].data), "theirs", "nosuch") != string(unknown[0].data) {
		t.Fatalf("INFO of a refused export answers %#x, of a missing one %#x: the refused export's existence leaks", refused[0].typ, unknown[0].typ)
	}
}
