package failover

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/qcdp/qcdp/hypervisor"
	"github.com/qcdp/qcdp/replica/journal"
)

// slowPull is a libvirt whose block pulls never end.
type slowPull struct{ *fakeLibvirt }

func (l slowPull) BlockJobInfo(ctx context.Context, name, target string) (hypervisor.BlockJob, error) {
	return hypervisor.BlockJob{Active: true, Cur: 1, End: 2}, nil
}
func (l slowPull) BlockPull(ctx context.Context, name, target string) error { return nil }

// TestReview4CommitWatchersPileUp: every Commit of a group already
// committing (an operator re-running `qcdp failover commit`, or its --wait
// loop after an interruption) starts one more watcher goroutine, each
// polling libvirt every 500 ms (a new connection each time) and taking the
// group's busy lock, until the pull ends.
func TestReview4CommitWatchersPileUp(t *testing.T) {
	ctx := context.Background()
	e, _, lv, _ := newFixture(t)
	e.Dial = func(ctx context.Context, uri string) (Libvirt, error) { return slowPull{lv}, nil }
	if _, err := e.Failover(ctx, "t", "g", ModeStart, journal.Target{}); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	n := 0
	for i := 0; i < 20; i++ {
		if _, err := e.Commit(ctx, "t", "g"); err == nil {
			n++
		}
		time.Sleep(10 * time.Millisecond)
	}
	after := runtime.NumGoroutine()
	if after-before > 1 {
		t.Fatalf("%d successful Commits of one group left %d watcher goroutines", n, after-before)
	}
}
