package configs

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// BurntSushi/toml v1.6.0 keeps key positions private (MetaData.keyInfo), and
// keeps one per key name without array indices, so it cannot tell
// group[0].name from group[3].name. positions recovers them with a small scan
// of the source that already parsed: it follows table headers, array-of-table
// counters, dotted keys, inline tables and arrays, and skips strings and
// comments. It never fails; a path it missed falls back to its parent's
// position (see positions.find).

type position struct{ line, col int }

// positions maps an indexed key path (see keyPath, indexPath) to where it is
// written: the start of the key, the '[' of its table header, or the first
// byte of an array element.
type positions map[string]position

// find returns the position of path, or of its nearest ancestor that has one.
func (ps positions) find(path string) position {
	for path != "" {
		if p, ok := ps[path]; ok {
			return p
		}
		path = parentPath(path)
	}
	return position{}
}

// keyPath appends key to the path parent, quoting it as TOML would.
func keyPath(parent, key string) string {
	k := toml.Key{key}.String()
	if parent == "" {
		return k
	}
	return parent + "." + k
}

// indexPath appends an array index to path.
func indexPath(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

// parentPath strips the last key or index of path. Quoted keys may contain
// '.' or '[', so it walks the path from the start.
func parentPath(path string) string {
	last, quoted := 0, false
	for i := 0; i < len(path); i++ {
		switch c := path[i]; {
		case c == '\\' && quoted:
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && (c == '.' || c == '['):
			last = i
		}
	}
	return path[:last]
}

type scanner struct {
	src        string
	i          int
	lineStarts []int
	at         positions
	arrays     map[string]int // array-of-tables path → elements so far
	limit      int            // offset of the first excess (MaxNesting, MaxKeyParts), or -1
	limitMsg   string
}

// scanPositions scans src. It also checks MaxNesting and MaxKeyParts, which
// it can do on any input in linear time: if src exceeds one, msg says so and
// p is where.
func scanPositions(src string) (at positions, p position, msg string) {
	s := &scanner{src: src, at: positions{}, arrays: map[string]int{}, lineStarts: []int{0}, limit: -1}
	for i := 0; i < len(src); i++ {
		if src[i] == '\n' {
			s.lineStarts = append(s.lineStarts, i+1)
		}
	}
	s.i = len(src) - len(strings.TrimPrefix(src, "\uFEFF"))
	s.document()
	if s.limit >= 0 {
		return s.at, s.pos(s.limit), s.limitMsg
	}
	return s.at, position{}, ""
}

func (s *scanner) pos(off int) position {
	l := sort.Search(len(s.lineStarts), func(i int) bool { return s.lineStarts[i] > off }) - 1
	return position{line: l + 1, col: off - s.lineStarts[l] + 1}
}

func (s *scanner) set(path string, off int) {
	if _, ok := s.at[path]; !ok {
		s.at[path] = s.pos(off)
	}
}

func (s *scanner) peek(n int) byte {
	if s.i+n < len(s.src) {
		return s.src[s.i+n]
	}
	return 0
}

func (s *scanner) eof() bool { return s.i >= len(s.src) }

// skipSpace skips blanks on the current line.
func (s *scanner) skipSpace() {
	for !s.eof() && (s.src[s.i] == ' ' || s.src[s.i] == '\t') {
		s.i++
	}
}

// skipBlank skips blanks, newlines and comments.
func (s *scanner) skipBlank() {
	for !s.eof() {
		switch s.src[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		case '#':
			s.skipLine()
		default:
			return
		}
	}
}

func (s *scanner) skipLine() {
	if j := strings.IndexByte(s.src[s.i:], '\n'); j >= 0 {
		s.i += j + 1
	} else {
		s.i = len(s.src)
	}
}

func (s *scanner) document() {
	table, tableOK := "", true
	for {
		s.skipBlank()
		if s.eof() {
			return
		}
		start := s.i
		if s.src[s.i] == '[' {
			array := s.peek(1) == '['
			s.i++
			if array {
				s.i++
			}
			table, tableOK = s.header(s.keys(), array, start)
			s.skipLine()
			continue
		}
		keys := s.keys()
		if len(keys) == 0 {
			s.skipLine()
			continue
		}
		s.skipSpace()
		if !s.eof() && s.src[s.i] == '=' {
			s.i++
		}
		path, ok := s.dotted(table, keys, start)
		s.value(path, ok && tableOK, 0)
	}
}

// tooLong reports whether keys would make a path under base that no schema
// key has, and that would be costly to build again for every key under it.
func tooLong(base string, keys []string) bool {
	n := len(base)
	for _, k := range keys {
		n += len(k) + 1
	}
	return len(keys) > maxDepth || n > maxPathLen
}

// header records a [table] or [[array]] header and returns its path; ok is
// false if it is not recorded (tooLong).
func (s *scanner) header(keys []string, array bool, off int) (path string, ok bool) {
	if tooLong("", keys) {
		return "", false
	}
	for i, k := range keys {
		path = keyPath(path, k)
		if array && i == len(keys)-1 {
			n := s.arrays[path]
			s.arrays[path] = n + 1
			path = indexPath(path, n)
		} else if n, ok := s.arrays[path]; ok {
			path = indexPath(path, n-1)
		}
		s.set(path, off)
	}
	return path, true
}

// dotted records the key a.b.c under base and returns its path; ok is false
// if it is not recorded (tooLong).
func (s *scanner) dotted(base string, keys []string, off int) (path string, ok bool) {
	if tooLong(base, keys) {
		return "", false
	}
	for _, k := range keys {
		base = keyPath(base, k)
		s.set(base, off)
	}
	return base, true
}

// keys reads a (dotted) key.
func (s *scanner) keys() []string {
	start := s.i
	keys := s.readKeys()
	if len(keys) > MaxKeyParts && s.limit < 0 {
		s.limit, s.limitMsg = start, fmt.Sprintf("a key of more than %d dotted parts", MaxKeyParts)
	}
	return keys
}

func (s *scanner) readKeys() []string {
	var keys []string
	for {
		s.skipSpace()
		if s.eof() {
			return keys
		}
		var k string
		switch s.src[s.i] {
		case '"':
			k = unescape(s.basic())
		case '\'':
			k = s.literal()
		default:
			j := s.i
			for j < len(s.src) && !strings.ContainsRune(" \t\r\n=.[]#,{}\"'", rune(s.src[j])) {
				j++
			}
			if j == s.i {
				return keys
			}
			k, s.i = s.src[s.i:j], j
		}
		keys = append(keys, k)
		s.skipSpace()
		if s.eof() || s.src[s.i] != '.' {
			return keys
		}
		s.i++
	}
}

// maxDepth bounds the nesting of arrays and inline tables whose positions
// are recorded (the schema nests two deep), so that pathological nesting
// costs linear time, not paths as long as the nesting.
const maxDepth = 8

// maxPathLen bounds the length of a recorded path, for the same reason.
const maxPathLen = 1024

// value skips one value, recording the elements of arrays and the keys of
// inline tables under path (if record), down to maxDepth. depth is the
// nesting of the value; past MaxNesting it notes s.limit.
func (s *scanner) value(path string, record bool, depth int) {
	if depth > MaxNesting && s.limit < 0 {
		s.limit, s.limitMsg = s.i, fmt.Sprintf("arrays and inline tables nested more than %d deep", MaxNesting)
	}
	record = record && depth < maxDepth
	s.skipSpace()
	if s.eof() {
		return
	}
	switch {
	case strings.HasPrefix(s.src[s.i:], `"""`):
		s.multiline(`"""`, true)
	case strings.HasPrefix(s.src[s.i:], `'''`):
		s.multiline(`'''`, false)
	case s.src[s.i] == '"':
		s.basic()
	case s.src[s.i] == '\'':
		s.literal()
	case s.src[s.i] == '[':
		s.i++
		for n := 0; ; {
			s.skipBlank()
			if s.eof() {
				return
			}
			switch s.src[s.i] {
			case ']':
				s.i++
				return
			case ',':
				s.i++
				continue
			}
			before := s.i
			el := ""
			if record {
				el = indexPath(path, n)
				s.set(el, s.i)
			}
			s.value(el, record, depth+1)
			n++
			if s.i == before {
				s.i++
			}
		}
	case s.src[s.i] == '{':
		s.i++
		for {
			s.skipBlank()
			if s.eof() {
				return
			}
			switch s.src[s.i] {
			case '}':
				s.i++
				return
			case ',':
				s.i++
				continue
			}
			start := s.i
			keys := s.keys()
			if len(keys) == 0 {
				s.i++
				continue
			}
			s.skipSpace()
			if !s.eof() && s.src[s.i] == '=' {
				s.i++
			}
			el, ok := "", false
			if record {
				el, ok = s.dotted(path, keys, start)
			}
			s.value(el, ok, depth+1)
		}
	default:
		for !s.eof() && !strings.ContainsRune(",]}#\r\n", rune(s.src[s.i])) {
			s.i++
		}
	}
}

// basic reads a "basic string" and returns its raw (escaped) body.
func (s *scanner) basic() string {
	s.i++
	start := s.i
	for !s.eof() {
		switch s.src[s.i] {
		case '\\':
			s.i += 2
			continue
		case '"', '\n':
			body := s.src[start:s.i]
			s.i++
			return body
		}
		s.i++
	}
	s.i = len(s.src)
	return s.src[start:]
}

// literal reads a 'literal string' and returns its body.
func (s *scanner) literal() string {
	s.i++
	start := s.i
	for !s.eof() && s.src[s.i] != '\'' && s.src[s.i] != '\n' {
		s.i++
	}
	body := s.src[start:s.i]
	if !s.eof() {
		s.i++
	}
	return body
}

// multiline skips a multi-line string opened by delim at s.i.
func (s *scanner) multiline(delim string, escapes bool) {
	s.i += len(delim)
	for !s.eof() {
		if escapes && s.src[s.i] == '\\' {
			s.i += 2
			continue
		}
		if strings.HasPrefix(s.src[s.i:], delim) {
			s.i += len(delim)
			// Up to two quotes may end the body right before the delimiter.
			for n := 0; n < 2 && !s.eof() && s.src[s.i] == delim[0]; n++ {
				s.i++
			}
			return
		}
		s.i++
	}
	s.i = len(s.src)
}

// unescape decodes the escapes of a quoted key; TOML's escapes are a subset
// of Go's except \e, which is left as written (the key is unknown anyway).
func unescape(raw string) string {
	if !strings.ContainsRune(raw, '\\') {
		return raw
	}
	if u, err := strconv.Unquote(`"` + raw + `"`); err == nil {
		return u
	}
	return raw
}
