package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/filter"
	"github.com/qcdp/qcdp/shipper"
)

// stallTarget is a capture export whose first resync write waits for
// release, so a test can stop a daemon mid-copy.
type stallTarget struct {
	*shipper.CaptureExport
	once    sync.Once
	started chan struct{}
	release chan struct{}
}

func (s *stallTarget) ResyncWrite(p []byte, off int64) error { // inside a commit
	s.once.Do(func() { close(s.started) })
	<-s.release
	return s.CaptureExport.ResyncWrite(p, off)
}

// TestReviewResyncAdoptedAfterKillMidCopy (review): a daemon killed mid-copy leaves its
// resync export (holding the frozen bitmap busy); the next daemon adopts
// the job and must finish the resync. It stayed in resync for good: the
// freeze of the adopted resync failed on the bitmap the export held busy.
func TestReviewResyncAdoptedAfterKillMidCopy(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f := newResyncFixture(ctx, t, "")
	var err error
	f.runSynced(ctx, t, "qcdp-disk0")
	dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
	defer dcancel()
	if err := f.c.Detach(dctx); err != nil {
		t.Fatal(err)
	}
	<-f.ran
	f.ran <- nil
	for i := range 4 {
		if err := f.q.QemuIO(ctx, "disk0", fmt.Sprintf("write -P 0x%02x %d 16384", 0x50+i, int64(i)*1536*1024+4096)); err != nil {
			t.Fatal(err)
		}
	}
	// Daemon 2: attaches, stalls in the copy.
	st := &stallTarget{CaptureExport: f.exp, started: make(chan struct{}), release: make(chan struct{})}
	cfg2 := f.cfg
	cfg2.Resync = st
	c2, err := filter.New(f.q.QMP, cfg2, f.seq)
	if err != nil {
		t.Fatal(err)
	}
	ran2 := make(chan error, 1)
	ctx2, stop2 := context.WithCancel(ctx)
	go func() { ran2 <- c2.Run(ctx2) }()
	select {
	case <-st.started:
	case <-ctx.Done():
		t.Fatal("resync never started")
	}
	// "kill -9": the loop stops; a killed daemon would not remove its export,
	// so put it back as the killed daemon left it.
	stop2()
	close(st.release)
	<-ran2
	// A killed daemon leaves QEMU's NBD server running too.
	if err := f.q.QMP.Execute(ctx, "nbd-server-start", map[string]any{
		"addr": map[string]any{"type": "unix", "data": map[string]any{"path": f.cfg.NBDSocket}}}, nil); err != nil &&
		!strings.Contains(err.Error(), "already running") {
		t.Fatal(err)
	}
	if err := f.q.QMP.Execute(ctx, "block-export-add", map[string]any{"type": "nbd", "id": filter.ResyncExport("disk0"),
		"node-name": filter.FilterNode("disk0"), "name": filter.ResyncExport("disk0"), "writable": false,
		"bitmaps": []string{"qcdp-disk0.resync"}}, nil); err != nil {
		t.Fatalf("re-create the export a killed daemon leaves: %v", err)
	}
	// Daemon 3 adopts.
	c3, err := filter.New(f.q.QMP, f.cfg, f.seq)
	if err != nil {
		t.Fatal(err)
	}
	ran3 := make(chan error, 1)
	ctx3, stop3 := context.WithCancel(ctx)
	defer func() { stop3(); <-ran3 }()
	go func() { ran3 <- c3.Run(ctx3) }()
	wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
	defer wcancel()
	s, werr := c3.WaitState(wctx, filter.Syncing, filter.Error)
	p, _ := c3.Progress()
	if s != filter.Syncing {
		t.Fatalf("adopted after a kill mid-resync: still %s after 20 s (%v); resync %+v", s, werr, p)
	}
}
