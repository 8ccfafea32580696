package guest

import (
	"bufio"
	"fmt"
	"io"
)

// cpio writes an archive in the "newc" format the kernel unpacks into the
// initramfs. Every entry has mtime 0, so equal inputs give equal bytes.
type cpio struct {
	w   *bufio.Writer
	ino uint32
	err error
}

// Mode bits of cpio entries.
const (
	cpioDir  = 0o040000
	cpioFile = 0o100000
	cpioChar = 0o020000
)

func newCpio(w io.Writer) *cpio { return &cpio{w: bufio.NewWriter(w)} }

func (c *cpio) Dir(name string) { c.entry(name, cpioDir|0o755, 0, 0, nil) }

func (c *cpio) File(name string, perm uint32, data []byte) {
	c.entry(name, cpioFile|perm, 0, 0, data)
}

func (c *cpio) CharDev(name string, perm, major, minor uint32) {
	c.entry(name, cpioChar|perm, major, minor, nil)
}

// Close writes the trailer and flushes.
func (c *cpio) Close() error {
	c.entry("TRAILER!!!", 0, 0, 0, nil)
	if c.err == nil {
		c.err = c.w.Flush()
	}
	if c.err != nil {
		return fmt.Errorf("guest: write initramfs: %w", c.err)
	}
	return nil
}

func (c *cpio) entry(name string, mode, rmajor, rminor uint32, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := 1
	if mode&cpioDir != 0 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rmajor, rminor, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write(append([]byte(name), 0))
	c.pad(len(hdr) + len(name) + 1)
	c.write(data)
	c.pad(len(data))
}

func (c *cpio) write(b []byte) {
	if c.err == nil {
		_, c.err = c.w.Write(b)
	}
}

func (c *cpio) pad(n int) {
	var zero [3]byte
	c.write(zero[:(4-n%4)%4])
}
