package configs

import (
	"errors"
	"strconv"
	"strings"
)

// Sentinels for the kinds of policy problem. Every *Error wraps exactly one,
// so callers tell problems apart with errors.Is, never by the message.
var (
	ErrSyntax     = errors.New("configs: syntax error")     // the file is not valid TOML
	ErrUnknownKey = errors.New("configs: unknown key")      // a key the schema does not have
	ErrType       = errors.New("configs: wrong value type") // e.g. a number where a string belongs
	ErrMissing    = errors.New("configs: missing key")      // a required key is not set
	ErrInvalid    = errors.New("configs: invalid value")    // a value out of range or malformed
	ErrDuplicate  = errors.New("configs: duplicate")        // a name or selector given twice
	ErrTooLarge   = errors.New("configs: over a limit")     // MaxFileSize, MaxNesting, MaxKeyParts

	// ErrNotProtected and ErrAmbiguous come from Policy.GroupFor, not from
	// parsing.
	ErrNotProtected = errors.New("configs: no group selects the VM")
	ErrAmbiguous    = errors.New("configs: more than one selector matches the VM")
)

// Error is one problem in a policy file, located at the key it concerns.
// Its text is "file:line:col: key: message"; the column, and the line, are
// left out when unknown (0).
type Error struct {
	File   string // the name given to Parse, or the path given to Load
	Line   int    // 1-based line of the key (or of the table header); 0 if unknown
	Column int    // 1-based byte column; 0 if unknown
	Key    string // the key path, e.g. "group[1].vm[0].name"; "" for the whole file
	Msg    string // what is wrong and, where useful, how to fix it
	Err    error  // one of the sentinels above
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Line))
		if e.Column > 0 {
			b.WriteByte(':')
			b.WriteString(strconv.Itoa(e.Column))
		}
	}
	b.WriteString(": ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Unwrap returns the sentinel.
func (e *Error) Unwrap() error { return e.Err }

// Errors returns the *Error values err holds: err itself, or every member of
// the errors.Join that Parse returns when a file has several problems.
func Errors(err error) []*Error {
	var out []*Error
	var walk func(error)
	walk = func(err error) {
		var e *Error
		switch x := err.(type) {
		case nil:
		case interface{ Unwrap() []error }:
			for _, inner := range x.Unwrap() {
				walk(inner)
			}
		default:
			if errors.As(err, &e) {
				out = append(out, e)
			}
		}
	}
	walk(err)
	return out
}
