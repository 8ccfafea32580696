package record

import (
	"encoding/json"
	"testing"
)

// JSON carries kinds by name, and every name reads back to its value.
func TestKindText(t *testing.T) {
	for _, c := range []struct {
		m    MarkerKind
		want string
	}{
		{0, `"none"`}, {SyncComplete, `"sync-complete"`}, {CrashConsistent, `"crash-consistent"`},
		{AppConsistent, `"app-consistent"`}, {UserBookmark, `"user-bookmark"`},
		{ResyncBegin, `"resync-begin"`}, {ResyncEnd, `"resync-end"`}, {200, `"marker(200)"`},
	} {
		b, err := json.Marshal(c.m)
		if err != nil || string(b) != c.want {
			t.Errorf("marker kind %d: %s %v, want %s", uint8(c.m), b, err, c.want)
		}
		var back MarkerKind
		if err := json.Unmarshal(b, &back); err != nil || back != c.m {
			t.Errorf("marker kind %s read back as %d (%v)", b, uint8(back), err)
		}
	}
	for _, k := range []Kind{Data, Zero, Trim, Marker, 9} {
		b, err := json.Marshal(k)
		if err != nil || string(b) != `"`+k.String()+`"` {
			t.Errorf("kind %d: %s %v", uint8(k), b, err)
		}
		var back Kind
		if err := json.Unmarshal(b, &back); err != nil || back != k {
			t.Errorf("kind %s read back as %d (%v)", b, uint8(back), err)
		}
	}
	// In a struct, as journal.Point carries it.
	b, _ := json.Marshal(struct {
		Kind MarkerKind `json:"kind"`
	}{SyncComplete})
	if string(b) != `{"kind":"sync-complete"}` {
		t.Errorf("in a struct: %s", b)
	}
	for _, bad := range []string{`""`, `"sync"`, `"marker(300)"`, `"marker(x)"`, `"marker(1"`, `1`} {
		var m MarkerKind
		if err := json.Unmarshal([]byte(bad), &m); err == nil {
			t.Errorf("marker kind %s was read as %d", bad, uint8(m))
		}
	}
	var k Kind
	if err := json.Unmarshal([]byte(`"kind(x)"`), &k); err == nil {
		t.Errorf(`kind "kind(x)" was read`)
	}
}
