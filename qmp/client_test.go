package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/qmp/qmptest"
)

// fakeQEMU is the QMP peer of these tests (package qmptest) with a handler
// written as cmd, args -> one reply line ("" answers nothing).
type fakeQEMU struct{ *qmptest.Server }

func newFakeQEMU(t *testing.T, handle func(cmd string, args json.RawMessage) string) *fakeQEMU {
	t.Helper()
	return &fakeQEMU{qmptest.NewServer(t, func(c qmptest.Command) []string {
		if r := handle(c.Name, c.Args); r != "" {
			return []string{r}
		}
		return nil
	})}
}

// event sends an event with a fixed timestamp the tests check.
func (f *fakeQEMU) event(name, data string) {
	f.Send(qmptest.EventAt(name, json.RawMessage(data), time.Unix(1700000000, 250000)))
}

func dialFake(t *testing.T, f *fakeQEMU, opts ...Option) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, f.Path(), opts...)
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestExecuteTypedReplies(t *testing.T) {
	f := newFakeQEMU(t, func(cmd string, args json.RawMessage) string {
		switch cmd {
		case "query-version":
			return `{"return": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7"}}`
		case "query-block-jobs":
			return `{"return": [{"auto-finalize": true, "io-status": "ok", "device": "qcdp-disk0", "auto-dismiss": true, "busy": false, "len": 8388608, "offset": 8388608, "status": "ready", "paused": false, "speed": 0, "ready": true, "type": "mirror"}]}`
		case "human-monitor-command":
			var a struct {
				Line string `json:"command-line"`
			}
			json.Unmarshal(args, &a)
			return fmt.Sprintf(`{"return": %q}`, "echo: "+a.Line+"\r\n")
		case "query-named-block-nodes":
			// Larger than go-qemu's 64 KiB scanner limit.
			var nodes []string
			for i := range 400 {
				nodes = append(nodes, fmt.Sprintf(`{"node-name": "n%d", "drv": "qcow2", "file": "/var/lib/%0200d.qcow2", "ro": false, "image": {"virtual-size": 8388608, "filename": "x", "format": "qcow2"}}`, i, i))
			}
			return `{"return": [` + strings.Join(nodes, ",") + `]}`
		case "blockdev-mirror":
			var a map[string]any
			json.Unmarshal(args, &a)
			if _, ok := a["auto-finalize"]; ok {
				return `{"error": {"class": "GenericError", "desc": "unexpected auto-finalize"}}`
			}
			if a["granularity"] != 4096.0 || a["copy-mode"] != "write-blocking" {
				return `{"error": {"class": "GenericError", "desc": "bad arguments"}}`
			}
			return `{"return": {}}`
		}
		return `{"error": {"class": "CommandNotFound", "desc": "The command ` + cmd + ` has not been found"}}`
	})
	c := dialFake(t, f)
	ctx := testCtx(t)

	if g := c.Greeting(); g.String() != "7.2.0" {
		t.Errorf("greeting version %v, want 7.2.0", g)
	}
	v, err := c.QueryVersion(ctx)
	if err != nil || v.String() != "7.2.0" || !v.AtLeast(7, 2) || v.AtLeast(7, 3) {
		t.Errorf("QueryVersion = %v, %v", v, err)
	}
	jobs, err := c.QueryBlockJobs(ctx)
	if err != nil || len(jobs) != 1 || jobs[0].Device != "qcdp-disk0" || !jobs[0].Ready || jobs[0].Status != "ready" || jobs[0].Len != 8<<20 {
		t.Errorf("QueryBlockJobs = %+v, %v", jobs, err)
	}
	out, err := c.HumanMonitorCommand(ctx, `qemu-io disk0 "read 0 512"`)
	if err != nil || out != "echo: qemu-io disk0 \"read 0 512\"\r\n" {
		t.Errorf("HumanMonitorCommand = %q, %v", out, err)
	}
	nodes, err := c.QueryNamedBlockNodes(ctx)
	if err != nil || len(nodes) != 400 || nodes[399].NodeName != "n399" || nodes[0].Image.VirtualSize != 8<<20 || nodes[0].Driver != "qcow2" {
		t.Errorf("QueryNamedBlockNodes: %d nodes, %v", len(nodes), err)
	}
	err = c.BlockdevMirror(ctx, MirrorArgs{JobID: "j", Device: "disk0", Target: "t", Sync: SyncFull,
		CopyMode: CopyModeWriteBlocking, Granularity: 4096, OnTargetError: ErrorActionStop})
	if err != nil {
		t.Errorf("BlockdevMirror: %v", err)
	}
}

func TestErrorClassKept(t *testing.T) {
	f := newFakeQEMU(t, func(cmd string, args json.RawMessage) string {
		switch cmd {
		case "blockdev-del":
			return `{"error": {"class": "GenericError", "desc": "Failed to find node with node-name='nope'"}}`
		case "block-job-cancel":
			return `{"error": {"class": "DeviceNotActive", "desc": "Block job 'nope' not found"}}`
		case "device_del":
			return `{"error": {"class": "DeviceNotFound", "desc": "Device 'nope' not found"}}`
		}
		return `{"error": {"class": "CommandNotFound", "desc": "The command ` + cmd + ` has not been found"}}`
	})
	var trace syncBuffer
	c := dialFake(t, f, WithTrace(&trace))
	ctx := testCtx(t)

	tests := []struct {
		name  string
		run   func() error
		class string
		pred  func(error) bool
		cmd   string
		isNot func(error) bool
	}{
		{"generic", func() error { return c.BlockdevDel(ctx, "nope") }, ClassGenericError, func(err error) bool { return IsClass(err, ClassGenericError) }, "blockdev-del", IsDeviceNotFound},
		{"not active", func() error { return c.BlockJobCancel(ctx, "nope", false) }, ClassDeviceNotActive, IsDeviceNotActive, "block-job-cancel", IsDeviceNotFound},
		{"not found", func() error { return c.Execute(ctx, "device_del", map[string]string{"id": "nope"}, nil) }, ClassDeviceNotFound, IsDeviceNotFound, "device_del", IsDeviceNotActive},
		{"no command", func() error { return c.Execute(ctx, "x-nothing", nil, nil) }, ClassCommandNotFound, IsCommandNotFound, "x-nothing", IsDeviceNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := fmt.Errorf("wrapped: %w", tt.run())
			var qe *Error
			if !errors.As(err, &qe) {
				t.Fatalf("error %v is not a *qmp.Error", err)
			}
			if qe.Class != tt.class || qe.Command != tt.cmd || qe.Desc == "" {
				t.Errorf("got %+v, want class %s command %s", qe, tt.class, tt.cmd)
			}
			if !tt.pred(err) || tt.isNot(err) {
				t.Errorf("predicates wrong for %v", err)
			}
		})
	}
	got := trace.String()
	for _, want := range []string{`-> {"execute":"qmp_capabilities"}`, `-> {"execute":"blockdev-del","arguments":{"node-name":"nope"}}`, `<- {"error": {"class": "DeviceNotActive"`} {
		if !strings.Contains(got, want) {
			t.Errorf("trace lacks %s:\n%s", want, got)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the client's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestExecuteHonoursContext(t *testing.T) {
	release := make(chan struct{})
	var f *fakeQEMU
	f = newFakeQEMU(t, func(cmd string, args json.RawMessage) string {
		switch cmd {
		case "slow":
			// Answer later, from outside the read loop, as QEMU answers a
			// command that takes its time.
			go func() {
				<-release
				f.Send(`{"return": {"who": "slow"}}`)
			}()
			return ""
		case "fast":
			return `{"return": {"who": "fast"}}`
		}
		return `{"error": {"class": "CommandNotFound", "desc": "no"}}`
	})
	c := dialFake(t, f)

	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.Execute(ctx, "slow", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Execute(slow) = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Execute returned %v after its deadline", d)
	}

	cancelled, cancelNow := context.WithCancel(context.Background())
	cancelNow()
	if err := c.Execute(cancelled, "fast", nil, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Execute on a cancelled ctx = %v, want context.Canceled", err)
	}

	// The next command must get its own reply, not the late one.
	close(release)
	var r struct{ Who string }
	if err := c.Execute(testCtx(t), "fast", nil, &r); err != nil || r.Who != "fast" {
		t.Errorf("Execute(fast) after a cancelled command = %+v, %v", r, err)
	}
}

func TestSubscribersEachGetTheirEvents(t *testing.T) {
	var f *fakeQEMU
	f = newFakeQEMU(t, func(cmd string, args json.RawMessage) string {
		if cmd == "emit" {
			f.event("JOB_STATUS_CHANGE", `{"status": "running", "id": "j1"}`)
			f.event(EventBlockJobReady, `{"device": "j1", "len": 100, "offset": 100, "speed": 0, "type": "mirror"}`)
			f.event(EventBlockJobReady, `{"device": "j2", "len": 100, "offset": 100, "speed": 0, "type": "mirror"}`)
			f.event(EventBlockJobCancelled, `{"device": "j1", "len": 100, "offset": 100, "speed": 0, "type": "mirror"}`)
			return `{"return": {}}`
		}
		return `{"error": {"class": "CommandNotFound", "desc": "no"}}`
	})
	c := dialFake(t, f)
	ctx := testCtx(t)

	ready, err := c.Subscribe(ctx, EventBlockJobReady)
	if err != nil {
		t.Fatal(err)
	}
	jobEnd, err := c.Subscribe(ctx, EventBlockJobCancelled, EventBlockJobReady)
	if err != nil {
		t.Fatal(err)
	}
	allCtx, stopAll := context.WithCancel(ctx)
	all, err := c.Subscribe(allCtx)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Execute(ctx, "emit", nil, nil); err != nil {
		t.Fatal(err)
	}

	collect := func(ch <-chan Event, n int) []string {
		var got []string
		for range n {
			select {
			case e := <-ch:
				got = append(got, e.Name+":"+e.Str("device")+e.Str("id"))
			case <-ctx.Done():
				t.Fatalf("waiting for events, got %v", got)
			}
		}
		return got
	}
	if got, want := collect(ready, 2), "BLOCK_JOB_READY:j1 BLOCK_JOB_READY:j2"; strings.Join(got, " ") != want {
		t.Errorf("first subscriber got %v, want %v", got, want)
	}
	if got, want := collect(jobEnd, 3), "BLOCK_JOB_READY:j1 BLOCK_JOB_READY:j2 BLOCK_JOB_CANCELLED:j1"; strings.Join(got, " ") != want {
		t.Errorf("second subscriber got %v, want %v", got, want)
	}
	if got := collect(all, 4); got[0] != "JOB_STATUS_CHANGE:j1" {
		t.Errorf("catch-all subscriber got %v", got)
	}

	// Event data and time survive.
	if err := c.Execute(ctx, "emit", nil, nil); err != nil {
		t.Fatal(err)
	}
	e, err := Wait(ctx, ready, func(e Event) bool { return e.Str("device") == "j2" })
	if err != nil {
		t.Fatal(err)
	}
	var info struct{ Len, Offset int64 }
	if err := e.Decode(&info); err != nil || info.Len != 100 || e.Timestamp.Unix() != 1700000000 || e.Timestamp.Nanosecond() != 250000 {
		t.Errorf("event %+v decoded %+v, %v", e, info, err)
	}

	// A subscription ends with its context, without disturbing the others.
	stopAll()
	for range all {
	}

	// All subscriptions end when the monitor goes away, and commands fail.
	f.HangUp()
	for range ready {
	}
	for range jobEnd {
	}
	if err := c.Execute(ctx, "emit", nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Execute after hang-up = %v, want ErrClosed", err)
	}
	if _, err := c.Subscribe(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Subscribe after hang-up = %v, want ErrClosed", err)
	}
}

func TestCloseEndsSubscriptionsAndCommands(t *testing.T) {
	arrived := make(chan struct{}, 1)
	f := newFakeQEMU(t, func(cmd string, args json.RawMessage) string {
		arrived <- struct{}{}
		return "" // never answers
	})
	c := dialFake(t, f)
	ctx := testCtx(t)
	events, err := c.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- c.Execute(ctx, "hang", nil, nil) }()
	select {
	case <-arrived:
	case <-ctx.Done():
		t.Fatal("command never reached the peer")
	}
	if err := c.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("Execute cut by Close = %v, want ErrClosed", err)
	}
	if _, ok := <-events; ok {
		t.Error("subscription still open after Close")
	}
}

// TestPeer: a Client dialed on a unix socket knows the process serving it
// (here the fake QEMU, this test process); one on another transport does
// not.
func TestPeer(t *testing.T) {
	f := newFakeQEMU(t, func(string, json.RawMessage) string { return `{"return": {}}` })
	c := dialFake(t, f)
	p, err := c.Peer()
	if err != nil || p.PID != os.Getpid() || p.Start == 0 {
		t.Fatalf("Peer() = %+v, %v; want this process (pid %d)", p, err, os.Getpid())
	}
	var none Client
	if _, err := none.Peer(); !errors.Is(err, ErrNoPeer) {
		t.Fatalf("Peer() of a client without a socket: %v, want ErrNoPeer", err)
	}
}
