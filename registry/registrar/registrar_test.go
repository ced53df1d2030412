package registrar_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/registry/registrar"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a registry that records the calls made to it, in order, and
// fails Register while failing is set.
type recorder struct {
	registry.Registry
	mu      sync.Mutex
	calls   []string
	ttls    []time.Duration
	failing bool
}

func (r *recorder) Register(ctx context.Context, s *registry.Service, opts ...registry.RegisterOption) error {
	r.mu.Lock()
	fail := r.failing
	r.calls = append(r.calls, "register")
	r.ttls = append(r.ttls, registry.ApplyRegister(opts...).TTL)
	r.mu.Unlock()
	if fail {
		return errors.New("registry down")
	}
	return r.Registry.Register(ctx, s, opts...)
}

func (r *recorder) Deregister(ctx context.Context, s *registry.Service, opts ...registry.DeregisterOption) error {
	r.mu.Lock()
	r.calls = append(r.calls, "deregister")
	r.mu.Unlock()
	return r.Registry.Deregister(ctx, s, opts...)
}

func (r *recorder) count(call string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, c := range r.calls {
		if c == call {
			n++
		}
	}
	return n
}

func (r *recorder) setFailing(f bool) { r.mu.Lock(); r.failing = f; r.mu.Unlock() }

// logs keeps log messages.
type logs struct {
	mu   sync.Mutex
	msgs []string
}

func (l *logs) Enabled(context.Context, slog.Level) bool { return true }
func (l *logs) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.msgs = append(l.msgs, r.Message)
	l.mu.Unlock()
	return nil
}
func (l *logs) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logs) WithGroup(string) slog.Handler      { return l }
func (l *logs) has(msg string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range l.msgs {
		if m == msg {
			return true
		}
	}
	return false
}

func svc() *registry.Service {
	return &registry.Service{Name: "greeter", Version: "1", Nodes: []*registry.Node{{ID: "greeter-1", Address: "127.0.0.1:9"}}}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLifecycle(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	rec := &recorder{Registry: mem}
	lg := &logs{}
	r, err := registrar.New(rec, svc(), registrar.TTL(300*time.Millisecond), registrar.Interval(50*time.Millisecond),
		registrar.DrainGrace(150*time.Millisecond), registrar.Logger(slog.New(lg)), registrar.LogPrefix("test"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx); !errors.Is(err, registrar.ErrStarted) {
		t.Fatalf("second Start: %v", err)
	}
	if !lg.has("test: registered") {
		t.Fatalf("no registered log: %v", lg.msgs)
	}
	// Heartbeats keep the node alive past its TTL.
	time.Sleep(500 * time.Millisecond)
	if got, err := mem.GetService(ctx, "greeter"); err != nil || len(got[0].Nodes) != 1 {
		t.Fatalf("node after 500ms with a 300ms TTL: %v %v", got, err)
	}
	if n := rec.count("register"); n < 5 {
		t.Fatalf("%d registrations in 500ms at a 50ms interval", n)
	}
	for _, ttl := range rec.ttls {
		if ttl != 300*time.Millisecond {
			t.Fatalf("registered with TTL %v", ttl)
		}
	}

	// A failing registry: retried with backoff, logged, and registered
	// again once it is back.
	rec.setFailing(true)
	waitFor(t, "a failed heartbeat log", func() bool { return lg.has("test: heartbeat failed; retrying") })
	rec.setFailing(false)
	waitFor(t, "registered again", func() bool { return lg.has("test: registered again after failures") })

	// Stop: the heartbeat stops, deregistration comes first, then the
	// grace.
	start := time.Now()
	if err := r.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Fatalf("Stop returned after %v, before the drain grace", d)
	}
	rec.mu.Lock()
	last := rec.calls[len(rec.calls)-1]
	rec.mu.Unlock()
	if last != "deregister" {
		t.Fatalf("last call %q, want deregister", last)
	}
	if _, err := mem.GetService(ctx, "greeter"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("after Stop: %v", err)
	}
	n := rec.count("register")
	time.Sleep(120 * time.Millisecond)
	if rec.count("register") != n {
		t.Fatal("heartbeat after Stop")
	}
	// Idempotent, without another grace.
	start = time.Now()
	if err := r.Stop(ctx); err != nil || time.Since(start) > 50*time.Millisecond {
		t.Fatalf("second Stop: %v after %v", err, time.Since(start))
	}
	if rec.count("deregister") != 1 {
		t.Fatalf("%d deregistrations", rec.count("deregister"))
	}
}

func TestStartWithRegistryDown(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	rec := &recorder{Registry: mem, failing: true}
	lg := &logs{}
	r, err := registrar.New(rec, svc(), registrar.TTL(time.Second), registrar.Interval(100*time.Millisecond), registrar.DrainGrace(0), registrar.Logger(slog.New(lg)))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatalf("Start with the registry down: %v, want nil (the heartbeat retries)", err)
	}
	if !lg.has("registrar: register failed; the heartbeat will retry") {
		t.Fatalf("logs %v", lg.msgs)
	}
	rec.setFailing(false)
	waitFor(t, "registration", func() bool {
		_, err := mem.GetService(context.Background(), "greeter")
		return err == nil
	})
	if err := r.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestStopBoundedByContext(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	r, err := registrar.New(mem, svc(), registrar.DrainGrace(time.Hour), registrar.Logger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_ = r.Stop(ctx)
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Stop took %v with a 100ms context", d)
	}
}

func TestCheckAndInvalid(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	for _, tc := range []struct {
		ttl, interval time.Duration
		want          error
	}{
		{registrar.DefaultTTL, registrar.DefaultInterval, nil},
		{registrar.MaxTTL + 1, time.Second, registrar.ErrBadTTL},
		{time.Second, time.Second, registrar.ErrBadInterval},
		{time.Second, 0, registrar.ErrBadInterval},
	} {
		if _, err := registrar.New(mem, svc(), registrar.TTL(tc.ttl), registrar.Interval(tc.interval)); !errors.Is(err, tc.want) {
			t.Errorf("TTL %v interval %v: %v, want %v", tc.ttl, tc.interval, err, tc.want)
		}
	}
	bad := svc()
	bad.Nodes[0].Address = ""
	if _, err := registrar.New(mem, bad); !errors.Is(err, registry.ErrInvalid) {
		t.Fatalf("invalid service: %v", err)
	}
	// Deregister before Start prevents Start.
	r, _ := registrar.New(mem, svc())
	if err := r.Deregister(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); !errors.Is(err, registrar.ErrStarted) {
		t.Fatalf("Start after Deregister: %v", err)
	}
}

func TestAdvertiseAddrAndID(t *testing.T) {
	a, _ := net.ResolveTCPAddr("tcp", "0.0.0.0:80")
	got := registrar.AdvertiseAddr(a)
	h, p, err := net.SplitHostPort(got)
	if err != nil || p != "80" || net.ParseIP(h) == nil || net.ParseIP(h).IsUnspecified() {
		t.Fatalf("AdvertiseAddr(0.0.0.0:80) = %s", got)
	}
	a, _ = net.ResolveTCPAddr("tcp", "127.0.0.1:80")
	if got := registrar.AdvertiseAddr(a); got != "127.0.0.1:80" {
		t.Fatalf("AdvertiseAddr(127.0.0.1:80) = %s", got)
	}
	id := registrar.NewID("greeter")
	if !strings.HasPrefix(id, "greeter-") || len(id) != len("greeter-")+16 || id == registrar.NewID("greeter") {
		t.Fatalf("NewID = %s", id)
	}
}

type readOnlyReg struct{ registry.Registry }

func (readOnlyReg) String() string { return "readonly" }

func (readOnlyReg) Register(context.Context, *registry.Service, ...registry.RegisterOption) error {
	return registry.ErrReadOnly
}

func (readOnlyReg) Deregister(context.Context, *registry.Service, ...registry.DeregisterOption) error {
	return registry.ErrReadOnly
}

// TestReadOnlyRegistry: a read-only registry (static) is told once, at
// info level, and neither heartbeated nor deregistered.
func TestReadOnlyRegistry(t *testing.T) {
	var buf bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(&lockedBuf{b: &buf, mu: &mu}, nil))
	svc := &registry.Service{Name: "ro", Nodes: []*registry.Node{{ID: "n", Address: "127.0.0.1:1"}}}
	r, err := registrar.New(readOnlyReg{}, svc, registrar.Logger(log), registrar.TTL(2*time.Second), registrar.Interval(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // several intervals: a heartbeat would have logged
	if err := r.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if out := buf.String(); strings.Count(out, "\n") != 1 || !strings.Contains(out, "level=INFO") || !strings.Contains(out, "read-only") {
		t.Fatalf("logs:\n%s", out)
	}
}

type lockedBuf struct {
	b  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
