package failover

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/replica/journal"
)

// review4Fixture is newFixture with two plans (tenant/group pairs).
func review4Fixture(t *testing.T, pairs ...[2]string) (*Engine, *fakeSite, *fakeLibvirt, []*configs.Recovery) {
	t.Helper()
	e, site, lv, p := newFixture(t)
	var plans []*configs.Recovery
	for _, tg := range pairs {
		q := *p
		q.Tenant, q.Group = tg[0], tg[1]
		plans = append(plans, &q)
	}
	e.cfg.Recoveries = plans
	return e, site, lv, plans
}

// TestReview4ExportIDCollision: exportID joins tenant and group with a dot,
// and both may hold dots: tenant "a.b" group "c" and tenant "a" group
// "b.c" get the same export id. The second failover's ExportAs fails ("in
// use"), and its undo-on-failure (teardown) then Unexports the id: the
// other tenant's view, under its running standbys.
func TestReview4ExportIDCollision(t *testing.T) {
	ctx := context.Background()
	e, site, _, _ := review4Fixture(t, [2]string{"a.b", "c"}, [2]string{"a", "b.c"})
	if exportID("a.b", "c", ModeTest) == exportID("a", "b.c", ModeTest) {
		t.Fatalf("tenant a.b group c and tenant a group b.c have one export id %q", exportID("a", "b.c", ModeTest))
	}
	st, err := e.Failover(ctx, "a.b", "c", ModeTest, journal.Target{})
	if err != nil {
		t.Fatal(err)
	}
	// Tenant a's VMs have names of their own.
	defs := append([]journal.DefinitionAt(nil), site.defs...)
	for i := range defs {
		defs[i].Def.Name = "a-" + defs[i].Def.Name
	}
	site.defs = defs
	_, err = e.Failover(ctx, "a", "b.c", ModeTest, journal.Target{})
	t.Logf("second tenant's failover: %v", err)
	site.mu.Lock()
	defer site.mu.Unlock()
	if !site.exports[st.Export] {
		t.Fatalf("tenant a.b's view %q (its standbys' backing) was withdrawn by tenant a's failed failover", st.Export)
	}
}

// TestReview4SharedTestNetworkRemoved: two groups' test failovers share
// the plan's test_network. The first defined it (CreatedNetwork), the
// second found it running. Cleaning up the first removes the network
// under the second's running standbys.
func TestReview4SharedTestNetworkRemoved(t *testing.T) {
	ctx := context.Background()
	e, _, lv, _ := review4Fixture(t, [2]string{"t", "g"}, [2]string{"t", "g2"})
	if _, err := e.Failover(ctx, "t", "g", ModeTest, journal.Target{}); err != nil {
		t.Fatal(err)
	}
	// g2's VMs have other names (no domain clash): another host's VMs.
	for _, d := range []string{"web1-qcdp-test", "db1-qcdp-test"} {
		lv.domains["g-"+d] = lv.domains[d]
		delete(lv.domains, d)
	}
	st2, err := e.Failover(ctx, "t", "g2", ModeTest, journal.Target{})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"web1-qcdp-test", "db1-qcdp-test"} {
		lv.domains[d+"-g2"] = lv.domains[d]
		delete(lv.domains, d)
		lv.domains[d] = lv.domains["g-"+d]
		delete(lv.domains, "g-"+d)
	}
	if err := e.Cleanup(ctx, "t", "g"); err != nil {
		t.Fatal(err)
	}
	if !lv.networks["qcdp-test"] {
		t.Fatalf("cleanup of group g removed the test network qcdp-test while group g2's standbys (%v) run on it", st2.VMs[0].Domain)
	}
}

// TestReview4ResumeDamagedStateFailsOpen: a real failover's state file is
// damaged (a flipped bit, a torn disk). After a restart Resume reports it
// but does not fence the group: the daemon serves, and the failed-over
// group's host is welcomed again while its standbys run (split brain).
// The tenant and group are known from the plan: fence it anyway.
func TestReview4ResumeDamagedStateFailsOpen(t *testing.T) {
	ctx := context.Background()
	e, site, _, p := newFixture(t)
	if _, err := e.Failover(ctx, "t", "g", ModeStart, journal.Target{}); err != nil {
		t.Fatal(err)
	}
	path := statePath(p, "t", "g")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)-3] ^= 1
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	// The replica daemon restarts: a new site (no fences), a new engine.
	site2 := &fakeSite{exports: map[string]bool{}, sockets: map[string]bool{}, fenced: map[string]string{},
		point: site.point, last: site.last, decl: site.decl, defs: site.defs}
	e2 := New(site2, e.cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	e2.Dial = e.Dial
	defer e2.Close()
	err = e2.Resume(ctx)
	t.Logf("Resume: %v", err)
	if site2.fenced["t/g"] == "" {
		t.Fatal("a group with a real failover (its state file damaged) is not fenced after a restart: its host streams again")
	}
}

// TestReview4ResumeWithoutPlanFailsOpen: the operator edits the replica
// policy while a real failover runs (removes the group's [[recovery]], or
// changes its standby_dir) and restarts the daemon: Resume looks for state
// files only through the plans, so the group is not fenced, its standbys'
// view is not served, and no command can undo it (no plan).
func TestReview4ResumeWithoutPlanFailsOpen(t *testing.T) {
	ctx := context.Background()
	e, site, _, p := newFixture(t)
	if _, err := e.Failover(ctx, "t", "g", ModeStart, journal.Target{}); err != nil {
		t.Fatal(err)
	}
	q := *p
	q.StandbyDir = filepath.Join(t.TempDir(), "moved")
	cfg := *e.cfg
	cfg.Recoveries = []*configs.Recovery{&q}
	site2 := &fakeSite{exports: map[string]bool{}, sockets: map[string]bool{}, fenced: map[string]string{},
		point: site.point, last: site.last, decl: site.decl, defs: site.defs}
	e2 := New(site2, &cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	e2.Dial = e.Dial
	defer e2.Close()
	err := e2.Resume(ctx)
	if err == nil && site2.fenced["t/g"] == "" {
		t.Fatal("Resume says nothing and leaves a failed-over group unfenced after its plan's standby_dir changed")
	}
}
