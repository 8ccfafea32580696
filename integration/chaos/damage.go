package chaos

import (
	"fmt"
	"os"
	"path/filepath"
)

// Damage is one corruption done to a file at rest: a flipped bit, or the
// file cut short.
type Damage struct {
	Path     string
	Size     int64 // the file's size before
	Offset   int64 // the byte flipped, or the new size
	Bit      uint8
	Truncate bool
}

func (d Damage) String() string {
	if d.Truncate {
		return fmt.Sprintf("%s cut from %d to %d bytes", d.Path, d.Size, d.Offset)
	}
	return fmt.Sprintf("%s bit %d of byte %d (of %d) flipped", d.Path, d.Bit, d.Offset, d.Size)
}

// Base is the damaged file's name, what a report must name.
func (d Damage) Base() string { return filepath.Base(d.Path) }

// Pick returns the file frac (in [0, 1)) points at in files.
func Pick(files []string, frac float64) string {
	return files[min(int(frac*float64(len(files))), len(files)-1)]
}

// Corrupt damages path at the place frac (in [0, 1)) points at: it flips
// bit of that byte, or cuts the file there when truncate is set (never to
// its full size, so something is always lost).
func Corrupt(path string, frac float64, bit uint8, truncate bool) (Damage, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return Damage{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Damage{}, err
	}
	d := Damage{Path: path, Size: st.Size(), Bit: bit % 8, Truncate: truncate}
	if d.Size == 0 {
		return d, fmt.Errorf("chaos: %s is empty: nothing to damage", path)
	}
	d.Offset = min(int64(frac*float64(d.Size)), d.Size-1)
	if truncate {
		if err := f.Truncate(d.Offset); err != nil {
			return d, err
		}
		return d, f.Sync()
	}
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, d.Offset); err != nil {
		return d, err
	}
	b[0] ^= 1 << d.Bit
	if _, err := f.WriteAt(b, d.Offset); err != nil {
		return d, err
	}
	return d, f.Sync()
}
