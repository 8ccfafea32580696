package protect

import (
	"context"
	"testing"
	"time"

	"github.com/qcdp/qcdp/hypervisor"
)

func recopyEngine(t *testing.T) (*Engine, *fakeQEMU, func(string) int) {
	q := newFakeQEMU(t, "node-vm1")
	src := &fakeSource{
		vms:  []hypervisor.VM{{ID: "vm1", Name: "vm1", Running: true, Source: hypervisor.SourceQMP}},
		qemu: map[string]*fakeQEMU{"vm1": q},
	}
	e, _ := newEngine(t, src)
	count := func(name string) int {
		n := 0
		for _, c := range q.srv.Commands() {
			if c.Name == name {
				n++
			}
		}
		return n
	}
	return e, q, count
}

// TestReviewRecopyKeepsOperatorPause (review): the operator paused vm1; a re-copy becomes owed; the periodic
// scan re-attached the VM and the pause was gone without anyone saying
// so. Now the re-copy waits for the operator's resume.
func TestReviewRecopyKeepsOperatorPause(t *testing.T) {
	e, _, count := recopyEngine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e.scan(ctx)
	waitDisk(t, e, "g1", "vm1", "initial-sync")
	if err := e.Pause(ctx, "vm1", ""); err != nil {
		t.Fatal(err)
	}
	waitDisk(t, e, "g1", "vm1", "paused")
	e.groups["g1"].Sequencer().OweRecopy("vm1.vda")
	e.scan(ctx)
	for deadline := time.Now().Add(5 * time.Second); count("blockdev-mirror") != 2 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	v, _ := e.find("vm1")
	st := groupStatus(t, e, "g1").Disks[0].State
	if werr := v.disks[0].exp.WriteAt(ctx, []byte{1}, 0); st != "paused" || werr == nil {
		t.Fatalf("operator's pause lost by the automatic re-copy: disk %s, capture export takes writes (err %v)", st, werr)
	}
}

// TestReviewSecondLossyHealRecopied (review): a second lossy heal after the first re-copy started: the disk is
// owed again, but its capture is the re-copy one (dc.recopy stays true for
// its whole life), so recopies never re-attaches it and ResyncEnd is
// refused for ever: no restore point until a daemon restart. Now a disk
// owed again is re-copied again.
func TestReviewSecondLossyHealRecopied(t *testing.T) {
	e, _, count := recopyEngine(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	e.scan(ctx)
	waitDisk(t, e, "g1", "vm1", "initial-sync")
	g := e.groups["g1"]
	g.Sequencer().OweRecopy("vm1.vda")
	e.scan(ctx)
	for deadline := time.Now().Add(5 * time.Second); (len(g.Sequencer().RecopyOwed()) != 0 || count("blockdev-mirror") != 2) && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if count("blockdev-mirror") != 2 {
		t.Fatal("first re-copy did not start")
	}
	// The second heal loses answered writes again.
	g.Sequencer().OweRecopy("vm1.vda")
	for range 3 {
		e.scan(ctx)
		time.Sleep(100 * time.Millisecond)
	}
	if n := count("blockdev-mirror"); n != 3 {
		t.Fatalf("a re-copy is owed again (%q) but no new copy started (%d mirrors): its ResyncEnd is refused for ever", g.Sequencer().RecopyOwed(), n)
	}
}
