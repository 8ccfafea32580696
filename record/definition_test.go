package record

import (
	"bytes"
	"encoding/hex"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
)

func testVMDefinition() VMDefinition {
	return VMDefinition{
		ID: "0f3c1b9e-1b7a-4c1e-9d55-2f1e6a0c7b11", Name: "web-1", Source: "libvirt",
		VCPUs: 4, MemoryMiB: 8192, Machine: "pc-q35-7.2", Arch: "x86_64", Firmware: "efi",
		Disks: []VMDisk{
			{Disk: "vm1.vda", Target: "vda", Bus: "virtio", Size: 4 << 20, Boot: 1, Cache: "none"},
			{Disk: "vm1.vdb", Target: "vdb", Size: 10<<30 + 512},
			{Target: "sda", Bus: "sata", Size: 1 << 20}, // not protected
		},
		NICs: []VMNIC{
			{MAC: "52:54:00:12:34:56", Model: "virtio", Network: "default"},
			{MAC: "52:54:00:ab:cd:ef", Model: "e1000", Network: "br0", Bridge: true},
		},
		XML: "<domain type='kvm'><name>web-1</name></domain>",
	}
}

// goldenDefinition is what testdata/v1-definition.hex holds: the first
// layout of a Definition record. Never edit the fixture.
func goldenDefinition() Record {
	r, err := DefinitionRecord(testVMDefinition())
	if err != nil {
		panic(err)
	}
	r.Seq, r.Time = 7, 1700000000000000007
	return r
}

// TestGoldenDefinition reads the fixture of a Definition record. The
// record's layout is pinned byte for byte (the decoded record encodes to
// the fixture again); its JSON payload only as far as it decodes to the
// same definition, since a field may be added to the JSON without a new
// layout.
func TestGoldenDefinition(t *testing.T) {
	const path = "testdata/v1-definition.hex"
	want := goldenDefinition()
	if _, err := os.Stat(path); os.IsNotExist(err) && os.Getenv("QCDP_WRITE_GOLDEN") == "1" {
		enc := AppendEncode(nil, &want)
		var sb strings.Builder
		for i := 0; i < len(enc); i += 32 {
			sb.WriteString(hex.EncodeToString(enc[i:min(i+32, len(enc))]))
			sb.WriteByte('\n')
		}
		if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b := readFixture(t, path)
	r, n, err := Decode(b)
	if err != nil || n != len(b) {
		t.Fatalf("Decode: n %d of %d, %v", n, len(b), err)
	}
	if r.Kind != Definition || r.Seq != want.Seq || r.Time != want.Time || r.Name != want.Name || r.Disk != "" {
		t.Fatalf("fixture holds %+v", r)
	}
	d, err := r.Definition()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(d, testVMDefinition()) {
		t.Fatalf("definition %+v\nwant %+v", d, testVMDefinition())
	}
	if !bytes.Equal(AppendEncode(nil, &r), b) {
		t.Fatal("the decoded record no longer encodes to " + path)
	}
}

func TestDefinitionRoundTrip(t *testing.T) {
	small := VMDefinition{ID: "101", Name: "pve-101", Source: "proxmox", VCPUs: 1, MemoryMiB: 512, Disks: []VMDisk{}}
	for _, d := range []VMDefinition{testVMDefinition(), small} {
		r, err := DefinitionRecord(d)
		if err != nil {
			t.Fatal(err)
		}
		if r.Name != d.ID || r.Length != uint64(len(r.Payload)) {
			t.Fatalf("record %+v", r)
		}
		r.Seq, r.Time = 3, 33
		b := AppendEncode(nil, &r)
		got, n, err := Decode(b)
		if err != nil || n != len(b) {
			t.Fatalf("Decode: n %d of %d, %v", n, len(b), err)
		}
		back, err := got.Definition()
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back, d) {
			t.Fatalf("definition %+v\nwant %+v", back, d)
		}
	}
}

// Readers ignore JSON fields they do not know: a field can be added to a
// definition without a new layout.
func TestDefinitionUnknownFields(t *testing.T) {
	p := []byte(`{"id":"vm-9","name":"n","source":"qmp","vcpus":2,"memory_mib":64,"disks":[],"tpm":{"model":"crb"},"future":1}`)
	d, err := DecodeDefinition(p)
	if err != nil {
		t.Fatal(err)
	}
	if d.ID != "vm-9" || d.VCPUs != 2 || d.MemoryMiB != 64 {
		t.Fatalf("definition %+v", d)
	}
	r := Record{Seq: 1, Kind: Definition, Name: "vm-9", Length: uint64(len(p)), Payload: p}
	if err := r.Validate(); err != nil {
		t.Fatalf("a record with unknown JSON fields: %v", err)
	}
}

func TestDefinitionRejects(t *testing.T) {
	ok, _ := DefinitionRecord(testVMDefinition())
	for name, f := range map[string]func(r *Record){
		"disk":       func(r *Record) { r.Disk = "vda" },
		"marker":     func(r *Record) { r.Marker = SyncComplete },
		"offset":     func(r *Record) { r.Offset = 1 },
		"length":     func(r *Record) { r.Length++ },
		"other name": func(r *Record) { r.Name = "vm-2" },
		"no name":    func(r *Record) { r.Name = "" },
		"not JSON":   func(r *Record) { r.Payload = []byte("<domain/>"); r.Length = uint64(len(r.Payload)) },
		"bytes after": func(r *Record) {
			r.Payload = append(bytes.Clone(r.Payload), "{}"...)
			r.Length = uint64(len(r.Payload))
		},
		"invalid vcpu": func(r *Record) { r.Payload = bytes.Replace(r.Payload, []byte(`"vcpus":4`), []byte(`"vcpus":0`), 1) },
	} {
		c := ok
		f(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("definition record with a bad %s: Validate = %v, want ErrInvalid", name, err)
		}
	}
	big := testVMDefinition()
	big.XML = strings.Repeat("x", MaxDefinitionXML+1)
	if _, err := DefinitionRecord(big); !errors.Is(err, ErrInvalid) {
		t.Errorf("a definition with %d bytes of XML: %v, want ErrInvalid", len(big.XML), err)
	}
}

func TestDefinitionTruncateAndFlip(t *testing.T) {
	r := goldenDefinition()
	b := AppendEncode(nil, &r)
	for i := 0; i < len(b); i++ {
		if _, n, err := Decode(b[:i]); !errors.Is(err, ErrShort) || n != 0 {
			t.Fatalf("cut at %d: n %d, %v", i, n, err)
		}
	}
	for i := 0; i < len(b)*8; i++ {
		c := bytes.Clone(b)
		c[i/8] ^= 1 << (i % 8)
		if _, _, err := Decode(c); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("bit %d flipped: %v", i, err)
		}
	}
}

func FuzzDecodeDefinition(f *testing.F) {
	r := goldenDefinition()
	f.Add(r.Payload)
	f.Add([]byte(`{"id":"1","vcpus":1,"memory_mib":1,"disks":[]}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"id":"1"} {}`))
	f.Fuzz(func(t *testing.T, p []byte) {
		d, err := DecodeDefinition(p)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if err := d.Validate(); err != nil {
			t.Fatalf("decoded an invalid definition: %v", err)
		}
		// Encoded again (when its JSON still fits: Go's encoder escapes
		// what the input may not have), it decodes to what encodes the
		// same: nothing is lost on the way.
		rec, err := DefinitionRecord(d)
		if err != nil {
			return
		}
		back, err := rec.Definition()
		if err != nil {
			t.Fatalf("a re-encoded definition does not decode: %v", err)
		}
		again, err := DefinitionRecord(back)
		if err != nil || !bytes.Equal(again.Payload, rec.Payload) {
			t.Fatalf("re-encoding: %v\n%s\n%s", err, again.Payload, rec.Payload)
		}
	})
}
