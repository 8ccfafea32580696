package configs

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Limits on a policy file, checked before it is decoded: the TOML library
// takes time and memory that grow faster than linearly with the nesting of
// inline tables and the parts of a dotted key (16,000 levels take minutes).
// A real policy needs 3 of each.
const (
	MaxFileSize = 1 << 20 // bytes; a bigger file is refused unread
	MaxNesting  = 32      // arrays and inline tables within each other
	MaxKeyParts = 32      // parts of a dotted key or table header
)

// Load reads and parses the policy file at path. Errors name path as given.
func Load(path string) (*Policy, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(path, data)
}

// readFile reads a policy file, at most one byte past MaxFileSize so that
// Parse can refuse a bigger one.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("configs: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("configs: %w", err)
	}
	return data, nil
}

// Parse parses and validates a policy. name is used in errors only. On
// failure the error is an *Error or, when the file has several problems, an
// errors.Join of them in file order (see Errors); errors.As finds the first.
func Parse(name string, data []byte) (*Policy, error) {
	return decodeDoc(name, data, (*decoder).policy)
}

// decodeDoc is the part of parsing every policy file shares: limits,
// positions, TOML syntax, then walk, and the errors in file order.
func decodeDoc[T any](name string, data []byte, walk func(*decoder, map[string]any) T) (T, error) {
	var zero T
	if len(data) > MaxFileSize {
		return zero, &Error{File: name, Msg: fmt.Sprintf("larger than %d bytes", MaxFileSize), Err: ErrTooLarge}
	}
	at, limitPos, limit := scanPositions(string(data))
	if limit != "" {
		return zero, &Error{File: name, Line: limitPos.line, Column: limitPos.col, Msg: limit, Err: ErrTooLarge}
	}
	// Decoding into a map, not a struct: the walker then sees every key
	// with its array indices, so that unknown keys and bad types are
	// reported as group[3].vm[1].nmae rather than MetaData.Undecoded's
	// group.vm.nmae, and a type error is ours to word and locate.
	var raw map[string]any
	if _, err := toml.Decode(string(data), &raw); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return zero, &Error{File: name, Line: pe.Position.Line, Column: pe.Position.Col,
				Key: pe.LastKey, Msg: pe.Message, Err: ErrSyntax}
		}
		return zero, &Error{File: name, Msg: err.Error(), Err: ErrSyntax}
	}
	d := &decoder{file: name, at: at}
	v := walk(d, raw)
	switch len(d.errs) {
	case 0:
		return v, nil
	case 1:
		return zero, d.errs[0]
	}
	sort.SliceStable(d.errs, func(i, j int) bool {
		a, b := d.errs[i], d.errs[j]
		return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column)) < 0
	})
	errs := make([]error, len(d.errs))
	for i, e := range d.errs {
		errs[i] = e
	}
	return zero, errors.Join(errs...)
}

// decoder walks the decoded document against the schema, collecting errors.
type decoder struct {
	file string
	at   positions
	errs []*Error
}

func (d *decoder) errorf(path string, sentinel error, format string, args ...any) {
	p := d.at.find(path)
	d.errs = append(d.errs, &Error{File: d.file, Line: p.line, Column: p.col, Key: path,
		Msg: fmt.Sprintf(format, args...), Err: sentinel})
}

// line is the line of path, for messages that point at a second place.
func (d *decoder) line(path string) int { return d.at.find(path).line }

// table is one TOML table being decoded. Every key the schema reads is
// marked; done reports the rest as unknown.
type table struct {
	d     *decoder
	path  string
	m     map[string]any
	known []string
}

func (d *decoder) table(path string, m map[string]any) *table {
	return &table{d: d, path: path, m: m}
}

func (t *table) key(k string) string { return keyPath(t.path, k) }

func (t *table) has(k string) bool {
	_, ok := t.m[k]
	return ok
}

func (t *table) lookup(k string) (any, bool) {
	t.known = append(t.known, k)
	v, ok := t.m[k]
	return v, ok
}

func (t *table) typeErr(path, want string, v any) {
	t.d.errorf(path, ErrType, "must be %s, not %s", want, tomlType(v))
}

// done reports every key of t the schema did not read.
func (t *table) done() {
	keys := make([]string, 0, len(t.m))
	for k := range t.m {
		if !slices.Contains(t.known, k) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.d.errorf(t.key(k), ErrUnknownKey, "unknown key (known here: %s)", strings.Join(t.known, ", "))
	}
}

// str returns the string at k; ok is false if it is absent or not a string.
func (t *table) str(k string) (s string, ok bool) {
	v, present := t.lookup(k)
	if !present {
		return "", false
	}
	if s, ok = v.(string); !ok {
		t.typeErr(t.key(k), "a string", v)
	}
	return s, ok
}

// strs returns the array of strings at k.
func (t *table) strs(k string) (out []string, paths []string, ok bool) {
	v, present := t.lookup(k)
	if !present {
		return nil, nil, false
	}
	arr, isArr := v.([]any)
	if !isArr {
		t.typeErr(t.key(k), "an array of strings", v)
		return nil, nil, false
	}
	ok = true
	for i, e := range arr {
		p := indexPath(t.key(k), i)
		s, isStr := e.(string)
		if !isStr {
			t.typeErr(p, "a string", e)
			ok = false
			continue
		}
		out = append(out, s)
		paths = append(paths, p)
	}
	return out, paths, ok
}

// size returns the byte size at k: a string such as "8G" or an integer.
func (t *table) size(k string) (int64, bool) {
	v, present := t.lookup(k)
	if !present {
		return 0, false
	}
	switch x := v.(type) {
	case int64:
		if x < 0 {
			t.d.errorf(t.key(k), ErrInvalid, "size %d is negative", x)
			return 0, false
		}
		return x, true
	case string:
		n, err := parseSize(x)
		if err != nil {
			t.d.errorf(t.key(k), ErrInvalid, "%v", err)
			return 0, false
		}
		return n, true
	}
	t.typeErr(t.key(k), `a size ("512M", "8G" or bytes)`, v)
	return 0, false
}

// integer returns the whole number at k, which must be from lo to hi.
func (t *table) integer(k string, lo, hi int64) (int64, bool) {
	v, present := t.lookup(k)
	if !present {
		return 0, false
	}
	x, isInt := v.(int64)
	if !isInt {
		t.typeErr(t.key(k), "a whole number", v)
		return 0, false
	}
	if x < lo || x > hi {
		t.d.errorf(t.key(k), ErrInvalid, "%d is out of range: from %d to %d", x, lo, hi)
		return 0, false
	}
	return x, true
}

// duration returns the duration at k, written as Go does: "1s", "250ms".
func (t *table) duration(k string) (time.Duration, bool) {
	v, present := t.lookup(k)
	if !present {
		return 0, false
	}
	s, isStr := v.(string)
	if !isStr {
		t.typeErr(t.key(k), `a duration string ("0s", "250ms", "1m")`, v)
		return 0, false
	}
	dur, err := time.ParseDuration(s)
	if err != nil {
		t.d.errorf(t.key(k), ErrInvalid, "duration %q: use a number with a unit: \"250ms\", \"1s\", \"1m\"", s)
		return 0, false
	}
	if dur < 0 {
		t.d.errorf(t.key(k), ErrInvalid, "duration %s is negative", s)
		return 0, false
	}
	return dur, true
}

// sub returns the table at k.
func (t *table) sub(k string) (*table, bool) {
	v, present := t.lookup(k)
	if !present {
		return nil, false
	}
	m, ok := v.(map[string]any)
	if !ok {
		t.typeErr(t.key(k), "a table", v)
		return nil, false
	}
	return t.d.table(t.key(k), m), true
}

// subs returns the array of tables at k, written [[k]] or k = [{…}, …].
func (t *table) subs(k string) []*table {
	v, present := t.lookup(k)
	if !present {
		return nil
	}
	var elems []map[string]any
	switch x := v.(type) {
	case []map[string]any:
		elems = x
	case []any:
		for i, e := range x {
			m, ok := e.(map[string]any)
			if !ok {
				t.typeErr(indexPath(t.key(k), i), "a table", e)
				continue
			}
			elems = append(elems, m)
		}
	case map[string]any:
		t.d.errorf(t.key(k), ErrType, "must be an array of tables: write [[%s]], not [%s]", t.key(k), t.key(k))
		return nil
	default:
		t.typeErr(t.key(k), "an array of tables", v)
		return nil
	}
	out := make([]*table, len(elems))
	for i, m := range elems {
		out[i] = t.d.table(indexPath(t.key(k), i), m)
	}
	return out
}

func tomlType(v any) string {
	switch v.(type) {
	case string:
		return "a string"
	case int64:
		return "an integer"
	case float64:
		return "a float"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case []map[string]any:
		return "an array of tables"
	case map[string]any:
		return "a table"
	}
	return "a date or time"
}
