package guest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

// KernelMeta is the Debian package that depends on the current cloud
// kernel of the release.
const KernelMeta = "linux-image-cloud-amd64"

// rootModules are the modules the guest needs; Build adds what they depend
// on and leaves out what the kernel has built in.
var rootModules = []string{"virtio_pci", "virtio_blk"}

// optionalModules are staged when the kernel has them: the ACPI power
// button and the input events /init reads it through (a clean shutdown,
// as libvirt's `virsh shutdown` asks for).
var optionalModules = []string{"button", "evdev"}

// moduleSet names what a cached kernel directory was staged for: a cache
// staged for another set is staged again.
func moduleSet() string {
	return strings.Join(rootModules, " ") + " | " + strings.Join(optionalModules, " ") + "\n"
}

// initPackage is the /init program.
const initPackage = "github.com/qcdp/qcdp/integration/guest/init"

// Artifacts are what QEMU boots.
type Artifacts struct {
	Kernel  string   // bzImage
	Initrd  string   // uncompressed newc cpio
	Release string   // kernel release, e.g. 6.1.0-56-cloud-amd64
	Modules []string // module names in load order
}

// DefaultCacheDir is where Build caches when given no directory: one per
// user and machine, shared by every test process.
func DefaultCacheDir() (string, error) {
	if dir := os.Getenv("QCDP_GUEST_CACHE"); dir != "" {
		return dir, nil
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("guest: cache directory: %w", err)
	}
	return filepath.Join(base, "qcdp-guest"), nil
}

// Build returns the kernel and initramfs, downloading the kernel package
// the first time and building the initramfs whenever /init changes.
// cacheDir "" is DefaultCacheDir. Processes building into the same cacheDir
// take turns on a lock file; everything is published by rename.
func Build(ctx context.Context, cacheDir string) (*Artifacts, error) {
	if cacheDir == "" {
		var err error
		if cacheDir, err = DefaultCacheDir(); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("guest: build: %w", err)
	}
	unlock, err := lockDir(cacheDir)
	if err != nil {
		return nil, err
	}
	defer unlock()

	kdir, release, err := ensureKernel(ctx, cacheDir)
	if err != nil {
		return nil, err
	}
	order, err := os.ReadFile(filepath.Join(kdir, "modules", "order"))
	if err != nil {
		return nil, fmt.Errorf("guest: kernel cache %s: %w", kdir, err)
	}
	initBin, err := buildInit(ctx, cacheDir)
	if err != nil {
		return nil, err
	}
	initrd, err := ensureInitrd(cacheDir, kdir, initBin)
	if err != nil {
		return nil, err
	}
	return &Artifacts{
		Kernel:  filepath.Join(kdir, "vmlinuz"),
		Initrd:  initrd,
		Release: release,
		Modules: strings.Fields(string(order)),
	}, nil
}

// lockDir takes an exclusive flock on dir/lock, blocking until the process
// holding it (another test binary building the same cache) is done.
func lockDir(dir string) (unlock func(), err error) {
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("guest: lock cache: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("guest: lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil // closing releases the flock
}

// ensureKernel returns the cached kernel directory (vmlinuz and
// modules/{order,*.ko}), fetching and unpacking the package when the cache
// has none. The cache keeps the first kernel it got until it is removed.
func ensureKernel(ctx context.Context, cacheDir string) (dir, release string, err error) {
	current := filepath.Join(cacheDir, "kernel")
	if b, err := os.ReadFile(current); err == nil {
		release = strings.TrimSpace(string(b))
		dir = filepath.Join(cacheDir, "kernel-"+release)
		if b, err := os.ReadFile(filepath.Join(dir, "modules", "set")); err == nil && string(b) == moduleSet() {
			return dir, release, nil
		}
	}
	pkg, err := kernelPackage(ctx)
	if err != nil {
		return "", "", err
	}
	tmp, err := os.MkdirTemp(cacheDir, "tmp-kernel-")
	if err != nil {
		return "", "", fmt.Errorf("guest: fetch kernel: %w", err)
	}
	defer os.RemoveAll(tmp)
	if _, err := run(ctx, tmp, "apt-get", "download", pkg); err != nil {
		if os.Geteuid() != 0 {
			return "", "", err
		}
		// The package lists may be older than the mirror: update, retry.
		if uerr := aptGetUpdate(ctx); uerr != nil {
			return "", "", errors.Join(err, uerr)
		}
		if _, err := run(ctx, tmp, "apt-get", "download", pkg); err != nil {
			return "", "", err
		}
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return "", "", fmt.Errorf("guest: apt-get download %s left %d .deb files in %s", pkg, len(debs), tmp)
	}
	root := filepath.Join(tmp, "root")
	if _, err := run(ctx, tmp, "dpkg-deb", "-x", debs[0], root); err != nil {
		return "", "", err
	}
	kernels, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		return "", "", fmt.Errorf("guest: %s has %d kernels in /boot, want 1", pkg, len(kernels))
	}
	release = strings.TrimPrefix(filepath.Base(kernels[0]), "vmlinuz-")
	stage := filepath.Join(tmp, "kernel")
	if err := os.MkdirAll(filepath.Join(stage, "modules"), 0o755); err != nil {
		return "", "", fmt.Errorf("guest: stage kernel: %w", err)
	}
	if err := os.Rename(kernels[0], filepath.Join(stage, "vmlinuz")); err != nil {
		return "", "", fmt.Errorf("guest: stage kernel: %w", err)
	}
	if err := stageModules(ctx, filepath.Join(root, "lib", "modules", release), filepath.Join(stage, "modules")); err != nil {
		return "", "", fmt.Errorf("guest: modules of %s: %w", pkg, err)
	}
	dir = filepath.Join(cacheDir, "kernel-"+release)
	os.RemoveAll(dir) // an earlier copy without its pointer file
	if err := os.Rename(stage, dir); err != nil {
		return "", "", fmt.Errorf("guest: publish kernel: %w", err)
	}
	if err := writeFileAtomic(current, []byte(release+"\n")); err != nil {
		return "", "", err
	}
	return dir, release, nil
}

// kernelPackage asks apt which package the cloud kernel meta-package
// depends on now, running apt-get update once (as root) when apt does not
// know it yet.
func kernelPackage(ctx context.Context) (string, error) {
	resolve := func() (string, error) {
		out, err := run(ctx, "", "apt-cache", "depends", KernelMeta)
		if err != nil {
			return "", err
		}
		for line := range strings.Lines(out) {
			dep, ok := strings.CutPrefix(strings.TrimSpace(line), "Depends: ")
			if ok && strings.HasPrefix(dep, "linux-image-") {
				return dep, nil
			}
		}
		return "", fmt.Errorf("guest: apt-cache depends %s names no linux-image package:\n%s", KernelMeta, out)
	}
	pkg, err := resolve()
	if err == nil || os.Geteuid() != 0 {
		return pkg, err
	}
	if err := aptGetUpdate(ctx); err != nil {
		return "", err
	}
	return resolve()
}

var (
	aptMu      sync.Mutex
	aptUpdated bool
)

// aptGetUpdate runs apt-get update, once per process.
func aptGetUpdate(ctx context.Context) error {
	aptMu.Lock()
	defer aptMu.Unlock()
	if aptUpdated {
		return nil
	}
	if _, err := run(ctx, "", "apt-get", "update"); err != nil {
		return err
	}
	aptUpdated = true
	return nil
}

// stageModules copies rootModules and their dependencies, uncompressed,
// from the kernel's module tree into dst, and writes dst/order with their
// file names in load order.
func stageModules(ctx context.Context, tree, dst string) error {
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(tree, "modules.builtin")); err == nil {
		for p := range strings.FieldsSeq(string(b)) {
			builtin[moduleName(p)] = true
		}
	}
	files := map[string]string{}
	err := filepath.WalkDir(filepath.Join(tree, "kernel"), func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && moduleName(path) != "" {
			files[moduleName(path)] = path
		}
		return err
	})
	if err != nil {
		return err
	}
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, from []string) error
	visit = func(name string, from []string) error {
		switch {
		case state[name] == 2 || builtin[name]:
			return nil
		case state[name] == 1:
			return fmt.Errorf("dependency cycle %s -> %s", strings.Join(from, " -> "), name)
		}
		state[name] = 1
		path, ok := files[name]
		if !ok {
			return fmt.Errorf("module %s (needed by %v) is neither in %s nor built in", name, from, tree)
		}
		ko, err := readModule(ctx, path)
		if err != nil {
			return err
		}
		deps, err := moduleDepends(ko)
		if err != nil {
			return fmt.Errorf("module %s: %w", path, err)
		}
		for _, dep := range deps {
			if err := visit(dep, append(from, name)); err != nil {
				return err
			}
		}
		if err := os.WriteFile(filepath.Join(dst, name+".ko"), ko, 0o644); err != nil {
			return err
		}
		order = append(order, name+".ko")
		state[name] = 2
		return nil
	}
	for _, m := range rootModules {
		if err := visit(m, nil); err != nil {
			return err
		}
	}
	for _, m := range optionalModules {
		if _, ok := files[m]; !ok {
			continue // built in, or not in this kernel
		}
		if err := visit(m, nil); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dst, "order"), []byte(strings.Join(order, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dst, "set"), []byte(moduleSet()), 0o644)
}

// moduleName is the kernel's name for a module file ("virtio-rng.ko.xz" is
// virtio_rng), or "" for other files.
func moduleName(path string) string {
	base := filepath.Base(path)
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if name, ok := strings.CutSuffix(base, ext); ok {
			return strings.ReplaceAll(name, "-", "_")
		}
	}
	return ""
}

// readModule returns a module file's bytes, decompressed with Debian's own
// tools (no xz decoder is among the module's dependencies; bookworm ships
// plain .ko files, later releases compress them).
func readModule(ctx context.Context, path string) ([]byte, error) {
	var tool string
	switch filepath.Ext(path) {
	case ".ko":
		return os.ReadFile(path)
	case ".xz":
		tool = "xz"
	case ".zst":
		tool = "zstd"
	case ".gz":
		tool = "gzip"
	}
	if _, err := exec.LookPath(tool); err != nil {
		return nil, fmt.Errorf("decompress %s: %w (install Debian's %s package)", path, err, map[string]string{"xz": "xz-utils", "zstd": "zstd", "gzip": "gzip"}[tool])
	}
	out, err := run(ctx, "", tool, "-dc", path)
	return []byte(out), err
}

// moduleDepends reads the depends= entry of a module's .modinfo section.
func moduleDepends(ko []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, fmt.Errorf("parse ELF: %w", err)
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, errors.New("no .modinfo section")
	}
	info, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo: %w", err)
	}
	for kv := range bytes.SplitSeq(info, []byte{0}) {
		if deps, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			return strings.FieldsFunc(string(deps), func(r rune) bool { return r == ',' }), nil
		}
	}
	return nil, nil
}

// buildInit builds the /init program (static, stripped, reproducible) and
// returns its bytes; the Go build cache makes this cheap when nothing
// changed.
func buildInit(ctx context.Context, cacheDir string) ([]byte, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out, err := os.CreateTemp(cacheDir, "tmp-init-")
	if err != nil {
		return nil, fmt.Errorf("guest: build init: %w", err)
	}
	out.Close()
	defer os.Remove(out.Name())
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", out.Name(), initPackage)
	cmd.Dir = sourceDir()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("guest: go build %s (in %q): %w\n%s", initPackage, cmd.Dir, err, b)
	}
	bin, err := os.ReadFile(out.Name())
	if err != nil {
		return nil, fmt.Errorf("guest: build init: %w", err)
	}
	return bin, nil
}

// sourceDir is this package's source directory when the binary was built
// from a checkout (tests are), else "" (the current directory, which must
// then be inside the module).
func sourceDir() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok || !filepath.IsAbs(file) {
		return ""
	}
	if _, err := os.Stat(file); err != nil {
		return ""
	}
	return filepath.Dir(file)
}

// ensureInitrd writes the initramfs for this /init and these modules,
// named by a hash of its content, unless it is already there.
func ensureInitrd(cacheDir, kdir string, initBin []byte) (string, error) {
	modDir := filepath.Join(kdir, "modules")
	order, err := os.ReadFile(filepath.Join(modDir, "order"))
	if err != nil {
		return "", fmt.Errorf("guest: initramfs: %w", err)
	}
	names := strings.Fields(string(order))
	mods := make([][]byte, len(names))
	h := sha256.New()
	h.Write(initBin)
	h.Write(order)
	for i, name := range names {
		if mods[i], err = os.ReadFile(filepath.Join(modDir, name)); err != nil {
			return "", fmt.Errorf("guest: initramfs: %w", err)
		}
		h.Write(mods[i])
	}
	path := filepath.Join(cacheDir, "initrd-"+hex.EncodeToString(h.Sum(nil))[:16]+".cpio")
	if _, err := os.Stat(path); err == nil {
		now := time.Now()
		os.Chtimes(path, now, now) // in use: not stale
		return path, nil
	}
	var buf bytes.Buffer
	c := newCpio(&buf)
	for _, d := range []string{"dev", "proc", "sys", "modules"} {
		c.Dir(d)
	}
	c.CharDev("dev/console", 0o600, 5, 1)
	c.File("init", 0o755, initBin)
	c.File("modules/order", 0o644, order)
	for i, name := range names {
		c.File("modules/"+name, 0o644, mods[i])
	}
	if err := c.Close(); err != nil {
		return "", err
	}
	if err := writeFileAtomic(path, buf.Bytes()); err != nil {
		return "", err
	}
	removeStale(cacheDir, "initrd-*.cpio", staleAfter)
	return path, nil
}

// staleAfter is how long an initramfs no build asked for stays in the
// cache: long enough for any test process that built it to boot it.
const staleAfter = 24 * time.Hour

// removeStale removes files matching pattern in dir not modified for age;
// a failure only leaves a stale file behind.
func removeStale(dir, pattern string, age time.Duration) {
	old, _ := filepath.Glob(filepath.Join(dir, pattern))
	for _, p := range old {
		if fi, err := os.Stat(p); err == nil && time.Since(fi.ModTime()) > age {
			os.Remove(p)
		}
	}
}

// writeFileAtomic writes path through a synced temporary file renamed over
// it, then syncs the directory.
func writeFileAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".tmp-"+filepath.Base(path))
	if err != nil {
		return fmt.Errorf("guest: write %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	w := bufio.NewWriter(f)
	err = f.Chmod(0o644)
	if err == nil {
		_, err = w.Write(data)
	}
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("guest: write %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("guest: sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("guest: sync %s: %w", dir, err)
	}
	return nil
}

// run runs a command in dir and returns its standard output; the error
// carries the command line and the tail of its output.
func run(ctx context.Context, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("guest: %s %s: %w\n%s", name, strings.Join(args, " "), err, tail(stderr.String(), 20))
	}
	return stdout.String(), nil
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d lines before)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
