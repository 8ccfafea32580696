package journal

import (
	"reflect"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
)

// sec is the test's clock: second n after t0.
func sec(n int64) int64 { return t0 + n*1e9 }

func TestWindowStart(t *testing.T) {
	// Ten records, seqs 11..20, one per second from second 1, each 100
	// bytes long when encoded.
	var recs []entry
	for i := range 10 {
		recs = append(recs, entry{seq: uint64(11 + i), time: sec(int64(i + 1)), kind: record.Zero, hlen: 100})
	}
	now := time.Unix(0, sec(10))
	for _, tc := range []struct {
		name string
		recs []entry
		ret  Retention
		want uint64
	}{
		{"no bound", recs, Retention{}, 11},
		{"window keeps all", recs, Retention{Window: time.Hour}, 11},
		{"window of 5s", recs, Retention{Window: 5 * time.Second}, 15}, // records from second 5 on
		{"window of 0.5s: the newest only", recs, Retention{Window: 500 * time.Millisecond}, 20},
		{"bytes keep 3 records", recs, Retention{WindowBytes: 350}, 18},
		{"bytes keep all", recs, Retention{WindowBytes: 1 << 20}, 11},
		{"bytes below one record", recs, Retention{WindowBytes: 99}, 21},
		{"the tighter bound wins: bytes", recs, Retention{Window: 5 * time.Second, WindowBytes: 200}, 19},
		{"the tighter bound wins: time", recs, Retention{Window: 2 * time.Second, WindowBytes: 500}, 18},
		{"empty window", nil, Retention{Window: time.Second}, 11},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := windowStart(tc.recs, 11, tc.ret, now); got != tc.want {
				t.Fatalf("windowStart = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestKeptBookmarks(t *testing.T) {
	cands := []candidate{
		{seq: 9, time: sec(9), mk: record.UserBookmark, name: "b9"},
		{seq: 3, time: sec(3), mk: record.AppConsistent, name: "a3"},
		{seq: 5, time: sec(5), mk: record.CrashConsistent},
		{seq: 7, time: sec(7), mk: record.CrashConsistent, name: "app-fell-back"}, // an app bookmark whose freeze fell back
		{seq: 6, time: sec(6)},
		{seq: 1, time: sec(1), mk: record.UserBookmark, name: "b1"},
	}
	now := time.Unix(0, sec(10))
	for _, tc := range []struct {
		keep time.Duration
		want []uint64
	}{
		{0, nil},
		{500 * time.Millisecond, nil},
		{time.Second, []uint64{9}}, // the bound is inclusive
		{7 * time.Second, []uint64{3, 7, 9}},
		{time.Hour, []uint64{1, 3, 7, 9}}, // unnamed crash-consistent points and plain boundaries are no bookmarks
	} {
		if got := keptBookmarks(cands, tc.keep, now); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("keep %v: %v, want %v", tc.keep, got, tc.want)
		}
	}
}

func TestKeptBySchedule(t *testing.T) {
	// A candidate every 3 s from second 0 to second 30.
	var cands []candidate
	for s := int64(0); s <= 30; s += 3 {
		cands = append(cands, candidate{seq: uint64(100 + s), time: sec(s)})
	}
	now := time.Unix(0, sec(30))
	for _, tc := range []struct {
		name string
		sc   Schedule
		want []uint64
	}{
		{"zero every", Schedule{Keep: time.Hour}, nil},
		{"zero keep", Schedule{Every: time.Second}, nil},
		// Slots of 10 s aligned on the epoch (t0 is a multiple of 10 s):
		// the newest candidate of each.
		{"every 10s", Schedule{Every: 10 * time.Second, Keep: time.Hour}, []uint64{109, 118, 127, 130}},
		{"every 10s for 15s", Schedule{Every: 10 * time.Second, Keep: 15 * time.Second}, []uint64{118, 127, 130}},
		{"every 1s: each one", Schedule{Every: time.Second, Keep: 7 * time.Second}, []uint64{124, 127, 130}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := keptBySchedule(cands, tc.sc, now); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("%v, want %v", got, tc.want)
			}
		})
	}
}

func TestKeptPoints(t *testing.T) {
	cands := []candidate{
		{seq: 2, time: sec(2)},
		{seq: 4, time: sec(4), mk: record.UserBookmark, name: "x"},
		{seq: 12, time: sec(12)},
		{seq: 18, time: sec(18)},
	}
	ret := Retention{
		Schedules: []Schedule{{Every: 10 * time.Second, Keep: 15 * time.Second}, {Every: 100 * time.Second, Keep: time.Hour}},
		Bookmarks: time.Hour,
	}
	want := map[uint64]bool{4: true, 18: true}
	if got := keptPoints(cands, ret, time.Unix(0, sec(20))); !reflect.DeepEqual(got, want) {
		t.Fatalf("%v, want %v", got, want)
	}
	if got := keptPoints(cands, Retention{Window: time.Second}, time.Unix(0, sec(20))); len(got) != 0 {
		t.Fatalf("no rule kept %v", got)
	}
}

func TestLayerBounds(t *testing.T) {
	for _, tc := range []struct {
		name  string
		keep  map[uint64]bool
		pins  map[uint64]int
		first uint64
		want  []uint64
	}{
		{"nothing below the window", nil, nil, 1, nil},
		{"only the window start", nil, nil, 10, []uint64{9}},
		{"kept points below", map[uint64]bool{3: true, 7: true}, nil, 10, []uint64{3, 7, 9}},
		{"kept points in the window are no bound", map[uint64]bool{3: true, 9: true, 12: true}, nil, 10, []uint64{3, 9}},
		{"an open view's point", map[uint64]bool{3: true}, map[uint64]int{5: 1, 3: 2, 11: 1}, 10, []uint64{3, 5, 9}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := layerBounds(tc.keep, tc.pins, tc.first); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("%v, want %v", got, tc.want)
			}
		})
	}
}

func TestPlanLayers(t *testing.T) {
	old := []layerRef{{from: 0, to: 5}, {from: 5, to: 9}, {from: 9, to: 12}}
	for _, tc := range []struct {
		name     string
		old      []layerRef
		bounds   []uint64
		oldFirst uint64
		want     []newLayer
	}{
		{
			"first fold: records only", nil, []uint64{4, 9}, 1,
			[]newLayer{{from: 0, to: 4, recs: true, recFrom: 0, reuse: -1}, {from: 4, to: 9, recs: true, recFrom: 4, reuse: -1}},
		},
		{
			"nothing moves: every layer kept", old, []uint64{5, 9, 12}, 13,
			[]newLayer{{from: 0, to: 5, olds: []int{0}, reuse: 0}, {from: 5, to: 9, olds: []int{1}, reuse: 1}, {from: 9, to: 12, olds: []int{2}, reuse: 2}},
		},
		{
			"the window moves: the newest layer takes records", old, []uint64{5, 9, 12, 20}, 13,
			[]newLayer{{from: 0, to: 5, olds: []int{0}, reuse: 0}, {from: 5, to: 9, olds: []int{1}, reuse: 1}, {from: 9, to: 12, olds: []int{2}, reuse: 2},
				{from: 12, to: 20, recs: true, recFrom: 12, reuse: -1}},
		},
		{
			"an expired point merges into its newer neighbour", old, []uint64{5, 12, 20}, 13,
			[]newLayer{{from: 0, to: 5, olds: []int{0}, reuse: 0}, {from: 5, to: 12, olds: []int{1, 2}, reuse: -1},
				{from: 12, to: 20, recs: true, recFrom: 12, reuse: -1}},
		},
		{
			"the base point expired", old, []uint64{9, 20}, 13,
			[]newLayer{{from: 0, to: 9, olds: []int{0, 1}, reuse: -1}, {from: 9, to: 20, olds: []int{2}, recs: true, recFrom: 12, reuse: -1}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := planLayers(tc.old, tc.bounds, tc.oldFirst)
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("\n%+v\nwant\n%+v", got, tc.want)
			}
		})
	}
}

func TestUnchanged(t *testing.T) {
	old := []layerRef{{from: 0, to: 5, kept: true}, {from: 5, to: 9}}
	same := []newLayer{{from: 0, to: 5, olds: []int{0}, reuse: 0}, {from: 5, to: 9, olds: []int{1}, reuse: 1}}
	for _, tc := range []struct {
		name   string
		layout []newLayer
		keep   map[uint64]bool
		moved  bool
		want   bool
	}{
		{"same layers, same flags", same, map[uint64]bool{5: true}, false, true},
		{"the window moved", same, map[uint64]bool{5: true}, true, false},
		{"a point is no longer kept", same, nil, false, false},
		{"a point is now kept", same, map[uint64]bool{5: true, 9: true}, false, false},
		{"a layer is rewritten", []newLayer{same[0], {from: 5, to: 9, olds: []int{1}, recs: true, reuse: -1}}, map[uint64]bool{5: true}, false, false},
		{"fewer layers", same[:1], map[uint64]bool{5: true}, false, false},
	} {
		if got := unchanged(tc.layout, old, tc.keep, tc.moved); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
