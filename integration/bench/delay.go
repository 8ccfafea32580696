package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// A link with a one-way delay, for the RPO rows. Preferred: a network
// namespace joined to this one by a veth pair with netem on both ends.
// Where the kernel has no netem (CONFIG_NET_SCH_NETEM unset: tc answers
// "Specified qdisc kind is unknown"), a userspace TCP proxy on loopback
// delays every chunk it forwards instead.

// delayLink is where the host dials to reach a replica listening on ln
// through the delay.
type delayLink struct {
	how  string // what implements the delay, for the report
	ln   net.Listener
	ip   net.IP // the replica's address, in its certificate
	dial string // what the host dials
	stop func() error
}

// netemIP and netemPeer are the addresses of the veth pair: the replica's
// end (in the namespace) and this namespace's end.
var (
	netemIP   = net.IPv4(169, 254, 213, 2)
	netemPeer = net.IPv4(169, 254, 213, 1)
)

// netemWorks reports whether the kernel has netem, trying it on the
// loopback of a throwaway namespace; why says why not.
func netemWorks(ctx context.Context) (ok bool, why string) {
	ns := fmt.Sprintf("qcdp-bench-check-%d", os.Getpid())
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", ns).CombinedOutput(); err != nil {
		return false, fmt.Sprintf("ip netns add: %v: %s", err, strings.TrimSpace(string(out)))
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	out, err := exec.CommandContext(ctx, "tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms").CombinedOutput()
	if err != nil {
		return false, fmt.Sprintf("tc qdisc add ... netem: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return true, ""
}

// netemLink makes a namespace with a veth pair to this one, netem delay d
// on both ends (so the round trip is 2d), and listens in it.
func netemLink(ctx context.Context, d time.Duration) (*delayLink, error) {
	ns := fmt.Sprintf("qcdp-bench-%d", os.Getpid())
	outer, inner := fmt.Sprintf("qbr%da", os.Getpid()%100000), fmt.Sprintf("qbr%db", os.Getpid()%100000)
	var undo []func()
	cleanup := func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}
	ms := fmt.Sprintf("%dms", d.Milliseconds())
	steps := [][]string{
		{"ip", "netns", "add", ns},
		{"ip", "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", ns},
		{"ip", "addr", "add", netemPeer.String() + "/30", "dev", outer},
		{"ip", "-n", ns, "addr", "add", netemIP.String() + "/30", "dev", inner},
		{"ip", "link", "set", outer, "up"},
		{"ip", "-n", ns, "link", "set", inner, "up"},
		{"ip", "-n", ns, "link", "set", "lo", "up"},
		{"tc", "qdisc", "add", "dev", outer, "root", "netem", "delay", ms, "limit", "100000"},
		{"tc", "-n", ns, "qdisc", "add", "dev", inner, "root", "netem", "delay", ms, "limit", "100000"},
	}
	for i, argv := range steps {
		if out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput(); err != nil {
			cleanup()
			return nil, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
		}
		switch i {
		case 0:
			undo = append(undo, func() { exec.Command("ip", "netns", "del", ns).Run() })
		case 1:
			undo = append(undo, func() { exec.Command("ip", "link", "del", outer).Run() })
		}
	}
	ln, err := listenInNetns(ns, net.JoinHostPort(netemIP.String(), "0"))
	if err != nil {
		cleanup()
		return nil, err
	}
	return &delayLink{
		how: fmt.Sprintf("netem delay %s on both ends of a veth pair into network namespace %s", ms, ns),
		ln:  ln, ip: netemIP, dial: ln.Addr().String(),
		stop: func() error { ln.Close(); cleanup(); return nil },
	}, nil
}

// listenInNetns opens a TCP listener inside the named network namespace:
// a socket belongs to the namespace of the thread that creates it. The
// work runs on a goroutine of its own, locked to its thread; if the thread
// cannot be moved back, the goroutine exits still locked, and the runtime
// ends the thread instead of reusing it.
func listenInNetns(ns, addr string) (net.Listener, error) {
	type res struct {
		ln  net.Listener
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			ch <- res{err: err}
			return
		}
		defer self.Close()
		target, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- res{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- res{err: fmt.Errorf("setns %s: %w", ns, err)}
			return
		}
		ln, err := net.Listen("tcp", addr)
		if serr := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); serr != nil {
			if ln != nil {
				ln.Close()
			}
			ch <- res{err: fmt.Errorf("setns back from %s: %w", ns, serr)}
			return // still locked: the thread ends with this goroutine
		}
		runtime.UnlockOSThread()
		ch <- res{ln, err}
	}()
	r := <-ch
	return r.ln, r.err
}

// proxyLink listens on loopback for the replica and puts a delay proxy in
// front of it.
func proxyLink(d time.Duration) (*delayLink, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p, err := startDelayProxy(ln.Addr().String(), d)
	if err != nil {
		ln.Close()
		return nil, err
	}
	return &delayLink{
		how: fmt.Sprintf("userspace TCP proxy on loopback delaying every chunk by %v in each direction", d),
		ln:  ln, ip: net.IPv4(127, 0, 0, 1), dial: p.ln.Addr().String(),
		stop: func() error { ln.Close(); return p.close() },
	}, nil
}

// delayProxy forwards each connection it accepts to target, holding every
// chunk read from either side for delay before writing it on, in order.
// Each direction is a reader and a writer goroutine joined by a queue of
// timestamped chunks; the queue is bounded (proxyQueue chunks of at most
// proxyChunk bytes), so when the far side stops reading the near side's
// reads stop too, as TCP's window would.
type delayProxy struct {
	ln     net.Listener
	target string
	delay  time.Duration

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

const (
	proxyChunk = 64 << 10
	proxyQueue = 512 // 32 MiB per direction at most: far above the bandwidth-delay product here
)

func startDelayProxy(target string, d time.Duration) (*delayProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &delayProxy{ln: ln, target: target, delay: d, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

func (p *delayProxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns[c], p.conns[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			var dirs sync.WaitGroup
			dirs.Add(2)
			go func() { defer dirs.Done(); p.pipe(up, c) }()
			go func() { defer dirs.Done(); p.pipe(c, up) }()
			dirs.Wait()
			c.Close()
			up.Close()
			p.mu.Lock()
			delete(p.conns, c)
			delete(p.conns, up)
			p.mu.Unlock()
		}()
	}
}

type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst, each chunk delay after it was read. When either
// side fails, both connections are closed; a clean EOF is passed on as a
// half close.
func (p *delayProxy) pipe(dst, src net.Conn) {
	q := make(chan chunk, proxyQueue)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTimer(time.Hour)
		defer t.Stop()
		for c := range q {
			if w := time.Until(c.due); w > 0 {
				t.Reset(w)
				<-t.C
			}
			if _, err := dst.Write(c.b); err != nil {
				src.Close()
				for range q { // drain: the reader fails on the closed src
				}
				return
			}
		}
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	}()
	buf := make([]byte, proxyChunk)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			q <- chunk{b: append([]byte(nil), buf[:n]...), due: time.Now().Add(p.delay)}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				dst.Close()
			}
			break
		}
	}
	close(q)
	<-done
}

func (p *delayProxy) close() error {
	err := p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	return err
}
