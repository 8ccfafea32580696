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

// A VM definition in the spool writes no disk, as a membership
// declaration does not: inspect counts it under no disk (its Name, the VM
// id, is no disk name) and apply needs no image for it.
func TestApplySkipsDefinitions(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	sp, err := Open(ctx, Options{Dir: filepath.Join(dir, "spool"), Group: "g1", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	def, err := record.DefinitionRecord(record.VMDefinition{ID: "vm-1", Name: "web", Source: "qmp", VCPUs: 1, MemoryMiB: 256,
		Disks: []record.VMDisk{{Disk: "vda", Target: "vda", Size: 4096}}})
	if err != nil {
		t.Fatal(err)
	}
	def.Seq = 1
	d := record.Record{Seq: 2, Kind: record.Data, Disk: "vda", Offset: 512, Length: 3, Payload: []byte("abc")}
	for _, r := range []*record.Record{&def, &d} {
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
	if len(rep.Disks) != 1 || rep.Disks["vda"] != 1 || rep.Kinds["definition"] != 1 {
		t.Fatalf("inspect: disks %v, kinds %v", rep.Disks, rep.Kinds)
	}
	img := filepath.Join(dir, "vda.raw")
	sum, err := Apply(ctx, filepath.Join(dir, "spool"), map[string]string{"vda": img}, ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Skipped != 0 || sum.Records != 1 || len(sum.Disks) != 1 { // the data record only, as with Members
		t.Fatalf("apply: %+v", sum)
	}
	b, err := os.ReadFile(img)
	if err != nil || len(b) != 515 || string(b[512:]) != "abc" {
		t.Fatalf("image %q %v", b, err)
	}
}
