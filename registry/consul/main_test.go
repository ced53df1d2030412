package consul

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/goleak"

	"github.com/beacon-go/beacon/internal/testserver"
)

// agent is the consul agent shared by the package's tests (started in
// TestMain). Tests that stop or restart an agent start their own.
var agent *testserver.Consul

// runner runs the tests and then stops the shared agent, so that goleak
// checks after both.
type runner struct{ m *testing.M }

func (r runner) Run() int {
	flag.Parse()
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		// A fuzzing worker runs only the fuzz target, which needs no agent.
		return r.m.Run()
	}
	dir, err := os.MkdirTemp("", "beacon-consul-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// A missing binary fails here with a message naming
	// scripts/install-test-servers.sh; it is never a skip.
	agent, err = testserver.StartConsul(dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "consul tests need a consul agent: %v\n", err)
		return 1
	}
	if err := agent.WaitSettled(30 * time.Second); err != nil {
		fmt.Fprintln(os.Stderr, err)
		agent.Stop()
		return 1
	}
	code := r.m.Run()
	if err := agent.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	return code
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(runner{m}) }

// testLogger logs to the test's output.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// newRegistry returns a Registry on the shared agent (then any addresses in
// opts), closed at cleanup.
func newRegistry(t testing.TB, opts ...Option) *Registry {
	t.Helper()
	return newRegistryAt(t, agent.Addr(), opts...)
}

// newRegistryAt returns a Registry on the agent at addr, closed at cleanup.
func newRegistryAt(t testing.TB, addr string, opts ...Option) *Registry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opts = append([]Option{WithAddrs(addr), WithLogger(testLogger(t))}, opts...)
	r, err := New(ctx, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// rawClient returns a consul client for writing records the way other
// tools do. Its transport keeps no idle connections (goleak).
func rawClient(t testing.TB, addr string) *api.Client {
	t.Helper()
	cfg := api.DefaultNonPooledConfig()
	cfg.Address = addr
	c, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cfg.Transport.CloseIdleConnections)
	return c
}

// recorder is a slog.Handler that keeps the records (to assert on warnings).
type recorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *recorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.recs = append(h.recs, r.Clone())
	h.mu.Unlock()
	return nil
}
func (h *recorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recorder) WithGroup(string) slog.Handler      { return h }

// count returns how many records at level or above were logged.
func (h *recorder) count(level slog.Level) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, r := range h.recs {
		if r.Level >= level {
			n++
		}
	}
	return n
}
