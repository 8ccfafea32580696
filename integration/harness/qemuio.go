package harness

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrQemuIO is returned when a qemu-io command run through HMP failed.
var ErrQemuIO = errors.New("harness: qemu-io failed")

// onStdout receives QEMU's stdout line by line and keeps qemu-io's result
// lines: the success line of a read or write, or the line saying it failed.
func (q *QEMU) onStdout(line string) {
	switch {
	case strings.HasPrefix(line, "wrote "), strings.HasPrefix(line, "read "),
		strings.Contains(line, "failed"), strings.Contains(line, "not found"):
	default:
		return // the statistics line after a success, and QEMU's own output
	}
	select {
	case q.ioResults <- line:
	default: // nobody runs qemu-io: drop
	}
}

// QemuIO runs `qemu-io NODE "CMD"` through human-monitor-command. QEMU 7.2
// returns only HMP's own errors ("Error: Cannot find device...") as the
// command's text; qemu-io prints its result on QEMU's stdout, before the
// HMP reply. QemuIO requires an empty text and a success line for the
// read or write ("read ..." or "wrote ...").
func (q *QEMU) QemuIO(ctx context.Context, node, cmd string) error {
	fields := strings.Fields(cmd)
	if len(fields) == 0 || strings.ContainsAny(cmd, `"\`) {
		return fmt.Errorf("harness: qemu-io command %q: want one command without quotes or backslashes", cmd)
	}
	want := map[string]string{"write": "wrote ", "writev": "wrote ", "read": "read ", "readv": "read "}[fields[0]]
	if want == "" {
		return fmt.Errorf("harness: qemu-io command %q: only read and write report a result line", cmd)
	}
	q.ioMu.Lock()
	defer q.ioMu.Unlock()
	for len(q.ioResults) > 0 { // late lines of an earlier command that timed out
		<-q.ioResults
	}
	out, err := q.QMP.HumanMonitorCommand(ctx, fmt.Sprintf(`qemu-io %s "%s"`, node, cmd))
	if err != nil {
		return fmt.Errorf("harness: qemu-io %s %q: %w", node, cmd, err)
	}
	if strings.TrimSpace(out) != "" {
		return fmt.Errorf("%w: qemu-io %s %q: HMP said %q", ErrQemuIO, node, cmd, strings.TrimSpace(out))
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	select {
	case line := <-q.ioResults:
		if !strings.HasPrefix(line, want) {
			return fmt.Errorf("%w: qemu-io %s %q printed %q", ErrQemuIO, node, cmd, line)
		}
		return nil
	case <-q.Exited():
		return fmt.Errorf("%w: qemu-io %s %q: QEMU exited: %v", ErrQemuIO, node, cmd, q.ExitErr())
	case <-ctx.Done():
		return fmt.Errorf("%w: qemu-io %s %q: no result line on QEMU's stdout (%s): %v", ErrQemuIO, node, cmd, q.LogPath, ctx.Err())
	}
}

// Flush runs `qemu-io NODE "flush"`, so the image file holds what QEMU
// wrote to the node. qemu-io prints nothing for a flush; only HMP's own
// errors are seen.
func (q *QEMU) Flush(ctx context.Context, node string) error {
	q.ioMu.Lock()
	defer q.ioMu.Unlock()
	out, err := q.QMP.HumanMonitorCommand(ctx, fmt.Sprintf(`qemu-io %s "flush"`, node))
	if err != nil {
		return fmt.Errorf("harness: flush %s: %w", node, err)
	}
	if strings.TrimSpace(out) != "" {
		return fmt.Errorf("%w: flush %s: HMP said %q", ErrQemuIO, node, strings.TrimSpace(out))
	}
	return nil
}
