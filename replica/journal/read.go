package journal

import (
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/vfs"
)

// blob is a segment or layer file as views read it: one read handle, opened
// on first use, and a bit per record saying its checksum has been checked
// since Open. A record is read whole and checked the first time any part of
// it is served; corruption is reported, never served.
type blob struct {
	path     string
	mu       sync.Mutex
	rf       vfs.File
	verified []uint64
}

func (b *blob) reader(fs vfs.FS) (vfs.File, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.rf == nil {
		f, err := fs.Open(b.path)
		if err != nil {
			return nil, fmt.Errorf("journal: %w", err)
		}
		b.rf = f
	}
	return b.rf, nil
}

func (b *blob) closeReader() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.rf != nil {
		b.rf.Close() // read-only handle: nothing to lose
		b.rf = nil
	}
}

func (b *blob) isVerified(i int) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return i/64 < len(b.verified) && b.verified[i/64]&(1<<(i%64)) != 0
}

func (b *blob) setVerified(i int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i/64 >= len(b.verified) {
		b.verified = append(b.verified, 0)
	}
	b.verified[i/64] |= 1 << (i % 64)
}

// readPayload fills p with the payload bytes [delta, delta+len(p)) of the
// Data record e of disk, the bit-th record of file b.
func (j *Journal) readPayload(b *blob, bit int, e *entry, disk string, p []byte, delta uint64) error {
	f, err := b.reader(j.fs)
	if err != nil {
		return err
	}
	if b.isVerified(bit) {
		if _, err := f.ReadAt(p, e.pos+int64(e.hlen)+int64(delta)); err != nil {
			return fmt.Errorf("journal: read %s offset %d (seq %d): %w", b.path, e.pos, e.seq, err)
		}
		return nil
	}
	r, buf, err := readRecord(f, b.path, e, disk)
	if err != nil {
		return err
	}
	copy(p, r.Payload[delta:])
	putBuf(buf)
	b.setVerified(bit)
	return nil
}

var bufPool sync.Pool

func getBuf(n int) []byte {
	if v, ok := bufPool.Get().(*[]byte); ok && cap(*v) >= n {
		return (*v)[:n]
	}
	return make([]byte, n)
}

func putBuf(b []byte) {
	if cap(b) <= 2<<20 {
		bufPool.Put(&b)
	}
}

// readRecord reads the record e of disk at its place in the file and checks
// it whole: checksums, and that it is the record the index says.
func readRecord(f vfs.File, path string, e *entry, disk string) (record.Record, []byte, error) {
	buf := getBuf(int(e.encodedLen()))
	if _, err := f.ReadAt(buf, e.pos); err != nil && !errors.Is(err, io.EOF) {
		return record.Record{}, nil, fmt.Errorf("journal: read %s offset %d (seq %d): %w", path, e.pos, e.seq, err)
	}
	r, n, err := record.Decode(buf)
	if err == nil && (n != len(buf) || r.Seq != e.seq || r.Kind != e.kind || r.Disk != disk || r.Offset != e.off || r.Length != e.length) {
		err = fmt.Errorf("record is not the one the index names")
	}
	if err != nil {
		return record.Record{}, nil, fmt.Errorf("%w: %s offset %d, seq %d: %w", ErrCorrupt, path, e.pos, e.seq, err)
	}
	return r, buf, nil
}
