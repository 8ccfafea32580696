package replica

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/qcdp/qcdp/replica/journal"
)

// TestGroupsNameTheSpool: the group info says which host spool the
// journal is bound to, and that its spool identity cannot be read when the
// ORIGIN file is damaged (its streams are refused meanwhile).
func TestGroupsNameTheSpool(t *testing.T) {
	d := newDaemon(t)
	j := fill(t, d, "acme", "db", "vda")
	o := journal.Origin{Spool: journal.SpoolID{1, 2, 3}, Created: 1700000000000000000, Epoch: 4, Host: "kvm1", Since: 0}
	if err := j.BindOrigin(o); err != nil {
		t.Fatal(err)
	}
	gs, err := d.Groups(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(gs) != 1 || gs[0].Spool == nil || *gs[0].Spool != o || gs[0].Error != "" || gs[0].Refused != nil {
		t.Fatalf("groups %+v", gs)
	}
	dir, _ := d.cfg.JournalDir("acme", "db")
	if err := os.WriteFile(filepath.Join(dir, "ORIGIN"), []byte("QCJO garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	gs, err = d.Groups(context.Background())
	if err != nil || len(gs) != 1 || gs[0].Spool != nil || gs[0].Error == "" {
		t.Fatalf("groups with a damaged ORIGIN: %+v %v", gs, err)
	}
}
