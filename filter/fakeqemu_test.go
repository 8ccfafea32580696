package filter

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/qmp"
	"github.com/qcdp/qcdp/qmp/qmptest"
	"github.com/qcdp/qcdp/record"
)

// fakeQEMU is QEMU 7.2's block layer as the capture lifecycle sees it,
// behind a real QMP socket (qmptest): named nodes with dirty bitmaps, nbd
// nodes added by blockdev-add, and one mirror job with QEMU's replies,
// errors and events. The test plays the guest and the capture server: it
// makes the job READY, has the target refuse a write, takes the target
// down and up, makes the job vanish or QEMU go away.
type fakeQEMU struct {
	t   *testing.T
	srv *qmptest.Server

	mu         sync.Mutex
	nodes      map[string]*fakeNode
	job        *fakeJob
	targetDown bool // the capture server refuses every write
	// copyPolls is how many times query-block-jobs shows a resumed job
	// still re-copying before it has caught up.
	copyPolls int
	// failMirror, when set, is blockdev-mirror's error reply; hangUpAt is
	// a command at which QEMU goes away instead of answering.
	failMirror, hangUpAt string
	cmds                 []qmptest.Command
	changed              chan struct{} // closed and replaced at every command
}

type fakeNode struct {
	driver  string
	args    map[string]any // blockdev-add's arguments
	bitmaps []fakeBitmap
}

type fakeBitmap struct {
	Name        string `json:"name"`
	Granularity uint32 `json:"granularity"`
	Persistent  bool   `json:"persistent"`
}

type fakeJob struct {
	id, device, target string
	len, offset        int64
	ready, paused      bool
	io                 string
	copying            int  // polls left before a resumed job has caught up
	autoReady          bool // resumed: it reaches READY by itself once caught up
	cancelling         bool // a soft cancel that drains forever
}

func newFakeQEMU(t *testing.T) *fakeQEMU {
	f := &fakeQEMU{t: t, nodes: map[string]*fakeNode{"disk0": {driver: "qcow2"}}, copyPolls: 2, changed: make(chan struct{})}
	f.srv = qmptest.NewServer(t, f.handle)
	return f
}

// dial connects a qmp.Client, closed when the test ends.
func (f *fakeQEMU) dial(ctx context.Context) *qmp.Client {
	f.t.Helper()
	q, err := qmp.Dial(ctx, f.srv.Path())
	if err != nil {
		f.t.Fatalf("dial the fake QEMU: %v", err)
	}
	f.t.Cleanup(func() { q.Close() })
	return q
}

func (f *fakeQEMU) handle(c qmptest.Command) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cmds = append(f.cmds, c)
	close(f.changed)
	f.changed = make(chan struct{})
	if c.Name == f.hangUpAt {
		f.srv.HangUp()
		return nil
	}
	var args map[string]any
	if c.Args != nil {
		if err := json.Unmarshal(c.Args, &args); err != nil {
			return []string{qmptest.Error("GenericError", "Invalid parameter type")}
		}
	}
	str := func(k string) string { s, _ := args[k].(string); return s }
	switch c.Name {
	case "query-block-jobs":
		if f.job == nil {
			return []string{qmptest.Return([]any{})}
		}
		info := f.job.info()
		var after []string
		if !f.job.paused && f.job.copying > 0 {
			f.job.copying--
			if f.job.copying == 0 {
				after = f.job.caughtUp()
			}
		}
		return append([]string{qmptest.Return([]any{info})}, after...)

	case "query-named-block-nodes":
		var out []map[string]any
		for _, name := range sortedKeys(f.nodes) {
			n := f.nodes[name]
			out = append(out, map[string]any{"node-name": name, "drv": n.driver, "ro": false,
				"file": "/var/lib/qcdp/" + name, "dirty-bitmaps": n.bitmaps,
				"image": map[string]any{"filename": "/var/lib/qcdp/" + name, "format": n.driver, "virtual-size": 16 << 20}})
		}
		return []string{qmptest.Return(out)}

	case "block-dirty-bitmap-add":
		n, ok := f.nodes[str("node")]
		if !ok {
			return []string{qmptest.Error("GenericError", fmt.Sprintf("Cannot find device='%s' nor node-name='%s'", str("node"), str("node")))}
		}
		if slices.ContainsFunc(n.bitmaps, func(b fakeBitmap) bool { return b.Name == str("name") }) {
			return []string{qmptest.Error("GenericError", fmt.Sprintf("Bitmap already exists: %s", str("name")))}
		}
		g, _ := args["granularity"].(float64)
		p, _ := args["persistent"].(bool)
		n.bitmaps = append(n.bitmaps, fakeBitmap{Name: str("name"), Granularity: uint32(g), Persistent: p})
		return []string{qmptest.Return(struct{}{})}

	case "blockdev-add":
		name := str("node-name")
		if _, dup := f.nodes[name]; dup {
			return []string{qmptest.Error("GenericError", fmt.Sprintf("Duplicate nodes with node-name='%s'", name))}
		}
		f.nodes[name] = &fakeNode{driver: str("driver"), args: args}
		return []string{qmptest.Return(struct{}{})}

	case "blockdev-del":
		name := str("node-name")
		if _, ok := f.nodes[name]; !ok {
			return []string{qmptest.Error("GenericError", fmt.Sprintf("Failed to find node with node-name='%s'", name))}
		}
		if f.job != nil && (f.job.target == name || f.job.device == name) {
			return []string{qmptest.Error("GenericError", fmt.Sprintf("Node '%s' is busy: block device is in use by block job: mirror", name))}
		}
		delete(f.nodes, name)
		return []string{qmptest.Return(struct{}{})}

	case "blockdev-mirror":
		if f.failMirror != "" {
			return []string{f.failMirror}
		}
		if f.job != nil {
			return []string{qmptest.Error("GenericError", fmt.Sprintf("Job ID '%s' already in use", str("job-id")))}
		}
		for _, k := range []string{"device", "target"} {
			if _, ok := f.nodes[str(k)]; !ok {
				return []string{qmptest.Error("GenericError", fmt.Sprintf("Cannot find device='%s' nor node-name='%s'", str(k), str(k)))}
			}
		}
		f.job = &fakeJob{id: str("job-id"), device: str("device"), target: str("target"), len: 16 << 20, io: "ok"}
		return []string{qmptest.Return(struct{}{}), f.job.status("created"), f.job.status("running")}

	case "block-job-resume":
		if f.job == nil || f.job.id != str("device") {
			return []string{qmptest.Error("DeviceNotActive", fmt.Sprintf("Block job '%s' not found", str("device")))}
		}
		if !f.job.paused {
			return []string{qmptest.Error("GenericError", "Can't resume a job that was not paused")}
		}
		ok := []string{qmptest.Return(struct{}{}), f.job.status("running")}
		if f.targetDown {
			// It retries the refused chunk at once and stops again.
			return append(ok, f.job.refused()...)
		}
		f.job.paused, f.job.io = false, "ok"
		f.job.copying, f.job.autoReady = f.copyPolls, true
		if f.job.copying == 0 {
			ok = append(ok, f.job.caughtUp()...)
		}
		return ok

	case "block-job-cancel":
		if f.job == nil || f.job.id != str("device") {
			return []string{qmptest.Error("DeviceNotActive", fmt.Sprintf("Block job '%s' not found", str("device")))}
		}
		force, _ := args["force"].(bool)
		j := f.job
		if !force && j.ready && (j.paused || f.targetDown) {
			// A soft cancel of a READY mirror first copies what is dirty:
			// never, while the target refuses writes.
			j.cancelling = true
			return []string{qmptest.Return(struct{}{})}
		}
		f.job = nil
		end := qmp.EventBlockJobCancelled
		if !force && j.ready {
			end = qmp.EventBlockJobCompleted
		}
		return []string{qmptest.Return(struct{}{}), j.status("aborting"), qmptest.Event(end, j.data()), j.status("concluded"), j.status("null")}

	case "block-job-complete":
		// Would switch the guest onto the NBD target: tests check it is
		// never sent.
		return []string{qmptest.Return(struct{}{})}
	}
	return []string{qmptest.Error("CommandNotFound", fmt.Sprintf("The command %s has not been found", c.Name))}
}

func (j *fakeJob) info() map[string]any {
	status := "running"
	switch {
	case j.paused && j.ready:
		status = "standby"
	case j.paused:
		status = "paused"
	case j.ready:
		status = "ready"
	}
	offset := j.offset
	if j.copying > 0 {
		offset = j.len - 4096*int64(j.copying)
	}
	return map[string]any{"type": "mirror", "device": j.id, "len": j.len, "offset": offset,
		"busy": !j.paused && (j.copying > 0 || !j.ready), "paused": j.paused, "speed": 0,
		"io-status": j.io, "ready": j.ready, "status": status, "auto-finalize": true, "auto-dismiss": true}
}

func (j *fakeJob) data() map[string]any {
	return map[string]any{"device": j.id, "len": j.len, "offset": j.offset, "speed": 0, "type": "mirror"}
}

func (j *fakeJob) status(s string) string {
	return qmptest.Event(qmp.EventJobStatusChange, map[string]any{"id": j.id, "status": s})
}

// refused stops the job as on-target-error=stop does.
func (j *fakeJob) refused() []string {
	j.paused, j.io = true, "failed"
	return []string{qmptest.Event(qmp.EventBlockJobError, map[string]any{"device": j.id, "operation": "write", "action": "stop"}), j.status("paused")}
}

// caughtUp is a resumed job having copied everything again.
func (j *fakeJob) caughtUp() []string {
	j.copying = 0
	j.offset = j.len
	if j.ready || !j.autoReady {
		return nil
	}
	j.ready = true
	return []string{j.status("ready"), qmptest.Event(qmp.EventBlockJobReady, j.data())}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Things the test does to QEMU.

// ready is the initial copy done: BLOCK_JOB_READY.
func (f *fakeQEMU) ready() {
	f.mu.Lock()
	j := f.job
	j.offset, j.ready = j.len, true
	msgs := []string{j.status("ready"), qmptest.Event(qmp.EventBlockJobReady, j.data())}
	f.mu.Unlock()
	f.srv.Send(msgs...)
}

// refuseWrite is the capture server refusing one write of the job.
func (f *fakeQEMU) refuseWrite() {
	f.mu.Lock()
	msgs := f.job.refused()
	f.mu.Unlock()
	f.srv.Send(msgs...)
}

func (f *fakeQEMU) setTargetDown(down bool) {
	f.mu.Lock()
	f.targetDown = down
	f.mu.Unlock()
}

// vanish ends the job without anyone asking, as a source I/O error with
// on-source-error=report does.
func (f *fakeQEMU) vanish(why string) {
	f.mu.Lock()
	j := f.job
	f.job = nil
	d := j.data()
	d["error"] = why
	f.mu.Unlock()
	f.srv.Send(qmptest.Event(qmp.EventBlockJobCompleted, d))
}

// shutdown is QEMU at a guest poweroff (QEMU 7.2): SHUTDOWN, its jobs
// cancelled (BLOCK_JOB_CANCELLED), and the monitor closed as it exits.
func (f *fakeQEMU) shutdown() {
	f.mu.Lock()
	j := f.job
	f.job = nil
	d := j.data()
	f.mu.Unlock()
	f.srv.Send(qmptest.Event(qmp.EventShutdown, map[string]any{"guest": true, "reason": "guest-shutdown"}),
		qmptest.Event(qmp.EventBlockJobCancelled, d))
	f.srv.HangUp()
}

// adoptable puts in QEMU what an earlier daemon left: the bitmap, the target
// node and a job as described.
func (f *fakeQEMU) adoptable(j fakeJob) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes["disk0"].bitmaps = []fakeBitmap{{Name: BitmapName("disk0"), Granularity: 4096, Persistent: true}}
	f.nodes[TargetNode("disk0")] = &fakeNode{driver: "nbd"}
	j.id, j.device, j.target, j.len = JobID("disk0"), "disk0", TargetNode("disk0"), 16<<20
	if j.io == "" {
		j.io = "ok"
	}
	if j.ready {
		j.offset = j.len
	}
	f.job = &j
}

// Things the test asks QEMU.

// commands returns the commands received named name (all when "").
func (f *fakeQEMU) commands(name string) []qmptest.Command {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []qmptest.Command
	for _, c := range f.cmds {
		if name == "" || c.Name == name {
			out = append(out, c)
		}
	}
	return out
}

// waitCommands waits until QEMU has received n commands named name.
func (f *fakeQEMU) waitCommands(ctx context.Context, name string, n int) []qmptest.Command {
	f.t.Helper()
	for {
		f.mu.Lock()
		ch := f.changed
		f.mu.Unlock()
		if got := f.commands(name); len(got) >= n {
			return got
		}
		select {
		case <-ch:
		case <-ctx.Done():
			f.t.Fatalf("waiting for %d %s commands: %d came", n, name, len(f.commands(name)))
		}
	}
}

func (f *fakeQEMU) jobNow() *fakeJob {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.job == nil {
		return nil
	}
	j := *f.job
	return &j
}

func (f *fakeQEMU) hasNode(name string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.nodes[name]
	return ok
}

func (f *fakeQEMU) bitmaps(node string) []fakeBitmap {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.nodes[node].bitmaps)
}

// fakeMarker is a group's sequencer as the lifecycle sees it: it keeps the
// markers in stream order, keeps one resync bracket open per disk as
// shipper.Sequencer does (a second resync-begin adds nothing), and refuses
// markers when told to, as a full spool does.
type fakeMarker struct {
	mu     sync.Mutex
	calls  []record.MarkerKind // every MarkDisk, refused ones too
	stream []record.MarkerKind // what the stream holds
	open   bool
	refuse map[record.MarkerKind]int
	disks  map[string]bool
	called chan struct{} // closed and replaced at every call
}

var errRefused = errors.New("fake sequencer: marker refused")

func (m *fakeMarker) MarkDisk(kind record.MarkerKind, disk string) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, kind)
	if m.called != nil {
		close(m.called)
		m.called = nil
	}
	if m.disks == nil {
		m.disks = map[string]bool{}
	}
	m.disks[disk] = true
	if m.refuse[kind] > 0 {
		m.refuse[kind]--
		return 0, errRefused
	}
	switch kind {
	case record.ResyncBegin:
		if m.open {
			return uint64(len(m.stream)), nil
		}
		m.open = true
	case record.ResyncEnd:
		m.open = false
	}
	m.stream = append(m.stream, kind)
	return uint64(len(m.stream)), nil
}

// refuseNext makes the next n markers of kind fail.
func (m *fakeMarker) refuseNext(kind record.MarkerKind, n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.refuse == nil {
		m.refuse = map[record.MarkerKind]int{}
	}
	m.refuse[kind] = n
}

func (m *fakeMarker) markers() []record.MarkerKind {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.stream)
}

func (m *fakeMarker) callsOf(kind record.MarkerKind) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, k := range m.calls {
		if k == kind {
			n++
		}
	}
	return n
}

// waitCalls waits until kind was asked for n times.
func (m *fakeMarker) waitCalls(ctx context.Context, t *testing.T, kind record.MarkerKind, n int) {
	t.Helper()
	for {
		m.mu.Lock()
		if m.called == nil {
			m.called = make(chan struct{})
		}
		ch := m.called
		m.mu.Unlock()
		if m.callsOf(kind) >= n {
			return
		}
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("waiting for %d %v markers: %d asked for", n, kind, m.callsOf(kind))
		}
	}
}

// waitFor a deadline, for tests that check something does NOT happen.
func waitFor(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
