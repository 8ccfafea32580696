package receiver_test

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica/receiver"
	"github.com/qcdp/qcdp/stream"
)

// rawBatch is a Batch frame of n random (incompressible) MiB records from
// seq 1.
func rawBatch(t *testing.T, n int) (frame []byte, last uint64) {
	t.Helper()
	rng := rand.NewChaCha8([32]byte{2})
	e := stream.NewBatchEncoder(false)
	for seq := uint64(1); seq <= uint64(n); seq++ {
		p := make([]byte, 1<<20)
		rng.Read(p)
		r := record.Record{Seq: seq, Time: 1, Kind: record.Data, Disk: "vda", Offset: (seq - 1) << 20, Length: 1 << 20, Payload: p}
		if err := e.Add(&r); err != nil {
			t.Fatal(err)
		}
	}
	return append([]byte(nil), e.Frame()...), uint64(n)
}

// holdAppends makes the appends to group wait until the returned func is
// called (at the latest when the test ends, before the server shuts down).
func holdAppends(t *testing.T, r *replica, group string) (release func()) {
	gate := make(chan struct{})
	r.hold(group, gate)
	release = sync.OnceFunc(func() { close(gate) })
	t.Cleanup(release)
	return release
}

// send opens a stream for group and writes frame.
func send(t *testing.T, r *replica, group string, frame []byte, last uint64) *client {
	t.Helper()
	c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.hello(group, last); err != nil {
		t.Fatal(err)
	}
	if _, err := c.c.Write(frame); err != nil {
		t.Fatal(err)
	}
	return c
}

// Over the in-flight budget a stream waits: it goes on once another
// stream's batch is appended, and is refused as unavailable, naming the
// budget, when that takes longer than the idle timeout. A frame that
// alone needs more than the whole budget is refused at once, naming both.
func TestInflightBudget(t *testing.T) {
	const budget = 3 << 20 // one 2 MiB batch at a time
	r := startWith(t, func(srv *receiver.Server) {
		srv.MaxInflight = budget
		srv.IdleTimeout = 2 * time.Second
	})
	frame, last := rawBatch(t, 2)

	// db-1 waits for web's batch, held in its journal append, and goes on
	// once it is appended.
	release := holdAppends(t, r, "web")
	holder := send(t, r, "web", frame, last)
	waiter := send(t, r, "db-1", frame, last)
	time.AfterFunc(300*time.Millisecond, release)
	for _, c := range []*client{holder, waiter} {
		if a, err := c.answer(); err != nil || a != last {
			t.Fatalf("ack %d, %v", a, err)
		}
	}

	// db-2 waits longer than the idle timeout: refused, the holder is not.
	release = holdAppends(t, r, "db-3")
	holder = send(t, r, "db-3", frame, last)
	start := time.Now()
	waiter = send(t, r, "db-2", frame, last)
	_, err := waiter.answer()
	re := refusal(t, err, stream.CodeUnavailable)
	if !strings.Contains(re.Message, "max_inflight") || !strings.Contains(re.Message, fmt.Sprint(budget)) || time.Since(start) < 2*time.Second {
		t.Errorf("refused after %v: %q", time.Since(start), re.Message)
	}
	release()
	if a, err := holder.answer(); err != nil || a != last {
		t.Fatalf("holder: ack %d, %v", a, err)
	}
	if held, _ := r.srv.Inflight(); held != 0 {
		t.Errorf("%d bytes of the budget still held by idle streams", held)
	}

	// Larger than the whole budget: refused as a protocol error, before
	// the host has written it all (the write fails once the replica has
	// closed the connection).
	big, last := rawBatch(t, 4)
	c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.hello("db-4", last); err != nil {
		t.Fatal(err)
	}
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		c.c.Write(big)
	}()
	_, err = c.answer()
	c.c.Close()
	<-wrote
	re = refusal(t, err, stream.CodeProtocol)
	if cost := stream.FrameCost(stream.Batch, len(big)-stream.HeaderLen, big[stream.HeaderLen:]); !strings.Contains(re.Message, fmt.Sprint(cost)) ||
		!strings.Contains(re.Message, fmt.Sprint(budget)) {
		t.Errorf("refusal %q does not name the frame's %d bytes and the budget's %d", re.Message, cost, budget)
	}
	if !strings.Contains(r.log.String(), "max_inflight") {
		t.Errorf("refusals not logged:\n%s", r.log.String())
	}
}

// A tenant's connections are bounded by its max_streams: one more is
// refused as unavailable, naming the limit, unless it replaces its group's
// stream (a host reconnecting after a half-open connection).
func TestMaxStreams(t *testing.T) {
	r := startWith(t, func(srv *receiver.Server) {
		srv.MaxStreams = func(tenant string) int {
			if tenant == "alpha" {
				return 2
			}
			return 0
		}
	})
	open := func(tenant, host, group string) (*client, error) {
		c, err := dial(t, r, r.pki.Client(tenant, host))
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.hello(group, 0)
		return c, err
	}
	first, err := open("alpha", "kvm-a1", "web")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := open("alpha", "kvm-a1", "db-1"); err != nil {
		t.Fatal(err)
	}
	_, err = open("alpha", "kvm-a1", "db-2")
	if re := refusal(t, err, stream.CodeUnavailable); !strings.Contains(re.Message, "max_streams is 2") {
		t.Errorf("refusal %q does not name the limit", re.Message)
	}
	if !strings.Contains(r.log.String(), "max_streams is 2") {
		t.Errorf("refusal not logged:\n%s", r.log.String())
	}
	// Another tenant is not limited by alpha's streams.
	if _, err := open("beta", "kvm-b1", "payroll"); err != nil {
		t.Fatal(err)
	}
	// A reconnect replaces its group's stream even at the limit.
	if _, err := open("alpha", "kvm-a2", "web"); err != nil {
		t.Fatalf("reconnect at the limit: %v", err)
	}
	refusal(t, func() error { _, err := first.answer(); return err }(), stream.CodeReplaced)
}

// Connections that have not sent their Hello yet count too: beyond twice
// max_streams one is refused before its Hello.
func TestMaxStreamsBeforeHello(t *testing.T) {
	r := startWith(t, func(srv *receiver.Server) { srv.MaxStreams = func(string) int { return 1 } })
	var cs []*client
	for range 3 {
		c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
		if err != nil {
			t.Fatal(err)
		}
		c.c.SetDeadline(time.Now().Add(5 * time.Second))
		cs = append(cs, c)
	}
	// Whichever the server counted third is refused; the others wait for
	// their Hello.
	errs := make(chan error, len(cs))
	for _, c := range cs {
		go func() { _, err := c.answer(); errs <- err }()
	}
	re := refusal(t, <-errs, stream.CodeUnavailable)
	if !strings.Contains(re.Message, "max_streams is 1") {
		t.Errorf("refusal %q does not name the limit", re.Message)
	}
	for _, c := range cs {
		c.c.Close()
	}
	for range len(cs) - 1 {
		if err := <-errs; err == nil {
			t.Error("a connection without a Hello was answered")
		}
	}
}
