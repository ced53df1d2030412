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

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"

	"github.com/beacon-go/beacon/beacongrpc"
	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/codec"
	"github.com/beacon-go/beacon/metadata"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/registry/registrytest"
	"github.com/beacon-go/beacon/status"
	"github.com/beacon-go/beacon/transport"
)

// TestCallByName: Beacon's client calls gRPC nodes by service and endpoint
// name with protobuf and JSON bodies, metadata both ways, deadlines, and
// gRPC errors as Beacon statuses.
func TestCallByName(t *testing.T) {
	setup(t)
	reg := memory.New()
	defer reg.Close()
	ctx := ctxT(t)
	a := startNode(t, reg, "a")
	b := startNode(t, reg, "b")
	cl, caller := newClient(t, reg, nil)

	// Protobuf, round-robin over both nodes, metadata both ways.
	served := map[string]int{}
	for i := range 6 {
		rsp := reply()
		var md metadata.MD
		err := cl.Call(metadata.AppendToOutgoingContext(ctx, "tenant", "acme"), "greeter", "helloworld.Greeter.SayHello", hello("Ann"), rsp, client.ResponseMetadata(&md))
		if err != nil || message(rsp) != "Hello Ann of acme" {
			t.Fatalf("call %d: %q %v", i, message(rsp), err)
		}
		if md.Get("x-trailer") != "t" || md.Get("x-served-by") == "" || md.Get("x-content-type") != "application/grpc+proto" || md.Get("content-type") != "" {
			t.Fatalf("response metadata %v", md)
		}
		served[md.Get("x-served-by")]++
	}
	if served["a"] != 3 || served["b"] != 3 || a.calls.Load() != 3 || b.calls.Load() != 3 {
		t.Fatalf("served %v", served)
	}
	if caller.Conns() != 2 {
		t.Fatalf("%d connections for 2 nodes", caller.Conns())
	}

	// JSON: the server registered JSONCodec.
	var js struct{ Message, Node string }
	var md metadata.MD
	if err := cl.Call(ctx, "greeter", "helloworld.Greeter.SayHello", map[string]string{"name": "Bo"}, &js, client.ResponseMetadata(&md)); err != nil ||
		js.Message != "Hello Bo" || md.Get("x-content-type") != "application/grpc+json" {
		t.Fatalf("JSON call: %+v %v %v", js, md, err)
	}
	// A field the message does not have is refused by name before the handler.
	before := a.calls.Load() + b.calls.Load()
	err := cl.Call(ctx, "greeter", "helloworld.Greeter.SayHello", map[string]string{"nmae": "Bo"}, &js)
	if status.Code(err) != status.InternalError || !strings.Contains(err.Error(), "nmae") || a.calls.Load()+b.calls.Load() != before {
		t.Fatalf("unknown JSON field: %v", err)
	}

	// Other names of the method: the full method, and the short name
	// resolved through the node's reflection.
	for _, ep := range []string{"/helloworld.Greeter/SayHello", "Greeter.SayHello"} {
		rsp := reply()
		if err := cl.Call(ctx, "greeter", ep, hello("Cy"), rsp); err != nil || message(rsp) != "Hello Cy" {
			t.Fatalf("endpoint %s: %q %v", ep, message(rsp), err)
		}
	}

	// gRPC errors become Beacon statuses with the message as detail; the
	// answered error's metadata still arrives.
	for code, want := range map[codes.Code]int{codes.NotFound: 404, codes.InvalidArgument: 400, codes.Unauthenticated: 401,
		codes.PermissionDenied: 403, codes.ResourceExhausted: 429, codes.Internal: 500, codes.Unimplemented: 501, codes.Unavailable: 503} {
		req := hello("Di")
		req.Set(field(greeter.Request, "code"), protoValueInt32(int32(code)))
		var md metadata.MD
		err := cl.Call(ctx, "greeter", "helloworld.Greeter.SayHello", req, reply(), client.ResponseMetadata(&md))
		var se *status.Error
		if !errors.As(err, &se) || se.Code != want || !strings.Contains(se.Detail, "failed for Di") || md.Get("x-trailer") != "t" {
			t.Errorf("code %v: %v (metadata %v), want status %d", code, err, md, want)
		}
	}
	before = a.calls.Load() + b.calls.Load()
	req := hello("Ed")
	req.Set(field(greeter.Request, "code"), protoValueInt32(int32(codes.Unavailable)))
	if err := cl.Call(ctx, "greeter", "helloworld.Greeter.SayHello", req, reply()); status.Code(err) != 503 || a.calls.Load()+b.calls.Load() != before+1 {
		t.Fatalf("a handler's Unavailable: %v; ran %d times, want once (an answer, not retried)", err, a.calls.Load()+b.calls.Load()-before)
	}
	// The idempotent Lookup answering Unavailable is retried, like a Beacon handler's 503.
	before = a.calls.Load() + b.calls.Load()
	if err := cl.Call(ctx, "greeter", "helloworld.Greeter.Lookup", req, reply(), client.WithRetries(1)); status.Code(err) != 503 || a.calls.Load()+b.calls.Load() != before+2 {
		t.Fatalf("an idempotent method's Unavailable: %v; ran %d times, want twice", err, a.calls.Load()+b.calls.Load()-before)
	}

	// Unknown endpoints: 404, not run.
	for _, ep := range []string{"helloworld.Greeter.Nope", "helloworld.Nope.SayHello", "Nope.SayHello", "Nope"} {
		err := cl.Call(ctx, "greeter", ep, hello("x"), reply())
		if status.Code(err) != status.NotFound {
			t.Errorf("endpoint %s: %v, want 404", ep, err)
		}
	}

	// The attempt's deadline is the RPC's; the handler's context ends.
	slow := hello("Fay")
	slow.Set(field(greeter.Request, "delay_ms"), protoValueInt(2000))
	start := time.Now()
	err = cl.Call(ctx, "greeter", "helloworld.Greeter.SayHello", slow, reply(), client.WithRequestTimeout(100*time.Millisecond))
	var te *transport.Error
	if status.Code(err) != status.Timeout || !errors.As(err, &te) || te.Op != "timeout" || time.Since(start) > time.Second {
		t.Fatalf("deadline: %v after %v", err, time.Since(start))
	}

	// A content type without a gRPC codec.
	err = cl.Call(ctx, "greeter", "helloworld.Greeter.SayHello", hello("x"), reply(), client.WithContentType("application/x-other"))
	if status.Code(err) != status.BadRequest {
		t.Fatalf("other content type: %v", err)
	}
}

// TestReflectionTranslation: a Caller WithReflection sends a JSON call as
// protobuf using the node's reflection, and returns JSON.
func TestReflectionTranslation(t *testing.T) {
	setup(t)
	reg := memory.New()
	defer reg.Close()
	ctx := ctxT(t)
	a := startNode(t, reg, "a")
	cl, _ := newClient(t, reg, []beacongrpc.CallerOption{beacongrpc.WithReflection()})
	for _, ep := range []string{"helloworld.Greeter.SayHello", "Greeter.SayHello", "/helloworld.Greeter/SayHello"} {
		var js map[string]any
		var md metadata.MD
		err := cl.Call(ctx, "greeter", ep, map[string]any{"name": "Ann", "delayMs": "1"}, &js, client.ResponseMetadata(&md))
		if err != nil || js["message"] != "Hello Ann" || js["node"] != "a" || md.Get("x-content-type") != "application/grpc+proto" {
			t.Fatalf("%s: %v %v %v", ep, js, md, err)
		}
	}
	before := a.calls.Load()
	err := cl.Call(ctx, "greeter", "helloworld.Greeter.SayHello", map[string]any{"nmae": "Ann"}, new(map[string]any))
	if status.Code(err) != status.BadRequest || !strings.Contains(err.Error(), "nmae") || a.calls.Load() != before {
		t.Fatalf("unknown field: %v", err)
	}
	if err := cl.Call(ctx, "greeter", "helloworld.Greeter.Nope", map[string]any{}, new(map[string]any)); status.Code(err) != status.NotFound {
		t.Fatalf("unknown method: %v", err)
	}
	// Concurrent first calls on a fresh Caller: each may ask the node's
	// reflection; all succeed (and -race checks the cache).
	fresh, _ := newClient(t, reg, []beacongrpc.CallerOption{beacongrpc.WithReflection()})
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Go(func() {
			ep := "helloworld.Greeter.SayHello"
			if i%2 == 1 {
				ep = "Greeter.Lookup"
			}
			var js map[string]any
			if err := fresh.Call(ctx, "greeter", ep, map[string]any{"name": "Ann"}, &js); err != nil || js["message"] != "Hello Ann" {
				errs <- fmt.Errorf("%s: %v %v", ep, js, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Protobuf calls are sent as they are.
	rsp := reply()
	if err := cl.Call(ctx, "greeter", "helloworld.Greeter.SayHello", hello("Bo"), rsp); err != nil || message(rsp) != "Hello Bo" {
		t.Fatalf("protobuf: %v", err)
	}
}

// TestDeadNodeRetried: a registered node that does not listen costs a
// retry, never a failed call, whatever the call: nothing ran there.
func TestDeadNodeRetried(t *testing.T) {
	setup(t)
	reg := memory.New()
	defer reg.Close()
	ctx := ctxT(t)
	startNode(t, reg, "live")
	dead := deadAddr(t)
	if err := reg.Register(ctx, &registry.Service{Name: "greeter", Version: "1.0.0", Nodes: []*registry.Node{{ID: "dead", Address: dead,
		Metadata: map[string]string{registry.MetaProtocol: registry.ProtocolGRPC}}}}); err != nil {
		t.Fatal(err)
	}
	var attempts atomic.Int64
	count := func(ctx context.Context, a *client.Attempt, next client.AttemptInvoker) error {
		attempts.Add(1)
		return next(ctx, a)
	}
	cl, _ := newClient(t, reg, nil, client.WithAttemptInterceptors(count))
	for i := range 10 {
		rsp := reply()
		if err := cl.Call(ctx, "greeter", "helloworld.Greeter.SayHello", hello("Ann"), rsp); err != nil || message(rsp) != "Hello Ann" {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if attempts.Load() <= 10 {
		t.Fatalf("%d attempts for 10 calls: the dead node was never tried", attempts.Load())
	}
	// Alone, the dead node's failure says that nothing ran.
	err := cl.Call(ctx, "greeter", "helloworld.Greeter.SayHello", hello("Ann"), reply(), client.WithAddress(dead), client.WithRetries(0))
	if !errors.Is(err, client.ErrNotRun) {
		t.Fatalf("dead node: %v, want not run", err)
	}
}

// TestStoppedNodeStillListed: a node stops at once (no drain grace) while
// callers still have it from the registry, under load: the RPCs its
// GracefulStop refuses and those to its closed port did not run, and are
// retried on the other node: no call fails, although none is idempotent.
func TestStoppedNodeStillListed(t *testing.T) {
	setup(t)
	reg := memory.New()
	defer reg.Close()
	ctx := ctxT(t)
	b := startNode(t, reg, "b")
	// a serves without registering itself; a record that stays lists it.
	a := startNode(t, nil, "a", beacongrpc.DrainGrace(0))
	if err := reg.Register(ctx, &registry.Service{Name: "greeter", Version: "1.0.0", Nodes: []*registry.Node{{ID: "a", Address: a.addr,
		Metadata: map[string]string{registry.MetaProtocol: registry.ProtocolGRPC}}}}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	refused := map[string]int{} // attempts at a that failed, by what happened
	note := func(ctx context.Context, at *client.Attempt, next client.AttemptInvoker) error {
		err := next(ctx, at)
		var te *transport.Error
		if errors.As(err, &te) && at.Address == a.addr {
			mu.Lock()
			refused[fmt.Sprintf("%s notrun=%v", te.Op, te.NotRun)]++
			mu.Unlock()
		}
		return err
	}
	cl, _ := newClient(t, reg, nil, client.WithAttemptInterceptors(note))
	var failed, ok atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				req := hello("Ann")
				req.Set(field(greeter.Request, "delay_ms"), protoValueInt(5))
				if err := cl.Call(ctx, "greeter", "helloworld.Greeter.SayHello", req, reply()); err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err)
				} else {
					ok.Add(1)
				}
			}
		})
	}
	registrytest.Eventually(t, 5*time.Second, func() error {
		if a.calls.Load() < 50 {
			return fmt.Errorf("a ran %d", a.calls.Load())
		}
		return nil
	})
	if err := a.srv.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	atA := a.calls.Load()
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of %d calls failed; first: %v", failed.Load(), failed.Load()+ok.Load(), firstErr.Load())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(refused) == 0 {
		t.Fatal("no attempt reached the stopped node")
	}
	t.Logf("%d calls, none failed; a served %d before it stopped, b %d; failed attempts at a: %v", ok.Load(), atA, b.calls.Load(), refused)
}

// TestBrokenAfterSent: a connection lost while the handler runs may have
// run it: the call is not retried unless idempotent.
func TestBrokenAfterSent(t *testing.T) {
	setup(t)
	reg := memory.New()
	defer reg.Close()
	ctx := ctxT(t)
	a := startNode(t, reg, "a")
	b := startNode(t, reg, "b")
	cl, _ := newClient(t, reg, nil)
	go func() {
		for a.calls.Load()+b.calls.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		if a.calls.Load() > 0 {
			a.gs.Stop() // closes its connections at once
		} else {
			b.gs.Stop()
		}
	}()
	slow := hello("Ann")
	slow.Set(field(greeter.Request, "delay_ms"), protoValueInt(5000))
	err := cl.Call(ctx, "greeter", "helloworld.Greeter.SayHello", slow, reply(), client.WithRetries(2))
	var te *transport.Error
	if !errors.As(err, &te) || te.Op != "read" || te.NotRun || status.Code(err) != status.Unavailable || errors.Is(err, client.ErrNotRun) {
		t.Fatalf("connection lost mid-call: %v", err)
	}
	if n := a.calls.Load() + b.calls.Load(); n != 1 {
		t.Fatalf("the handler ran %d times, want once (not retried)", n)
	}
}

// TestPingAndConnections: Ping is the health check; connections are made
// lazily, closed when idle and on Close.
func TestPingAndConnections(t *testing.T) {
	setup(t)
	reg := memory.New()
	defer reg.Close()
	ctx := ctxT(t)
	a := startNode(t, reg, "a", beacongrpc.DrainGrace(300*time.Millisecond))
	c := beacongrpc.NewCaller(beacongrpc.WithConnIdleTimeout(100 * time.Millisecond))
	defer c.Close()
	if c.Conns() != 0 || c.Connecting(a.addr) {
		t.Fatal("a connection before any call")
	}
	if err := c.Ping(ctx, a.addr); err != nil {
		t.Fatalf("ping: %v", err)
	}
	if c.Conns() != 1 {
		t.Fatalf("%d connections", c.Conns())
	}
	pctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	if err := c.Ping(pctx, deadAddr(t)); err == nil {
		t.Fatal("ping of a dead address succeeded")
	}
	cancel()
	registrytest.Eventually(t, 3*time.Second, func() error {
		if n := c.Conns(); n != 0 {
			return fmt.Errorf("%d connections after the idle timeout", n)
		}
		return nil
	})
	// While the node drains, its health says NOT_SERVING.
	done := make(chan error, 1)
	go func() { done <- a.srv.Stop(ctx) }()
	registrytest.Eventually(t, 250*time.Millisecond, func() error {
		if err := c.Ping(ctx, a.addr); !errors.Is(err, beacongrpc.ErrNotServing) {
			return fmt.Errorf("ping while draining: %v", err)
		}
		return nil
	})
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	c.Close()
	var rsp transport.Response
	err := c.Call(ctx, a.addr, &transport.Request{Endpoint: "helloworld.Greeter.SayHello", ContentType: codec.ProtoContentType}, &rsp)
	if !errors.Is(err, beacongrpc.ErrClosed) || !errors.Is(err, transport.ErrNotRun) {
		t.Fatalf("call after Close: %v", err)
	}
}

func TestFullMethodAndStatus(t *testing.T) {
	for in, want := range map[string]string{
		"helloworld.Greeter.SayHello":  "/helloworld.Greeter/SayHello",
		"Greeter.SayHello":             "/Greeter/SayHello",
		"/helloworld.Greeter/SayHello": "/helloworld.Greeter/SayHello",
		"a.b.c.D.E":                    "/a.b.c.D/E",
		"Nope":                         "",
		"Nope.":                        "",
		".Nope":                        "",
		"/a/b/c":                       "",
	} {
		got, ok := beacongrpc.FullMethod(in)
		if (want == "") == ok || (ok && got != want) {
			t.Errorf("FullMethod(%q) = %q %v, want %q", in, got, ok, want)
		}
	}
	for c, want := range map[codes.Code]int{codes.OK: 0, codes.Canceled: 499, codes.Unknown: 500, codes.InvalidArgument: 400,
		codes.DeadlineExceeded: 408, codes.NotFound: 404, codes.AlreadyExists: 409, codes.PermissionDenied: 403,
		codes.ResourceExhausted: 429, codes.FailedPrecondition: 400, codes.Aborted: 409, codes.OutOfRange: 400,
		codes.Unimplemented: 501, codes.Internal: 500, codes.Unavailable: 503, codes.DataLoss: 500, codes.Unauthenticated: 401} {
		if got := beacongrpc.HTTPStatus(c); got != want {
			t.Errorf("HTTPStatus(%v) = %d, want %d", c, got, want)
		}
	}
}

// TestJSONCodec: protojson for messages, strict unless DiscardUnknown.
func TestJSONCodec(t *testing.T) {
	var c beacongrpc.JSONCodec
	var _ encoding.Codec = c
	b, err := c.Marshal(hello("Ann"))
	if err != nil || string(b) != `{"name":"Ann"}` {
		t.Fatalf("marshal: %s %v", b, err)
	}
	m := reply()
	if err := c.Unmarshal([]byte(`{"message":"x","extra":1}`), m); err == nil {
		t.Fatal("unknown field accepted")
	}
	if err := (beacongrpc.JSONCodec{DiscardUnknown: true}).Unmarshal([]byte(`{"message":"x","extra":1}`), m); err != nil || message(m) != "x" {
		t.Fatalf("DiscardUnknown: %v", err)
	}
	var v struct{ A int }
	if err := c.Unmarshal([]byte(`{"A":1,"B":2}`), &v); err == nil {
		t.Fatal("unknown struct field accepted")
	}
	if c.Name() != "json" {
		t.Fatal(c.Name())
	}
}

func deadAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
