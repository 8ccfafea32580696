package main

import (
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// The flag types of the commands: each refuses a nonsense value when it is
// parsed, with the reason, so that a wrong command line exits 2 before
// anything runs.

// usageError marks a wrong command line (exit code 2).
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// positional checks a command's positional arguments against their names
// ("GROUP", "NAME"): exactly one each.
func positional(names ...string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		switch {
		case len(args) < len(names):
			return usagef("missing %s", strings.Join(names[len(args):], " and "))
		case len(args) > len(names):
			return usagef("unexpected argument %q", args[len(names)])
		}
		return nil
	}
}

// noArgs refuses any positional argument.
var noArgs = positional()

// addJSONFlag adds the --json every command that prints state has.
func addJSONFlag(fs *pflag.FlagSet, v *bool) {
	fs.BoolVar(v, "json", false, "print JSON")
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
		return 0, errors.New("want a size: a number with an optional K, M, G or T suffix, e.g. 20G")
	}
	return v * mult, nil
}

// sizeValue is a byte count flag.
type sizeValue struct{ v *int64 }

func (f sizeValue) String() string {
	if f.v == nil {
		return "0"
	}
	return formatSize(*f.v)
}

// formatSize writes n as parseSize reads it, with the largest suffix that
// keeps it exact: 8G, 64M, 1000.
func formatSize(n int64) string {
	for i := 4; i >= 1; i-- {
		if unit := int64(1) << (10 * i); n != 0 && n%unit == 0 {
			return strconv.FormatInt(n/unit, 10) + string("KMGT"[i-1])
		}
	}
	return strconv.FormatInt(n, 10)
}

func (f sizeValue) Set(s string) error {
	v, err := parseSize(s)
	if err != nil {
		return err
	}
	*f.v = v
	return nil
}

func (sizeValue) Type() string { return "size" }

// pairsValue collects repeated NAME=VALUE flags in order. checkName and
// check, when set, refuse a bad NAME or VALUE; typ names the flag's value in
// the help (NAME=SIZE).
type pairsValue struct {
	names     []string
	values    []string
	checkName func(name string) error
	check     func(value string) error
	typ       string
}

func (p *pairsValue) String() string {
	var b strings.Builder
	for i := range p.names {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(p.names[i] + "=" + p.values[i])
	}
	return b.String()
}

func (p *pairsValue) Set(s string) error {
	name, value, ok := strings.Cut(s, "=")
	if !ok || name == "" || value == "" {
		return fmt.Errorf("want %s", p.Type())
	}
	for _, n := range p.names {
		if n == name {
			return fmt.Errorf("%s is given twice", name)
		}
	}
	if p.checkName != nil {
		if err := p.checkName(name); err != nil {
			return err
		}
	}
	if p.check != nil {
		if err := p.check(value); err != nil {
			return fmt.Errorf("%s: %w", value, err)
		}
	}
	p.names = append(p.names, name)
	p.values = append(p.values, value)
	return nil
}

func (p *pairsValue) Type() string {
	if p.typ == "" {
		return "NAME=VALUE"
	}
	return p.typ
}

// positiveSize refuses a size that does not parse or is 0.
func positiveSize(s string) error {
	v, err := parseSize(s)
	if err == nil && v == 0 {
		err = errors.New("a disk cannot be of size 0")
	}
	return err
}

// seqValue is a seq flag: a whole number from 1.
type seqValue struct{ v *uint64 }

func (f seqValue) String() string {
	if f.v == nil || *f.v == 0 {
		return ""
	}
	return strconv.FormatUint(*f.v, 10)
}

func (f seqValue) Set(s string) error {
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || v == 0 {
		return errors.New("want a seq: a whole number from 1")
	}
	*f.v = v
	return nil
}

func (seqValue) Type() string { return "N" }

// durationValue is a duration flag that refuses negative durations (and 0
// unless zero is allowed). set says whether it was given.
type durationValue struct {
	v    *time.Duration
	set  *bool
	zero bool
}

func (f durationValue) String() string {
	if f.v == nil || *f.v == 0 {
		return ""
	}
	return f.v.String()
}

func (f durationValue) Set(s string) error {
	v, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return errors.New("want a duration, e.g. 90s, 5m or 1h30m")
	case v < 0:
		return errors.New("a duration cannot be negative")
	case v == 0 && !f.zero:
		return errors.New("a duration of zero means nothing here")
	}
	*f.v = v
	if f.set != nil {
		*f.set = true
	}
	return nil
}

func (durationValue) Type() string { return "duration" }

// timeValue is an RFC 3339 time flag.
type timeValue struct{ v *time.Time }

func (f timeValue) String() string {
	if f.v == nil || f.v.IsZero() {
		return ""
	}
	return f.v.Format(time.RFC3339Nano)
}

func (f timeValue) Set(s string) error {
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return errors.New("want an RFC 3339 time, e.g. 2026-11-21T22:15:00Z")
	}
	*f.v = v
	return nil
}

func (timeValue) Type() string { return "RFC3339" }

// choiceValue is a flag that takes one of a few words.
type choiceValue struct {
	v       *string
	choices []string
}

func (f choiceValue) String() string {
	if f.v == nil {
		return ""
	}
	return *f.v
}

func (f choiceValue) Set(s string) error {
	for _, c := range f.choices {
		if s == c {
			*f.v = s
			return nil
		}
	}
	return fmt.Errorf("want %s", orList(f.choices))
}

func (f choiceValue) Type() string { return strings.Join(f.choices, "|") }

// addChoiceFlag adds a choiceValue flag with its shell completion.
func addChoiceFlag(cmd *cobra.Command, v *string, name, value string, choices []string, usage string) {
	*v = value
	cmd.Flags().Var(choiceValue{v, choices}, name, usage)
	cmd.RegisterFlagCompletionFunc(name, cobra.FixedCompletions(choices, cobra.ShellCompDirectiveNoFileComp))
}

// logLevelValue is a log level flag: debug, info, warn or error.
type logLevelValue struct{ v *slog.Level }

func (f logLevelValue) String() string {
	if f.v == nil {
		return "info"
	}
	return strings.ToLower(f.v.String())
}

func (f logLevelValue) Set(s string) error {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return errors.New("want debug, info, warn or error")
	}
	*f.v = l
	return nil
}

func (logLevelValue) Type() string { return "level" }

// orList joins words as "a, b or c".
func orList(words []string) string {
	switch len(words) {
	case 0:
		return ""
	case 1:
		return words[0]
	}
	return strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}
