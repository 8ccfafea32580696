package sender_test

import (
	"context"
	"errors"
	"net"
	"os"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qcdp/qcdp/configs"
	"github.com/qcdp/qcdp/replica/journal"
	"github.com/qcdp/qcdp/replica/receiver"
	"github.com/qcdp/qcdp/shipper/sender"
	"github.com/qcdp/qcdp/stream"
	"github.com/qcdp/qcdp/stream/streamtest"
)

// hashSite is a receiver whose Hasher the test sets.
type hashSite struct {
	pki  *streamtest.PKI
	addr string

	mu     sync.Mutex
	hasher receiver.Hasher // nil: the Server has no Hasher
	calls  []stream.HashQuery
}

func newHashSite(t *testing.T, withHasher bool) *hashSite {
	t.Helper()
	root := t.TempDir()
	cfg, err := configs.ParseReplica("replica.toml", []byte(strings.Replace(policy, "STORAGE", root, 1)))
	if err != nil {
		t.Fatal(err)
	}
	hs := &hashSite{pki: streamtest.New(t)}
	srv := &receiver.Server{
		TLS:    hs.pki.Server,
		Config: cfg,
		Logger: quiet,
		OpenJournal: func(ctx context.Context, tenant, group string) (receiver.Journal, error) {
			dir, err := cfg.JournalDir(tenant, group)
			if err != nil {
				return nil, err
			}
			return journal.Open(ctx, journal.Options{Dir: dir, Group: group, Logger: quiet})
		},
	}
	if withHasher {
		srv.Hasher = func(ctx context.Context, tenant string, q stream.HashQuery) (stream.HashReply, error) {
			hs.mu.Lock()
			h := hs.hasher
			hs.calls = append(hs.calls, q)
			hs.mu.Unlock()
			if tenant != "acme" {
				return stream.HashReply{}, errors.New("wrong tenant " + tenant)
			}
			return h(ctx, tenant, q)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs.addr = ln.Addr().String()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, receiver.ErrServerClosed) {
			t.Errorf("serve: %v", err)
		}
	})
	return hs
}

func (hs *hashSite) set(h receiver.Hasher) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	hs.hasher = h
}

func (hs *hashSite) queries() []stream.HashQuery {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	return append([]stream.HashQuery(nil), hs.calls...)
}

// newHashSender is a sender of group's spool to hs; it need not Run.
func newHashSender(t *testing.T, hs *hashSite, group string) *sender.Sender {
	t.Helper()
	s, err := sender.New(sender.Options{Spool: openSpool(t, group), Addr: hs.addr, TLS: hs.pki.Client("acme", "kvm1"),
		Host: "kvm1", DialTimeout: 5 * time.Second, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func replyOf(q stream.HashQuery) stream.HashReply {
	r := stream.HashReply{Status: stream.HashOK, Offset: q.Offset, Size: 1 << 30, Seq: q.After}
	for i := range q.Count {
		r.Hashes = append(r.Hashes, stream.BlockHash([]byte{byte(i), byte(q.Offset >> 16)}))
	}
	return r
}

func TestHashesServed(t *testing.T) {
	ctx := context.Background()
	hs := newHashSite(t, true)
	hs.set(func(ctx context.Context, tenant string, q stream.HashQuery) (stream.HashReply, error) {
		return replyOf(q), nil
	})
	s := newHashSender(t, hs, "g1")

	got, err := s.Hashes(ctx, "vda", 256<<10, 64<<10, 12, 77)
	if err != nil {
		t.Fatal(err)
	}
	want := stream.HashQuery{Group: "g1", Disk: "vda", BlockSize: 64 << 10, Offset: 256 << 10, Count: 12, After: 77}
	if qs := hs.queries(); len(qs) != 1 || qs[0] != want {
		t.Fatalf("the replica was asked %+v, want %+v", qs, want)
	}
	if !reflect.DeepEqual(got, replyOf(want)) {
		t.Fatalf("reply %+v, want %+v", got, replyOf(want))
	}
	// Fewer hashes than asked (the disk ends) and the other statuses are
	// the replica's to give.
	for _, r := range []stream.HashReply{
		{Status: stream.HashOK, Offset: 256 << 10, Size: 300 << 10, Seq: 77, Hashes: replyOf(want).Hashes[:1]},
		{Status: stream.HashNoDisk, Offset: 256 << 10},
		{Status: stream.HashBehind, Offset: 256 << 10, Seq: 70},
	} {
		hs.set(func(context.Context, string, stream.HashQuery) (stream.HashReply, error) { return r, nil })
		got, err := s.Hashes(ctx, "vda", 256<<10, 64<<10, 12, 77)
		if err != nil {
			t.Fatalf("%v reply: %v", r.Status, err)
		}
		if len(got.Hashes) == 0 {
			got.Hashes = nil
		}
		if !reflect.DeepEqual(got, r) {
			t.Fatalf("reply %+v, want %+v", got, r)
		}
	}
}

// A reply that does not answer the query is a protocol error: hashes from
// another offset, or more of them than asked.
func TestHashesReplyChecked(t *testing.T) {
	ctx := context.Background()
	hs := newHashSite(t, true)
	s := newHashSender(t, hs, "g1")
	for name, lie := range map[string]func(q stream.HashQuery) stream.HashReply{
		"another offset": func(q stream.HashQuery) stream.HashReply { r := replyOf(q); r.Offset += uint64(q.BlockSize); return r },
		"more hashes":    func(q stream.HashQuery) stream.HashReply { q.Count++; return replyOf(q) },
		"no-disk, another offset": func(q stream.HashQuery) stream.HashReply {
			return stream.HashReply{Status: stream.HashNoDisk, Offset: q.Offset + 1}
		},
	} {
		hs.set(func(_ context.Context, _ string, q stream.HashQuery) (stream.HashReply, error) { return lie(q), nil })
		if r, err := s.Hashes(ctx, "vda", 0, 4096, 4, 1); !errors.Is(err, stream.ErrProtocol) {
			t.Errorf("%s: %+v, %v; want ErrProtocol", name, r, err)
		}
	}
}

// A replica that refuses the query: the error carries its refusal, so
// that the caller copies the disk whole.
func TestHashesRefused(t *testing.T) {
	ctx := context.Background()
	refusedWith := func(t *testing.T, err error, code stream.Code) {
		t.Helper()
		var re *stream.RefusedError
		if !errors.As(err, &re) || re.Code != code || !errors.Is(err, stream.ErrRefused) {
			t.Fatalf("got %v, want a refusal %v", err, code)
		}
	}
	noHasher := newHashSite(t, false)
	_, err := newHashSender(t, noHasher, "g1").Hashes(ctx, "vda", 0, 4096, 1, 0)
	refusedWith(t, err, stream.CodeProtocol) // as an older replica's

	hs := newHashSite(t, true)
	hs.set(func(context.Context, string, stream.HashQuery) (stream.HashReply, error) {
		return stream.HashReply{}, errors.New("disk on fire")
	})
	_, err = newHashSender(t, hs, "g1").Hashes(ctx, "vda", 0, 4096, 1, 0)
	refusedWith(t, err, stream.CodeUnavailable)

	// A group the host may not write is denied before the Hasher is asked.
	n := len(hs.queries())
	_, err = newHashSender(t, hs, "other").Hashes(ctx, "vda", 0, 4096, 1, 0)
	refusedWith(t, err, stream.CodeDenied)
	if len(hs.queries()) != n {
		t.Fatal("the Hasher was asked for a denied group")
	}
}

// A query the protocol cannot carry fails before any connection.
func TestHashesBadQuery(t *testing.T) {
	ctx := context.Background()
	hs := newHashSite(t, true)
	hs.set(func(_ context.Context, _ string, q stream.HashQuery) (stream.HashReply, error) {
		return replyOf(q), nil
	})
	s := newHashSender(t, hs, "g1")
	for name, q := range map[string]struct {
		disk  string
		off   uint64
		bs    uint32
		count uint32
	}{
		"block size not a power of two": {"vda", 0, 3 << 12, 1},
		"block size too small":          {"vda", 0, 512, 1},
		"offset not a multiple":         {"vda", 512, 4096, 1},
		"too many blocks":               {"vda", 0, 4096, stream.MaxHashBlocks + 1},
		"bad disk name":                 {"../vda", 0, 4096, 1},
	} {
		if _, err := s.Hashes(ctx, q.disk, q.off, q.bs, q.count, 0); !errors.Is(err, stream.ErrProtocol) {
			t.Errorf("%s: %v; want ErrProtocol", name, err)
		}
	}
	if n := len(hs.queries()); n != 0 {
		t.Fatalf("the replica was asked %d bad queries", n)
	}
	// A replica that cannot be reached, and a context that ended.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Hashes(cctx, "vda", 0, 4096, 1, 0); err == nil {
		t.Fatal("a canceled query succeeded")
	}
}

// A query that waits (the replica does not hold After yet) ends with its
// context, not at HashTimeout, and says so.
func TestHashesContextEnds(t *testing.T) {
	hs := newHashSite(t, true)
	hs.set(func(ctx context.Context, _ string, q stream.HashQuery) (stream.HashReply, error) {
		select { // the replica's wait for After, bounded here
		case <-ctx.Done():
		case <-time.After(3 * time.Second):
		}
		return stream.HashReply{Status: stream.HashBehind, Offset: q.Offset}, nil
	})
	s := newHashSender(t, hs, "g1")

	// Canceled.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	time.AfterFunc(300*time.Millisecond, cancel)
	start := time.Now()
	_, err := s.Hashes(ctx, "vda", 0, 4096, 1, 0)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled while the replica waits: %v; want it to wrap context.Canceled", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("returned %v after the cancel", d)
	}

	// Past its deadline. The connection's deadline is the context's, and
	// may fire before the context says it is done: either error will do.
	ctx, cancel = context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = s.Hashes(ctx, "vda", 0, 4096, 1, 0)
	if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("past its deadline: %v; want a deadline error", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("returned after %v", d)
	}
}
