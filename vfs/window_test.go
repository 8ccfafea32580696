package vfs

import (
	"bytes"
	"path/filepath"
	"testing"
)

func TestWindow(t *testing.T) {
	fs := NewMemFS()
	path := filepath.Join("/", "w")
	f, err := fs.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0}, 3*WindowChunk)
	for i := 0; i < WindowChunk; i++ {
		data[i] = byte(i%251 + 1)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	w := NewWindow(f)
	size := int64(len(data))
	for _, c := range []struct {
		off         int64
		want        int
		limit       int64
		wantLen     int
		description string
	}{
		{0, 16, size, 16, "inside"},
		{WindowChunk - 8, 16, size, 16, "across the chunk edge"},
		{size - 4, 16, size, 4, "clipped at the file's end"},
		{100, 1 << 30, 200, 100, "a huge length off the disk is clipped at the limit, not allocated"},
		{size + 10, 16, size, 0, "past the limit"},
	} {
		b, err := w.At(c.off, c.want, c.limit)
		if err != nil {
			t.Fatalf("%s: %v", c.description, err)
		}
		if len(b) != c.wantLen || cap(w.buf) > 2*WindowChunk {
			t.Fatalf("%s: %d bytes (buffer %d), want %d", c.description, len(b), cap(w.buf), c.wantLen)
		}
		if c.off < size && !bytes.Equal(b, data[c.off:c.off+int64(len(b))]) {
			t.Fatalf("%s: wrong bytes", c.description)
		}
	}
	if z, _ := w.AllZero(0, size); z {
		t.Fatal("AllZero over data")
	}
	if z, _ := w.AllZero(WindowChunk, size); !z {
		t.Fatal("AllZero over zeroes")
	}
	w.Reset(f)
	if b, _ := w.At(1, 1, size); b[0] != data[1] {
		t.Fatal("Reset: wrong bytes")
	}
}
