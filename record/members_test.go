package record

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
)

func testDeclaration() Declaration {
	return Declaration{Disks: []Member{
		{Disk: "vm1.vda", Size: 4 << 20, VM: "0f3c1b9e-1b7a-4c1e-9d55-2f1e6a0c7b11", VMName: "web-1", Target: "vda"},
		{Disk: "vm1.vdb", Size: 10<<30 + 512, VM: "0f3c1b9e-1b7a-4c1e-9d55-2f1e6a0c7b11", VMName: "web-1", Target: "vdb"},
		{Disk: "x", Size: 1},
	}}
}

func TestDeclarationRoundTrip(t *testing.T) {
	for _, d := range []Declaration{{}, testDeclaration(), bigDeclaration(MaxGroupDisks)} {
		r, err := MembersRecord(d)
		if err != nil {
			t.Fatal(err)
		}
		r.Seq, r.Time = 9, 99
		b := AppendEncode(nil, &r)
		got, n, err := Decode(b)
		if err != nil || n != len(b) {
			t.Fatalf("Decode: n %d of %d, %v", n, len(b), err)
		}
		back, err := got.Declaration()
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Disks) == 0 {
			d.Disks = []Member{}
		}
		if !reflect.DeepEqual(back, d) {
			t.Fatalf("declaration %+v\nwant %+v", back, d)
		}
	}
}

// bigDeclaration declares n disks with every label as long as it may be.
func bigDeclaration(n int) Declaration {
	var d Declaration
	for i := range n {
		name := strings.Repeat("d", MaxDisk-3) + string(rune('a'+i/26/26%26)) + string(rune('a'+i/26%26)) + string(rune('a'+i%26))
		l := strings.Repeat("é", MaxLabel/2) // 254 bytes of UTF-8
		d.Disks = append(d.Disks, Member{Disk: name, Size: MaxDiskSize, VM: l, VMName: l, Target: l})
	}
	return d
}

func TestDeclarationRejects(t *testing.T) {
	ok := testDeclaration()
	mod := func(f func(d *Declaration)) Declaration {
		d := Declaration{Disks: append([]Member(nil), ok.Disks...)}
		f(&d)
		return d
	}
	bad := map[string]Declaration{
		"too many disks": bigDeclaration(MaxGroupDisks + 1),
		"unsorted":       mod(func(d *Declaration) { d.Disks[0], d.Disks[1] = d.Disks[1], d.Disks[0] }),
		"repeated":       mod(func(d *Declaration) { d.Disks[1].Disk = d.Disks[0].Disk }),
		"bad disk name":  mod(func(d *Declaration) { d.Disks[0].Disk = "../etc" }),
		"size 0":         mod(func(d *Declaration) { d.Disks[2].Size = 0 }),
		"size too large": mod(func(d *Declaration) { d.Disks[2].Size = MaxDiskSize + 1 }),
		"long label":     mod(func(d *Declaration) { d.Disks[0].VMName = strings.Repeat("n", MaxLabel+1) }),
		"not UTF-8":      mod(func(d *Declaration) { d.Disks[0].Target = "\xff" }),
	}
	for name, d := range bad {
		if err := d.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: Validate = %v, want ErrInvalid", name, err)
		}
		if _, err := MembersRecord(d); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: MembersRecord = %v, want ErrInvalid", name, err)
		}
		if name == "long label" || name == "too many disks" {
			continue // a length byte cannot say it, or the encoder's bound
		}
		if _, err := DecodeDeclaration(AppendDeclaration(nil, d)); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: DecodeDeclaration = %v, want ErrInvalid", name, err)
		}
	}
	// A Members record is nothing but its declaration.
	r, _ := MembersRecord(ok)
	for name, f := range map[string]func(r *Record){
		"disk":   func(r *Record) { r.Disk = "vda" },
		"name":   func(r *Record) { r.Name = "x" },
		"marker": func(r *Record) { r.Marker = SyncComplete },
		"offset": func(r *Record) { r.Offset = 1 },
		"length": func(r *Record) { r.Length++ },
		"bytes":  func(r *Record) { r.Payload = append(bytes.Clone(r.Payload), 0); r.Length++ },
	} {
		c := r
		f(&c)
		if err := c.Validate(); !errors.Is(err, ErrInvalid) {
			t.Errorf("members record with a %s: Validate = %v, want ErrInvalid", name, err)
		}
	}
}

// A declaration claiming more disks than its bytes can hold is refused
// before anything is allocated for them.
func TestDeclarationCountBounded(t *testing.T) {
	p := binary.LittleEndian.AppendUint16(nil, 0xffff)
	p = append(p, 0, 0)
	p = append(p, make([]byte, 64)...)
	if _, err := DecodeDeclaration(p); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "65535 disks in 68 bytes") {
		t.Fatalf("DecodeDeclaration = %v, want the count refused", err)
	}
}

func TestAdmit(t *testing.T) {
	d := testDeclaration()
	for _, c := range []struct {
		r  Record
		ok bool
	}{
		{Record{Kind: Data, Disk: "vm1.vda", Offset: 4<<20 - 4, Length: 4, Payload: []byte("abcd")}, true},
		{Record{Kind: Zero, Disk: "vm1.vda", Offset: 4<<20 - 4, Length: 5}, false},
		{Record{Kind: Zero, Disk: "vm1.vda", Offset: 1 << 62, Length: 512}, false},
		{Record{Kind: Trim, Disk: "vm1.vdb", Offset: 0, Length: 10<<30 + 512}, true},
		{Record{Kind: Data, Disk: "vdc", Length: 1, Payload: []byte{1}}, false},
		{Record{Kind: Marker, Marker: SyncComplete, Disk: "vdc"}, false},
		{Record{Kind: Marker, Marker: SyncComplete, Disk: "x"}, true},
		{Record{Kind: Marker, Marker: UserBookmark, Name: "b"}, true},
	} {
		err := d.Admit(&c.r)
		if c.ok && err != nil || !c.ok && !errors.Is(err, ErrMembership) {
			t.Errorf("Admit(%v %s [%d,+%d)) = %v", c.r.Kind, c.r.Disk, c.r.Offset, c.r.Length, err)
		}
	}
}

func TestMembersTruncateAndFlip(t *testing.T) {
	r, _ := MembersRecord(testDeclaration())
	r.Seq = 3
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

// goldenMembers is what testdata/v1-members.hex holds: the first layout of
// a Members record. Never edit the fixture.
func goldenMembers() Record {
	r, err := MembersRecord(testDeclaration())
	if err != nil {
		panic(err)
	}
	r.Seq, r.Time = 6, 1700000000000000006
	return r
}

func TestGoldenMembers(t *testing.T) {
	const path = "testdata/v1-members.hex"
	want := goldenMembers()
	enc := AppendEncode(nil, &want)
	if _, err := os.Stat(path); os.IsNotExist(err) && os.Getenv("QCDP_WRITE_GOLDEN") == "1" {
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
	d, err := r.Declaration()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(d, testDeclaration()) || r.Seq != want.Seq || r.Time != want.Time {
		t.Fatalf("fixture holds %+v, %+v", r, d)
	}
	if !bytes.Equal(enc, b) {
		t.Fatal("encoder output differs from " + path)
	}
}

func FuzzDecodeDeclaration(f *testing.F) {
	f.Add(AppendDeclaration(nil, testDeclaration()))
	f.Add(AppendDeclaration(nil, Declaration{}))
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, p []byte) {
		d, err := DecodeDeclaration(p)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if err := d.Validate(); err != nil {
			t.Fatalf("decoded an invalid declaration: %v", err)
		}
		if !bytes.Equal(AppendDeclaration(nil, d), p) {
			t.Fatal("re-encoding differs")
		}
	})
}
