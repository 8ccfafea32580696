package harness

import (
	"context"
	"fmt"

	"github.com/qcdp/qcdp/qmp"
)

// Mirror is one capture mirror: the source node Disk, written through the
// filter node Filter, copied in write-blocking mode to the NBD node Target
// by the job Job.
type Mirror struct {
	Disk, Filter, Target, Job string

	q      *QEMU
	c      *qmp.Client
	events <-chan qmp.Event
	stop   context.CancelFunc // ends the event subscription
}

// NBDTarget is the blockdev-add options of an NBD client node on a unix
// socket. reconnect-delay 0: a dead server fails the write at once.
func NBDTarget(node, socket, export string) map[string]any {
	return map[string]any{
		"driver":          "nbd",
		"node-name":       node,
		"server":          map[string]any{"type": "unix", "path": socket},
		"export":          export,
		"reconnect-delay": 0,
	}
}

// StartMirror adds the NBD target for disk and starts the write-blocking
// mirror into it, its initial copy limited to speed bytes/s (0: no limit).
// The job's events are watched from before the job starts until Detach.
func StartMirror(ctx context.Context, q *QEMU, disk, socket, export string, speed int64) (*Mirror, error) {
	c := q.QMP
	m := &Mirror{Disk: disk, Filter: "qcdp-f-" + disk, Target: "qcdp-t-" + disk, Job: "qcdp-" + disk, q: q, c: c}
	sub, stop := context.WithCancel(context.WithoutCancel(ctx))
	events, err := c.Subscribe(sub, qmp.EventBlockJobReady, qmp.EventBlockJobError,
		qmp.EventBlockJobCompleted, qmp.EventBlockJobCancelled)
	if err != nil {
		stop()
		return nil, fmt.Errorf("harness: mirror %s: %w", disk, err)
	}
	m.events, m.stop = events, stop
	if err := c.BlockdevAdd(ctx, NBDTarget(m.Target, socket, export)); err != nil {
		stop()
		return nil, fmt.Errorf("harness: mirror %s: add NBD target %s (socket %s, export %s): %w", disk, m.Target, socket, export, err)
	}
	err = c.BlockdevMirror(ctx, qmp.MirrorArgs{
		JobID: m.Job, Device: disk, Target: m.Target, Sync: qmp.SyncFull,
		CopyMode: qmp.CopyModeWriteBlocking, Granularity: 4096,
		OnTargetError: qmp.ErrorActionStop, FilterNodeName: m.Filter, Speed: speed,
		BufSize: 64 << 10, // small, so a speed limit holds from the first chunk
	})
	if err != nil {
		stop()
		c.BlockdevDel(context.WithoutCancel(ctx), m.Target)
		return nil, fmt.Errorf("harness: mirror %s: %w", disk, err)
	}
	return m, nil
}

// WaitReady waits for BLOCK_JOB_READY of the job, failing at once if the
// job reports an error or ends.
func (m *Mirror) WaitReady(ctx context.Context) (qmp.Event, error) {
	e, err := qmp.Wait(ctx, m.events, func(e qmp.Event) bool { return e.Str("device") == m.Job })
	if err != nil {
		return e, fmt.Errorf("harness: wait for %s ready: %w", m.Job, err)
	}
	if e.Name != qmp.EventBlockJobReady {
		return e, fmt.Errorf("harness: job %s sent %s %v before it was ready", m.Job, e.Name, e.Data)
	}
	return e, nil
}

// Detach cancels the job (never completes it: that would switch the disk
// onto the target), waits for its end and deletes the target node. It
// returns the event that ended the job: a READY mirror cancelled without
// force may report BLOCK_JOB_COMPLETED.
func (m *Mirror) Detach(ctx context.Context) (qmp.Event, error) {
	defer m.stop()
	if err := m.c.BlockJobCancel(ctx, m.Job, false); err != nil {
		return qmp.Event{}, fmt.Errorf("harness: detach %s: %w", m.Disk, err)
	}
	e, err := qmp.Wait(ctx, m.events, func(e qmp.Event) bool {
		return e.Str("device") == m.Job && (e.Name == qmp.EventBlockJobCancelled || e.Name == qmp.EventBlockJobCompleted)
	})
	if err != nil {
		return e, fmt.Errorf("harness: detach %s: wait for the job to end: %w", m.Disk, err)
	}
	if msg := e.Str("error"); msg != "" {
		return e, fmt.Errorf("harness: detach %s: job ended with error %q", m.Disk, msg)
	}
	if err := m.c.BlockdevDel(ctx, m.Target); err != nil {
		return e, fmt.Errorf("harness: detach %s: %w", m.Disk, err)
	}
	return e, nil
}

// Write runs a qemu-io command on the filter node, so the mirror sees it.
func (m *Mirror) Write(ctx context.Context, cmd string) error {
	return m.q.QemuIO(ctx, m.Filter, cmd)
}
