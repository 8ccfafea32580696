package chaos

import (
	"strings"
	"testing"
)

// TestTable: the summary names the seed and how to replay, counts every
// kind (skipped ones with why), the checks and the findings, and the
// result.
func TestTable(t *testing.T) {
	tl := NewTally(77, 40, nil)
	tl.Injected(LinkCut)
	tl.Injected(LinkCut)
	tl.Effective(LinkCut)
	tl.Note(HostStop, "watchdog kills")
	tl.Update(func(t *Tally) { t.Rounds, t.Points, t.Bytes = 3, 5, 3<<30 })
	tl.Update(func(t *Tally) { t.Open["F2"] = 4 })
	got := tl.Table()
	for _, want := range []string{
		"seed 77, 2 faults in 3 rounds",
		"replay: make chaos SEED=77 FAULTS=40\n",
		"link-cut                    2         1",
		"host-stop                   0         0  watchdog kills 1",
		"5 restore points checked against the model, 3.00 GiB compared",
		"open finding F2 seen 4 times",
		"result: PASS\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("summary lacks %q:\n%s", want, got)
		}
	}
	tl.Fail("round 2: a loss")
	if got := tl.Table(); !strings.HasSuffix(got, "result: FAIL: round 2: a loss\n") {
		t.Errorf("a failed run's summary ends %q", got[len(got)-60:])
	}
}
