package journal

import (
	"bytes"
	"errors"
	"math"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/qcdp/qcdp/vfs"
)

// goldenOrigin is what testdata/origin-v1 holds.
var goldenOrigin = Origin{
	Spool:   SpoolID{0x3f, 0x2a, 0x9c, 0x1d, 0x44, 0x05, 0x4b, 0x67, 0x80, 0x11, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x01},
	Created: 1700000000123456789, Epoch: 7, Host: "kvm-17.example", Since: 42, EpochAt: math.MaxUint64,
}

const goldenOriginFile = "testdata/origin-v1"

// goldenOriginV2 is what testdata/origin-v2 holds: version 2 adds the
// epoch bound before and the seq at which the epoch was bound.
var goldenOriginV2 = Origin{Spool: goldenOrigin.Spool, Created: goldenOrigin.Created, Epoch: 0x1234abcd00000009,
	Host: "kvm-17.example", Since: 42, Prev: 0x77770000_1234abcd, EpochAt: 4096}

const goldenOriginFileV2 = "testdata/origin-v2"

// TestGoldenOrigin: the ORIGIN file of version 1 still reads and is written
// byte for byte the same; every bit flipped and every cut is corruption.
func TestGoldenOrigin(t *testing.T) {
	if os.Getenv("QCDP_WRITE_GOLDEN") == "1" {
		if _, err := os.Stat(goldenOriginFileV2); errors.Is(err, os.ErrNotExist) {
			if err := os.WriteFile(goldenOriginFileV2, encodeOrigin(goldenOriginV2), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	b, err := os.ReadFile(goldenOriginFile)
	if err != nil {
		t.Fatalf("%v (QCDP_WRITE_GOLDEN=1 writes missing fixtures)", err)
	}
	if o, err := decodeOrigin(b); err != nil || o != goldenOrigin {
		t.Fatalf("decoded %+v (%v), want %+v", o, err, goldenOrigin)
	}
	b2, err := os.ReadFile(goldenOriginFileV2)
	if err != nil {
		t.Fatalf("%v (QCDP_WRITE_GOLDEN=1 writes missing fixtures)", err)
	}
	if o, err := decodeOrigin(b2); err != nil || o != goldenOriginV2 {
		t.Fatalf("decoded %+v (%v), want %+v", o, err, goldenOriginV2)
	}
	if !bytes.Equal(encodeOrigin(goldenOriginV2), b2) {
		t.Fatal("the encoder no longer writes " + goldenOriginFileV2)
	}
	for bit := 0; bit < 8*len(b2); bit++ {
		c := bytes.Clone(b2)
		c[bit/8] ^= 1 << (bit % 8)
		if _, err := decodeOrigin(c); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("v2 bit %d flipped: %v", bit, err)
		}
	}
	for bit := 0; bit < 8*len(b); bit++ {
		c := bytes.Clone(b)
		c[bit/8] ^= 1 << (bit % 8)
		if _, err := decodeOrigin(c); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("bit %d flipped: %v", bit, err)
		}
	}
	for n := 0; n < len(b); n++ {
		if _, err := decodeOrigin(b[:n]); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("cut at %d: %v", n, err)
		}
	}
}

// TestBindOrigin: a journal binds no spool until told; the binding is
// durable (a crash right after BindOrigin keeps it), survives reopening,
// and a failed write leaves the old binding.
func TestBindOrigin(t *testing.T) {
	fs := newFS()
	j := openT(t, fs)
	if _, ok, err := j.Origin(); ok || err != nil {
		t.Fatalf("a new journal is bound: %v %v", ok, err)
	}
	if err := j.BindOrigin(Origin{Host: "h", Epoch: 1}); err == nil {
		t.Fatal("bound a spool without an id")
	}
	o := goldenOrigin
	if err := j.BindOrigin(o); err != nil {
		t.Fatal(err)
	}
	fs.Crash()
	j = openT(t, fs)
	if got, ok, err := j.Origin(); !ok || err != nil || got != o {
		t.Fatalf("after a crash: %+v %v %v", got, ok, err)
	}
	next := o
	next.Epoch++
	fs.SetInjector(vfs.FailNth(vfs.OpSync, 1, syscall.EIO))
	if err := j.BindOrigin(next); !errors.Is(err, syscall.EIO) {
		t.Fatalf("BindOrigin with a failing fsync: %v", err)
	}
	fs.SetInjector(nil)
	if got, _, _ := j.Origin(); got != o {
		t.Fatalf("after a failed bind: %+v, want %+v", got, o)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	if err := j.BindOrigin(next); !errors.Is(err, ErrClosed) {
		t.Fatalf("BindOrigin after Close: %v", err)
	}
	if _, err := fs.Stat(filepath.Join(j.opts.Dir, originName+".tmp")); err == nil {
		t.Fatal("a temporary file was left behind")
	}
}
