package qmptest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/qcdp/qcdp/qmp"
	"github.com/qcdp/qcdp/qmp/qmptest"
)

// Like a QEMU monitor, the server takes the next client once the first is
// gone, and answers each with the handler's lines: reply first, then events.
func TestServerServesOneClientAfterAnother(t *testing.T) {
	s := qmptest.NewServer(t, func(c qmptest.Command) []string {
		if c.Name != "query-block-jobs" {
			return []string{qmptest.Error(qmp.ClassCommandNotFound, "no "+c.Name)}
		}
		return []string{qmptest.Return([]any{map[string]any{"device": "j1", "len": 1, "offset": 1, "ready": true, "io-status": "ok"}}),
			qmptest.Event(qmp.EventBlockJobReady, map[string]any{"device": "j1"})}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 2 {
		c, err := qmp.Dial(ctx, s.Path())
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		events, err := c.Subscribe(ctx, qmp.EventBlockJobReady)
		if err != nil {
			t.Fatal(err)
		}
		jobs, err := c.QueryBlockJobs(ctx)
		if err != nil || len(jobs) != 1 || jobs[0].Device != "j1" || !jobs[0].Ready {
			t.Fatalf("client %d: jobs %+v, %v", i, jobs, err)
		}
		if _, err := qmp.Wait(ctx, events, func(e qmp.Event) bool { return e.Str("device") == "j1" }); err != nil {
			t.Fatalf("client %d: event: %v", i, err)
		}
		if err := c.Execute(ctx, "x-nothing", nil, nil); !qmp.IsCommandNotFound(err) {
			t.Errorf("client %d: unknown command: %v", i, err)
		}
		s.HangUp()
		if _, err := qmp.Wait(ctx, events, func(qmp.Event) bool { return false }); !errors.Is(err, qmp.ErrClosed) {
			t.Fatalf("client %d: after a hang-up: %v", i, err)
		}
		c.Close()
	}
	if got := len(s.Commands()); got != 4 {
		t.Errorf("%d commands logged, want 4", got)
	}
}
