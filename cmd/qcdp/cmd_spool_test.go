package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/shipper/spool"
)

// makeSpool writes a small spool: data on vda and vdb, a zero, a marker.
func makeSpool(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	sp, err := spool.Open(context.Background(), spool.Options{Dir: dir, Group: "vm1", SegmentBytes: 1 << 10,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	recs := []record.Record{
		{Kind: record.Data, Disk: "vda", Offset: 0, Length: 512, Payload: bytes.Repeat([]byte("a"), 512)},
		{Kind: record.Data, Disk: "vdb", Offset: 4096, Length: 512, Payload: bytes.Repeat([]byte("b"), 512)},
		{Kind: record.Marker, Marker: record.UserBookmark, Name: "first"},
		{Kind: record.Zero, Disk: "vda", Offset: 256, Length: 256},
		{Kind: record.Data, Disk: "vda", Offset: 1024, Length: 512, Payload: bytes.Repeat([]byte("c"), 512)},
	}
	for i := range recs {
		recs[i].Seq = uint64(i + 1)
		if err := sp.Append(&recs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestSpoolShowVerifyApply(t *testing.T) {
	dir := makeSpool(t)
	ctx := context.Background()
	var out bytes.Buffer
	if err := runSpool(ctx, &out, []string{"show", "--spool", dir, "--json"}); err != nil {
		t.Fatal(err)
	}
	var rep spool.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("%v: %s", err, out.Bytes())
	}
	if rep.Group != "vm1" || rep.LastSeq != 5 || rep.Kinds["data"] != 3 || len(rep.Markers) != 1 || rep.Markers[0].Name != "first" {
		t.Fatalf("show: %+v", rep)
	}
	out.Reset()
	if err := runSpool(ctx, &out, []string{"show", "--spool", dir}); err != nil || !strings.Contains(out.String(), "1..5") {
		t.Fatalf("show: %v\n%s", err, out.String())
	}
	out.Reset()
	if err := runSpool(ctx, &out, []string{"verify", "--spool", dir}); err != nil {
		t.Fatalf("verify: %v\n%s", err, out.String())
	}

	img := t.TempDir()
	out.Reset()
	err := runSpool(ctx, &out, []string{"apply", "--spool", dir, "--disk", "vda=" + filepath.Join(img, "a")})
	if !errors.Is(err, spool.ErrUnmapped) {
		t.Fatalf("apply with vdb unmapped: %v", err)
	}
	out.Reset()
	if err := runSpool(ctx, &out, []string{"apply", "--spool", dir, "--disk", "vda=" + filepath.Join(img, "a"),
		"--disk", "vdb=" + filepath.Join(img, "b"), "--to-seq", "4"}); err != nil {
		t.Fatalf("apply: %v\n%s", err, out.String())
	}
	a, _ := os.ReadFile(filepath.Join(img, "a"))
	want := append(bytes.Repeat([]byte("a"), 256), make([]byte, 256)...)
	if !bytes.Equal(a, want) {
		t.Fatalf("vda image: %d bytes, want %d (seq 5 is past --to-seq)", len(a), len(want))
	}
	b, _ := os.ReadFile(filepath.Join(img, "b"))
	if len(b) != 4608 || b[4096] != 'b' || b[0] != 0 {
		t.Fatalf("vdb image: %d bytes", len(b))
	}

	// Flip a byte in the first record: verify fails, naming file and offset.
	names, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	f, _ := os.OpenFile(names[0], os.O_RDWR, 0)
	f.WriteAt([]byte{0xff}, 100)
	f.Close()
	out.Reset()
	err = runSpool(ctx, &out, []string{"verify", "--spool", dir})
	if !errors.Is(err, spool.ErrCorrupt) || !strings.Contains(err.Error(), filepath.Base(names[0])) {
		t.Fatalf("verify of a corrupt spool: %v", err)
	}
}

// runSpool runs `qcdp spool ARGS...` in-process and returns its error.
func runSpool(ctx context.Context, out io.Writer, args []string) error {
	root := newRootCommand(out, io.Discard)
	root.SetArgs(append([]string{"spool"}, args...))
	return root.ExecuteContext(ctx)
}

func TestSpoolUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"bogus"}, {"show"}, {"apply", "--spool", "x"}, {"show", "--spool", "x", "extra"}} {
		var out, errOut bytes.Buffer
		if code := run(append([]string{"spool"}, args...), &out, &errOut); code != 2 {
			t.Errorf("qcdp spool %q: exit %d, want 2\n%s%s", args, code, out.String(), errOut.String())
		}
	}
}
