package protect

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/shipper"
	"github.com/qcdp/qcdp/shipper/spool"
	"github.com/qcdp/qcdp/vfs"
)

// fakeSystemd is the service manager's end of the notification protocol: a
// unixgram socket in NOTIFY_SOCKET, each datagram one notification.
type fakeSystemd struct {
	msgs chan sdMessage // closed when the socket is
}

type sdMessage struct {
	at    time.Time
	state string
}

// listenNotify listens on a fresh NOTIFY_SOCKET and sets the watchdog
// environment as systemd does for a service with WatchdogSec=interval
// whose main process is pid.
func listenNotify(t *testing.T, interval time.Duration, pid int) *fakeSystemd {
	t.Helper()
	dir, err := os.MkdirTemp("", "qcdp-sd-") // short: a socket path has 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", strconv.FormatInt(interval.Microseconds(), 10))
	t.Setenv("WATCHDOG_PID", strconv.Itoa(pid))
	sd := &fakeSystemd{msgs: make(chan sdMessage, 4096)}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(sd.msgs)
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			sd.msgs <- sdMessage{time.Now(), string(buf[:n])}
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		wg.Wait()
		os.RemoveAll(dir)
	})
	return sd
}

// next returns the next notification, failing the test if none comes
// within d.
func (sd *fakeSystemd) next(t *testing.T, d time.Duration) sdMessage {
	t.Helper()
	select {
	case m := <-sd.msgs:
		return m
	case <-time.After(d):
		t.Fatalf("no notification within %v", d)
		return sdMessage{}
	}
}

// until returns every notification received for d.
func (sd *fakeSystemd) until(d time.Duration) []sdMessage {
	var out []sdMessage
	end := time.After(d)
	for {
		select {
		case m := <-sd.msgs:
			out = append(out, m)
		case <-end:
			return out
		}
	}
}

func pets(ms []sdMessage) []time.Time {
	var out []time.Time
	for _, m := range ms {
		if slices.Contains(strings.Split(m.state, "\n"), "WATCHDOG=1") {
			out = append(out, m.at)
		}
	}
	return out
}

func states(ms []sdMessage) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.state
	}
	return out
}

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// runSupervisor runs sup.Run until the test ends it with the returned stop.
func runSupervisor(t *testing.T, sup *Supervisor) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		sup.Run(ctx)
	}()
	stop = func() {
		cancel()
		<-done
	}
	t.Cleanup(stop)
	return stop
}

// TestSupervisorNotifies checks the protocol as systemd reads it: READY=1
// with a status, WATCHDOG=1 every half interval (never a gap of a whole
// interval, which systemd would punish), STOPPING=1 at the end; and no
// WATCHDOG=1 at all when the watchdog is meant for another process.
func TestSupervisorNotifies(t *testing.T) {
	const interval = 400 * time.Millisecond
	sd := listenNotify(t, interval, os.Getpid())
	e, _ := newEngine(t, &fakeSource{})
	sup, err := NewSupervisor(e, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	if sup.Watchdog() != interval {
		t.Fatalf("watchdog interval %v from WATCHDOG_USEC, want %v", sup.Watchdog(), interval)
	}
	if len(sup.paths) != 2 {
		t.Fatalf("the supervisor probes %d groups, want the engine's 2", len(sup.paths))
	}
	if err := sup.Ready("protecting 2 group(s)"); err != nil {
		t.Fatal(err)
	}
	if m := sd.next(t, time.Second); m.state != "READY=1\nSTATUS=protecting 2 group(s)" {
		t.Fatalf("first notification %q, want READY=1 with a status", m.state)
	}
	readyAt := time.Now()
	stop := runSupervisor(t, sup)
	got := sd.until(5 * interval)
	stop()
	times := append([]time.Time{readyAt}, pets(got)...)
	if len(times) < 8 || len(times) > 12 {
		t.Errorf("%d WATCHDOG=1 in %v, want about 10 (one every %v)", len(times)-1, 5*interval, interval/2)
	}
	var gaps []time.Duration
	for i := 1; i < len(times); i++ {
		gaps = append(gaps, times[i].Sub(times[i-1]))
	}
	slices.Sort(gaps)
	if len(gaps) > 0 {
		if worst := gaps[len(gaps)-1]; worst >= interval {
			t.Errorf("a gap of %v between WATCHDOG=1: systemd (WatchdogSec=%v) would have ended the daemon", worst, interval)
		}
		if med := gaps[len(gaps)/2]; med < interval*2/5 || med > interval*3/4 {
			t.Errorf("median gap %v between WATCHDOG=1, want about half the interval (%v)", med, interval/2)
		}
	}
	if m := sd.next(t, time.Second); m.state != "STOPPING=1" {
		t.Errorf("last notification %q, want STOPPING=1", m.state)
	}

	t.Run("watchdog of another process", func(t *testing.T) {
		sd := listenNotify(t, interval, os.Getpid()+1)
		sup, err := NewSupervisor(e, quietLog)
		if err != nil {
			t.Fatal(err)
		}
		if sup.Watchdog() != 0 {
			t.Fatalf("WATCHDOG_PID of another process gave a watchdog of %v", sup.Watchdog())
		}
		stop := runSupervisor(t, sup)
		got := sd.until(2 * interval)
		stop()
		if p := pets(got); len(p) > 0 {
			t.Errorf("%d WATCHDOG=1 sent for another process's watchdog", len(p))
		}
		if m := sd.next(t, time.Second); m.state != "STOPPING=1" {
			t.Errorf("notification %q, want STOPPING=1", m.state)
		}
	})
}

// wedge makes one kind of file operation of a MemFS block, once armed,
// until released: a write stuck in the kernel, or a stuck fsync.
type wedge struct {
	op       vfs.Op
	mu       sync.Mutex
	armed    bool
	entered  chan struct{} // closed when an operation is held
	release  chan struct{}
	released sync.Once
}

func newWedge(op vfs.Op) *wedge {
	return &wedge{op: op, entered: make(chan struct{}), release: make(chan struct{})}
}

func (w *wedge) arm() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.armed = true
}

func (w *wedge) free() { w.released.Do(func() { close(w.release) }) }

func (w *wedge) inject(op vfs.Op, _ string) error {
	w.mu.Lock()
	hold := w.armed && op == w.op
	if hold {
		w.armed = false
		close(w.entered)
	}
	w.mu.Unlock()
	if hold {
		<-w.release
	}
	return nil
}

// TestSupervisorStopsPettingWedgedWritePath wedges a group's write path
// for real, with a guest write stuck in the spool's append or a flush
// stuck in fsync, and checks that WATCHDOG=1 stops while it lasts (so
// systemd would end the daemon): at once for the append, after
// syncStuck for the fsync (a long fsync alone holds no guest write, and
// the pets go on meanwhile); that the stall is told in STATUS=; and that
// petting resumes once the path moves.
func TestSupervisorStopsPettingWedgedWritePath(t *testing.T) {
	const (
		interval  = 400 * time.Millisecond
		syncStuck = 2 * interval
	)
	payload := make([]byte, 4096)
	for _, tc := range []struct {
		name  string
		op    vfs.Op
		setup func(context.Context, *shipper.CaptureExport) error // before the wedge
		stuck func(context.Context, *shipper.CaptureExport) error // what the wedge holds
		// grace is how long after the wedge pets may still come: a
		// probe already past the locks may pet once, at once; an
		// fsync is given syncStuck, counted from the next tick.
		grace  time.Duration
		status string
	}{
		{"append", vfs.OpWrite, nil,
			func(ctx context.Context, e *shipper.CaptureExport) error { return e.WriteAt(ctx, payload, 8192) },
			interval / 4, "STATUS=group g1: write path stalled"},
		{"fsync", vfs.OpSync,
			func(ctx context.Context, e *shipper.CaptureExport) error { return e.WriteAt(ctx, payload, 0) },
			func(ctx context.Context, e *shipper.CaptureExport) error { return e.Flush(ctx) },
			interval/2 + syncStuck + interval/4, "STATUS=group g1: fsync stuck"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			sd := listenNotify(t, interval, os.Getpid())
			fs := vfs.NewMemFS()
			w := newWedge(tc.op)
			fs.SetInjector(w.inject)
			g, err := shipper.OpenGroup(ctx, shipper.GroupOptions{
				Spool: spool.Options{Dir: "/spool/g1", Group: "g1", FS: fs}, Logger: quietLog})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				w.free()
				if err := g.Shutdown(ctx); err != nil {
					t.Error(err)
				}
			})
			exp, err := g.Export("vm1.vda", 1<<20)
			if err != nil {
				t.Fatal(err)
			}
			if tc.setup != nil {
				if err := tc.setup(ctx, exp); err != nil {
					t.Fatal(err)
				}
			}
			sup := newSupervisor(interval, syncStuck, []writePath{g}, quietLog)
			stop := runSupervisor(t, sup)
			if p := pets(sd.until(interval)); len(p) == 0 {
				t.Fatal("no WATCHDOG=1 while the write path moves")
			}

			w.arm()
			held := make(chan error, 1)
			go func() { held <- tc.stuck(ctx, exp) }()
			<-w.entered
			wedgedAt := time.Now()
			got := sd.until(tc.grace + 3*interval)
			var late int
			for _, at := range pets(got) {
				if d := at.Sub(wedgedAt); d > tc.grace {
					t.Errorf("WATCHDOG=1 %v after the write path wedged (grace %v)", d.Round(time.Millisecond), tc.grace)
				} else if d > interval/4 {
					late++
				}
			}
			if tc.op == vfs.OpSync && late == 0 {
				t.Errorf("no WATCHDOG=1 while an fsync was long but not yet stuck")
			}
			if !slices.ContainsFunc(got, func(m sdMessage) bool { return strings.Contains(m.state, tc.status) }) {
				t.Errorf("the stall is not in STATUS= (want %q): %q", tc.status, states(got))
			}

			w.free()
			if err := <-held; err != nil {
				t.Fatalf("the held operation failed once released: %v", err)
			}
			if p := pets(sd.until(interval)); len(p) == 0 {
				t.Error("no WATCHDOG=1 once the write path moves again")
			}
			stop()
		})
	}
}
