package beacongrpc_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/beacon-go/beacon/beacongrpc"
	"github.com/beacon-go/beacon/registry"
)

func TestMain(m *testing.M) {
	// Balancers go into grpc-go's global table before any client exists.
	beacongrpc.RegisterBalancers()
	flag.Parse()
	if !testing.Verbose() {
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	}
	goleak.VerifyTestMain(m)
}

// node is one gRPC server of a test: the standard health service, whose
// Check counts calls and can be made slow or fail.
type lbNode struct {
	id    string
	addr  string
	srv   *grpc.Server
	calls atomic.Int64
	delay atomic.Int64  // ns per call
	code  atomic.Uint32 // status code Check returns (0: OK)

	healthpb.UnimplementedHealthServer
}

func (n *lbNode) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	n.calls.Add(1)
	if d := time.Duration(n.delay.Load()); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
	}
	if c := codes.Code(n.code.Load()); c != codes.OK {
		return nil, status.Error(c, "told to fail")
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

// startNode starts a gRPC server on a kernel-chosen loopback port; it is
// stopped at cleanup.
func startLBNode(t testing.TB, id string) *lbNode {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := &lbNode{id: id, addr: lis.Addr().String(), srv: grpc.NewServer()}
	healthpb.RegisterHealthServer(n.srv, n)
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.srv.Serve(lis)
	}()
	t.Cleanup(func() {
		n.srv.Stop()
		<-done
	})
	return n
}

func startLBNodes(t testing.TB, ids ...string) []*lbNode {
	var out []*lbNode
	for _, id := range ids {
		out = append(out, startLBNode(t, id))
	}
	return out
}

// service is the registry record of nodes (registered by hand, as a gRPC
// server would: protocol grpc), with extra metadata as key, value pairs.
func lbService(name, version string, md map[string]string, nodes ...*lbNode) *registry.Service {
	s := &registry.Service{Name: name, Version: version}
	for _, n := range nodes {
		m := map[string]string{registry.MetaProtocol: registry.ProtocolGRPC}
		maps.Copy(m, md)
		s.Nodes = append(s.Nodes, &registry.Node{ID: n.id, Address: n.addr, Metadata: m})
	}
	return s
}

func lbRegister(t testing.TB, r registry.Registry, s *registry.Service) {
	t.Helper()
	if err := r.Register(context.Background(), s); err != nil {
		t.Fatal(err)
	}
}

func lbDeregister(t testing.TB, r registry.Registry, s *registry.Service) {
	t.Helper()
	if err := r.Deregister(context.Background(), s); err != nil {
		t.Fatal(err)
	}
}

// dial makes a client of target through b; lb names the balancer ("" for
// grpc-go's default, pick_first). Only loopback IP literals are dialled, and
// never through a proxy.
func lbDial(t testing.TB, b *beacongrpc.Builder, target, lb string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	all := []grpc.DialOption{grpc.WithResolvers(b), grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithNoProxy()}
	if lb != "" {
		all = append(all, grpc.WithDefaultServiceConfig(fmt.Sprintf(`{"loadBalancingConfig":[{%q:{}}]}`, lb)))
	}
	conn, err := grpc.NewClient(target, append(all, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func lbCheck(ctx context.Context, conn *grpc.ClientConn, opts ...grpc.CallOption) error {
	_, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, opts...)
	return err
}

func lbCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// eventually polls cond until it returns nil, lbFailing after wait.
func lbEventually(t testing.TB, wait time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true within %v: %v", wait, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// counts returns each node's calls since the last reset and resets them.
func lbCounts(nodes ...*lbNode) map[string]int64 {
	m := map[string]int64{}
	for _, n := range nodes {
		m[n.id] = n.calls.Swap(0)
	}
	return m
}

// load runs workers that call conn until stop is closed (bounded: at most
// max calls each, and a deadline per call); it counts calls and failures.
type lbLoad struct {
	wg       sync.WaitGroup
	stop     chan struct{}
	ok, fail atomic.Int64
	mu       sync.Mutex
	errs     []error
}

func startLBLoad(conn *grpc.ClientConn, workers, max int, opts ...grpc.CallOption) *lbLoad {
	l := &lbLoad{stop: make(chan struct{})}
	for range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for range max {
				select {
				case <-l.stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				err := lbCheck(ctx, conn, opts...)
				cancel()
				if err != nil {
					l.fail.Add(1)
					l.mu.Lock()
					if len(l.errs) < 5 {
						l.errs = append(l.errs, err)
					}
					l.mu.Unlock()
					continue
				}
				l.ok.Add(1)
			}
		}()
	}
	return l
}

func (l *lbLoad) Stop() (ok, fail int64, err error) {
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok.Load(), l.fail.Load(), errors.Join(l.errs...)
}

// lbFailing wraps a registry that can be made to fail: GetService and Watch
// return errors and the open watches end.
type lbFailing struct {
	registry.Registry
	down atomic.Bool
	mu   sync.Mutex
	ws   []registry.Watcher
	// fails counts the calls refused while down.
	fails atomic.Int64
}

var errLBDown = errors.New("registry down (test)")

func (f *lbFailing) fail() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down.Store(true)
	for _, w := range f.ws {
		w.Stop()
	}
	f.ws = nil
}

func (f *lbFailing) GetService(ctx context.Context, name string, o ...registry.GetOption) ([]*registry.Service, error) {
	if f.down.Load() {
		f.fails.Add(1)
		return nil, errLBDown
	}
	return f.Registry.GetService(ctx, name, o...)
}

func (f *lbFailing) Watch(ctx context.Context, o ...registry.WatchOption) (registry.Watcher, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down.Load() {
		f.fails.Add(1)
		return nil, errLBDown
	}
	w, err := f.Registry.Watch(ctx, o...)
	if err == nil {
		f.ws = append(f.ws, w)
	}
	return w, err
}
