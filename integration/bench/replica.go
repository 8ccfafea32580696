package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/shipper/sender"
)

// The replica suite's goals (issue "The replica").
const (
	goalIngestPerCore = 300.0 // MB of records per CPU-second
	goalRPOp99        = time.Second
	rpoRate           = 50e6 // bytes per second the writer sustains
	goalViewOpen      = time.Second
	oneWayDelay       = 20 * time.Millisecond
)

// runReplica is the replica suite (see the package comment).
func runReplica(ctx context.Context, b *bench, out io.Writer) error {
	opts := b.opts
	p, err := newPKI(net.IPv4(127, 0, 0, 1), netemIP)
	if err != nil {
		return err
	}
	netem, why := netemWorks(ctx)
	fmt.Fprintf(out, "qcdp bench, replica suite: %d CPUs, %s, %d runs per cell (median), dir %s\n",
		runtime.NumCPU(), kernelLine(), opts.runs, b.dir)
	if netem {
		fmt.Fprintln(out, "delay link: netem in a network namespace (veth pair, netem on both ends)")
	} else {
		fmt.Fprintf(out, "delay link: a userspace TCP proxy on loopback; netem is unavailable in this kernel (%s)\n", why)
	}
	fmt.Fprintln(out)

	var rows []row
	allMet := true
	add := func(what, unit string, v float64, goal, verdict string) {
		if verdict != "" && verdict != "met" {
			allMet = false
		}
		rows = append(rows, row{what: what, unit: unit, cells: []float64{v}, goal: goal, verdict: verdict})
	}
	judge := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}

	// Ingest: zstd and raw take turns.
	n := int(opts.ingestMB * 1e6 / 4096)
	ratios := map[string]float64{}
	ing, err := b.medians([]target{{name: "zstd"}, {name: "raw"}}, func(t target) (result, error) {
		r, ratio, err := b.ingestRun(ctx, p, n, t.name == "zstd")
		ratios[t.name] = ratio
		return r, err
	})
	if err != nil {
		return fmt.Errorf("ingest: %w", err)
	}
	mb := float64(n) * 4096 / 1e6
	perCore := func(r result) float64 { return mb / r.cpu.target.Seconds() }
	sndPerCore := func(r result) float64 { return mb / r.cpu.client.Seconds() }
	goal := fmt.Sprintf(">= %.0f MB/s per core", goalIngestPerCore)
	for i, name := range []string{"zstd", "raw"} {
		add("ingest "+name+", wall", "MB/s", ing[i].mbPerSec, "", "")
		add("ingest "+name+", replica per core", "MB/cpu-s", perCore(ing[i]), goal, judge(perCore(ing[i]) >= goalIngestPerCore))
		add("ingest "+name+", host side (sender) per core", "MB/cpu-s", sndPerCore(ing[i]), "", "")
	}
	add("ingest replica per core, zstd / raw", "%", 100*perCore(ing[0])/perCore(ing[1]), "", "")
	add("wire bytes per record byte, zstd", "%", 100/ratios["zstd"], "", "")

	// RPO: loopback and the delayed link take turns.
	var loop, slow []rpoResult
	var how string
	for range opts.runs {
		r, _, err := b.rpoRun(ctx, p, false, netem)
		if err != nil {
			return fmt.Errorf("rpo on loopback: %w", err)
		}
		loop = append(loop, r)
		r, how, err = b.rpoRun(ctx, p, true, netem)
		if err != nil {
			return fmt.Errorf("rpo with %v delay: %w", oneWayDelay, err)
		}
		slow = append(slow, r)
	}
	for _, c := range []struct {
		name string
		rs   []rpoResult
	}{{"loopback", loop}, {fmt.Sprintf("%v delay", oneWayDelay), slow}} {
		rate := medianOf(c.rs, func(r rpoResult) float64 { return r.rate })
		p99 := medianOf(c.rs, func(r rpoResult) float64 { return ms(r.p99) })
		add("RPO "+c.name+": writes achieved", "MB/s", rate, "", "")
		add("RPO "+c.name+": p50", "ms", medianOf(c.rs, func(r rpoResult) float64 { return ms(r.p50) }), "", "")
		if c.name == "loopback" {
			v := judge(p99 <= ms(goalRPOp99))
			if rate < 0.95*rpoRate/1e6 {
				v = fmt.Sprintf("MISSED (the writer reached only %.0f MB/s)", rate)
			}
			add("RPO "+c.name+": p99", "ms", p99, fmt.Sprintf("<= %v at %.0f MB/s", goalRPOp99, rpoRate/1e6), v)
		} else {
			add("RPO "+c.name+": p99", "ms", p99, "", "")
		}
		add("RPO "+c.name+": max", "ms", medianOf(c.rs, func(r rpoResult) float64 { return ms(r.max) }), "", "")
		add("RPO "+c.name+": drain after writes stop", "ms", medianOf(c.rs, func(r rpoResult) float64 { return ms(r.drain) }), "", "")
	}

	// Views over a growing journal.
	steps, err := measureViews(ctx, b.path("view-journal"), opts.viewSizes, opts.viewBudget)
	if err != nil {
		return fmt.Errorf("views: %w", err)
	}
	var viewNotes []string
	biggest := slices.Max(opts.viewSizes)
	for _, st := range steps {
		name := count(st.records)
		if !st.reached {
			viewNotes = append(viewNotes, fmt.Sprintf("%s records (and any larger size) not measured: the fill budget (%v) ran out with %s records retained (this step's appends took %v)",
				name, opts.viewBudget, count(st.filledTo), st.fill.Round(time.Millisecond)))
			if st.records == biggest {
				add(fmt.Sprintf("view open+4K read, %s records: max", name), "us", -1,
					fmt.Sprintf("<= %v with %s records", goalViewOpen, name), "NOT MEASURED")
			}
			continue
		}
		add(fmt.Sprintf("journal fill to %s records", name), "ms", ms(st.fill), "", "")
		add(fmt.Sprintf("view open+4K read, %s records: p50", name), "us", us(st.open[len(st.open)/2]), "", "")
		g, v := "", ""
		if st.records == biggest {
			g, v = fmt.Sprintf("<= %v with %s records", goalViewOpen, name), judge(st.open[len(st.open)-1] <= goalViewOpen)
		}
		add(fmt.Sprintf("view open+4K read, %s records: max", name), "us", us(st.open[len(st.open)-1]), g, v)
		add(fmt.Sprintf("journal reopen, %s records", name), "ms", ms(st.reopen), "", "")
	}

	printTable(out, []string{"value"}, nil, rows)
	fmt.Fprintln(out)
	fmt.Fprintf(out, "ingest: a spool pre-filled with %d writes of 4 KiB (%.0f MB of payload) through the capture export, then shipped\n", n, mb)
	fmt.Fprintln(out, "by shipper/sender in a child process (this bench re-executed) over mTLS on loopback into replica/receiver.Server")
	fmt.Fprintln(out, "and a journal in this process, on the same filesystem; each payload is half random (ChaCha8), half the pattern i%7.")
	fmt.Fprintln(out, "MB = 10^6 bytes of payload. wall: from the go to the child (its spool open, untimed) until the journal holds the")
	fmt.Fprintln(out, "last record durably. replica per core: those MB over the CPU time (user+system, getrusage) of this process in that")
	fmt.Fprintln(out, "window: receiver, TLS server, batch decoding (zstd) and journal, Go runtime included, no sender. host side: the MB")
	fmt.Fprintln(out, "over the child's CPU time (/proc/PID/stat, 10 ms ticks) from the go until it saw everything acknowledged: spool")
	fmt.Fprintln(out, "reads, zstd, TLS client and the spool's acks. Median run by wall.")
	fmt.Fprintf(out, "RPO: a writer appends 4 KiB writes through the capture export (shipper.Sequencer) paced by a 2 ms ticker at %.0f MB/s\n", rpoRate/1e6)
	fmt.Fprintf(out, "for %v after the stream is up; sender.Stats().RPO sampled every 10 ms; zstd on. Per-run p99 (ms), loopback: %s; delayed: %s.\n",
		opts.rpoTime, joinMs(loop, func(r rpoResult) time.Duration { return r.p99 }), joinMs(slow, func(r rpoResult) time.Duration { return r.p99 }))
	fmt.Fprintf(out, "%v delay: %s (round trip %v).\n", oneWayDelay, how, 2*oneWayDelay)
	fmt.Fprintln(out, bdpNote(ing[0].mbPerSec))
	fmt.Fprintf(out, "views: one journal grown through the sizes in batches of %d records of %d bytes at random offsets in %d MiB,\n", viewBatch, viewRecord, viewArea>>20)
	fmt.Fprintf(out, "a sync-complete marker first; at each size %d views of random seqs opened (View, Disk) and one 4 KiB block read:\n", viewOpens)
	fmt.Fprintln(out, "the block that holds the record of that seq, then closed; page cache warm (the records were just written).\n"+
		"Reopen: Close and Open of the journal, what a replica daemon's restart costs before its first view.")
	for _, note := range viewNotes {
		fmt.Fprintln(out, note)
	}
	if allMet {
		fmt.Fprintln(out, "All goals met.")
	} else {
		fmt.Fprintln(out, "Some goals missed (see MISSED).")
	}
	return nil
}

// ingestRun ships a spool of n 4 KiB writes into a new replica, the
// sender in a child process (ingest_sender.go), and returns the run (wall
// MB/s; CPU time: this process's, the replica's, in cpu.target, the
// child's in cpu.client) and the compression ratio (record bytes per wire
// byte).
func (b *bench) ingestRun(ctx context.Context, p *pki, n int, compress bool) (result, float64, error) {
	dir, err := os.MkdirTemp(b.dir, "ingest-")
	if err != nil {
		return result{}, 0, err
	}
	defer os.RemoveAll(dir)
	spoolDir := filepath.Join(dir, "spool")
	h, err := openHost(ctx, spoolDir, "ingest", nil)
	if err != nil {
		return result{}, 0, err
	}
	_, err = h.write4k(ctx, newPayloads(4096, 4096), 0, n)
	if err == nil {
		err = h.g.Spool().Sync(ctx)
	}
	if err = errors.Join(err, h.close()); err != nil {
		return result{}, 0, err
	}
	syscall.Sync() // no writeback of the spool during the run
	ca, cert, key, err := p.writeHost(dir)
	if err != nil {
		return result{}, 0, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return result{}, 0, err
	}
	s, err := startSite(ctx, p, filepath.Join(dir, "replica"), ln)
	if err != nil {
		ln.Close()
		return result{}, 0, err
	}
	defer s.stop()

	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	args := []string{"-spool", spoolDir, "-group", "ingest", "-addr", s.addr, "-ca", ca, "-cert", cert, "-key", key}
	if !compress {
		args = append(args, "-raw")
	}
	c, err := startSenderProc(cctx, args)
	if err != nil {
		return result{}, 0, err
	}
	defer c.stop()
	last, err := c.ready()
	if err != nil {
		return result{}, 0, err
	}
	snd0, err := procCPU(c.pid())
	if err != nil {
		return result{}, 0, c.fail(err)
	}
	cpu0, err := procCPU(0)
	if err != nil {
		return result{}, 0, c.fail(err)
	}
	wctx, lost := context.WithCancelCause(cctx)
	defer lost(nil)
	t0 := time.Now()
	if err := c.begin(lost); err != nil {
		return result{}, 0, err
	}
	if err := s.waitDurable(wctx, last); err != nil {
		if cause := context.Cause(wctx); errors.Is(cause, errSenderLost) {
			err = cause
		}
		return result{}, 0, c.fail(err)
	}
	wall := time.Since(t0)
	cpu1, err := procCPU(0)
	if err != nil {
		return result{}, 0, c.fail(err)
	}
	d := c.result()
	if d.err != nil {
		return result{}, 0, c.fail(d.err)
	}
	snd1, err := procCPU(c.pid())
	if err != nil {
		return result{}, 0, c.fail(err)
	}
	if err := c.finish(); err != nil {
		return result{}, 0, err
	}
	mb := float64(n) * 4096 / 1e6
	st := sender.Stats{BytesSent: d.sent, BytesRaw: d.raw}
	return result{mbPerSec: mb / wall.Seconds(), cpu: cpuUse{target: cpu1 - cpu0, client: snd1 - snd0}}, st.Ratio(), nil
}

type rpoResult struct {
	rate          float64 // MB/s the writer achieved
	p50, p99, max time.Duration
	drain         time.Duration // from the writer's end until the replica held everything
	samples       int
}

// rpoRun runs the writer against a new replica, direct on loopback or
// through the delayed link, and samples the RPO. how says what made the
// delay.
func (b *bench) rpoRun(ctx context.Context, p *pki, delayed, netem bool) (rpoResult, string, error) {
	dir, err := os.MkdirTemp(b.dir, "rpo-")
	if err != nil {
		return rpoResult{}, "", err
	}
	defer os.RemoveAll(dir)
	var link *delayLink
	switch {
	case !delayed:
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return rpoResult{}, "", err
		}
		link = &delayLink{how: "none", ln: ln, ip: net.IPv4(127, 0, 0, 1), dial: ln.Addr().String(), stop: ln.Close}
	case netem:
		link, err = netemLink(ctx, oneWayDelay)
	default:
		link, err = proxyLink(oneWayDelay)
	}
	if err != nil {
		return rpoResult{}, "", err
	}
	defer link.stop()
	s, err := startSite(ctx, p, filepath.Join(dir, "replica"), link.ln)
	if err != nil {
		return rpoResult{}, "", err
	}
	defer s.stop()
	h, err := openHost(ctx, filepath.Join(dir, "spool"), "rpo",
		&sender.Options{Addr: link.dial, TLS: p.client(link.ip), Host: "bench-host", Logger: quietLog})
	if err != nil {
		return rpoResult{}, "", err
	}
	defer h.close()
	if _, err := h.g.Sequencer().MarkDisk(record.SyncComplete, "vda"); err != nil {
		return rpoResult{}, "", err
	}
	h.serve(ctx)
	// The stream is up once the marker is durable at the replica.
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = s.waitDurable(wctx, h.g.Spool().LastSeq())
	cancel()
	if err != nil {
		return rpoResult{}, "", err
	}

	type written struct {
		bytes int64
		took  time.Duration
		err   error
	}
	wdone := make(chan written, 1)
	go func() {
		pay := newPayloads(4096, 4096)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		start := time.Now()
		var w written
		var off int64
		for now := range tick.C {
			el := now.Sub(start)
			if el >= b.opts.rpoTime {
				break
			}
			due := int(el.Seconds()*rpoRate/4096) - int(w.bytes/4096)
			if due <= 0 {
				continue
			}
			if off, w.err = h.write4k(ctx, pay, off, due); w.err != nil {
				break
			}
			w.bytes += int64(due) * 4096
		}
		w.took = time.Since(start)
		wdone <- w
	}()
	var samples []time.Duration
	tick := time.NewTicker(10 * time.Millisecond)
	var w written
sample:
	for {
		select {
		case w = <-wdone:
			break sample
		case <-tick.C:
			samples = append(samples, h.g.Sender().Stats().RPO)
		}
	}
	tick.Stop()
	if w.err != nil {
		return rpoResult{}, "", fmt.Errorf("writer: %w", w.err)
	}
	t := time.Now()
	wctx, cancel = context.WithTimeout(ctx, 2*time.Minute)
	err = s.waitDurable(wctx, h.g.Spool().LastSeq())
	cancel()
	if err != nil {
		return rpoResult{}, "", err
	}
	drain := time.Since(t)
	slices.Sort(samples)
	q := func(f float64) time.Duration { return samples[int(f*float64(len(samples)-1))] }
	return rpoResult{rate: float64(w.bytes) / 1e6 / w.took.Seconds(), p50: q(0.5), p99: q(0.99), max: q(1),
		drain: drain, samples: len(samples)}, link.how, nil
}

// bdpNote says what window the stream needs over the delayed link.
func bdpNote(ingestMBs float64) string {
	rtt := 2 * oneWayDelay
	bdp := func(mbs float64) float64 { return mbs * rtt.Seconds() } // MB
	wmem, rmem := tcpMax("tcp_wmem"), tcpMax("tcp_rmem")
	return fmt.Sprintf("bandwidth-delay: the sender keeps no window of its own (acks only free the spool), so TCP's window is the\n"+
		"stream's: at %v round trip it must hold %.1f MB for %.0f MB/s (%.1f MB at a 20 ms round trip), %.1f MB for the\n"+
		"measured ingest rate of %.0f MB/s; this kernel's autotuning caps are tcp_wmem %s, tcp_rmem %s. Through the\n"+
		"userspace proxy each leg is loopback, and the proxy's queue (%d MiB per direction) is the window.",
		rtt, bdp(rpoRate/1e6), rpoRate/1e6, rpoRate/1e6*0.020, bdp(ingestMBs), ingestMBs, wmem, rmem, proxyQueue*proxyChunk>>20)
}

// tcpMax returns the maximum of /proc/sys/net/ipv4/<name>, in MiB.
func tcpMax(name string) string {
	b, err := os.ReadFile("/proc/sys/net/ipv4/" + name)
	f := strings.Fields(string(b))
	if err != nil || len(f) != 3 {
		return "unknown"
	}
	v, err := strconv.ParseInt(f[2], 10, 64)
	if err != nil {
		return "unknown"
	}
	return fmt.Sprintf("%.0f MiB", float64(v)/(1<<20))
}

func medianOf(rs []rpoResult, f func(rpoResult) float64) float64 {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func joinMs(rs []rpoResult, f func(rpoResult) time.Duration) string {
	var s []string
	for _, r := range rs {
		s = append(s, strconv.FormatFloat(ms(f(r)), 'f', 0, 64))
	}
	return strings.Join(s, ", ")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// count writes 10000 as 10k and 1000000 as 1M.
func count(n int) string {
	switch {
	case n >= 1e6 && n%1e6 == 0:
		return fmt.Sprintf("%dM", n/1e6)
	case n >= 1e3 && n%1e3 == 0:
		return fmt.Sprintf("%dk", n/1e3)
	}
	return strconv.Itoa(n)
}

func kernelLine() string {
	var u syscall.Utsname
	if syscall.Uname(&u) != nil {
		return "Linux"
	}
	var b []byte
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return "Linux " + string(b)
}
