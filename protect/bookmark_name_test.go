package protect

import (
	"errors"
	"strings"
	"testing"
)

// A bookmark's name is typed on command lines and printed in tables: no
// slash, white space or control character, 1 to 255 bytes of UTF-8.
func TestValidBookmarkName(t *testing.T) {
	for _, c := range []struct {
		name string
		ok   bool
	}{
		{"nightly", true}, {"before-upgrade_2026-11-21T22:15:00Z", true}, {"café", true}, {strings.Repeat("x", 255), true},
		{"", false}, {strings.Repeat("x", 256), false}, {"a/b", false}, {"a b", false}, {"a\tb", false},
		{"a\nb", false}, {"a\x01b", false}, {"a\x7fb", false}, {"a\u00a0b", false}, {"\xff", false},
	} {
		err := ValidBookmarkName(c.name)
		if (err == nil) != c.ok || err != nil && !errors.Is(err, ErrBadName) {
			t.Errorf("ValidBookmarkName(%q) = %v, want ok %v", c.name, err, c.ok)
		}
	}
}
