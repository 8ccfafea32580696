package nbd_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/nbd"
)

// Interoperability with the real NBD clients: libnbd's tools (nbdinfo,
// nbdcopy, nbdsh) and QEMU's (qemu-img, qemu-io).

const interopSize = 4 << 20

// knownChunks is data at known offsets of a 4 MiB sparse file; the rest is
// holes, so extents are exact: data [0,4K), [1M,1M+128K), [3M-8K,3M).
func knownChunks() []chunk {
	return []chunk{
		{0, pattern(1, 4096)},
		{1 << 20, pattern(2, 128<<10)},
		{3<<20 - 8192, pattern(3, 8192)},
	}
}

type extent struct {
	off, length int64
	data        bool
}

var knownExtents = []extent{
	{0, 4096, true},
	{4096, 1<<20 - 4096, false},
	{1 << 20, 128 << 10, true},
	{1<<20 + 128<<10, 3<<20 - 8192 - (1<<20 + 128<<10), false},
	{3<<20 - 8192, 8192, true},
	{3 << 20, 1 << 20, false},
}

// interopServer serves "w" (writable sparse file), "r" (read-only sparse
// file) and "rec" (write-only recorder) and returns the socket and paths.
type interopEnv struct {
	sock   string
	wPath  string
	rPath  string
	rec    *recordExport
	server *nbd.Server
}

func newInteropEnv(t *testing.T) *interopEnv {
	t.Helper()
	env := &interopEnv{
		wPath: sparseFile(t, interopSize, knownChunks()...),
		rPath: sparseFile(t, interopSize, knownChunks()...),
		rec:   &recordExport{size: interopSize},
	}
	var cat nbd.Exports
	cat.Add("w", openFile(t, env.wPath, false))
	cat.Add("r", openFile(t, env.rPath, true))
	cat.Add("rec", env.rec)
	env.server, env.sock = startServer(t, &cat)
	return env
}

func libnbdTools(t *testing.T) {
	needTools(t, map[string]string{"nbdinfo": "libnbd-bin", "nbdcopy": "libnbd-bin"})
}

func qemuTools(t *testing.T) {
	needTools(t, map[string]string{"qemu-img": "qemu-utils", "qemu-io": "qemu-utils"})
}

func mustEqualFiles(t *testing.T, a, b string) {
	t.Helper()
	x, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(x) != len(y) {
		t.Fatalf("%s is %d bytes, %s is %d", a, len(x), b, len(y))
	}
	if i := firstDiff(x, y); i >= 0 {
		t.Fatalf("%s and %s differ first at byte %d", a, b, i)
	}
}

func firstDiff(x, y []byte) int {
	for i := range min(len(x), len(y)) {
		if x[i] != y[i] {
			return i
		}
	}
	if len(x) != len(y) {
		return min(len(x), len(y))
	}
	return -1
}

func TestInteropNbdinfoList(t *testing.T) {
	libnbdTools(t)
	env := newInteropEnv(t)
	out := mustRun(t, "nbdinfo", "--list", "--json", uri(env.sock, ""))
	var got struct {
		Protocol   string `json:"protocol"`
		Structured bool   `json:"structured"`
		Exports    []struct {
			Name     string   `json:"export-name"`
			Size     int64    `json:"export-size"`
			ReadOnly bool     `json:"is_read_only"`
			Contexts []string `json:"contexts"`
			MinBlock int64    `json:"block_size_minimum"`
		} `json:"exports"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("nbdinfo --list --json: %v\n%s", err, out)
	}
	if got.Protocol != "newstyle-fixed" || !got.Structured {
		t.Errorf("protocol %q structured %v, want newstyle-fixed with structured replies", got.Protocol, got.Structured)
	}
	want := map[string]bool{"r": true, "rec": false, "w": false} // name -> read-only
	if len(got.Exports) != len(want) {
		t.Fatalf("listed %d exports, want %d:\n%s", len(got.Exports), len(want), out)
	}
	for _, e := range got.Exports {
		ro, ok := want[e.Name]
		if !ok {
			t.Errorf("unexpected export %q", e.Name)
			continue
		}
		if e.ReadOnly != ro || e.Size != interopSize || e.MinBlock != 1 {
			t.Errorf("export %q: read-only %v size %d min block %d; want %v %d 1", e.Name, e.ReadOnly, e.Size, e.MinBlock, ro, interopSize)
		}
		if len(e.Contexts) != 1 || e.Contexts[0] != nbd.MetaBaseAllocation {
			t.Errorf("export %q contexts %q, want [base:allocation]", e.Name, e.Contexts)
		}
	}
}

func TestInteropNbdinfoMap(t *testing.T) {
	libnbdTools(t)
	env := newInteropEnv(t)
	for _, name := range []string{"r", "w"} {
		t.Run(name, func(t *testing.T) {
			out := mustRun(t, "nbdinfo", "--map", "--json", uri(env.sock, name))
			var got []struct {
				Offset int64  `json:"offset"`
				Length int64  `json:"length"`
				Type   int    `json:"type"`
				Desc   string `json:"description"`
			}
			if err := json.Unmarshal([]byte(out), &got); err != nil {
				t.Fatalf("nbdinfo --map --json: %v\n%s", err, out)
			}
			if len(got) != len(knownExtents) {
				t.Fatalf("map has %d extents, want %d:\n%s", len(got), len(knownExtents), out)
			}
			for i, w := range knownExtents {
				wantType := 3 // hole,zero
				if w.data {
					wantType = 0
				}
				g := got[i]
				if g.Offset != w.off || g.Length != w.length || g.Type != wantType {
					t.Errorf("extent %d: got %d+%d type %d (%s), want %d+%d type %d", i, g.Offset, g.Length, g.Type, g.Desc, w.off, w.length, wantType)
				}
			}
		})
	}
}

func TestInteropNbdinfoCan(t *testing.T) {
	libnbdTools(t)
	env := newInteropEnv(t)
	// nbdinfo(1): --can and --is exit 0 for yes and 2 for no.
	tests := []struct {
		export, what string
		want         int
	}{
		{"w", "write", 0}, {"w", "fua", 0}, {"w", "flush", 0}, {"w", "trim", 0},
		{"w", "zero", 0}, {"w", "fast-zero", 0}, {"w", "multi-conn", 0}, {"w", "df", 0},
		{"w", "cache", 0}, {"w", "structured-reply", 0},
		{"r", "write", 2}, {"r", "fua", 2}, {"r", "trim", 2}, {"r", "zero", 2},
		{"r", "fast-zero", 2}, {"r", "flush", 2}, {"r", "multi-conn", 0}, {"r", "df", 0}, {"r", "cache", 0},
		{"rec", "write", 0}, {"rec", "fua", 0}, {"rec", "flush", 0}, {"rec", "zero", 0}, {"rec", "trim", 0},
	}
	for _, tc := range tests {
		t.Run(tc.export+"/"+tc.what, func(t *testing.T) {
			if _, _, code := run(t, 20*time.Second, "nbdinfo", "--can", tc.what, uri(env.sock, tc.export)); code != tc.want {
				t.Errorf("nbdinfo --can %s on %q: exit %d, want %d", tc.what, tc.export, code, tc.want)
			}
		})
	}
	for export, want := range map[string]int{"r": 0, "w": 2, "rec": 2} {
		if _, _, code := run(t, 20*time.Second, "nbdinfo", "--is", "read-only", uri(env.sock, export)); code != want {
			t.Errorf("nbdinfo --is read-only on %q: exit %d, want %d", export, code, want)
		}
	}
}

func TestInteropNbdcopy(t *testing.T) {
	libnbdTools(t)
	env := newInteropEnv(t)
	src := sparseFile(t, interopSize, chunk{0, pattern(9, interopSize)})
	tests := []struct {
		name  string
		conns string
		in    bool // file -> writable export; else read-only export -> file
	}{
		{"in/1conn", "1", true},
		{"in/4conns", "4", true},
		{"out/1conn", "1", false},
		{"out/4conns", "4", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			common := []string{"--requests=32", "--connections=" + tc.conns, "--threads=" + tc.conns, "--request-size=65536", "--flush"}
			if tc.in {
				zeroTarget(t, env.wPath)
				mustRun(t, "nbdcopy", append(common, src, uri(env.sock, "w"))...)
				mustEqualFiles(t, src, env.wPath)
				return
			}
			dst := zeroFile(t, interopSize)
			mustRun(t, "nbdcopy", append(common, uri(env.sock, "r"), dst)...)
			mustEqualFiles(t, env.rPath, dst)
		})
	}
}

// zeroTarget zeroes an export's backing file so a copy must write all of it.
func zeroTarget(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, make([]byte, interopSize), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestInteropNbdcopyIntoRecorder(t *testing.T) {
	libnbdTools(t)
	env := newInteropEnv(t)
	// Dense data with a zero run in the middle so nbdcopy also sends zeroes.
	data := pattern(5, interopSize)
	clear(data[1<<20 : 2<<20])
	src := sparseFile(t, interopSize, chunk{0, data[:1<<20]}, chunk{2 << 20, data[2<<20:]})
	for _, conns := range []string{"1", "4"} {
		mustRun(t, "nbdcopy", "--requests=16", "--connections="+conns, "--threads="+conns, "--request-size=32768", "--flush", src, uri(env.sock, "rec"))
		if got := env.rec.replay(); !bytes.Equal(got, data) {
			t.Fatalf("connections=%s: recorded writes reassemble to something else, first difference at %d", conns, firstDiff(got, data))
		}
		var writes, flushes int
		for _, o := range env.rec.snapshot() {
			switch o.kind {
			case "write":
				writes++
				if o.length > 32768 {
					t.Errorf("write of %d bytes, nbdcopy was asked for at most 32768", o.length)
				}
			case "flush":
				flushes++
			}
		}
		if writes < 3<<20/32768 || flushes == 0 {
			t.Errorf("connections=%s: recorded %d writes and %d flushes, want >= %d writes and a flush", conns, writes, flushes, 3<<20/32768)
		}
	}
}

func TestInteropNbdsh(t *testing.T) {
	needPythonNBD(t)
	env := newInteropEnv(t)
	script, err := filepath.Abs("testdata/nbdsh_optmode.py")
	if err != nil {
		t.Fatal(err)
	}
	head := knownChunks()[0].data[:16]
	cmd := exec.Command("nbdsh", "-n", "-c", fmt.Sprintf("exec(open(%q).read())", script))
	cmd.Env = append(toolEnv(), "QCDP_SOCK="+env.sock, fmt.Sprintf("QCDP_SIZE=%d", interopSize), "QCDP_HEAD="+hex.EncodeToString(head))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "PASS") {
		t.Fatalf("nbdsh script: %v\n%s", err, out)
	}
	// What the script wrote is in the file, seen without NBD.
	f, err := os.ReadFile(env.wPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(f[20001:20101], bytes.Repeat([]byte{0x5a}, 100)) {
		t.Errorf("FUA write of 100 bytes at 20001 not in the file")
	}
	if !bytes.Equal(f[1<<20:1<<20+65536], make([]byte, 65536)) {
		t.Errorf("trimmed range does not read as zeroes")
	}
	if ops := env.rec.snapshot(); len(ops) != 1 || ops[0].kind != "write" || ops[0].off != 7 || string(ops[0].data) != "rec" {
		t.Errorf("write-only export recorded %+v, want one write of \"rec\" at 7", ops)
	}
}

func TestInteropQemuImg(t *testing.T) {
	qemuTools(t)
	env := newInteropEnv(t)
	src := sparseFile(t, interopSize, chunk{4096, pattern(7, 1<<20)}, chunk{3 << 20, pattern(8, 4096)})

	t.Run("convert-in", func(t *testing.T) {
		zeroTarget(t, env.wPath)
		mustRun(t, "qemu-img", "convert", "-n", "--target-is-zero", "-f", "raw", "-O", "raw", "-W", "-m", "16", src, uri(env.sock, "w"))
		mustEqualFiles(t, src, env.wPath)
	})
	t.Run("convert-out", func(t *testing.T) {
		dst := filepath.Join(t.TempDir(), "out.raw")
		mustRun(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", "-m", "16", uri(env.sock, "r"), dst)
		mustEqualFiles(t, env.rPath, dst)
	})
	t.Run("compare", func(t *testing.T) {
		same := sparseFile(t, interopSize, knownChunks()...)
		if _, _, code := run(t, 30*time.Second, "qemu-img", "compare", "-f", "raw", "-F", "raw", uri(env.sock, "r"), same); code != 0 {
			t.Errorf("compare with an identical file: exit %d, want 0", code)
		}
		c := knownChunks()
		c[1].data[777] ^= 0xff
		diff := sparseFile(t, interopSize, c...)
		out, _, code := run(t, 30*time.Second, "qemu-img", "compare", "-f", "raw", "-F", "raw", uri(env.sock, "r"), diff)
		// qemu-img names the 512-byte sector holding the difference.
		if code != 1 || !strings.Contains(out, fmt.Sprint((1<<20+777)&^511)) {
			t.Errorf("compare with a file differing at %d: exit %d, output %q; want exit 1 naming offset %d", 1<<20+777, code, out, (1<<20+777)&^511)
		}
	})
	t.Run("map", func(t *testing.T) {
		out := mustRun(t, "qemu-img", "map", "--output=json", "-f", "raw", uri(env.sock, "r"))
		var got []struct {
			Start  int64 `json:"start"`
			Length int64 `json:"length"`
			Data   bool  `json:"data"`
			Zero   bool  `json:"zero"`
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("qemu-img map: %v\n%s", err, out)
		}
		if len(got) != len(knownExtents) {
			t.Fatalf("qemu-img map: %d extents, want %d\n%s", len(got), len(knownExtents), out)
		}
		for i, w := range knownExtents {
			g := got[i]
			if g.Start != w.off || g.Length != w.length || g.Data != w.data || g.Zero == w.data {
				t.Errorf("extent %d: got %+v, want %+v", i, g, w)
			}
		}
	})
}

func TestInteropQemuIO(t *testing.T) {
	qemuTools(t)
	env := newInteropEnv(t)
	zeroTarget(t, env.wPath)
	cmds := []string{
		"write -P 0x11 0 64k",
		"write -P 0x22 100 100",   // 100 bytes at an odd offset
		"write -P 0x33 4097 512",  // 512 bytes across a block boundary
		"write -f -P 0x44 8191 3", // FUA
		"write -z 32768 8k",       // WRITE_ZEROES
		"aio_write -P 0x55 65536 4k",
		"aio_write -P 0x56 69632 4k",
		"aio_write -P 0x57 73728 100",
		"aio_write -P 0x58 73828 900",
		"aio_flush",
		"flush",
		"read -P 0x11 0 100",
		"read -P 0x22 100 100",
		"read -P 0x11 200 3897",
		"read -P 0x33 4097 512",
		"read -P 0x44 8191 3",
		"read -P 0 32768 8k",
		"read -P 0x55 65536 4k",
		"read -P 0x56 69632 4k",
		"read -P 0x57 73728 100",
		"read -P 0x58 73828 900",
	}
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := mustRun(t, "qemu-io", append(args, uri(env.sock, "w"))...)
	if strings.Contains(out, "fail") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io reported a failure:\n%s", out)
	}
	if n := strings.Count(out, "read "); n != 10 {
		t.Errorf("qemu-io completed %d reads, want 10:\n%s", n, out)
	}
	// The file holds exactly what was written.
	want := make([]byte, interopSize)
	fill := func(b byte, off, n int) { copy(want[off:], bytes.Repeat([]byte{b}, n)) }
	fill(0x11, 0, 64<<10)
	fill(0x22, 100, 100)
	fill(0x33, 4097, 512)
	fill(0x44, 8191, 3)
	fill(0, 32768, 8<<10)
	fill(0x55, 65536, 4096)
	fill(0x56, 69632, 4096)
	fill(0x57, 73728, 100)
	fill(0x58, 73828, 900)
	got, err := os.ReadFile(env.wPath)
	if err != nil {
		t.Fatal(err)
	}
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("file differs from what qemu-io wrote at byte %d: got %#x want %#x", i, got[i], want[i])
	}
}

func TestInteropConcurrentClients(t *testing.T) {
	libnbdTools(t)
	qemuTools(t)
	env := newInteropEnv(t)
	zeroTarget(t, env.wPath)
	src := sparseFile(t, interopSize, chunk{0, pattern(4, interopSize)})
	dst := zeroFile(t, interopSize)
	var wg sync.WaitGroup
	errs := make(chan string, 3)
	runBG := func(name string, args ...string) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := exec.Command(name, args...)
			cmd.Env = toolEnv()
			if out, err := cmd.CombinedOutput(); err != nil {
				errs <- fmt.Sprintf("%s %q: %v\n%s", name, args, err, out)
			}
		}()
	}
	// Two copies on 4 connections each, and qemu-io on the read-only export.
	runBG("nbdcopy", "--requests=16", "--connections=4", "--threads=4", src, uri(env.sock, "w"))
	runBG("nbdcopy", "--requests=16", "--connections=4", "--threads=4", uri(env.sock, "r"), dst)
	runBG("qemu-io", "-r", "-f", "raw", "-c", "read -P 0 1179648 1957888", "-c", "aio_read -P 0 2097152 4096", "-c", "aio_flush", uri(env.sock, "r"))
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
	mustEqualFiles(t, src, env.wPath)
	mustEqualFiles(t, env.rPath, dst)
	if st := env.server.Stats(); st.Accepted < 9 {
		t.Errorf("server accepted %d connections, want at least 9 (4+4+1)", st.Accepted)
	}
}

// TestPipelinedOutOfOrder sends 32 requests on one connection without
// waiting and checks each is answered exactly once with the right data, and
// that the server really answered out of order.
func TestPipelinedOutOfOrder(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			const size = 1 << 20
			mem := &memExport{data: pattern(6, size), delay: 150 * time.Millisecond,
				slowOff: map[int64]bool{0: true, 8192: true}}
			var cat nbd.Exports
			cat.Add("m", mem)
			_, sock := startServer(t, &cat)
			c := newstyle(t, sock)
			s := c.goExport("m", structured)
			if s.size != size {
				t.Fatalf("size %d", s.size)
			}
			type sent struct {
				typ    uint16
				off    uint64
				length uint32
				want   []byte
			}
			reqs := map[uint64]sent{}
			var order []uint64
			var batch []byte
			for i := range 32 {
				h := uint64(1000 + i)
				off := uint64(i) * 4096
				if i%2 == 0 { // reads of the first half; offsets 0 and 8192 are slow
					length := uint32(1000 + i)
					reqs[h] = sent{wCmdRead, off, length, mem.data[off : off+uint64(length)]}
					batch = append(batch, reqBytes(0, wCmdRead, h, off, length, nil)...)
				} else { // writes to the second half
					off += size / 2
					p := pattern(byte(i), 512+i)
					reqs[h] = sent{wCmdWrite, off, uint32(len(p)), p}
					batch = append(batch, reqBytes(0, wCmdWrite, h, off, uint32(len(p)), p)...)
				}
				order = append(order, h)
			}
			c.write(batch) // all 32 before reading any reply
			seen := map[uint64]int{}
			var replyOrder []uint64
			for range 32 {
				r, err := c.readReply(s, func(h uint64) int {
					if q := reqs[h]; q.typ == wCmdRead {
						return int(q.length)
					}
					return 0
				})
				if err != nil {
					t.Fatalf("reply %d: %v", len(replyOrder), err)
				}
				q, ok := reqs[r.handle]
				if !ok {
					t.Fatalf("reply for unknown handle %#x", r.handle)
				}
				seen[r.handle]++
				replyOrder = append(replyOrder, r.handle)
				if r.errno != 0 {
					t.Errorf("handle %d: error %d", r.handle, r.errno)
				}
				if q.typ == wCmdRead && !bytes.Equal(r.payload(q.off, q.length), q.want) {
					t.Errorf("read handle %d at %d: wrong data", r.handle, q.off)
				}
			}
			for h := range reqs {
				if seen[h] != 1 {
					t.Errorf("handle %d answered %d times, want once", h, seen[h])
				}
			}
			outOfOrder := false
			for i := range order {
				if order[i] != replyOrder[i] {
					outOfOrder = true
				}
			}
			if !outOfOrder {
				t.Errorf("32 replies came back in request order; slow reads should have been overtaken")
			}
			// The pipelined writes landed.
			for h, q := range reqs {
				if q.typ != wCmdWrite {
					continue
				}
				r := c.do(s, 0, wCmdRead, q.off, q.length, nil)
				if got := r.payload(q.off, q.length); !bytes.Equal(got, q.want) {
					t.Errorf("write handle %d at %d not read back", h, q.off)
				}
			}
		})
	}
}
