package proc

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

var (
	// ErrNoProcess is returned for a PID no process has now.
	ErrNoProcess = errors.New("proc: no such process")
	// ErrNoCred is returned by PeerOf for a connection that is not a unix
	// socket, or whose peer the kernel does not know.
	ErrNoCred = errors.New("proc: no peer credentials")
	// ErrFormat is returned when a /proc file does not read as documented
	// in proc(5).
	ErrFormat = errors.New("proc: unexpected format")
)

// Process is one process of this host: its PID and its start time. The
// zero Process is no process.
type Process struct {
	PID   int
	Start uint64 // clock ticks after boot, /proc/PID/stat field 22
}

func (p Process) String() string { return fmt.Sprintf("pid %d (start %d)", p.PID, p.Start) }

// Lookup returns the process that has pid now.
func Lookup(pid int) (Process, error) {
	if pid <= 0 {
		return Process{}, fmt.Errorf("%w: pid %d", ErrNoProcess, pid)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return Process{}, fmt.Errorf("%w: pid %d", ErrNoProcess, pid)
	}
	if err != nil {
		return Process{}, fmt.Errorf("proc: pid %d: %w", pid, err)
	}
	start, err := parseStat(b)
	if err != nil {
		return Process{}, fmt.Errorf("proc: /proc/%d/stat: %w", pid, err)
	}
	return Process{PID: pid, Start: start}, nil
}

// Alive reports whether p still runs: its PID names a process that started
// when p did.
func (p Process) Alive() bool {
	now, err := Lookup(p.PID)
	return err == nil && now == p
}

// parseStat returns the start time (field 22) of a /proc/PID/stat line.
// Field 2, the command name in parentheses, may hold spaces and ')': the
// fields after it start after the line's last ')'.
func parseStat(b []byte) (uint64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("%w: no command name", ErrFormat)
	}
	// After ')': field 3 (state) onwards; field 22 is the 20th of them.
	fields := bytes.Fields(b[i+1:])
	const startField = 22 - 3
	if len(fields) <= startField {
		return 0, fmt.Errorf("%w: %d fields after the command name, want more than %d", ErrFormat, len(fields), startField)
	}
	start, err := strconv.ParseUint(string(fields[startField]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: start time %q", ErrFormat, fields[startField])
	}
	return start, nil
}

// ThreadGroup returns the PID of the process thread tid belongs to (its
// thread group id, "Tgid:" in /proc/TID/status).
func ThreadGroup(tid int) (int, error) {
	if tid <= 0 {
		return 0, fmt.Errorf("%w: thread %d", ErrNoProcess, tid)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/status")
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return 0, fmt.Errorf("%w: thread %d", ErrNoProcess, tid)
	}
	if err != nil {
		return 0, fmt.Errorf("proc: thread %d: %w", tid, err)
	}
	tgid, err := parseTgid(b)
	if err != nil {
		return 0, fmt.Errorf("proc: /proc/%d/status: %w", tid, err)
	}
	return tgid, nil
}

// parseTgid returns the value of the "Tgid:" line of a /proc/PID/status.
func parseTgid(b []byte) (int, error) {
	for line := range bytes.Lines(b) {
		v, ok := bytes.CutPrefix(line, []byte("Tgid:"))
		if !ok {
			continue
		}
		tgid, err := strconv.Atoi(string(bytes.TrimSpace(v)))
		if err != nil || tgid <= 0 {
			return 0, fmt.Errorf("%w: Tgid %q", ErrFormat, bytes.TrimSpace(v))
		}
		return tgid, nil
	}
	return 0, fmt.Errorf("%w: no Tgid line", ErrFormat)
}

// Cred is a process at the end of a unix socket and the user and group it
// ran as when the connection was made.
type Cred struct {
	Process
	UID, GID uint32
}

// PeerOf returns who is at the other end of c, a unix socket connection:
// the process the kernel recorded (SO_PEERCRED; for a connection that was
// accepted, the process that connected) with its start time read now.
func PeerOf(c net.Conn) (Cred, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Cred{}, fmt.Errorf("%w: %T is not a unix socket", ErrNoCred, c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Cred{}, fmt.Errorf("proc: peer of unix socket: %w", err)
	}
	var ucred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		ucred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Cred{}, fmt.Errorf("proc: peer of unix socket: %w", err)
	}
	if serr != nil {
		return Cred{}, fmt.Errorf("%w: SO_PEERCRED: %w", ErrNoCred, serr)
	}
	if ucred.Pid <= 0 {
		// A peer in a PID namespace this one cannot see, or a socketpair
		// end whose creator is unknown.
		return Cred{}, fmt.Errorf("%w: the kernel gives pid %d", ErrNoCred, ucred.Pid)
	}
	p, err := Lookup(int(ucred.Pid))
	if err != nil {
		return Cred{}, err
	}
	return Cred{Process: p, UID: ucred.Uid, GID: ucred.Gid}, nil
}
