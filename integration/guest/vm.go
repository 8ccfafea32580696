package guest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qcdp/qcdp/integration/guest/workload"
)

// qboot is a minimal firmware (Debian's qemu-system-data) that boots a
// -kernel under TCG seconds sooner than SeaBIOS; QEMU's default is used
// when it is missing.
const qboot = "/usr/share/qemu/qboot.rom"

// Disk is one virtio-blk disk of the guest. The guest finds disk i by its
// virtio serial qcdp<i>; it is workload disk i.
type Disk struct {
	Path     string
	Format   string // "raw" or "qcow2"; "" is raw
	NodeName string // the format node; "" is disk<i>. Its file node is NodeName+"-file".
}

// Options say how to boot the guest.
type Options struct {
	// Workload is the guest's job; nil boots an idle guest that waits
	// for "poweroff". Its Disks must equal len(Disks).
	Workload *workload.Params
	Disks    []Disk
	// Dir holds the QMP socket and the logs unless they are given; Start
	// needs it, Boot makes one.
	Dir       string
	QMPSocket string // "" is Dir/qmp.sock
	SerialLog string // "" is Dir/serial.log
	QEMULog   string // QEMU's stderr; "" is Dir/qemu.log
	MemoryMB  int    // 0 is 256
	Machine   string // "" is q35
	Cmdline   string // appended to the kernel command line
	ExtraArgs []string
}

// VM is a running guest: a qemu-system-x86_64 process this package
// started, its console and its QMP socket.
type VM struct {
	Serial    *Serial
	QMPSocket string
	QEMULog   string
	Started   time.Time // just before QEMU was started
	Argv      []string

	cmd     *exec.Cmd
	stdin   io.WriteCloser
	exited  chan struct{}
	waitErr error // valid once exited is closed
}

// Start starts QEMU (TCG) with the kernel and initramfs of a and the
// disks of opts as -blockdev nodes behind virtio-blk-pci devices. ctx
// bounds the start only; the VM runs until it powers off or Kill.
func Start(ctx context.Context, a *Artifacts, opts Options) (*VM, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("guest: start: %w", err)
	}
	argv, err := qemuArgv(a, &opts)
	if err != nil {
		return nil, err
	}
	qemuLog, err := os.Create(opts.QEMULog)
	if err != nil {
		return nil, fmt.Errorf("guest: start: %w", err)
	}
	defer qemuLog.Close() // QEMU has its own copy
	serialLog, err := os.Create(opts.SerialLog)
	if err != nil {
		return nil, fmt.Errorf("guest: start: %w", err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = qemuLog
	stdin, err := cmd.StdinPipe()
	if err != nil {
		serialLog.Close()
		return nil, fmt.Errorf("guest: start: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		serialLog.Close()
		return nil, fmt.Errorf("guest: start: %w", err)
	}
	vm := &VM{
		Serial:    newSerial(opts.SerialLog),
		QMPSocket: opts.QMPSocket,
		QEMULog:   opts.QEMULog,
		Argv:      argv,
		cmd:       cmd,
		stdin:     stdin,
		exited:    make(chan struct{}),
	}
	vm.Started = time.Now()
	if err := cmd.Start(); err != nil {
		serialLog.Close()
		return nil, fmt.Errorf("guest: start %s: %w", argv[0], err)
	}
	go func() {
		// The console ends when QEMU exits; only then may Wait reap it.
		serr := vm.Serial.copy(stdout, serialLog)
		serialLog.Close()
		vm.waitErr = errors.Join(cmd.Wait(), serr)
		close(vm.exited)
	}()
	return vm, nil
}

// qemuArgv fills in opts' defaults and returns QEMU's command line.
func qemuArgv(a *Artifacts, opts *Options) ([]string, error) {
	if opts.Workload != nil {
		if err := opts.Workload.Validate(); err != nil {
			return nil, err
		}
		if opts.Workload.Disks != len(opts.Disks) {
			return nil, fmt.Errorf("guest: the workload writes %d disks, %d given", opts.Workload.Disks, len(opts.Disks))
		}
	}
	if len(opts.Disks) > workload.MaxDisks {
		return nil, fmt.Errorf("guest: %d disks, at most %d", len(opts.Disks), workload.MaxDisks)
	}
	if opts.Dir == "" && (opts.QMPSocket == "" || opts.SerialLog == "" || opts.QEMULog == "") {
		return nil, errors.New("guest: Options.Dir is empty")
	}
	setDefault(&opts.QMPSocket, filepath.Join(opts.Dir, "qmp.sock"))
	setDefault(&opts.SerialLog, filepath.Join(opts.Dir, "serial.log"))
	setDefault(&opts.QEMULog, filepath.Join(opts.Dir, "qemu.log"))
	setDefault(&opts.Machine, "q35")
	if opts.MemoryMB == 0 {
		opts.MemoryMB = 256
	}
	if len(opts.QMPSocket) > 107 {
		return nil, fmt.Errorf("guest: QMP socket path %s is longer than a unix socket allows", opts.QMPSocket)
	}
	// cryptomgr.notests skips the crypto self-tests, a second of boot
	// under TCG.
	cmdline := []string{"console=ttyS0", "quiet", "panic=-1", "cryptomgr.notests"}
	if opts.Workload != nil {
		cmdline = append(cmdline, opts.Workload.Cmdline())
	}
	if opts.Cmdline != "" {
		cmdline = append(cmdline, opts.Cmdline)
	}
	argv := []string{
		"qemu-system-x86_64",
		"-accel", "tcg", "-M", opts.Machine, "-m", fmt.Sprint(opts.MemoryMB), "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", a.Kernel, "-initrd", a.Initrd, "-append", strings.Join(cmdline, " "),
		"-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
		"-qmp", "unix:" + opts.QMPSocket + ",server=on,wait=off",
	}
	if _, err := os.Stat(qboot); err == nil {
		argv = append(argv, "-bios", qboot)
	}
	for i := range opts.Disks {
		d := &opts.Disks[i]
		setDefault(&d.Format, "raw")
		setDefault(&d.NodeName, fmt.Sprintf("disk%d", i))
		file, err := json.Marshal(map[string]any{"driver": "file", "filename": d.Path, "node-name": d.NodeName + "-file"})
		if err != nil {
			return nil, fmt.Errorf("guest: disk %d: %w", i, err)
		}
		format, err := json.Marshal(map[string]any{"driver": d.Format, "file": d.NodeName + "-file", "node-name": d.NodeName})
		if err != nil {
			return nil, fmt.Errorf("guest: disk %d: %w", i, err)
		}
		argv = append(argv,
			"-blockdev", string(file), "-blockdev", string(format),
			"-device", fmt.Sprintf("virtio-blk-pci,drive=%s,id=%s-dev,serial=qcdp%d", d.NodeName, d.NodeName, i))
	}
	return append(argv, opts.ExtraArgs...), nil
}

func setDefault(s *string, v string) {
	if *s == "" {
		*s = v
	}
}

// PID is QEMU's process id.
func (vm *VM) PID() int { return vm.cmd.Process.Pid }

// Exited is closed when QEMU has ended.
func (vm *VM) Exited() <-chan struct{} { return vm.exited }

// Send types a command line on the guest's console: "stop" ends the
// workload and keeps the guest up, "poweroff" ends it and powers off.
func (vm *VM) Send(command string) error {
	if _, err := io.WriteString(vm.stdin, command+"\n"); err != nil {
		return fmt.Errorf("guest: send %q to the console of pid %d: %w", command, vm.PID(), err)
	}
	return nil
}

// Wait waits for QEMU to end (the guest powered off) or ctx to end. It
// returns nil when QEMU exited with status 0.
func (vm *VM) Wait(ctx context.Context) error {
	select {
	case <-vm.exited:
		if vm.waitErr != nil {
			return fmt.Errorf("guest: qemu (pid %d): %w (log %s)", vm.PID(), vm.waitErr, vm.QEMULog)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("guest: wait for qemu (pid %d) to exit: %w", vm.PID(), ctx.Err())
	}
}

// PowerOff asks the guest to power off and waits for QEMU to exit.
func (vm *VM) PowerOff(ctx context.Context) error {
	select {
	case <-vm.exited:
	default:
		if err := vm.Send("poweroff"); err != nil {
			return err
		}
	}
	return vm.Wait(ctx)
}

// Kill kills QEMU by PID if it still runs and waits until it is reaped.
func (vm *VM) Kill() {
	select {
	case <-vm.exited:
	default:
		vm.cmd.Process.Signal(syscall.SIGKILL) // fails only when already gone
		<-vm.exited
	}
	vm.stdin.Close()
}

// Report says where QEMU's logs are and how they end.
func (vm *VM) Report() string {
	var b strings.Builder
	fmt.Fprintf(&b, "qemu pid %d: %s\n", vm.PID(), strings.Join(vm.Argv, " "))
	for _, f := range []struct{ what, path string }{{"qemu stderr", vm.QEMULog}, {"console", vm.Serial.LogPath}} {
		out, err := os.ReadFile(f.path)
		if err != nil {
			fmt.Fprintf(&b, "--- %s %s: %v\n", f.what, f.path, err)
			continue
		}
		fmt.Fprintf(&b, "--- %s %s:\n%s\n", f.what, f.path, tail(string(out), 40))
	}
	return b.String()
}

// Boot starts the guest for a test: opts.Dir defaults to a new short
// temporary directory. The cleanup kills QEMU by PID if it still runs and,
// when the test failed, prints its logs (QCDP_KEEP=1 keeps the directory).
func Boot(ctx context.Context, t testing.TB, a *Artifacts, opts Options) *VM {
	t.Helper()
	if opts.Dir == "" {
		dir, err := os.MkdirTemp("", "qcdp-guest-") // short: the QMP socket lives here
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() && os.Getenv("QCDP_KEEP") != "" {
				t.Logf("kept %s (QCDP_KEEP set)", dir)
				return
			}
			os.RemoveAll(dir)
		})
		opts.Dir = dir
	}
	vm, err := Start(ctx, a, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		vm.Kill()
		if t.Failed() {
			t.Log(vm.Report())
		}
	})
	return vm
}
