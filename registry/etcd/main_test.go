package etcd

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrytest"
)

// shared is the package's etcd, started by TestMain and used by every test
// that does not need a server of its own. Tests use prefixes and service
// names of their own.
var shared *testserver.Etcd

// withEtcd runs the tests with a shared etcd, so that goleak checks after
// the server's process goroutine has ended.
type withEtcd struct{ m *testing.M }

func (w withEtcd) Run() int {
	dir, err := os.MkdirTemp("", "beacon-etcd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	e, err := testserver.StartEtcd(dir)
	if err != nil {
		// A missing binary fails (never skips) and names the install script.
		fmt.Fprintln(os.Stderr, "FAIL: registry/etcd tests need a real etcd:", err)
		return 1
	}
	shared = e
	defer e.Stop()
	return w.m.Run()
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(withEtcd{m}) }

// logBuf is a slog handler that keeps records for assertions and, with -v,
// prints them to stderr.
type logBuf struct {
	mu   sync.Mutex
	recs []string
	h    slog.Handler
}

func newLogBuf() *logBuf {
	lb := &logBuf{}
	if testing.Verbose() {
		lb.h = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})
	}
	return lb
}

func (l *logBuf) Logger() *slog.Logger { return slog.New(l) }

func (l *logBuf) Enabled(context.Context, slog.Level) bool { return true }
func (l *logBuf) Handle(ctx context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.String())
		return true
	})
	l.mu.Lock()
	l.recs = append(l.recs, b.String())
	l.mu.Unlock()
	if l.h != nil && r.Level >= slog.LevelInfo {
		return l.h.Handle(ctx, r)
	}
	return nil
}
func (l *logBuf) WithAttrs(attrs []slog.Attr) slog.Handler { return &attrHandler{l, attrs} }
func (l *logBuf) WithGroup(string) slog.Handler            { return l }

// Has reports whether a record contains all of parts.
func (l *logBuf) Has(parts ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
next:
	for _, rec := range l.recs {
		for _, p := range parts {
			if !strings.Contains(rec, p) {
				continue next
			}
		}
		return true
	}
	return false
}

type attrHandler struct {
	l     *logBuf
	attrs []slog.Attr
}

func (h *attrHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *attrHandler) Handle(ctx context.Context, r slog.Record) error {
	r.AddAttrs(h.attrs...)
	return h.l.Handle(ctx, r)
}
func (h *attrHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &attrHandler{h.l, append(append([]slog.Attr(nil), h.attrs...), attrs...)}
}
func (h *attrHandler) WithGroup(string) slog.Handler { return h }

// testPrefix returns a prefix of the test's own.
func testPrefix(t testing.TB) string {
	return fmt.Sprintf("/beacon-test/%s-%08x/", strings.NewReplacer("/", "-", " ", "_").Replace(t.Name()), rand.Uint32())
}

// newReg returns a registry on the shared etcd (or on addrs), closed at
// cleanup.
func newReg(t testing.TB, lb *logBuf, opts ...Option) *Registry {
	t.Helper()
	if lb == nil {
		lb = newLogBuf()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	all := append([]Option{WithAddrs(shared.Endpoints()...), WithLogger(lb.Logger()), WithDialTimeout(5 * time.Second)}, opts...)
	r, err := New(ctx, all...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// rawClient is a plain etcd client for checking what the registry stored
// and for writing records as other tools would.
func rawClient(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	if len(endpoints) == 0 {
		endpoints = shared.Endpoints()
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		// Reconnect as fast as the registry does, so that the test's view
		// after an etcd restart is not late.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, MaxDelay: 200 * time.Millisecond}})},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func svc(name, version string, ids ...string) *registry.Service {
	s := &registry.Service{Name: name, Version: version, Metadata: map[string]string{"k": "v"},
		Endpoints: []*registry.Endpoint{{Name: "Greeter.Hello", Request: &registry.Value{Name: "Req", Type: "Req"}}}}
	for i, id := range ids {
		s.Nodes = append(s.Nodes, &registry.Node{ID: id, Address: fmt.Sprintf("127.0.0.1:%d", 30000+i), Metadata: map[string]string{"i": fmt.Sprint(i)}})
	}
	return s
}

// state follows a watcher's events as a NodeSet.
type state struct {
	ev  *registrytest.Events
	mu  sync.Mutex
	set registry.NodeSet
	all []*registry.Event
}

func (s *state) drain() {
	for {
		select {
		case e, ok := <-s.ev.C:
			if !ok {
				return
			}
			s.mu.Lock()
			s.set.Apply(e)
			s.all = append(s.all, e)
			s.mu.Unlock()
		default:
			return
		}
	}
}

// waitFor polls the watcher's state until cond holds.
func (s *state) waitFor(t testing.TB, wait time.Duration, what string, cond func(registry.NodeSet) bool) {
	t.Helper()
	registrytest.Eventually(t, wait, func() error {
		s.drain()
		s.mu.Lock()
		defer s.mu.Unlock()
		if cond(s.set) {
			return nil
		}
		return fmt.Errorf("watcher state %v: not %s", keys(s.set), what)
	})
}

func watchState(t *testing.T, r registry.Registry, opts ...registry.WatchOption) *state {
	return &state{ev: registrytest.Watch(t, r, opts...), set: make(registry.NodeSet)}
}

func keys(set registry.NodeSet) []string {
	var out []string
	for _, s := range set {
		out = append(out, s.Nodes[0].ID)
	}
	return out
}

func hasIDs(ids ...string) func(registry.NodeSet) bool {
	return func(set registry.NodeSet) bool {
		if len(set) != len(ids) {
			return false
		}
		for _, id := range ids {
			found := false
			for _, s := range set {
				if s.Nodes[0].ID == id {
					found = true
				}
			}
			if !found {
				return false
			}
		}
		return true
	}
}
