//go:build linux

// Command init is the test guest's /init: a static program the kernel runs
// from the initramfs package guest builds. It mounts /proc, /sys and /dev,
// loads the virtio modules listed in /modules/order, finds the disks by
// their virtio serial (qcdp0, qcdp1, ...), runs the workload the kernel
// command line describes (package workload) with O_DIRECT writes, reports
// over the serial console and powers off.
//
// It never returns: on any error it prints QCDP-ERROR and powers off, so the
// host sees QEMU exit instead of a hung guest.
package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/qcdp/qcdp/integration/guest/workload"
)

const (
	modulesDir   = "/modules"
	diskWaitMax  = 20 * time.Second
	serialPrefix = "qcdp"
)

// console is where every QCDP- line goes; stderr until the serial port is
// open.
var console = os.Stderr

func main() {
	defer func() {
		if r := recover(); r != nil {
			fail(fmt.Errorf("panic: %v", r))
		}
	}()
	if err := run(); err != nil {
		fail(err)
	}
	powerOff()
}

func run() error {
	if err := mountAll(); err != nil {
		return err
	}
	con, err := openConsole()
	if err != nil {
		return err
	}
	console = con
	cmds := make(chan string, 4)
	go readCommands(con, cmds) // ends with the guest: powerOff never returns

	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("read /proc/cmdline: %w", err)
	}
	p, ok, err := workload.ParseCmdline(string(cmdline))
	if err != nil {
		return err
	}
	if err := loadModules(modulesDir); err != nil {
		return err
	}
	watchPowerButton(cmds)
	if !ok {
		report("QCDP-READY disks=0 t=%d", monotonic())
		return waitFor(cmds, "poweroff")
	}
	disks, err := openDisks(p)
	if err != nil {
		return err
	}
	report("QCDP-READY disks=%d t=%d", len(disks), monotonic())
	if verifyMode(string(cmdline)) {
		return standby(p, disks, cmds)
	}
	stop, err := write(p, disks, cmds)
	if err != nil {
		return err
	}
	if stop == "poweroff" || (stop == "" && !p.Hold) {
		return nil
	}
	return waitFor(cmds, "poweroff")
}

func mountAll() error {
	for _, m := range []struct{ src, dir, fstype string }{
		{"proc", "/proc", "proc"},
		{"sysfs", "/sys", "sysfs"},
		{"devtmpfs", "/dev", "devtmpfs"},
	} {
		if err := os.MkdirAll(m.dir, 0o755); err != nil {
			return fmt.Errorf("mkdir %s: %w", m.dir, err)
		}
		if err := unix.Mount(m.src, m.dir, m.fstype, unix.MS_NOSUID|unix.MS_NOEXEC, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.dir, err)
		}
	}
	return nil
}

// openConsole opens the first serial port without echo, so what the host
// sends does not come back as output.
func openConsole() (*os.File, error) {
	var errs []error
	for _, path := range []string{"/dev/ttyS0", "/dev/console"} {
		f, err := os.OpenFile(path, os.O_RDWR|unix.O_NOCTTY, 0)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if t, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err == nil {
			t.Lflag &^= unix.ECHO | unix.ECHONL
			unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, t) // best effort: echo only adds noise
		}
		return f, nil
	}
	return nil, fmt.Errorf("open console: %w", errors.Join(errs...))
}

// readCommands sends each line the host types on the console to cmds.
func readCommands(con *os.File, cmds chan<- string) {
	sc := bufio.NewScanner(con)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			cmds <- line
		}
	}
}

func waitFor(cmds <-chan string, want string) error {
	for c := range cmds {
		if c == want {
			return nil
		}
	}
	return fmt.Errorf("console closed while waiting for %q", want)
}

// loadModules loads the modules dir/order lists, in that order.
func loadModules(dir string) error {
	order, err := os.ReadFile(filepath.Join(dir, "order"))
	if err != nil {
		return fmt.Errorf("read module order: %w", err)
	}
	for name := range strings.FieldsSeq(string(order)) {
		path := filepath.Join(dir, name)
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("load module: %w", err)
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("load module %s: finit_module: %w", path, err)
		}
	}
	return nil
}

// disk is one opened disk of the workload.
type disk struct {
	name  string
	fd    int
	dirty bool
}

// openDisks waits for the disks with serial qcdp0..qcdp<Disks-1> and opens
// them for O_DIRECT writes, in index order.
func openDisks(p workload.Params) ([]*disk, error) {
	names, err := waitDisks(p.Disks)
	if err != nil {
		return nil, err
	}
	disks := make([]*disk, p.Disks)
	for i, name := range names {
		path := "/dev/" + name
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open %s (%s%d): %w", path, serialPrefix, i, err)
		}
		size, err := unix.Seek(fd, 0, 2)
		if err != nil {
			return nil, fmt.Errorf("size of %s: %w", path, err)
		}
		if size < p.AreaBytes() {
			return nil, fmt.Errorf("%s (%s%d) has %d bytes, the workload writes %d", path, serialPrefix, i, size, p.AreaBytes())
		}
		disks[i] = &disk{name: name, fd: fd}
	}
	return disks, nil
}

// waitDisks polls /sys/block with a bounded backoff (the kernel announces
// new disks to no one here: there is no udev) until n disks with serial
// qcdp0..qcdp<n-1> are there, and returns their names in index order.
func waitDisks(n int) ([]string, error) {
	deadline := time.Now().Add(diskWaitMax)
	delay := time.Millisecond
	for {
		names, seen := scanDisks(n)
		if len(seen) == n {
			return names, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("waited %v for %d disks with serial %s0..: found %v", diskWaitMax, n, serialPrefix, seen)
		}
		time.Sleep(delay)
		delay = min(2*delay, 50*time.Millisecond)
	}
}

func scanDisks(n int) (names []string, seen map[string]string) {
	names = make([]string, n)
	seen = map[string]string{}
	entries, _ := os.ReadDir("/sys/block")
	for _, e := range entries {
		serial, err := os.ReadFile(filepath.Join("/sys/block", e.Name(), "serial"))
		if err != nil {
			continue
		}
		var idx int
		s := strings.TrimSpace(string(serial))
		if _, err := fmt.Sscanf(s, serialPrefix+"%d", &idx); err != nil || idx < 0 || idx >= n {
			continue
		}
		names[idx] = e.Name()
		seen[s] = e.Name()
	}
	return names, seen
}

// write runs the workload. It returns the command that stopped it early
// ("stop" or "poweroff"), or "" when it ran all its writes.
func write(p workload.Params, disks []*disk, cmds <-chan string) (string, error) {
	buf, err := unix.Mmap(-1, 0, workload.BlockSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return "", fmt.Errorf("allocate aligned buffer: %w", err)
	}
	pl := workload.NewPlan(p)
	start := time.Now()
	var seq uint64
	var maxWrite, maxSync time.Duration // the longest the host held one write, one sync
	stop := ""
	for p.Writes == 0 || seq < p.Writes {
		if stop = pace(p.Rate, start, seq, cmds); stop != "" {
			break
		}
		w := pl.Next()
		d := disks[w.Disk]
		workload.Encode(buf, w.Header(p.Seed))
		t0 := time.Now()
		n, err := unix.Pwrite(d.fd, buf, int64(w.Block)*workload.BlockSize)
		maxWrite = max(maxWrite, time.Since(t0))
		if err == nil && n != len(buf) {
			err = fmt.Errorf("short write of %d bytes", n)
		}
		if err != nil {
			return "", fmt.Errorf("write seq %d to %s block %d: %w", w.Seq, d.name, w.Block, err)
		}
		d.dirty = true
		seq = w.Seq
		if p.SyncEvery != 0 && seq%p.SyncEvery == 0 {
			t0 := time.Now()
			if err := syncAll(disks, seq); err != nil {
				return "", err
			}
			maxSync = max(maxSync, time.Since(t0))
			report("QCDP-SYNCED seq=%d t=%d", seq, monotonic())
		}
	}
	if err := syncAll(disks, seq); err != nil {
		return "", err
	}
	report("QCDP-DONE seq=%d t=%d maxwrite=%d maxsync=%d", seq, monotonic(), maxWrite, maxSync)
	return stop, nil
}

// pace waits until write seq+1 may start under rate (writes per second, 0
// for no limit) and returns a stop command that arrived meanwhile, if any.
func pace(rate uint64, start time.Time, seq uint64, cmds <-chan string) string {
	var wait <-chan time.Time
	if rate != 0 {
		if d := time.Until(start.Add(time.Duration(seq * uint64(time.Second) / rate))); d > 0 {
			t := time.NewTimer(d)
			defer t.Stop()
			wait = t.C
		}
	}
	if wait == nil {
		select {
		case c := <-cmds:
			return stopCommand(c)
		default:
			return ""
		}
	}
	for {
		select {
		case c := <-cmds:
			if s := stopCommand(c); s != "" {
				return s
			}
		case <-wait:
			return ""
		}
	}
}

// stopCommand returns c when it stops the workload, else "".
func stopCommand(c string) string {
	if c == "stop" || c == "poweroff" {
		return c
	}
	report("QCDP-ERROR unknown command %q", c)
	return ""
}

func syncAll(disks []*disk, seq uint64) error {
	for _, d := range disks {
		if !d.dirty {
			continue
		}
		if err := unix.Fdatasync(d.fd); err != nil {
			return fmt.Errorf("fdatasync %s after seq %d: %w", d.name, seq, err)
		}
		d.dirty = false
	}
	return nil
}

func report(format string, args ...any) {
	fmt.Fprintf(console, format+"\n", args...)
}

func monotonic() int64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

func fail(err error) {
	report("QCDP-ERROR %s", strings.ReplaceAll(err.Error(), "\n", " | "))
	powerOff()
}

func powerOff() {
	unix.Sync()
	for {
		if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
			report("QCDP-ERROR power off: %v", err)
		}
		time.Sleep(time.Second)
	}
}
