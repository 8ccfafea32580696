package main

import (
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// flagSet is the standard library's, named for the commands' signatures.
type flagSet = flag.FlagSet

// newFlags returns a FlagSet that reports errors instead of exiting and
// prints its usage to out.
func newFlags(name string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("qcdp "+name, flag.ContinueOnError)
	fs.SetOutput(out)
	return fs
}

// parseFlags parses args and turns a parse error into a usage error.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() != 0 {
		return usagef("unexpected arguments %q", fs.Args())
	}
	return nil
}

// parseSize reads a byte count with an optional K, M, G or T suffix (powers
// of 1024), as qemu-img does.
func parseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B")
	mult := int64(1)
	if n := len(t); n > 0 {
		if i := strings.IndexByte("KMGT", t[n-1]); i >= 0 {
			mult = int64(1) << (10 * (i + 1))
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("invalid size %q (want a number with optional K, M, G or T)", s)
	}
	return v * mult, nil
}

// sizeFlag is a flag.Value holding a byte count.
type sizeFlag struct{ v *int64 }

func (f sizeFlag) String() string {
	if f.v == nil {
		return "0"
	}
	return strconv.FormatInt(*f.v, 10)
}

func (f sizeFlag) Set(s string) error {
	v, err := parseSize(s)
	if err != nil {
		return err
	}
	*f.v = v
	return nil
}

// pairsFlag collects repeated NAME=VALUE flags in order.
type pairsFlag struct {
	names  []string
	values []string
}

func (p *pairsFlag) String() string {
	var b strings.Builder
	for i := range p.names {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(p.names[i] + "=" + p.values[i])
	}
	return b.String()
}

func (p *pairsFlag) Set(s string) error {
	name, value, ok := strings.Cut(s, "=")
	if !ok || name == "" || value == "" {
		return fmt.Errorf("want NAME=VALUE, got %q", s)
	}
	for _, n := range p.names {
		if n == name {
			return fmt.Errorf("%q given twice", name)
		}
	}
	p.names = append(p.names, name)
	p.values = append(p.values, value)
	return nil
}
