package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/internal/wire"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/registry/registrytest"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/server"
	"github.com/beacon-go/beacon/status"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.DiscardHandler)

type HelloReq struct {
	Name   string `json:"name"`
	Delay  time.Duration
	SlowOn string // the delay applies on this node only ("": every node)
	Fail   int
}

type HelloRsp struct {
	Msg      string `json:"msg"`
	Node     string `json:"node"`
	Deadline bool   `json:"deadline"`
}

type Greeter struct {
	node  string
	calls atomic.Int32
}

func (g *Greeter) Hello(ctx context.Context, req *HelloReq, rsp *HelloRsp) error {
	g.calls.Add(1)
	if req.Fail != 0 {
		return status.Newf(req.Fail, "asked to fail with %d", req.Fail)
	}
	if req.Delay > 0 && (req.SlowOn == "" || req.SlowOn == g.node) {
		select {
		case <-time.After(req.Delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	_, rsp.Deadline = ctx.Deadline()
	rsp.Msg, rsp.Node = "Hello "+req.Name, g.node
	return nil
}

func (g *Greeter) Boom(ctx context.Context, req *HelloReq, rsp *HelloRsp) error {
	panic("boom")
}

type env struct {
	reg     *memory.Registry
	sel     *selector.Cached
	cli     *client.Client
	servers []*server.Server
	greet   []*Greeter
}

func newEnv(t testing.TB, n int, sopts ...server.Option) *env {
	t.Helper()
	e := &env{reg: memory.New()}
	for i := range n {
		e.start(t, i, sopts...)
	}
	e.sel = selector.New(e.reg, selector.WithLogger(quiet))
	e.cli = client.New(e.sel, client.WithDefaultBackoff(client.ExponentialBackoff(time.Millisecond, 5*time.Millisecond)))
	t.Cleanup(func() {
		for _, s := range e.servers {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			s.Stop(ctx)
			cancel()
		}
		e.cli.Close()
		e.sel.Close()
		e.reg.Close()
	})
	return e
}

func (e *env) start(t testing.TB, i int, sopts ...server.Option) *server.Server {
	t.Helper()
	g := &Greeter{node: fmt.Sprintf("node-%d", i)}
	opts := append([]server.Option{server.Name("greeter"), server.Version("1.0.0"), server.ID(g.node),
		server.Address("127.0.0.1:0"), server.Registry(e.reg), server.DrainGrace(50 * time.Millisecond),
		server.Logger(quiet)}, sopts...)
	s, err := server.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Handle(g); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.servers = append(e.servers, s)
	e.greet = append(e.greet, g)
	return s
}

func call(e *env, req *HelloReq, opts ...client.CallOption) (*HelloRsp, error) {
	rsp := new(HelloRsp)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return rsp, e.cli.Call(ctx, "greeter", "Greeter.Hello", req, rsp, opts...)
}

func TestCallByNameRoundRobin(t *testing.T) {
	e := newEnv(t, 3)
	seen := map[string]int{}
	for range 30 {
		rsp, err := call(e, &HelloReq{Name: "Ann"}, client.WithSelectOptions(selector.WithSelectStrategy(selector.RoundRobin())))
		if err != nil {
			t.Fatal(err)
		}
		if rsp.Msg != "Hello Ann" || !rsp.Deadline {
			t.Fatalf("rsp = %+v", rsp)
		}
		seen[rsp.Node]++
	}
	for _, n := range []string{"node-0", "node-1", "node-2"} {
		if seen[n] != 10 {
			t.Fatalf("round robin over 3 nodes gave %v, want 10 each", seen)
		}
	}
}

func TestSurvivesDeadNode(t *testing.T) {
	e := newEnv(t, 2)
	// A third node is registered but nothing listens at its address.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	if err := e.reg.Register(context.Background(), &registry.Service{Name: "greeter", Version: "1.0.0",
		Nodes: []*registry.Node{{ID: "dead", Address: dead}}}); err != nil {
		t.Fatal(err)
	}
	registrytest.Eventually(t, 5*time.Second, func() error {
		ss, _ := e.sel.Cache().GetService(context.Background(), "greeter")
		if len(ss) == 0 || len(ss[0].Nodes) != 3 {
			return errors.New("dead node not in cache yet")
		}
		return nil
	})
	for i := range 300 {
		if _, err := call(e, &HelloReq{Name: "Ann"}); err != nil {
			t.Fatalf("call %d failed with one dead node of three: %v", i, err)
		}
	}
}

func TestAllNodesDown(t *testing.T) {
	e := newEnv(t, 0)
	for i := range 2 {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := ln.Addr().String()
		ln.Close()
		e.reg.Register(context.Background(), &registry.Service{Name: "greeter", Nodes: []*registry.Node{{ID: fmt.Sprint("d", i), Address: addr}}})
	}
	_, err := call(e, &HelloReq{}, client.WithRetries(3))
	var se *status.Error
	if !errors.As(err, &se) || se.Code != status.Unavailable || len(se.Causes) != 4 {
		t.Fatalf("err = %v, want 503 with 4 causes", err)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("errors.Is(err, ECONNREFUSED) = false: %v", err)
	}
	var te *client.TransportError
	if !errors.As(err, &te) || te.Op != "dial" {
		t.Fatalf("no dial TransportError in %v", err)
	}
}

func TestErrors(t *testing.T) {
	e := newEnv(t, 2)
	tests := []struct {
		name     string
		endpoint string
		req      any
		code     int
	}{
		{"handler error", "Greeter.Hello", &HelloReq{Fail: 409}, 409},
		{"unknown endpoint", "Greeter.Nope", &HelloReq{}, status.NotFound},
		{"garbage body", "Greeter.Hello", map[string]any{"name": 42}, status.BadRequest},
		{"panic", "Greeter.Boom", &HelloReq{}, status.InternalError},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := e.greet[0].calls.Load() + e.greet[1].calls.Load()
			err := e.cli.Call(context.Background(), "greeter", tc.endpoint, tc.req, new(HelloRsp))
			if got := status.Code(err); got != tc.code {
				t.Fatalf("code = %d (%v), want %d", got, err, tc.code)
			}
			if calls := e.greet[0].calls.Load() + e.greet[1].calls.Load() - before; calls > 1 {
				t.Fatalf("handler ran %d times: application errors must not be retried", calls)
			}
		})
	}
	if err := e.cli.Call(context.Background(), "nosuch", "A.B", &HelloReq{}, new(HelloRsp)); status.Code(err) != status.NotFound || !errors.Is(err, selector.ErrNotFound) {
		t.Fatalf("unknown service: %v", err)
	}
}

// A request whose attempt timed out after it was sent may have run: it is
// not retried unless the call or the endpoint is idempotent (it used to run
// on every node).
func TestTimeoutRetriedOnlyWhenIdempotent(t *testing.T) {
	e := newEnv(t, 2)
	start := time.Now()
	_, err := call(e, &HelloReq{Delay: time.Second}, client.WithRequestTimeout(50*time.Millisecond), client.WithRetries(1))
	var te *client.TransportError
	if !errors.As(err, &te) || te.Op != "timeout" || te.NotRun || errors.Is(err, client.ErrNotRun) || status.Code(err) != status.Timeout {
		t.Fatalf("err = %v, want a may-have-run timeout", err)
	}
	if !strings.Contains(err.Error(), "may have run") || !strings.Contains(err.Error(), "not idempotent") {
		t.Fatalf("the error does not say what happened: %v", err)
	}
	if c := e.greet[0].calls.Load() + e.greet[1].calls.Load(); c != 1 {
		t.Fatalf("handler ran %d times for one non-idempotent call, want 1", c)
	}
	before0, before1 := e.greet[0].calls.Load(), e.greet[1].calls.Load()
	_, err = call(e, &HelloReq{Delay: time.Second}, client.WithRequestTimeout(50*time.Millisecond), client.WithRetries(1), client.WithIdempotent())
	if !errors.As(err, &te) || te.Op != "timeout" {
		t.Fatalf("err = %v, want a timeout TransportError", err)
	}
	if d0, d1 := e.greet[0].calls.Load()-before0, e.greet[1].calls.Load()-before1; d0 != 1 || d1 != 1 {
		t.Fatalf("idempotent call: handler ran %d+%d times, want once on each node (a retry elsewhere)", d0, d1)
	}
	if time.Since(start) > 900*time.Millisecond {
		t.Fatalf("timeouts not honoured")
	}
	// The caller's context bounds everything.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	err = e.cli.Call(ctx, "greeter", "Greeter.Hello", &HelloReq{Delay: time.Second}, new(HelloRsp))
	if status.Code(err) != status.Timeout || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ctx timeout: %v", err)
	}
}

func TestRollingRestartLosesNothing(t *testing.T) {
	e := newEnv(t, 2)
	var failed, ok atomic.Int32
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := call(e, &HelloReq{Name: "x", Delay: time.Millisecond}); err != nil {
					failed.Add(1)
					t.Errorf("call failed during rolling restart: %v", err)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	for i := range 4 {
		waitCalls(t, &ok, 200)
		old := e.servers[i]
		e.start(t, 2+i)
		if err := old.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	waitCalls(t, &ok, 200)
	close(stop)
	wg.Wait()
	t.Logf("%d calls, %d failed across 4 node replacements", ok.Load(), failed.Load())
}

func waitCalls(t *testing.T, ok *atomic.Int32, more int32) {
	t.Helper()
	target := ok.Load() + more
	registrytest.Eventually(t, 10*time.Second, func() error {
		if ok.Load() < target {
			return errors.New("calls not progressing")
		}
		return nil
	})
}

func TestStopDrainsInFlight(t *testing.T) {
	e := newEnv(t, 1)
	done := make(chan error, 1)
	go func() {
		_, err := call(e, &HelloReq{Delay: 300 * time.Millisecond}, client.WithRetries(0))
		done <- err
	}()
	registrytest.Eventually(t, 5*time.Second, func() error {
		if e.greet[0].calls.Load() == 0 {
			return errors.New("not in flight yet")
		}
		return nil
	})
	if err := e.servers[0].Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("in-flight call cut off by Stop: %v", err)
	}
	if _, err := e.reg.GetService(context.Background(), "greeter"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("still registered after Stop: %v", err)
	}
}

// flaky fails GetService and Watch on demand.
type flaky struct {
	registry.Registry
	fail atomic.Bool
}

func (f *flaky) GetService(ctx context.Context, n string, o ...registry.GetOption) ([]*registry.Service, error) {
	if f.fail.Load() {
		return nil, registry.ErrUnavailable
	}
	return f.Registry.GetService(ctx, n, o...)
}

func (f *flaky) Watch(ctx context.Context, o ...registry.WatchOption) (registry.Watcher, error) {
	if f.fail.Load() {
		return nil, registry.ErrUnavailable
	}
	return f.Registry.Watch(ctx, o...)
}

func TestCallableFromCacheWhileRegistryFails(t *testing.T) {
	e := newEnv(t, 2)
	f := &flaky{Registry: e.reg}
	sel := selector.New(f)
	defer sel.Close()
	cli := client.New(sel)
	defer cli.Close()
	if err := cli.Call(context.Background(), "greeter", "Greeter.Hello", &HelloReq{}, new(HelloRsp)); err != nil {
		t.Fatal(err)
	}
	f.fail.Store(true)
	for i := range 200 {
		if err := cli.Call(context.Background(), "greeter", "Greeter.Hello", &HelloReq{}, new(HelloRsp)); err != nil {
			t.Fatalf("call %d with the registry failing: %v", i, err)
		}
	}
}

func TestHeartbeatRecreatesLostRecord(t *testing.T) {
	reg := memory.New()
	defer reg.Close()
	s, err := server.New(server.Name("hb"), server.Address("127.0.0.1:0"), server.Registry(reg),
		server.RegisterTTL(300*time.Millisecond), server.RegisterInterval(50*time.Millisecond), server.DrainGrace(0))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Handle(&Greeter{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer s.Stop(context.Background())
	w := registrytest.Watch(t, reg, registry.WatchService("hb"))
	id := s.Service().Nodes[0].ID
	w.Expect(t, 5*time.Second, registry.Create, id)
	// The backend loses the record: the next beat recreates it.
	if err := reg.Deregister(context.Background(), s.Service()); err != nil {
		t.Fatal(err)
	}
	w.Expect(t, 5*time.Second, registry.Delete, id)
	w.Expect(t, 5*time.Second, registry.Create, id)
	// It outlives many TTLs without an expiry.
	deadline := time.After(time.Second)
	for {
		select {
		case ev := <-w.C:
			t.Fatalf("unexpected %v while heartbeating", ev.Type)
		case <-deadline:
			return
		}
	}
}

func TestServerOptionsRefused(t *testing.T) {
	tests := []struct {
		name string
		opts []server.Option
		want error
	}{
		{"interval not below TTL", []server.Option{server.Name("x"), server.RegisterTTL(time.Second), server.RegisterInterval(time.Second)}, server.ErrBadInterval},
		{"no name", nil, server.ErrNoName},
		{"bad name", []server.Option{server.Name("a b")}, registry.ErrInvalid},
	}
	for _, tc := range tests {
		if _, err := server.New(tc.opts...); !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestDirectAddress(t *testing.T) {
	e := newEnv(t, 1)
	cli := client.New(nil)
	defer cli.Close()
	rsp := new(HelloRsp)
	if err := cli.Call(context.Background(), "greeter", "Greeter.Hello", &HelloReq{Name: "Bo"}, rsp,
		client.WithAddress(e.servers[0].Addr().String())); err != nil || rsp.Msg != "Hello Bo" {
		t.Fatalf("direct call: %v %+v", err, rsp)
	}
}

func TestHandleFuncAndProtobuf(t *testing.T) {
	reg := memory.New()
	defer reg.Close()
	s, err := server.New(server.Name("echo"), server.Address("127.0.0.1:0"), server.Registry(reg), server.Logger(quiet), server.DrainGrace(0))
	if err != nil {
		t.Fatal(err)
	}
	err = server.HandleFunc(s, "Echo.Upper", func(ctx context.Context, req *wrapperspb.StringValue, rsp *wrapperspb.StringValue) error {
		rsp.Value = strings.ToUpper(req.Value)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer s.Stop(context.Background())
	sel := selector.New(reg)
	defer sel.Close()
	cli := client.New(sel)
	defer cli.Close()
	rsp := new(wrapperspb.StringValue)
	if err := cli.Call(context.Background(), "echo", "Echo.Upper", wrapperspb.String("abc"), rsp); err != nil || rsp.Value != "ABC" {
		t.Fatalf("protobuf call: %v %v", rsp, err)
	}
	// The same endpoint also takes JSON, in protobuf's JSON mapping
	// (protojson: a StringValue is a bare string).
	var jrsp string
	if err := cli.Call(context.Background(), "echo", "Echo.Upper", "x", &jrsp); err != nil || jrsp != "X" {
		t.Fatalf("json call: %q %v", jrsp, err)
	}
}

// Unknown JSON fields in a request are refused, naming the field (a typo
// used to become an empty field); a response may carry fields the client
// does not know.
func TestUnknownJSONFields(t *testing.T) {
	e := newEnv(t, 1)
	err := e.cli.Call(context.Background(), "greeter", "Greeter.Hello", map[string]string{"nmae": "Ann"}, new(HelloRsp))
	if status.Code(err) != status.BadRequest || !strings.Contains(err.Error(), `"nmae"`) {
		t.Fatalf("typo in a field: %v", err)
	}
	var partial struct {
		Msg string `json:"msg"`
	}
	if err := e.cli.Call(context.Background(), "greeter", "Greeter.Hello", &HelloReq{Name: "Bo"}, &partial); err != nil || partial.Msg != "Hello Bo" {
		t.Fatalf("a response with more fields than the client knows: %+v %v", partial, err)
	}
}

func TestServerSurvivesGarbageConnections(t *testing.T) {
	e := newEnv(t, 1)
	addr := e.servers[0].Addr().String()
	// Without the preface: closed at once, nothing sent.
	for _, g := range [][]byte{
		{0xff, 0xff, 0xff, 0xff, 1, 2, 3}, // a frame header instead of the preface
		[]byte("\x16\x03\x01\x02\x00"),    // a TLS hello
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(g)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(make([]byte, 64))
		c.Close()
		var ne net.Error
		if n > 0 || err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			t.Errorf("garbage %q: read %d bytes, %v; want the connection closed", g, n, err)
		}
	}
	// HTTP is answered as HTTP (an unknown path: 404).
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, _ := io.ReadAtLeast(c, buf, 12)
	c.Close()
	if !strings.HasPrefix(string(buf[:n]), "HTTP/1.1 404") {
		t.Errorf("HTTP request answered %q", buf[:n])
	}
	// After the preface: the server's settings, then closed on a bad frame.
	for _, g := range [][]byte{
		append([]byte(wire.Preface), 0, 0, 0, 2, 1, 0),                                     // a frame too short to hold a header
		append([]byte(wire.Preface), append([]byte{0, 0, 0, 9, 7}, make([]byte, 8)...)...), // an unknown kind
		append([]byte(wire.Preface), wire.AppendSettings(nil, wire.Settings{})...),         // a frame only servers send
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(g)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		r := wire.NewReader(c, 0)
		var f wire.Frame
		if err := r.Next(&f); err != nil || f.Kind != wire.KindSettings {
			t.Errorf("garbage %q: first frame %+v, %v; want the settings", g[:min(len(g), 8)], f, err)
		}
		err = r.Next(&f)
		c.Close()
		var ne net.Error
		if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			t.Errorf("garbage %q: %+v, %v; want the connection closed", g[:min(len(g), 8)], f, err)
		}
	}
	if _, err := call(e, &HelloReq{Name: "after"}); err != nil {
		t.Fatalf("server unusable after garbage connections: %v", err)
	}
}

func TestPoolsOfGoneNodesAreDropped(t *testing.T) {
	e := newEnv(t, 1)
	cli := client.New(nil, client.Retries(0))
	defer cli.Close()
	// 20 nodes come and go; then calls to addresses where nothing listens.
	for i := range 20 {
		s := e.start(t, 100+i)
		addr := s.Addr().String()
		if err := cli.Call(context.Background(), "greeter", "Greeter.Hello", &HelloReq{}, new(HelloRsp), client.WithAddress(addr)); err != nil {
			t.Fatal(err)
		}
		s.Stop(context.Background())
		cli.Call(context.Background(), "greeter", "Greeter.Hello", &HelloReq{}, new(HelloRsp), client.WithAddress(addr))
	}
	registrytest.Eventually(t, 5*time.Second, func() error {
		if n := cli.Pools(); n != 0 {
			return fmt.Errorf("%d pools left for 20 nodes that are gone", n)
		}
		return nil
	})
	// The live node still works and keeps its pool.
	if err := cli.Call(context.Background(), "greeter", "Greeter.Hello", &HelloReq{}, new(HelloRsp), client.WithAddress(e.servers[0].Addr().String())); err != nil {
		t.Fatal(err)
	}
	if n := cli.Pools(); n != 1 {
		t.Fatalf("%d pools, want 1", n)
	}
}

func TestOverloadedNodeShedsToAnother(t *testing.T) {
	e := newEnv(t, 2, server.MaxConcurrentRequests(1))
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := call(e, &HelloReq{Delay: 300 * time.Millisecond}, client.WithRetries(0),
				client.WithAddress(e.servers[0].Addr().String()))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	var refused int
	for err := range errs {
		var te *client.TransportError
		if errors.As(err, &te) && te.Op == "refused" && errors.Is(err, client.ErrNotRun) {
			refused++
		} else if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
	}
	if refused != 1 {
		t.Fatalf("%d of 2 concurrent calls to a node limited to 1 were refused, want 1", refused)
	}
	if c := e.greet[0].calls.Load(); c != 1 {
		t.Fatalf("the handler ran %d times, want 1 (a refused request is not run)", c)
	}
	// By name, with retries, a refused call moves to the other node: two
	// concurrent calls fit the two nodes whichever node each tries first.
	var wg2 sync.WaitGroup
	for range 2 {
		wg2.Add(1)
		go func() {
			defer wg2.Done()
			if _, err := call(e, &HelloReq{Delay: 200 * time.Millisecond}, client.WithRetries(3)); err != nil {
				t.Errorf("call with retries: %v", err)
			}
		}()
	}
	wg2.Wait()
}

func TestServesDuringDrainGrace(t *testing.T) {
	e := newEnv(t, 1, server.DrainGrace(time.Second))
	s := e.servers[0]
	addr := s.Addr().String()
	stopped := make(chan error, 1)
	go func() { stopped <- s.Stop(context.Background()) }()
	registrytest.Eventually(t, 5*time.Second, func() error {
		if _, err := e.reg.GetService(context.Background(), "greeter"); !errors.Is(err, registry.ErrNotFound) {
			return errors.New("not deregistered yet")
		}
		return nil
	})
	// Deregistered, inside the grace: callers whose caches still hold the
	// node are served, not refused.
	if _, err := call(e, &HelloReq{Name: "late"}, client.WithAddress(addr), client.WithRetries(0)); err != nil {
		t.Fatalf("call during the drain grace: %v", err)
	}
	if err := <-stopped; err != nil {
		t.Fatal(err)
	}
}
