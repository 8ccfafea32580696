package receiver_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/record"
	"github.com/qcdp/qcdp/replica/receiver"
	"github.com/qcdp/qcdp/stream"
	"github.com/qcdp/qcdp/stream/streamtest"
)

// hasherCall is one call of a test Hasher.
type hasherCall struct {
	tenant string
	q      stream.HashQuery
}

// fakeHasher answers every query with hashes made of the query, and notes
// the calls.
type fakeHasher struct {
	mu    sync.Mutex
	calls []hasherCall
	err   error             // returned instead, when set
	reply *stream.HashReply // returned instead, when set
}

func replyFor(q stream.HashQuery) stream.HashReply {
	r := stream.HashReply{Status: stream.HashOK, Offset: q.Offset, Size: 1 << 30, Seq: q.After + 1}
	for i := range q.Count {
		r.Hashes = append(r.Hashes, stream.BlockHash([]byte(fmt.Sprintf("%s/%s@%d", q.Group, q.Disk, q.Offset+uint64(i)*uint64(q.BlockSize)))))
	}
	return r
}

func (h *fakeHasher) hash(ctx context.Context, tenant string, q stream.HashQuery) (stream.HashReply, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.calls = append(h.calls, hasherCall{tenant, q})
	if h.err != nil {
		return stream.HashReply{}, h.err
	}
	if h.reply != nil {
		return *h.reply, nil
	}
	return replyFor(q), nil
}

func (h *fakeHasher) called() []hasherCall {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]hasherCall(nil), h.calls...)
}

// startHashing starts a replica whose Server answers hash queries with h.
func startHashing(t *testing.T, h *fakeHasher, set func(*receiver.Server)) *replica {
	return startWith(t, func(srv *receiver.Server) {
		if h != nil {
			srv.Hasher = h.hash
		}
		if set != nil {
			set(srv)
		}
	})
}

// sendFrame writes raw bytes on the client's connection.
func (c *client) sendFrame(t *testing.T, b []byte) {
	t.Helper()
	if _, err := c.c.Write(b); err != nil {
		t.Fatal(err)
	}
}

// query sends a hash query and reads the answer: the reply, or the
// refusal as a *stream.RefusedError.
func (c *client) query(t *testing.T, q stream.HashQuery) (stream.HashReply, error) {
	t.Helper()
	b, err := stream.AppendHashQuery(nil, q)
	if err != nil {
		t.Fatal(err)
	}
	c.sendFrame(t, b)
	return c.hashAnswer()
}

func (c *client) hashAnswer() (stream.HashReply, error) {
	f, err := c.fr.Next()
	if err != nil {
		return stream.HashReply{}, err
	}
	switch f.Type {
	case stream.Refuse:
		re, err := stream.DecodeRefuse(f)
		if err != nil {
			return stream.HashReply{}, err
		}
		return stream.HashReply{}, re
	case stream.Hashes:
		return stream.DecodeHashReply(f)
	}
	return stream.HashReply{}, errors.New("unexpected " + f.Type.String())
}

// closed checks that the server closed the connection (after its answer).
func (c *client) closed(t *testing.T) {
	t.Helper()
	if f, err := c.fr.Next(); err == nil {
		t.Fatalf("the connection carried on: a %v frame", f.Type)
	}
}

func query(group, disk string, off uint64, count uint32) stream.HashQuery {
	return stream.HashQuery{Group: group, Disk: disk, BlockSize: 64 << 10, Offset: off, Count: count, After: 41}
}

func sameReply(t *testing.T, got, want stream.HashReply) {
	t.Helper()
	if len(got.Hashes) == 0 && len(want.Hashes) == 0 {
		got.Hashes, want.Hashes = nil, nil
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("reply %+v, want %+v", got, want)
	}
}

// A served query returns what the Hasher returned, for the tenant of the
// certificate; the connection carries further queries, one at a time.
func TestHashQueryServed(t *testing.T) {
	h := &fakeHasher{}
	r := startHashing(t, h, nil)
	c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if err != nil {
		t.Fatal(err)
	}
	qs := []stream.HashQuery{
		query("web", "vda", 0, 16),
		query("db-7", "vm1.vdb", 128<<10, 3), // another group of the tenant, on the same connection
		query("web", "vda", 1<<30, 0),        // count 0: only the size
		{Group: "web", Disk: "vda", BlockSize: stream.MaxHashBlock, Count: stream.MaxHashBlocks, After: 1}, // the largest reply
	}
	for i, q := range qs {
		got, err := c.query(t, q)
		if err != nil {
			t.Fatalf("query %d: %v", i, err)
		}
		sameReply(t, got, replyFor(q))
	}
	calls := h.called()
	if len(calls) != len(qs) {
		t.Fatalf("%d Hasher calls, want %d", len(calls), len(qs))
	}
	for i, call := range calls {
		if call.tenant != "alpha" || call.q != qs[i] {
			t.Fatalf("call %d: %+v, want tenant alpha and %+v", i, call, qs[i])
		}
	}

	// Every status travels.
	for _, want := range []stream.HashReply{
		{Status: stream.HashNoDisk, Offset: 64 << 10},
		{Status: stream.HashBehind, Offset: 64 << 10, Seq: 40},
	} {
		h.mu.Lock()
		h.reply = &want
		h.mu.Unlock()
		got, err := c.query(t, query("web", "vda", 64<<10, 2))
		if err != nil {
			t.Fatal(err)
		}
		sameReply(t, got, want)
	}

	// Another tenant's host, on its own connection, for its own group.
	h.mu.Lock()
	h.reply = nil
	h.mu.Unlock()
	cb, err := dial(t, r, r.pki.Client("beta", "kvm-b1"))
	if err != nil {
		t.Fatal(err)
	}
	q := query("payroll", "vda", 0, 1)
	if got, err := cb.query(t, q); err != nil {
		t.Fatal(err)
	} else {
		sameReply(t, got, replyFor(q))
	}
	if calls := h.called(); calls[len(calls)-1].tenant != "beta" {
		t.Fatalf("the last call was for tenant %q, want beta", calls[len(calls)-1].tenant)
	}
}

// A connection that asks nothing more for IdleTimeout is closed.
func TestHashQueryIdle(t *testing.T) {
	r := startHashing(t, &fakeHasher{}, func(srv *receiver.Server) { srv.IdleTimeout = 200 * time.Millisecond })
	c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.query(t, query("web", "vda", 0, 1)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := c.fr.Next(); !errors.Is(err, io.EOF) && !errors.Is(err, stream.ErrTruncated) {
		t.Fatalf("after the idle timeout: %v, want the connection closed", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("closed after %v", d)
	}
}

// Each query is authorized like a stream: a group the host may not write
// is denied and the Hasher is never asked, on the first query of a
// connection as on a later one.
func TestHashQueryDenied(t *testing.T) {
	h := &fakeHasher{}
	r := startHashing(t, h, nil)
	cases := []struct {
		name         string
		tenant, host string
		group        string
		code         stream.Code
	}{
		{"tenant A asks for tenant B's group", "alpha", "kvm-a1", "payroll", stream.CodeDenied},
		{"tenant B asks for tenant A's group", "beta", "kvm-b1", "web", stream.CodeDenied},
		{"host not listed for its tenant", "alpha", "kvm-b1", "web", stream.CodeDenied},
		{"unknown tenant", "gamma", "kvm-a1", "web", stream.CodeDenied},
		{"group not listed", "alpha", "kvm-a1", "mail", stream.CodeDenied},
		{"tenant path in the cert", "../beta", "kvm-a1", "web", stream.CodeDenied},
		{"hidden group", "alpha", "kvm-a1", ".db-x", stream.CodeBadRequest},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := dial(t, r, r.pki.Client(tc.tenant, tc.host))
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.query(t, query(tc.group, "vda", 0, 1))
			refusal(t, err, tc.code)
			c.closed(t)
		})
	}
	if n := len(h.called()); n != 0 {
		t.Fatalf("the Hasher was asked %d times for refused queries: %+v", n, h.called())
	}
	if !strings.Contains(r.log.String(), "hash query refused") || !strings.Contains(r.log.String(), "group=payroll") {
		t.Errorf("refusal not logged:\n%s", r.log.String())
	}

	// Allowed first, denied second: the second is refused, not served.
	c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.query(t, query("db-1", "vda", 0, 1)); err != nil {
		t.Fatal(err)
	}
	_, err = c.query(t, query("payroll", "vda", 0, 1))
	refusal(t, err, stream.CodeDenied)
	c.closed(t)
	if calls := h.called(); len(calls) != 1 || calls[0].q.Group != "db-1" {
		t.Fatalf("Hasher calls %+v, want the allowed one alone", calls)
	}
}

// rawHashQ is a HashQ frame of version v with payload p.
func rawHashQ(v byte, p []byte) []byte {
	b := append(make([]byte, stream.HeaderLen), p...)
	b[8], b[9] = byte(stream.HashQ), v
	streamtest.Reseal(b)
	return b
}

// hashPayload lays a query out without checking it.
func hashPayload(group, disk string, bs uint32, off uint64, count uint32) []byte {
	p := make([]byte, 32)
	p[0], p[1] = byte(len(group)), byte(len(disk))
	binary.LittleEndian.PutUint32(p[4:], bs)
	binary.LittleEndian.PutUint64(p[8:], off)
	binary.LittleEndian.PutUint32(p[16:], count)
	return append(append(p, group...), disk...)
}

// A malformed query is a bad request; a query of another version is
// refused as such; neither reaches the Hasher.
func TestHashQueryMalformed(t *testing.T) {
	h := &fakeHasher{}
	r := startHashing(t, h, nil)
	good := hashPayload("web", "vda", 64<<10, 0, 1)
	if f, err := stream.NewReader(strings.NewReader(string(rawHashQ(stream.Version, good)))).Next(); err != nil {
		t.Fatal(err)
	} else if _, err := stream.DecodeHashQuery(f); err != nil {
		t.Fatalf("the test's well-formed query: %v", err)
	}
	reserved := append([]byte(nil), good...)
	reserved[2] = 1
	cases := map[string]struct {
		frame []byte
		code  stream.Code
	}{
		"block size not a power of two": {rawHashQ(stream.Version, hashPayload("web", "vda", 48<<10, 0, 1)), stream.CodeBadRequest},
		"block size too small":          {rawHashQ(stream.Version, hashPayload("web", "vda", 2048, 0, 1)), stream.CodeBadRequest},
		"block size too large":          {rawHashQ(stream.Version, hashPayload("web", "vda", 32<<20, 0, 1)), stream.CodeBadRequest},
		"offset not a multiple":         {rawHashQ(stream.Version, hashPayload("web", "vda", 64<<10, 4096, 1)), stream.CodeBadRequest},
		"too many blocks":               {rawHashQ(stream.Version, hashPayload("web", "vda", 64<<10, 0, stream.MaxHashBlocks+1)), stream.CodeBadRequest},
		"path-like group":               {rawHashQ(stream.Version, hashPayload("../x", "vda", 64<<10, 0, 1)), stream.CodeBadRequest},
		"path-like disk":                {rawHashQ(stream.Version, hashPayload("web", "a/b", 64<<10, 0, 1)), stream.CodeBadRequest},
		"empty disk":                    {rawHashQ(stream.Version, hashPayload("web", "", 64<<10, 0, 1)), stream.CodeBadRequest},
		"nonzero reserved byte":         {rawHashQ(stream.Version, reserved), stream.CodeBadRequest},
		"lengths lie":                   {rawHashQ(stream.Version, good[:len(good)-1]), stream.CodeBadRequest},
		"cut short":                     {rawHashQ(stream.Version, good[:20]), stream.CodeBadRequest},
		"version 1":                     {rawHashQ(1, good), stream.CodeVersion},
		"a newer version":               {rawHashQ(stream.Version+1, append(append([]byte(nil), good...), 0, 0, 0, 0)), stream.CodeVersion},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
			if err != nil {
				t.Fatal(err)
			}
			c.sendFrame(t, tc.frame)
			_, err = c.hashAnswer()
			refusal(t, err, tc.code)
			c.closed(t)
		})
	}
	// A malformed query after a good one on the same connection.
	c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.query(t, query("web", "vda", 0, 1)); err != nil {
		t.Fatal(err)
	}
	c.sendFrame(t, rawHashQ(stream.Version, hashPayload("web", "vda", 48<<10, 0, 1)))
	_, err = c.hashAnswer()
	refusal(t, err, stream.CodeBadRequest)
	if n := len(h.called()); n != 1 {
		t.Fatalf("the Hasher was asked %d times, want once (the good query)", n)
	}
}

// A Server without a Hasher refuses hash queries as a replica older than
// them does, CodeProtocol (the host then copies disks whole), after
// authorizing them.
func TestHashQueryNoHasher(t *testing.T) {
	r := startHashing(t, nil, nil)
	c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.query(t, query("web", "vda", 0, 1))
	refusal(t, err, stream.CodeProtocol)
	c.closed(t)
	c, err = dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.query(t, query("payroll", "vda", 0, 1))
	refusal(t, err, stream.CodeDenied) // authorization comes first
	// Streams are served as ever.
	c, err = dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.hello("web", 0); err != nil {
		t.Fatal(err)
	}
}

// A Hasher that fails is unavailable; one that makes a reply the protocol
// cannot carry is an internal error.
func TestHashQueryHasherFails(t *testing.T) {
	h := &fakeHasher{err: errors.New("journal on fire")}
	r := startHashing(t, h, nil)
	c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.query(t, query("web", "vda", 0, 1))
	re := refusal(t, err, stream.CodeUnavailable)
	if strings.Contains(re.Message, "on fire") {
		t.Errorf("the refusal tells the host the replica's own error: %q", re.Message)
	}
	c.closed(t)
	if !strings.Contains(r.log.String(), "journal on fire") {
		t.Errorf("the Hasher's error was not logged:\n%s", r.log.String())
	}

	h.mu.Lock()
	h.err, h.reply = nil, &stream.HashReply{Status: stream.HashNoDisk, Hashes: make([]stream.Hash, 2)}
	h.mu.Unlock()
	c, err = dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.query(t, query("web", "vda", 0, 1))
	refusal(t, err, stream.CodeInternal)
	c.closed(t)
}

// On a hash query connection, any frame but another HashQ is refused as
// out of place, and the connection is closed.
func TestHashQueryThenOtherFrame(t *testing.T) {
	hello, err := stream.AppendHello(nil, stream.HelloMsg{Group: "web", Host: "h", Spool: testSpool})
	if err != nil {
		t.Fatal(err)
	}
	reply, err := stream.AppendHashReply(nil, stream.HashReply{Status: stream.HashOK})
	if err != nil {
		t.Fatal(err)
	}
	e := stream.NewBatchEncoder(false)
	rec := record.Record{Seq: 1, Kind: record.Data, Disk: "vda", Length: 3, Payload: []byte{1, 2, 3}}
	if err := e.Add(&rec); err != nil {
		t.Fatal(err)
	}
	frames := map[string][]byte{
		"ping":   stream.AppendPing(nil),
		"hello":  hello,
		"ack":    stream.AppendAck(nil, 3),
		"hashes": reply,
		"batch":  append([]byte(nil), e.Frame()...),
	}
	h := &fakeHasher{}
	r := startHashing(t, h, nil)
	for name, f := range frames {
		t.Run(name, func(t *testing.T) {
			c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.query(t, query("web", "vda", 0, 1)); err != nil {
				t.Fatal(err)
			}
			c.sendFrame(t, f)
			_, err = c.hashAnswer()
			refusal(t, err, stream.CodeProtocol)
			c.closed(t)
		})
	}
	if n := len(h.called()); n != len(frames) {
		t.Fatalf("%d Hasher calls, want %d", n, len(frames))
	}
}

// A hash query connection counts against max_streams like a stream: at
// the limit, one for a group that is streaming is let in (its host is
// resyncing that stream), one for another group is refused.
func TestHashQueryMaxStreams(t *testing.T) {
	h := &fakeHasher{}
	r := startHashing(t, h, func(srv *receiver.Server) {
		srv.MaxStreams = func(tenant string) int {
			if tenant == "alpha" {
				return 2
			}
			return 0
		}
	})
	for _, g := range []string{"web", "db-1"} {
		c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.hello(g, 0); err != nil {
			t.Fatal(err)
		}
	}
	c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.query(t, query("db-2", "vda", 0, 1))
	if re := refusal(t, err, stream.CodeUnavailable); !strings.Contains(re.Message, "max_streams is 2") {
		t.Errorf("refusal %q does not name the limit", re.Message)
	}
	c, err = dial(t, r, r.pki.Client("alpha", "kvm-a1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.query(t, query("web", "vda", 0, 1)); err != nil {
		t.Fatalf("a hash query of a streaming group at the limit: %v", err)
	}
	if calls := h.called(); len(calls) != 1 || calls[0].q.Group != "web" {
		t.Fatalf("Hasher calls %+v", calls)
	}
}

// A frame after a query that the reader itself refuses (a data frame of
// another version, a corrupt one) is refused too, as on a stream and as
// the first frame of a connection is: the host hears why.
// (It failed before hashes.go refused them.)
func TestHashQueryThenBadFrame(t *testing.T) {
	ping := stream.AppendPing(nil)
	ping[9] = 1 // a v1 Ping: a data frame of another version
	streamtest.Reseal(ping)
	corrupt := stream.AppendAck(nil, 3)
	corrupt[len(corrupt)-1] ^= 1
	big := stream.AppendPing(nil)
	binary.LittleEndian.PutUint32(big[12:], 1)
	bigSealed := append(big, 0)
	streamtest.Reseal(bigSealed) // a Ping with a payload: over its bound
	r := startHashing(t, &fakeHasher{}, nil)
	for name, tc := range map[string]struct {
		frame []byte
		codes []stream.Code
	}{
		"data frame of version 1": {ping, []stream.Code{stream.CodeProtocol, stream.CodeVersion}},
		"corrupt frame":           {corrupt, []stream.Code{stream.CodeProtocol}},
		"frame over its bound":    {bigSealed, []stream.Code{stream.CodeProtocol}},
	} {
		t.Run(name, func(t *testing.T) {
			c, err := dial(t, r, r.pki.Client("alpha", "kvm-a1"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.query(t, query("web", "vda", 0, 1)); err != nil {
				t.Fatal(err)
			}
			c.sendFrame(t, tc.frame)
			_, err = c.hashAnswer()
			var re *stream.RefusedError
			if !errors.As(err, &re) || !slices.Contains(tc.codes, re.Code) {
				t.Fatalf("got %v, want a refusal with a code of %v", err, tc.codes)
			}
		})
	}
}
