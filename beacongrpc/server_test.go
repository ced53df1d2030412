package beacongrpc_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/beacon-go/beacon/beacongrpc"
	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/etcd"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/registry/registrytest"
)

// TestRegistration: the server's methods are published as endpoints named
// by their full names, with the full method and streaming kind in the
// endpoint metadata, shapes and idempotency from the descriptors; health
// and reflection are not published; the node says protocol=grpc; the
// health service answers SERVING; Stop deregisters.
func TestRegistration(t *testing.T) {
	setup(t)
	reg := memory.New()
	defer reg.Close()
	ctx := ctxT(t)
	n := startNode(t, reg, "g1", beacongrpc.Idempotent("helloworld.Greeter.SayHello"), beacongrpc.Metadata(map[string]string{"zone": "a"}))

	svcs, err := reg.GetService(ctx, "greeter")
	if err != nil || len(svcs) != 1 || len(svcs[0].Nodes) != 1 {
		t.Fatalf("registered: %v %v", svcs, err)
	}
	s := svcs[0]
	nd := s.Nodes[0]
	if nd.ID != "g1" || nd.Address != n.addr || nd.Metadata[registry.MetaProtocol] != registry.ProtocolGRPC || nd.Metadata["zone"] != "a" || s.Version != "1.0.0" {
		t.Fatalf("node %+v version %q", nd, s.Version)
	}
	var names []string
	for _, e := range s.Endpoints {
		names = append(names, e.Name)
	}
	if got := strings.Join(names, " "); got != "helloworld.Greeter.Chat helloworld.Greeter.Lookup helloworld.Greeter.SayHello" {
		t.Fatalf("endpoints %s", got)
	}
	want := map[string]string{
		"helloworld.Greeter.Chat":     "map[grpc_method:/helloworld.Greeter/Chat grpc_stream:bidi]",
		"helloworld.Greeter.Lookup":   "map[grpc_method:/helloworld.Greeter/Lookup idempotent:true]",   // from idempotency_level
		"helloworld.Greeter.SayHello": "map[grpc_method:/helloworld.Greeter/SayHello idempotent:true]", // from the option
	}
	for _, e := range s.Endpoints {
		if got := fmt.Sprint(e.Metadata); got != want[e.Name] {
			t.Errorf("%s metadata %s, want %s", e.Name, got, want[e.Name])
		}
		if e.Request == nil || e.Request.Name != "HelloRequest" || e.Request.Type != "helloworld.HelloRequest" || len(e.Request.Values) != 3 ||
			e.Request.Values[1].Name != "delayMs" || e.Request.Values[1].Type != "int64" || e.Response.Name != "HelloReply" {
			t.Errorf("%s shapes %+v %+v", e.Name, e.Request, e.Response)
		}
		if method, ok := beacongrpc.FullMethod(e.Name); !ok || method != e.Metadata[beacongrpc.MetaMethod] {
			t.Errorf("FullMethod(%s) = %s, published %s", e.Name, method, e.Metadata[beacongrpc.MetaMethod])
		}
	}

	cc, err := grpc.NewClient("passthrough:///"+n.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	for _, svc := range []string{"", "helloworld.Greeter"} {
		rsp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || rsp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health of %q: %v %v", svc, rsp, err)
		}
	}

	if err := n.srv.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.GetService(ctx, "greeter"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("after Stop: %v", err)
	}
	if err := n.srv.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

// TestServe: Serve blocks until Stop has finished, and returns nil.
func TestServe(t *testing.T) {
	setup(t)
	reg := memory.New()
	defer reg.Close()
	ctx := ctxT(t)
	gs := grpc.NewServer()
	s, err := beacongrpc.NewServer(gs, reg, beacongrpc.Name("empty"), beacongrpc.Logger(quiet), beacongrpc.DrainGrace(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	registrytest.Eventually(t, 5*time.Second, func() error {
		_, err := reg.GetService(ctx, "empty")
		return err
	})
	if got := s.Service(); got == nil || len(got.Endpoints) != 0 || got.Nodes[0].Address != ln.Addr().String() || s.Addr().String() != ln.Addr().String() {
		t.Fatalf("service %+v (a server of the health service only publishes no endpoint)", got)
	}
	start := time.Now()
	go s.Stop(ctx)
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	// Serve returned after the deregistration and the drain grace.
	if _, err := reg.GetService(ctx, "empty"); !errors.Is(err, registry.ErrNotFound) || time.Since(start) < 100*time.Millisecond {
		t.Fatalf("Serve returned after %v, registry: %v", time.Since(start), err)
	}
	if err := s.Start(ctx, ln); !errors.Is(err, beacongrpc.ErrRunning) {
		t.Fatalf("Start after Stop: %v", err)
	}
}

// TestServerOptions: invalid options and misuse fail with errors that say
// what is wrong.
func TestServerOptions(t *testing.T) {
	setup(t)
	reg := memory.New()
	defer reg.Close()
	gs := grpc.NewServer()
	defer gs.Stop()
	if _, err := beacongrpc.NewServer(gs, reg); !errors.Is(err, beacongrpc.ErrNoName) {
		t.Fatalf("no name: %v", err)
	}
	if _, err := beacongrpc.NewServer(gs, reg, beacongrpc.Name("a b")); !errors.Is(err, registry.ErrInvalid) {
		t.Fatalf("bad name: %v", err)
	}
	if _, err := beacongrpc.NewServer(gs, reg, beacongrpc.Name("x"), beacongrpc.RegisterTTL(time.Second), beacongrpc.RegisterInterval(time.Second)); err == nil {
		t.Fatal("interval at the TTL accepted")
	}
	s, err := beacongrpc.NewServer(gs, reg, beacongrpc.Name("x"), beacongrpc.Logger(quiet), beacongrpc.Idempotent("No.Such"))
	if err != nil {
		t.Fatal(err)
	}
	// The health service is now registered: a second wrapper must be given it.
	if _, err := beacongrpc.NewServer(gs, reg, beacongrpc.Name("x")); !errors.Is(err, beacongrpc.ErrHealthRegistered) {
		t.Fatalf("second wrapper: %v", err)
	}
	if _, err := beacongrpc.NewServer(gs, reg, beacongrpc.Name("x"), beacongrpc.Health(s.Health())); err != nil {
		t.Fatalf("with the health server: %v", err)
	}
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	if err := s.Start(context.Background(), ln); !errors.Is(err, beacongrpc.ErrUnknownEndpoint) {
		t.Fatalf("Idempotent of an unknown endpoint: %v", err)
	}

	// A user's own health server is used as it is.
	gs2 := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs2, hs)
	s2, err := beacongrpc.NewServer(gs2, nil, beacongrpc.Name("x"), beacongrpc.Health(hs), beacongrpc.Logger(quiet))
	if err != nil || s2.Health() != hs {
		t.Fatalf("own health server: %v", err)
	}
	if err := s2.Stop(context.Background()); err != nil { // never started
		t.Fatal(err)
	}
}

// TestDrainUnderLoad: one of two nodes stops while callers keep calling a
// method that is not idempotent: no call fails (deregistration, then the
// drain grace while callers' caches drop the node, then GracefulStop), the
// stopped node's health says NOT_SERVING from the start of the drain, and
// the other node serves every call after.
func TestDrainUnderLoad(t *testing.T) {
	setup(t)
	reg := memory.New()
	defer reg.Close()
	ctx := ctxT(t)
	a := startNode(t, reg, "a", beacongrpc.DrainGrace(400*time.Millisecond))
	b := startNode(t, reg, "b")
	cl, _ := newClient(t, reg, nil)

	cc, err := grpc.NewClient("passthrough:///"+a.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	if rsp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || rsp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health before: %v %v", rsp, err)
	}

	var ok, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				req := hello("Ann")
				req.Set(field(greeter.Request, "delay_ms"), protoValueInt(2))
				rsp := reply()
				if err := cl.Call(ctx, "greeter", "helloworld.Greeter.SayHello", req, rsp); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				} else {
					ok.Add(1)
				}
			}
		})
	}
	registrytest.Eventually(t, 5*time.Second, func() error {
		if a.calls.Load() < 20 || b.calls.Load() < 20 {
			return fmt.Errorf("calls a %d b %d", a.calls.Load(), b.calls.Load())
		}
		return nil
	})
	stopped := make(chan error, 1)
	go func() { stopped <- a.srv.Stop(ctx) }()
	// During the drain grace the node still serves, and says NOT_SERVING.
	registrytest.Eventually(t, 300*time.Millisecond, func() error {
		rsp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || rsp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
			return fmt.Errorf("health during the drain: %v %v", rsp, err)
		}
		return nil
	})
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
	atA := a.calls.Load()
	before := b.calls.Load()
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d calls failed while a node drained; first: %v", failed.Load(), failed.Load()+ok.Load(), firstErr.Load())
	}
	if a.calls.Load() != atA || b.calls.Load() == before {
		t.Fatalf("after the stop: a ran %d more, b %d more", a.calls.Load()-atA, b.calls.Load()-before)
	}
	t.Logf("%d calls, none failed; a served %d, b %d", ok.Load(), atA, b.calls.Load())
}

// TestEtcd: a gRPC node registered in a real etcd is called by name
// (protobuf and JSON), and leaves the registry on Stop.
func TestEtcd(t *testing.T) {
	setup(t)
	srv := testserver.MustStartEtcd(t)
	ctx := ctxT(t)
	reg, err := etcd.New(ctx, etcd.WithAddrs(srv.Endpoints()...), etcd.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	n := startNode(t, reg, "e1")
	cl, _ := newClient(t, reg, nil)
	rsp := reply()
	if err := cl.Call(ctx, "greeter", "helloworld.Greeter.SayHello", hello("Ann"), rsp); err != nil || message(rsp) != "Hello Ann" {
		t.Fatalf("protobuf call: %q %v", message(rsp), err)
	}
	var js struct{ Message, Node string }
	if err := cl.Call(ctx, "greeter", "helloworld.Greeter.SayHello", map[string]string{"name": "Bo"}, &js); err != nil || js.Message != "Hello Bo" || js.Node != "e1" {
		t.Fatalf("JSON call: %+v %v", js, err)
	}
	if err := n.srv.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	registrytest.Eventually(t, 5*time.Second, func() error {
		if _, err := reg.GetService(ctx, "greeter"); !errors.Is(err, registry.ErrNotFound) {
			return fmt.Errorf("after Stop: %v", err)
		}
		return nil
	})
	err = cl.Call(ctx, "greeter", "helloworld.Greeter.SayHello", hello("Cy"), reply(), client.WithRetries(0))
	if err == nil {
		t.Fatal("call after the only node stopped succeeded")
	}
}
