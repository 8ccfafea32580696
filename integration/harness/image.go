package harness

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// run runs a tool and returns its combined output; the error carries the
// command line and output.
func run(ctx context.Context, argv ...string) (string, error) {
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("harness: %s: %w\n%s", strings.Join(argv, " "), err, tail(string(out), 20))
	}
	return string(out), nil
}

// CreateImage creates an image of size bytes with qemu-img, fully
// preallocated (metadata for qcow2, so QEMU's writes later change no
// allocation).
func CreateImage(ctx context.Context, path, format string, size int64) error {
	prealloc := "preallocation=full"
	if format == "qcow2" {
		prealloc = "preallocation=metadata"
	}
	_, err := run(ctx, "qemu-img", "create", "-q", "-f", format, "-o", prealloc, path, fmt.Sprint(size))
	return err
}

// QemuIO runs qemu-io commands on an image that no process has open.
func QemuIO(ctx context.Context, path, format string, cmds ...string) error {
	argv := []string{"qemu-io", "-f", format}
	for _, c := range cmds {
		argv = append(argv, "-c", c)
	}
	out, err := run(ctx, append(argv, path)...)
	if err != nil {
		return err
	}
	if strings.Contains(out, "failed") {
		return fmt.Errorf("harness: qemu-io %s: %s", path, tail(out, 10))
	}
	return nil
}

// FillPattern writes a different byte pattern into every chunk of an
// image: chunk i holds byte base+i (mod 256, never 0).
func FillPattern(ctx context.Context, path, format string, size, chunk int64, base byte) error {
	var cmds []string
	for i, off := int64(0), int64(0); off < size; i, off = i+1, off+chunk {
		b := byte(int64(base)+i) | 1
		cmds = append(cmds, fmt.Sprintf("write -P 0x%02x %d %d", b, off, min(chunk, size-off)))
	}
	return QemuIO(ctx, path, format, cmds...)
}

// ErrDiffer is returned by Compare when the images differ.
var ErrDiffer = errors.New("harness: images differ")

// Compare runs `qemu-img compare -U`: nil if the images are identical,
// ErrDiffer wrapped with qemu-img's words if they differ.
func Compare(ctx context.Context, a, aFormat, b, bFormat string) error {
	argv := []string{"qemu-img", "compare", "-U", "-f", aFormat, "-F", bFormat, a, b}
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ee) && ee.ExitCode() == 1:
		return fmt.Errorf("%w: %s vs %s: %s", ErrDiffer, a, b, strings.TrimSpace(string(out)))
	default:
		return fmt.Errorf("harness: %s: %w\n%s", strings.Join(argv, " "), err, out)
	}
}

// ImageInfo is what ReadImageInfo reports.
type ImageInfo struct {
	Format      string `json:"format"`
	VirtualSize int64  `json:"virtual-size"`
	ActualSize  int64  `json:"actual-size"`
	// BackingFilename is the image's backing file, "" for none.
	BackingFilename string `json:"backing-filename"`
}

// ReadImageInfo runs `qemu-img info -U --output=json`.
func ReadImageInfo(ctx context.Context, path string) (ImageInfo, error) {
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "-U", "--output=json", path).Output()
	if err != nil {
		return ImageInfo{}, fmt.Errorf("harness: qemu-img info %s: %w", path, err)
	}
	var info ImageInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return ImageInfo{}, fmt.Errorf("harness: qemu-img info %s: %w", path, err)
	}
	return info, nil
}

// Convert copies an image with `qemu-img convert -U` (the source may be
// open in QEMU: flush it first).
func Convert(ctx context.Context, src, srcFormat, dst, dstFormat string) error {
	_, err := run(ctx, "qemu-img", "convert", "-U", "-f", srcFormat, "-O", dstFormat, src, dst)
	return err
}
