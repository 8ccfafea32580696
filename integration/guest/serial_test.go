package guest

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseEvent(t *testing.T) {
	tests := []struct {
		line string
		want Event
		ok   bool
	}{
		{"QCDP-READY disks=2 t=3000000000", Event{Kind: Ready, Guest: 3 * time.Second}, true},
		{"QCDP-SYNCED seq=64 t=5", Event{Kind: Synced, Seq: 64, Guest: 5}, true},
		{"[    2.1] virtio_blk: tainted QCDP-DONE seq=3000 t=7", Event{Kind: Done, Seq: 3000, Guest: 7}, true},
		{"QCDP-ERROR write seq 5 to vda block 3: EIO", Event{Kind: Error}, true},
		{"QCDP-SYNCED seq=x", Event{Kind: Synced}, true},
		{"QCDP-OTHER seq=1", Event{}, false},
		{"QCDP-", Event{}, false},
		{"Linux version 6.1", Event{}, false},
	}
	for _, tt := range tests {
		got, ok := ParseEvent(tt.line)
		if ok {
			tt.want.Line = tt.line
		}
		if ok != tt.ok || got != tt.want {
			t.Errorf("ParseEvent(%q) = %+v, %v; want %+v, %v", tt.line, got, ok, tt.want, tt.ok)
		}
	}
}

func FuzzParseEvent(f *testing.F) {
	f.Add("QCDP-SYNCED seq=64 t=5")
	f.Add("QCDP-")
	f.Fuzz(func(t *testing.T, line string) { ParseEvent(line) })
}

// console feeds lines to a Serial the way QEMU's stdout does.
// end closes the console and returns how copy ended.
func console(t *testing.T) (s *Serial, w *io.PipeWriter, end func() error) {
	s = newSerial("test.log")
	r, w := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- s.copy(r, io.Discard) }()
	end = sync.OnceValue(func() error {
		w.Close()
		return <-done
	})
	t.Cleanup(func() {
		if err := end(); err != nil {
			t.Error(err)
		}
	})
	return s, w, end
}

func TestSerialWait(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, w, _ := console(t)
	got := make(chan Event, 1)
	go func() {
		ev, err := s.Wait(ctx, Synced, 20)
		if err != nil {
			t.Error(err)
		}
		got <- ev
	}()
	io.WriteString(w, "QCDP-READY disks=1 t=1\r\nnoise\nQCDP-SYNCED seq=10 t=2\nQCDP-SYNCED seq=20 t=3\n")
	if ev := <-got; ev.Seq != 20 || ev.At.IsZero() {
		t.Errorf("Wait(Synced, 20) = %+v", ev)
	}
	// Events already seen are found again.
	if ev, err := s.Wait(ctx, Ready, 0); err != nil || ev.Guest != 1 {
		t.Errorf("Wait(Ready) = %+v, %v", ev, err)
	}
	short, cancelShort := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancelShort()
	if _, err := s.Wait(short, Done, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait(Done) before it came = %v, want DeadlineExceeded", err)
	}
}

func TestSerialWaitGuestError(t *testing.T) {
	s, w, _ := console(t)
	io.WriteString(w, "QCDP-ERROR fdatasync vda after seq 9: input/output error\n")
	_, err := s.Wait(context.Background(), Done, 0)
	if !errors.Is(err, ErrGuest) || !strings.Contains(err.Error(), "input/output error") {
		t.Errorf("Wait after QCDP-ERROR = %v, want ErrGuest with the line", err)
	}
}

func TestSerialWaitEnd(t *testing.T) {
	s, w, end := console(t)
	io.WriteString(w, "QCDP-READY disks=1 t=1\npartial line without newline")
	if err := end(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Wait(context.Background(), Done, 0); !errors.Is(err, ErrExited) {
		t.Errorf("Wait after the console ended = %v, want ErrExited", err)
	}
}
