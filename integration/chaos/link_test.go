package chaos

import (
	"bytes"
	"io"
	"net"
	"testing"
	"time"
)

// echo serves a TCP echo on loopback until the test ends.
func echo(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(t *testing.T, c net.Conn, msg []byte, within time.Duration) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	c.SetDeadline(start.Add(within))
	if _, err := c.Write(msg); err != nil {
		return 0, err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return 0, err
	}
	if !bytes.Equal(got, msg) {
		t.Fatalf("echo through the link changed the bytes")
	}
	return time.Since(start), nil
}

// TestLink: each condition does what it says to a real TCP connection.
func TestLink(t *testing.T) {
	l, err := NewLink(echo(t))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", l.Addr())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := dial()
	if _, err := roundTrip(t, c, []byte("hello"), time.Second); err != nil {
		t.Fatalf("clear link: %v", err)
	}

	l.Set(Condition{Delay: 100 * time.Millisecond})
	if d, err := roundTrip(t, c, []byte("slow"), 2*time.Second); err != nil || d < 200*time.Millisecond {
		t.Fatalf("delay 100ms each way: round trip %v, %v", d, err)
	}

	l.Set(Condition{Rate: 64 << 10})
	if d, err := roundTrip(t, c, make([]byte, 32<<10), 5*time.Second); err != nil || d < 400*time.Millisecond { // the two directions overlap
		t.Fatalf("32 KiB each way at 64 KiB/s: round trip %v, %v", d, err)
	}

	l.Set(Condition{Hold: true})
	if _, err := roundTrip(t, c, []byte("held"), 300*time.Millisecond); err == nil {
		t.Fatal("a held link delivered")
	}
	l.Set(Condition{})
	got := make([]byte, 4)
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "held" {
		t.Fatalf("after the partition healed: %q, %v", got, err)
	}

	l.Set(Condition{Cut: true})
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Read(got); err == nil {
		t.Fatal("a cut connection still reads")
	}
	if c2, err := net.Dial("tcp", l.Addr()); err == nil {
		if _, err := roundTrip(t, c2, []byte("x"), 500*time.Millisecond); err == nil {
			t.Fatal("a new connection went through a cut link")
		}
	}
	l.Set(Condition{})
	if _, err := roundTrip(t, dial(), []byte("back"), time.Second); err != nil {
		t.Fatalf("after the cut healed: %v", err)
	}
	if acc, resets, _ := l.Stats(); acc < 3 || resets < 2 {
		t.Errorf("stats: %d accepted, %d resets", acc, resets)
	}
}
