package chaos

import (
	"reflect"
	"testing"
)

func draw(t *testing.T, seed uint64, only []Kind, faults int) []Round {
	t.Helper()
	s, err := NewSchedule(seed, only)
	if err != nil {
		t.Fatal(err)
	}
	var rs []Round
	for s.Faults() < faults {
		rs = append(rs, s.Next())
	}
	return rs
}

// TestSchedule: a seed replays the same faults; the first rounds cover
// every kind; solo kinds are alone; a round's faults use distinct
// resources; the mix keeps costly kinds rare.
func TestSchedule(t *testing.T) {
	a, b := draw(t, 42, nil, 1000), draw(t, 42, nil, 1000)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("the same seed drew two schedules")
	}
	if reflect.DeepEqual(a, draw(t, 43, nil, 1000)) {
		t.Fatal("two seeds drew the same schedule")
	}
	seen := map[Kind]int{}
	solo := 0
	for i, r := range a {
		res := map[string]bool{}
		for _, f := range r.Faults {
			seen[f.Kind]++
			ki, _ := Info(f.Kind)
			if ki.Solo && len(r.Faults) != 1 {
				t.Errorf("%v: a solo kind shares its round", r)
			}
			if !ki.Solo && res[ki.Resource] {
				t.Errorf("%v: two faults on %s", r, ki.Resource)
			}
			res[ki.Resource] = true
		}
		if r.Solo() {
			solo++
		}
		if i == injectable()-1 { // by now the coverage draws are done
			for _, ki := range Kinds {
				if ki.Skip == "" && seen[ki.Kind] == 0 {
					t.Errorf("kind %s not drawn in the first rounds", ki.Kind)
				}
			}
		}
	}
	for _, ki := range Kinds {
		if ki.Skip != "" && seen[ki.Kind] != 0 {
			t.Errorf("skipped kind %s was drawn", ki.Kind)
		}
	}
	if solo > 150 {
		t.Errorf("%d solo rounds in 1000 faults: too costly for an hour", solo)
	}
	only := draw(t, 42, []Kind{LinkCut, HostKill}, 50)
	for _, r := range only {
		for _, f := range r.Faults {
			if f.Kind != LinkCut && f.Kind != HostKill {
				t.Errorf("kind %s drawn outside the filter", f.Kind)
			}
		}
	}
	if _, err := ParseKinds("link-cut,nonsense"); err == nil {
		t.Error("an unknown kind parsed")
	}
}

// injectable is how many kinds are injected (not skipped).
func injectable() int {
	n := 0
	for _, ki := range Kinds {
		if ki.Skip == "" && ki.Weight > 0 {
			n++
		}
	}
	return n
}
