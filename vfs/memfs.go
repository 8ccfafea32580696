package vfs

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Op names an operation of MemFS, for error injection.
type Op int

// Operations an Injector sees.
const (
	OpOpen  Op = iota + 1 // OpenFile, Create, Open
	OpRead                // Read, ReadAt
	OpWrite               // Write, WriteAt
	OpSync                // File.Sync
	OpTruncate
	OpClose
	OpStat
	OpRemove
	OpRename
	OpReadDir
	OpMkdirAll
	OpSyncDir
)

var opNames = [...]string{"", "open", "read", "write", "sync", "truncate", "close", "stat", "remove", "rename", "readdir", "mkdirall", "syncdir"}

func (o Op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return "op?"
}

// ErrCrashed is returned by every file handle opened before MemFS.Crash.
var ErrCrashed = errors.New("vfs: file handle from before a crash")

// Injector decides whether an operation on path fails, and with what error.
// It is called with the MemFS lock held and must not call back into it.
type Injector func(op Op, path string) error

// FailNth returns an Injector that fails the nth (1-based) op with err and
// lets everything else through.
func FailNth(op Op, n int, err error) Injector {
	seen := 0
	return func(o Op, _ string) error {
		if o != op {
			return nil
		}
		seen++
		if seen == n {
			return err
		}
		return nil
	}
}

// FailFrom returns an Injector that fails the nth op and every later one
// with err, like a disk that stays full.
func FailFrom(op Op, n int, err error) Injector {
	seen := 0
	return func(o Op, _ string) error {
		if o != op {
			return nil
		}
		seen++
		if seen >= n {
			return err
		}
		return nil
	}
}

// MemFS is an in-memory FS for crash tests. It keeps, for every file, the
// contents as of its last fsync, and for every directory the entries as of
// its last SyncDir; Crash throws away everything else, as a power loss does.
// Directories made by MkdirAll are durable at once.
//
// An injected Write error is a partial write: half of the bytes are written
// before the error is returned, as when a disk fills up mid-write.
type MemFS struct {
	mu      sync.Mutex
	gen     int // bumped by Crash; handles of older generations are dead
	files   map[string]*memNode
	durable map[string]*memNode
	dirs    map[string]bool
	inject  Injector
}

type memNode struct {
	data    []byte
	synced  []byte
	modTime time.Time
}

// NewMemFS returns an empty MemFS.
func NewMemFS() *MemFS {
	return &MemFS{
		files:   make(map[string]*memNode),
		durable: make(map[string]*memNode),
		dirs:    map[string]bool{".": true, "/": true},
	}
}

// NewCrashFS is NewMemFS, named for what tests use it for.
func NewCrashFS() *MemFS { return NewMemFS() }

// SetInjector installs fn (nil removes it).
func (fs *MemFS) SetInjector(fn Injector) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.inject = fn
}

// Crash simulates a power loss: file contents revert to what was last
// fsync'd, directory entries to what was last SyncDir'd, and every open
// handle fails with ErrCrashed from now on.
func (fs *MemFS) Crash() {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.gen++
	fs.files = make(map[string]*memNode, len(fs.durable))
	for name, n := range fs.durable {
		n.data = bytes.Clone(n.synced)
		fs.files[name] = n
	}
}

func (fs *MemFS) injected(op Op, name string) error {
	if fs.inject == nil {
		return nil
	}
	return fs.inject(op, name)
}

func pathErr(op, name string, err error) error {
	return &os.PathError{Op: op, Path: name, Err: err}
}

func clean(name string) string { return filepath.Clean(name) }

func (fs *MemFS) dirExists(dir string) bool {
	return fs.dirs[dir]
}

// OpenFile implements FS.
func (fs *MemFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	name = clean(name)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if err := fs.injected(OpOpen, name); err != nil {
		return nil, pathErr("open", name, err)
	}
	if fs.dirs[name] {
		if flag&(os.O_WRONLY|os.O_RDWR) != 0 {
			return nil, pathErr("open", name, syscall.EISDIR)
		}
		return &memFile{fs: fs, name: name, gen: fs.gen, flag: flag, dir: true}, nil
	}
	n, ok := fs.files[name]
	switch {
	case ok && flag&os.O_CREATE != 0 && flag&os.O_EXCL != 0:
		return nil, pathErr("open", name, syscall.EEXIST)
	case !ok && flag&os.O_CREATE == 0:
		return nil, pathErr("open", name, syscall.ENOENT)
	case !ok:
		if !fs.dirExists(filepath.Dir(name)) {
			return nil, pathErr("open", name, syscall.ENOENT)
		}
		n = &memNode{modTime: time.Now()}
		fs.files[name] = n
	}
	if flag&os.O_TRUNC != 0 && flag&(os.O_WRONLY|os.O_RDWR) != 0 {
		n.data = n.data[:0]
	}
	return &memFile{fs: fs, n: n, name: name, gen: fs.gen, flag: flag}, nil
}

// Create implements FS.
func (fs *MemFS) Create(name string) (File, error) {
	return fs.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o666)
}

// Open implements FS.
func (fs *MemFS) Open(name string) (File, error) { return fs.OpenFile(name, os.O_RDONLY, 0) }

// Remove implements FS.
func (fs *MemFS) Remove(name string) error {
	name = clean(name)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if err := fs.injected(OpRemove, name); err != nil {
		return pathErr("remove", name, err)
	}
	if fs.dirs[name] {
		for f := range fs.files {
			if filepath.Dir(f) == name {
				return pathErr("remove", name, syscall.ENOTEMPTY)
			}
		}
		delete(fs.dirs, name)
		return nil
	}
	if _, ok := fs.files[name]; !ok {
		return pathErr("remove", name, syscall.ENOENT)
	}
	delete(fs.files, name)
	return nil
}

// Rename implements FS.
func (fs *MemFS) Rename(oldname, newname string) error {
	oldname, newname = clean(oldname), clean(newname)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if err := fs.injected(OpRename, oldname); err != nil {
		return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: err}
	}
	n, ok := fs.files[oldname]
	if !ok {
		return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: syscall.ENOENT}
	}
	if !fs.dirExists(filepath.Dir(newname)) {
		return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: syscall.ENOENT}
	}
	delete(fs.files, oldname)
	fs.files[newname] = n
	return nil
}

// ReadDir implements FS.
func (fs *MemFS) ReadDir(dir string) ([]string, error) {
	dir = clean(dir)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if err := fs.injected(OpReadDir, dir); err != nil {
		return nil, pathErr("readdir", dir, err)
	}
	if !fs.dirs[dir] {
		return nil, pathErr("readdir", dir, syscall.ENOENT)
	}
	var names []string
	for f := range fs.files {
		if filepath.Dir(f) == dir {
			names = append(names, filepath.Base(f))
		}
	}
	for d := range fs.dirs {
		if d != dir && filepath.Dir(d) == dir {
			names = append(names, filepath.Base(d))
		}
	}
	sort.Strings(names)
	return names, nil
}

// MkdirAll implements FS. The directories are durable at once.
func (fs *MemFS) MkdirAll(dir string, perm os.FileMode) error {
	dir = clean(dir)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if err := fs.injected(OpMkdirAll, dir); err != nil {
		return pathErr("mkdir", dir, err)
	}
	for d := dir; ; d = filepath.Dir(d) {
		if _, ok := fs.files[d]; ok {
			return pathErr("mkdir", d, syscall.ENOTDIR)
		}
		fs.dirs[d] = true
		if p := filepath.Dir(d); p == d {
			break
		}
	}
	return nil
}

// Stat implements FS.
func (fs *MemFS) Stat(name string) (os.FileInfo, error) {
	name = clean(name)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if err := fs.injected(OpStat, name); err != nil {
		return nil, pathErr("stat", name, err)
	}
	if fs.dirs[name] {
		return memInfo{name: filepath.Base(name), dir: true}, nil
	}
	n, ok := fs.files[name]
	if !ok {
		return nil, pathErr("stat", name, syscall.ENOENT)
	}
	return memInfo{name: filepath.Base(name), size: int64(len(n.data)), mod: n.modTime}, nil
}

// SyncDir implements FS: the entries of dir become durable as they are now.
func (fs *MemFS) SyncDir(dir string) error {
	dir = clean(dir)
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if err := fs.injected(OpSyncDir, dir); err != nil {
		return pathErr("fsync", dir, err)
	}
	if !fs.dirs[dir] {
		return pathErr("fsync", dir, syscall.ENOENT)
	}
	for name := range fs.durable {
		if filepath.Dir(name) == dir {
			delete(fs.durable, name)
		}
	}
	for name, n := range fs.files {
		if filepath.Dir(name) == dir {
			fs.durable[name] = n
		}
	}
	return nil
}

// String lists the files and their sizes (synced/current), for test failures.
func (fs *MemFS) String() string {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	var names []string
	for name := range fs.files {
		names = append(names, name)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, name := range names {
		n := fs.files[name]
		b.WriteString(name)
		b.WriteString(" ")
		b.WriteString(itoa(len(n.synced)))
		b.WriteString("/")
		b.WriteString(itoa(len(n.data)))
		b.WriteString("\n")
	}
	return b.String()
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b [20]byte
	p := len(b)
	for ; i > 0; i /= 10 {
		p--
		b[p] = byte('0' + i%10)
	}
	return string(b[p:])
}

type memInfo struct {
	name string
	size int64
	mod  time.Time
	dir  bool
}

func (i memInfo) Name() string       { return i.name }
func (i memInfo) Size() int64        { return i.size }
func (i memInfo) ModTime() time.Time { return i.mod }
func (i memInfo) IsDir() bool        { return i.dir }
func (i memInfo) Sys() any           { return nil }
func (i memInfo) Mode() os.FileMode {
	if i.dir {
		return os.ModeDir | 0o755
	}
	return 0o644
}

type memFile struct {
	fs     *MemFS
	n      *memNode
	name   string
	gen    int
	flag   int
	off    int64
	dir    bool
	closed bool
}

func (f *memFile) check(op string, write bool) error {
	switch {
	case f.closed:
		return pathErr(op, f.name, os.ErrClosed)
	case f.gen != f.fs.gen:
		return pathErr(op, f.name, ErrCrashed)
	case f.dir && op != "fsync" && op != "stat" && op != "close":
		return pathErr(op, f.name, syscall.EISDIR)
	}
	acc := f.flag & (os.O_RDONLY | os.O_WRONLY | os.O_RDWR)
	if write && acc == os.O_RDONLY || !write && acc == os.O_WRONLY {
		return pathErr(op, f.name, syscall.EBADF)
	}
	return nil
}

func (f *memFile) Read(p []byte) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.check("read", false); err != nil {
		return 0, err
	}
	if err := f.fs.injected(OpRead, f.name); err != nil {
		return 0, pathErr("read", f.name, err)
	}
	if f.off >= int64(len(f.n.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.n.data[f.off:])
	f.off += int64(n)
	return n, nil
}

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.check("read", false); err != nil {
		return 0, err
	}
	if err := f.fs.injected(OpRead, f.name); err != nil {
		return 0, pathErr("read", f.name, err)
	}
	if off < 0 {
		return 0, pathErr("read", f.name, syscall.EINVAL)
	}
	if off >= int64(len(f.n.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.n.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) Write(p []byte) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.check("write", true); err != nil {
		return 0, err
	}
	err := f.fs.injected(OpWrite, f.name)
	if err != nil {
		p = p[:len(p)/2]
	}
	if f.flag&os.O_APPEND != 0 {
		f.off = int64(len(f.n.data))
	}
	if end := f.off + int64(len(p)); end > int64(len(f.n.data)) {
		if end <= int64(cap(f.n.data)) {
			old := len(f.n.data)
			f.n.data = f.n.data[:end]
			clear(f.n.data[old:])
		} else {
			nd := make([]byte, end, 2*end)
			copy(nd, f.n.data)
			f.n.data = nd
		}
	}
	copy(f.n.data[f.off:], p)
	f.off += int64(len(p))
	f.n.modTime = time.Now()
	if err != nil {
		return len(p), pathErr("write", f.name, err)
	}
	return len(p), nil
}

// WriteAt writes p at off, growing the file when it ends before. An
// injected Write error is a partial write, as for Write.
func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.check("write", true); err != nil {
		return 0, err
	}
	if f.flag&os.O_APPEND != 0 {
		return 0, pathErr("write", f.name, errors.New("invalid use of WriteAt on a file opened with O_APPEND"))
	}
	if off < 0 {
		return 0, pathErr("write", f.name, syscall.EINVAL)
	}
	err := f.fs.injected(OpWrite, f.name)
	if err != nil {
		p = p[:len(p)/2]
	}
	if end := off + int64(len(p)); end > int64(len(f.n.data)) {
		f.n.data = append(f.n.data, make([]byte, end-int64(len(f.n.data)))...)
	}
	copy(f.n.data[off:], p)
	f.n.modTime = time.Now()
	if err != nil {
		return len(p), pathErr("write", f.name, err)
	}
	return len(p), nil
}

func (f *memFile) Sync() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.check("fsync", false); err != nil && !errors.Is(err, syscall.EBADF) {
		return err
	}
	if err := f.fs.injected(OpSync, f.name); err != nil {
		return pathErr("fsync", f.name, err)
	}
	if f.dir {
		return nil
	}
	f.n.synced = append(f.n.synced[:0], f.n.data...)
	return nil
}

func (f *memFile) Truncate(size int64) error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.check("truncate", true); err != nil {
		return err
	}
	if err := f.fs.injected(OpTruncate, f.name); err != nil {
		return pathErr("truncate", f.name, err)
	}
	if size < 0 {
		return pathErr("truncate", f.name, syscall.EINVAL)
	}
	if size <= int64(len(f.n.data)) {
		f.n.data = f.n.data[:size]
	} else {
		f.n.data = append(f.n.data, make([]byte, size-int64(len(f.n.data)))...)
	}
	return nil
}

func (f *memFile) Close() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return pathErr("close", f.name, os.ErrClosed)
	}
	f.closed = true
	if err := f.fs.injected(OpClose, f.name); err != nil {
		return pathErr("close", f.name, err)
	}
	return nil
}

func (f *memFile) Stat() (os.FileInfo, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.check("stat", false); err != nil && !errors.Is(err, syscall.EBADF) {
		return nil, err
	}
	if f.dir {
		return memInfo{name: filepath.Base(f.name), dir: true}, nil
	}
	return memInfo{name: filepath.Base(f.name), size: int64(len(f.n.data)), mod: f.n.modTime}, nil
}
