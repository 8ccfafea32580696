package spool

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/qcdp/qcdp/record"
)

// A membership declaration in the spool writes no disk: inspect counts it
// under no disk and apply needs no image for it.
func TestApplySkipsMembers(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	sp, err := Open(ctx, Options{Dir: filepath.Join(dir, "spool"), Group: "g1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	m, err := record.MembersRecord(record.Declaration{Disks: []record.Member{{Disk: "vda", Size: 4096}}})
	if err != nil {
		t.Fatal(err)
	}
	m.Seq = 1
	d := record.Record{Seq: 2, Kind: record.Data, Disk: "vda", Offset: 512, Length: 3, Payload: []byte("abc")}
	for _, r := range []*record.Record{&m, &d} {
		if err := sp.Append(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := Inspect(ctx, filepath.Join(dir, "spool"), InspectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Disks) != 1 || rep.Disks["vda"] != 1 || rep.Kinds["members"] != 1 {
		t.Fatalf("inspect: disks %v, kinds %v", rep.Disks, rep.Kinds)
	}
	img := filepath.Join(dir, "vda.raw")
	if _, err := Apply(ctx, filepath.Join(dir, "spool"), map[string]string{"vda": img}, ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(img)
	if err != nil || len(b) != 515 || string(b[512:]) != "abc" {
		t.Fatalf("image %q %v", b, err)
	}
}
