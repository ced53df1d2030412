package gomicroconsul

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gmregistry "go-micro.dev/v5/registry"
	gmconsul "go-micro.dev/v5/registry/consul"

	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry/consul"
)

// agent is the consul agent shared by the tests.
var agent *testserver.Consul

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "beacon-gomicro-consul-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	// A missing binary fails here, naming scripts/install-test-servers.sh.
	agent, err = testserver.StartConsul(dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "the go-micro interop tests need a consul agent: %v\n", err)
		return 1
	}
	defer agent.Stop()
	if err := agent.WaitSettled(30 * time.Second); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return m.Run()
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var seq atomic.Int64

// uniqueName returns a service name made from the test's name.
func uniqueName(t testing.TB) string {
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, strings.ToLower(t.Name()))
	return fmt.Sprintf("%s-%d-%d", name, time.Now().UnixNano()%1e6, seq.Add(1))
}

// beaconRegistry returns Beacon's consul registry on the shared agent.
func beaconRegistry(t testing.TB, opts ...consul.Option) *consul.Registry {
	t.Helper()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo}))
	r, err := consul.New(ctxT(t), append([]consul.Option{consul.WithAddrs(agent.Addr()), consul.WithLogger(log)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// goMicroRegistry returns go-micro's consul registry on the shared agent.
func goMicroRegistry(t testing.TB) gmregistry.Registry {
	t.Helper()
	return gmconsul.NewConsulRegistry(gmregistry.Addrs(agent.Addr()))
}

// eventually retries cond every 20 ms until it returns nil or wait passed.
func eventually(t testing.TB, wait time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %v", wait, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
