package chaos

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestCorrupt: a flip changes exactly one bit where the fraction points,
// a cut always loses bytes, and Pick maps [0, 1) onto every file.
func TestCorrupt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	orig := bytes.Repeat([]byte{0x5a}, 1000)
	if err := os.WriteFile(path, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := Corrupt(path, 0.5, 3, false)
	if err != nil || d.Offset != 500 {
		t.Fatalf("flip: %v, %v", d, err)
	}
	b, _ := os.ReadFile(path)
	if b[500] != 0x5a^8 || !bytes.Equal(b[:500], orig[:500]) || !bytes.Equal(b[501:], orig[501:]) {
		t.Fatalf("flip changed more than bit 3 of byte 500")
	}
	d, err = Corrupt(path, 0.9999999, 0, true)
	if err != nil || d.Offset != 999 {
		t.Fatalf("cut: %v, %v", d, err)
	}
	if st, _ := os.Stat(path); st.Size() != 999 {
		t.Fatalf("cut to %d bytes, want 999", st.Size())
	}
	files := []string{"a", "b", "c"}
	for frac, want := range map[float64]string{0: "a", 0.34: "b", 0.99: "c"} {
		if got := Pick(files, frac); got != want {
			t.Errorf("Pick(%v) = %s, want %s", frac, got, want)
		}
	}
}
