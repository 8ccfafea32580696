package spool

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
)

// TestKill9 runs a real appender in a child process, kills it with SIGKILL
// in full flight, and checks that every Append that had returned is in the
// reopened spool, whatever the kill cut.
func TestKill9(t *testing.T) {
	if dir := os.Getenv("QCDP_SPOOL_KILL_CHILD"); dir != "" {
		killChild(dir)
		return
	}
	dir := t.TempDir()
	for round := 0; round < 3; round++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKill9$")
		cmd.Env = append(os.Environ(), "QCDP_SPOOL_KILL_CHILD="+dir)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Drain the child's output all along, so that the kill lands while it
		// appends, not while it waits on a full pipe.
		reached := make(chan struct{})
		last := make(chan uint64, 1)
		go func() {
			sc := bufio.NewScanner(out)
			var seq uint64
			for sc.Scan() {
				n, err := strconv.ParseUint(sc.Text(), 10, 64)
				if err != nil {
					continue // the test framework's own output
				}
				seq = n
				if seq == uint64(round+1)*3000 {
					close(reached)
				}
			}
			last <- seq
		}()
		select {
		case <-reached:
		case seq := <-last:
			cmd.Wait()
			t.Fatalf("the child stopped by itself after seq %d", seq)
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		acked := <-last // every seq the child printed before it died
		cmd.Wait()
		if acked == 0 {
			t.Fatal("the child appended nothing")
		}
		s := mustOpen(t, Options{Dir: dir, SegmentBytes: 256 << 10})
		if s.LastSeq() < acked {
			t.Fatalf("round %d: Append returned for seq %d, spool ends at %d", round, acked, s.LastSeq())
		}
		checkAll(t, s, 1, s.LastSeq())
		s.Close()
	}
}

// killChild appends forever, printing each seq once Append has returned.
func killChild(dir string) {
	s, err := Open(context.Background(), Options{Dir: dir, Group: "g1", SegmentBytes: 256 << 10, Logger: quiet})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	w := bufio.NewWriterSize(os.Stdout, 64)
	for {
		r := genRecord(s.LastSeq() + 1)
		if err := s.Append(&r); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Fprintln(w, r.Seq)
		w.Flush()
	}
}
