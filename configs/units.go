package configs

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// sizeUnits are binary, as qemu-img and libvirt read them: "8G" is 8 GiB.
var sizeUnits = []struct {
	suffix string
	shift  uint
}{{"P", 50}, {"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}}

// parseSize reads a byte count: digits, optionally followed by K, M, G, T or
// P (any case, optionally with "iB"), each a power of 1024.
func parseSize(s string) (int64, error) {
	num, shift := s, uint(0)
	upper := strings.ToUpper(s)
	for _, u := range sizeUnits {
		if rest, ok := strings.CutSuffix(upper, u.suffix+"IB"); ok {
			num, shift = s[:len(rest)], u.shift
			break
		}
		if rest, ok := strings.CutSuffix(upper, u.suffix); ok {
			num, shift = s[:len(rest)], u.shift
			break
		}
	}
	if num == "" || strings.TrimLeft(num, "0123456789") != "" {
		return 0, fmt.Errorf("size %q: write a whole number with an optional binary suffix: \"4096\", \"512K\", \"64M\", \"8G\", \"1T\"", s)
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n << shift, nil
}

// formatSize writes n in the largest unit that divides it exactly, so that
// parseSize(formatSize(n)) == n.
func formatSize(n int64) string {
	for _, u := range sizeUnits {
		if n != 0 && n%(1<<u.shift) == 0 {
			return strconv.FormatInt(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}
