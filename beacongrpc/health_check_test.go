package beacongrpc_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/beacon-go/beacon/beacongrpc"
	"github.com/beacon-go/beacon/internal/grpctest"
	"github.com/beacon-go/beacon/registry/memory"
)

// TestClientHealthChecking: with healthCheckConfig in the service config,
// every policy stops picking a node whose health service says NOT_SERVING
// (beacongrpc.Server's drain sets it first) and picks it again once it is
// SERVING; no call fails meanwhile.
func TestClientHealthChecking(t *testing.T) {
	setup(t)
	for _, lb := range lbPolicies {
		t.Run(lb, func(t *testing.T) {
			mem := memory.New(memory.WithLogger(quiet))
			defer mem.Close()
			a := startNode(t, mem, "a")
			b := startNode(t, mem, "b")
			rb := beacongrpc.NewBuilder(mem, beacongrpc.WithLogger(quiet))
			defer rb.Close()
			conn, err := grpc.NewClient("beacon:///greeter", grpc.WithResolvers(rb), grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithDefaultServiceConfig(fmt.Sprintf(`{"loadBalancingConfig":[{%q:{}}],"healthCheckConfig":{"serviceName":""}}`, lb)))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctx := ctxT(t)
			call := func() error {
				return conn.Invoke(ctx, grpctest.SayHello, hello("x"), reply(), grpc.WaitForReady(true))
			}
			spread := func(n int) (ca, cb int64, err error) {
				a0, b0 := a.calls.Load(), b.calls.Load()
				for range n {
					if err := call(); err != nil {
						return 0, 0, err
					}
				}
				return a.calls.Load() - a0, b.calls.Load() - b0, nil
			}
			lbEventually(t, 10*time.Second, func() error {
				ca, cb, err := spread(40)
				if err != nil {
					return err
				}
				if ca == 0 || cb == 0 {
					return fmt.Errorf("a got %d calls, b %d", ca, cb)
				}
				return nil
			})

			a.srv.Health().SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
			lbEventually(t, 10*time.Second, func() error {
				ca, _, err := spread(40)
				if err != nil {
					t.Fatal(err)
				}
				if ca != 0 {
					return fmt.Errorf("a (NOT_SERVING) got %d of 40 calls", ca)
				}
				return nil
			})
			for range 3 { // and it stays so
				if ca, _, err := spread(40); err != nil || ca != 0 {
					t.Fatalf("a (NOT_SERVING) got %d of 40 calls (%v)", ca, err)
				}
			}

			a.srv.Health().SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
			lbEventually(t, 10*time.Second, func() error {
				ca, _, err := spread(40)
				if err != nil {
					t.Fatal(err)
				}
				if ca == 0 {
					return fmt.Errorf("a (SERVING again) got no call")
				}
				return nil
			})
		})
	}
}

// TestDrainWithHealthWatchers: a grpc-go client that health-checks the node
// (a Watch stream on its connection) and dials it directly (so it never
// hears of the deregistration) does not hold the drain: grpc-go ends its
// Watch when the GOAWAY of GracefulStop arrives, so Stop does not reach its
// stop timeout (which would cancel calls in flight).
func TestDrainWithHealthWatchers(t *testing.T) {
	setup(t)
	mem := memory.New(memory.WithLogger(quiet))
	defer mem.Close()
	logs := &recordHandler{}
	a := startNode(t, mem, "a", beacongrpc.StopTimeout(20*time.Second), beacongrpc.Logger(slog.New(logs)))
	conn, err := grpc.NewClient("passthrough:///"+a.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}],"healthCheckConfig":{"serviceName":""}}`))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := ctxT(t)
	for range 10 {
		if err := conn.Invoke(ctx, grpctest.SayHello, hello("x"), reply(), grpc.WaitForReady(true)); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.srv.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for _, m := range logs.messages() {
		if strings.Contains(m, "stop timeout") {
			t.Fatalf("the health watch held GracefulStop until the stop timeout: %q", m)
		}
	}
}

// recordHandler is a slog.Handler that keeps the messages.
type recordHandler struct {
	mu   sync.Mutex
	msgs []string
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.msgs = append(h.msgs, r.Message)
	return nil
}

func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordHandler) WithGroup(string) slog.Handler      { return h }

func (h *recordHandler) messages() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.msgs...)
}
