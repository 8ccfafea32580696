package configs_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/record"
)

// FuzzParse: Parse never panics; every failure is a located *Error; every
// accepted policy has only path-safe names (also by record's rule) and
// survives MarshalTOML and Parse unchanged.
func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("examples/host.toml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(withHost(`[[group]]`, `name = "a"`, `vm = [{name = "x", disks = {include = ["vda"]}}, {label = "l"}]`)))
	f.Add([]byte(withHost(`[[group]]`, `name = "a"`, `"x.y" = '''`, `[[group]]`, `'''`, `[[group.vm]]`, `uuid = "z"`)))
	f.Add([]byte(withHost(`[[group]]`, `name = "../x"`, `[group.vm]`)))
	f.Add([]byte("a = [[1,2],[3]]\nb.c.'d' = {e = [{f = 1}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := configs.Parse("fuzz.toml", data)
		if err != nil {
			es := configs.Errors(err)
			if len(es) == 0 {
				t.Fatalf("untyped error %v", err)
			}
			for _, e := range es {
				if e.File != "fuzz.toml" || e.Line < 0 || e.Err == nil {
					t.Fatalf("bad error %#v", e)
				}
			}
			return
		}
		for _, g := range p.Groups() {
			if record.ValidDiskName(g.Name) != nil || configs.ValidName(g.Name) != nil {
				t.Fatalf("unsafe group name %q accepted", g.Name)
			}
			dir := p.SpoolDir(g)
			if filepath.Dir(dir) != filepath.Join(p.Host.StateDir, "spool") || strings.Contains(g.Name, "/") {
				t.Fatalf("spool dir %q escapes %q", dir, p.Host.StateDir)
			}
			for _, vm := range g.VMs {
				for _, d := range append(append([]string{}, vm.Disks.Include...), vm.Disks.Exclude...) {
					if record.ValidDiskName(d) != nil || configs.ValidName(d) != nil {
						t.Fatalf("unsafe disk name %q accepted", d)
					}
				}
			}
		}
		roundTrip(t, p)
	})
}

func TestErrorsUnwrap(t *testing.T) {
	e := &configs.Error{File: "f", Line: 3, Key: "k", Msg: "m", Err: configs.ErrInvalid}
	if !errors.Is(e, configs.ErrInvalid) || e.Error() != "f:3: k: m" {
		t.Fatalf("%v", e)
	}
	if got := (&configs.Error{File: "f", Msg: "m"}).Error(); got != "f: m" {
		t.Fatalf("%q", got)
	}
}
