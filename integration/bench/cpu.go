package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// cpuUse is the CPU time (user + system) a run took, by process. The
// client's is measured only when it is a process of its own (qemu-img).
type cpuUse struct {
	client, qsd, target time.Duration
}

// clockTick is the unit of /proc's CPU times (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// procCPU returns the CPU time of process pid and all its threads so far;
// pid 0 is this process.
func procCPU(pid int) (time.Duration, error) {
	if pid == 0 {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			return 0, fmt.Errorf("getrusage: %w", err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
	}
	path := fmt.Sprintf("/proc/%d/stat", pid)
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("cpu time of pid %d: %w", pid, err)
	}
	// The command name, in parentheses, may hold spaces: fields count
	// from the last ')'. utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("cpu time of pid %d: no command name in %s", pid, path)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("cpu time of pid %d: short %s", pid, path)
	}
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("cpu time of pid %d: %s: %w", pid, path, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * clockTick, nil
}

// cpuMeter measures a run's CPU time in a storage daemon and its mirror's
// target server (pid 0: this process, -1: none).
type cpuMeter struct {
	qsdPID, targetPID int
	qsd, target       time.Duration
}

func (m *cpuMeter) begin() error {
	var err error
	if m.qsd, err = procCPU(m.qsdPID); err != nil {
		return err
	}
	if m.targetPID >= 0 {
		if m.target, err = procCPU(m.targetPID); err != nil {
			return err
		}
	}
	return nil
}

// end fills u with what the run took since begin.
func (m *cpuMeter) end(u *cpuUse) error {
	q, err := procCPU(m.qsdPID)
	if err != nil {
		return err
	}
	u.qsd = q - m.qsd
	if m.targetPID >= 0 {
		t, err := procCPU(m.targetPID)
		if err != nil {
			return err
		}
		u.target = t - m.target
	}
	return nil
}
