package journal

import (
	"bytes"
	"context"
	"reflect"
	"testing"

	"github.com/qcdp/qcdp/record"
)

// LastWrites names, per block, the newest record that shaped it: what a
// kept block hash is checked against (package replica's hash cache).
func TestLastWrites(t *testing.T) {
	ctx := context.Background()
	j := openT(t, newFS())
	defer j.Close()
	const bs = 4096
	recs := []record.Record{
		dataRec(1, "vda", 0, bytes.Repeat([]byte{1}, 4*bs)),                             // blocks 0-3
		dataRec(2, "vda", bs+100, []byte("x")),                                          // block 1
		{Seq: 3, Time: 3e6, Kind: record.Zero, Disk: "vda", Offset: 3 * bs, Length: bs}, // block 3
		dataRec(4, "vdb", 0, []byte("other disk")),
		dataRec(5, "vda", 2*bs-1, []byte("ab")), // the end of block 1, the start of block 2
	}
	if err := j.Append(ctx, recs); err != nil {
		t.Fatal(err)
	}
	v, err := j.Newest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	dv, err := v.Disk("vda")
	if err != nil {
		t.Fatal(err)
	}
	got, err := dv.LastWrites(0, dv.Size(), bs)
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{1, 5, 5, 3}; !reflect.DeepEqual(got, want) {
		t.Fatalf("LastWrites = %v, want %v", got, want)
	}
	if got, err := dv.LastWrites(bs, bs, bs); err != nil || !reflect.DeepEqual(got, []uint64{5}) {
		t.Fatalf("LastWrites of block 1 = %v, %v", got, err)
	}
	if _, err := dv.LastWrites(100, bs, bs); err == nil {
		t.Fatal("an unaligned offset was taken")
	}
	// A newer record shows in a newer state, never in the older one.
	if err := j.Append(ctx, []record.Record{dataRec(6, "vda", 10, []byte("y"))}); err != nil {
		t.Fatal(err)
	}
	if got, _ := dv.LastWrites(0, 4*bs, bs); !reflect.DeepEqual(got, []uint64{1, 5, 5, 3}) {
		t.Fatalf("LastWrites of the older state after seq 6 = %v", got)
	}
	v2, err := j.Newest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer v2.Close()
	dv2, err := v2.Disk("vda")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := dv2.LastWrites(0, 4*bs, bs); !reflect.DeepEqual(got, []uint64{6, 5, 5, 3}) {
		t.Fatalf("LastWrites of the newest state = %v", got)
	}
}
