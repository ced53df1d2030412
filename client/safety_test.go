package client_test

// The call path under faults and hostile peers: each test here names the
// defect it guards against (issue 8).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/internal/wire"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrytest"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/server"
	"github.com/beacon-go/beacon/status"
)

// within fails the test when d is past the deadline by more than slack.
func within(t *testing.T, what string, took, limit time.Duration) {
	t.Helper()
	t.Logf("%s: %v", what, took.Round(time.Millisecond))
	if took > limit {
		t.Errorf("%s took %v, more than %v", what, took, limit)
	}
}

// rawConn opens a connection that speaks the wire by hand: preface sent,
// the server's settings read.
func rawConn(t *testing.T, addr string) (net.Conn, *wire.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if _, err := c.Write([]byte(wire.Preface)); err != nil {
		t.Fatal(err)
	}
	r := wire.NewReader(c, 0)
	var f wire.Frame
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := r.Next(&f); err != nil || f.Kind != wire.KindSettings {
		t.Fatalf("settings: %+v, %v", f, err)
	}
	c.SetReadDeadline(time.Time{})
	return c, r
}

func request(t *testing.T, id uint64, endpoint string, body string) []byte {
	t.Helper()
	b, err := wire.AppendRequest(nil, id, endpoint, "application/json", 0, nil, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// addNode registers a node of service greeter at addr (a node whose server
// is not a Beacon server: hung, hostile).
func addNode(t *testing.T, e *env, id, addr string) {
	t.Helper()
	svc := &registry.Service{Name: "greeter", Version: "1.0.0", Nodes: []*registry.Node{{ID: id, Address: addr}}}
	if err := e.reg.Register(context.Background(), svc); err != nil {
		t.Fatal(err)
	}
}

// Defect 2: a read error after the request left (the connection broke) may
// mean the handler ran: not retried unless idempotent.
func TestBrokenConnectionAfterSendIsNotRetried(t *testing.T) {
	e := newEnv(t, 2)
	// A proxy in front of node 0 forwards the request, then resets the
	// client's connection before any response.
	up := e.servers[0].Addr().String()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer ln.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", up)
			if err != nil {
				c.Close()
				continue
			}
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(c, s); c.Close() }() // settings, then responses
			go func() {
				defer wg.Done()
				defer s.Close()
				defer c.(*net.TCPConn).SetLinger(0)
				defer c.Close()
				buf := make([]byte, 64<<10)
				n, _ := io.ReadFull(c, buf[:len(wire.Preface)]) // the preface
				s.Write(buf[:n])
				started := e.greet[0].calls.Load()
				n, _ = c.Read(buf) // the request (once the server's settings came back)
				s.Write(buf[:n])
				for deadline := time.Now().Add(2 * time.Second); e.greet[0].calls.Load() == started && time.Now().Before(deadline); {
					time.Sleep(time.Millisecond) // poll until the handler started
				}
			}()
		}
	}()
	e.reg.Deregister(context.Background(), e.servers[0].Service())
	addNode(t, e, "proxied", ln.Addr().String())
	e.servers[1].Stop(context.Background()) // only the proxied node is left
	registrytest.Eventually(t, 5*time.Second, func() error {
		svcs, err := e.sel.Cache().GetService(context.Background(), "greeter")
		if err != nil || len(svcs[0].Nodes) != 1 {
			return fmt.Errorf("waiting for the proxied node alone: %v", err)
		}
		return nil
	})
	e.start(t, 2) // a healthy node to retry on, if the client wrongly retries
	registrytest.Eventually(t, 5*time.Second, func() error {
		svcs, _ := e.sel.Cache().GetService(context.Background(), "greeter")
		if len(svcs) == 0 || len(svcs[0].Nodes) != 2 {
			return errors.New("waiting for two nodes")
		}
		return nil
	})
	for range 4 {
		before := e.greet[0].calls.Load() + e.greet[2].calls.Load()
		_, err := call(e, &HelloReq{Delay: 200 * time.Millisecond}, client.WithRetries(2),
			client.WithSelectOptions(selector.WithSelectStrategy(selector.RoundRobin())))
		ran := e.greet[0].calls.Load() + e.greet[2].calls.Load() - before
		if err == nil {
			if ran != 1 {
				t.Fatalf("a successful call ran %d times", ran)
			}
			continue // it went to the healthy node
		}
		var te *client.TransportError
		if !errors.As(err, &te) || te.Op != "read" || te.NotRun || !strings.Contains(err.Error(), "may have run") {
			t.Fatalf("err = %v, want a may-have-run read error", err)
		}
		// A retry would have run before Call returned; the proxied run was
		// counted when it started.
		if ran := e.greet[0].calls.Load() + e.greet[2].calls.Load() - before; ran != 1 {
			t.Fatalf("the handler ran %d times for one call that broke after sending, want 1", ran)
		}
		return
	}
	t.Fatal("no call went through the breaking proxy")
}

// Defect 2: a handler's own 503 is an answer, not the server's refusal:
// not retried unless idempotent; the server's refusals are.
func TestHandler503IsNotRetried(t *testing.T) {
	e := newEnv(t, 2)
	_, err := call(e, &HelloReq{Fail: status.Unavailable}, client.WithRetries(2))
	if status.Code(err) != status.Unavailable || errors.Is(err, client.ErrNotRun) {
		t.Fatalf("err = %v", err)
	}
	if c := e.greet[0].calls.Load() + e.greet[1].calls.Load(); c != 1 {
		t.Fatalf("a handler's 503 ran %d times, want 1", c)
	}
	_, err = call(e, &HelloReq{Fail: status.Unavailable}, client.WithRetries(2), client.WithIdempotent())
	if c := e.greet[0].calls.Load() + e.greet[1].calls.Load(); c != 4 {
		t.Fatalf("an idempotent call answered 503 ran %d more times, want 3", c-1)
	}
}

// Defect 6 (client side) and 2: a response over the client's limit fails
// that call alone (413, not retried: it ran); a request over the server's
// advertised limit is refused before sending, naming the limit; calls sharing
// the connection are unharmed.
func TestOversizedMessages(t *testing.T) {
	e := newEnv(t, 1, server.MaxMessageSize(64<<10))
	cli := client.New(e.sel, client.MaxMessageSize(32<<10))
	defer cli.Close()
	var wg sync.WaitGroup
	var failed atomic.Int32
	stop := make(chan struct{})
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := cli.Call(context.Background(), "greeter", "Greeter.Hello", &HelloReq{Name: "x"}, new(HelloRsp)); err != nil {
					failed.Add(1)
					t.Errorf("small call: %v", err)
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()

	big := strings.Repeat("a", 100<<10)
	err := cli.Call(context.Background(), "greeter", "Greeter.Hello", &HelloReq{Name: big}, new(HelloRsp), client.WithRetries(2))
	if status.Code(err) != status.TooLarge || !strings.Contains(err.Error(), fmt.Sprint(64<<10)) {
		t.Fatalf("oversized request: %v; want 413 naming the limit", err)
	}
	// A response of 40 KiB passes the server but not this client.
	err = cli.Call(context.Background(), "greeter", "Greeter.Hello", &HelloReq{Name: big[:40<<10]}, new(HelloRsp), client.WithRetries(2))
	if status.Code(err) != status.TooLarge || !strings.Contains(err.Error(), "client's limit") {
		t.Fatalf("oversized response: %v; want 413", err)
	}
	if failed.Load() != 0 {
		t.Fatalf("%d unrelated calls failed", failed.Load())
	}
}

// Defect 6 (server side): an oversized request that reaches a server is
// answered alone (413, not run); the connection keeps serving.
func TestServerRejectsOversizedRequestAlone(t *testing.T) {
	e := newEnv(t, 1, server.MaxMessageSize(4<<10))
	c, r := rawConn(t, e.servers[0].Addr().String())
	big := request(t, 7, "Greeter.Hello", `{"name":"`+strings.Repeat("a", 8<<10)+`"}`)
	small := request(t, 8, "Greeter.Hello", `{"name":"b"}`)
	if _, err := c.Write(append(big, small...)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := map[uint64]wire.Frame{}
	for range 2 {
		var f wire.Frame
		if err := r.Next(&f); err != nil {
			t.Fatal(err)
		}
		got[f.ID] = wire.Frame{Status: f.Status, Flags: f.Flags}
	}
	if f := got[7]; f.Status != status.TooLarge || f.Flags&wire.FlagNotRun == 0 {
		t.Errorf("oversized request answered %+v, want 413 not run", f)
	}
	if f := got[8]; f.Status != status.OK {
		t.Errorf("the next request answered %+v, want OK", f)
	}
	if n := e.greet[0].calls.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}

// Defect 9: an absurd endpoint name is a clear 400 before anything is sent;
// the node is not ejected.
func TestBadEndpointNameIsRefusedLocally(t *testing.T) {
	e := newEnv(t, 1)
	for _, ep := range []string{"", strings.Repeat("E", 70_000)} {
		err := e.cli.Call(context.Background(), "greeter", ep, &HelloReq{}, new(HelloRsp))
		if status.Code(err) != status.BadRequest {
			t.Fatalf("endpoint of %d bytes: %v, want 400", len(ep), err)
		}
	}
	if _, err := call(e, &HelloReq{}, client.WithRetries(0)); err != nil {
		t.Fatalf("the node was harmed: %v", err)
	}
}

// hungListener returns the address of a listener whose accept queue is full,
// so that new connects hang (SYNs dropped), like a partitioned node.
func hungListener(t *testing.T) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	sa, _ := syscall.Getsockname(fd)
	addr := fmt.Sprintf("127.0.0.1:%d", sa.(*syscall.SockaddrInet4).Port)
	// Fill the accept queue; then a connect must hang.
	for range 8 {
		d := net.Dialer{Timeout: 200 * time.Millisecond}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return addr
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Skip("could not make a listener whose connects hang")
	return ""
}

// Defect 3: connects that hang (a partitioned node) hold no caller past its
// deadline, nor queue callers one dial at a time; calls go to the healthy
// nodes.
func TestHungConnectsHoldNoCaller(t *testing.T) {
	e := newEnv(t, 2)
	addNode(t, e, "hung", hungListener(t))
	cli := client.New(e.sel, client.DialTimeout(300*time.Millisecond), client.WithDefaultBackoff(client.ExponentialBackoff(time.Millisecond, 5*time.Millisecond)))
	defer cli.Close()
	const calls = 30
	var wg sync.WaitGroup
	var failed atomic.Int32
	var worst atomic.Int64
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			start := time.Now()
			err := cli.Call(ctx, "greeter", "Greeter.Hello", &HelloReq{Name: fmt.Sprint(i)}, new(HelloRsp))
			took := time.Since(start)
			for {
				w := worst.Load()
				if int64(took) <= w || worst.CompareAndSwap(w, int64(took)) {
					break
				}
			}
			if err != nil {
				failed.Add(1)
				t.Logf("call %d after %v: %v", i, took, err)
			}
		}()
	}
	wg.Wait()
	within(t, "the slowest call (deadline 1 s)", time.Duration(worst.Load()), time.Second+100*time.Millisecond)
	if f := failed.Load(); f > 0 {
		t.Errorf("%d of %d calls failed while two nodes were healthy", f, calls)
	}
}

// hostile is a server that reads the preface, sends its settings, then never
// reads again.
func hostile(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*net.TCPConn).SetReadBuffer(4096)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			var p [4]byte
			if _, err := io.ReadFull(c, p[:]); err == nil && string(p[:]) == wire.Preface {
				c.Write(wire.AppendSettings(nil, wire.Settings{MaxStreams: 100, MaxFrame: 1 << 30}))
			}
		}
	}()
	return ln.Addr().String()
}

// Defect 3: a peer that stops reading holds no call past its deadline, nor
// the other calls sharing the connection.
func TestNeverReadingPeerHoldsNoCall(t *testing.T) {
	addr := hostile(t)
	cli := client.New(nil, client.Retries(0))
	defer cli.Close()
	// Protobuf bytes: encoding costs a copy, so the times measure waits.
	big := wrapperspb.Bytes(make([]byte, 6<<20)) // more than the socket buffers hold
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			req := wrapperspb.Bytes([]byte("small"))
			if i == 0 {
				req = big
			}
			start := time.Now()
			err := cli.Call(ctx, "greeter", "Greeter.Hello", req, new(wrapperspb.BytesValue), client.WithAddress(addr))
			// 300 ms and the scheduling slack of a loaded CI machine under
			// -race; the write stall timeout it must not wait for is 10 s.
			within(t, fmt.Sprintf("call %d (deadline 300 ms)", i), time.Since(start), 700*time.Millisecond)
			if err == nil {
				t.Errorf("call %d succeeded against a peer that does not read", i)
			}
		}()
		time.Sleep(20 * time.Millisecond)
	}
	wg.Wait()
	// Canceled, not timed out: the same.
	ctx, cancel := context.WithCancel(context.Background())
	var canceled atomic.Int64
	time.AfterFunc(100*time.Millisecond, func() { canceled.Store(time.Now().UnixNano()); cancel() })
	err := cli.Call(ctx, "greeter", "Greeter.Hello", big, new(wrapperspb.BytesValue), client.WithAddress(addr), client.WithRequestTimeout(0))
	within(t, "a canceled call, from its cancel", time.Since(time.Unix(0, canceled.Load())), 300*time.Millisecond)
	if status.Code(err) != status.Canceled {
		t.Errorf("canceled call: %v", err)
	}
}

// Blocker's handler waits for its context and reports why it ended.
type Blocker struct {
	started chan struct{}
	ended   chan error
}

func (b *Blocker) Wait(ctx context.Context, req *HelloReq, rsp *HelloRsp) error {
	b.started <- struct{}{}
	<-ctx.Done()
	b.ended <- context.Cause(ctx)
	return ctx.Err()
}

func startBlocker(t *testing.T, opts ...server.Option) (*Blocker, string) {
	t.Helper()
	b := &Blocker{started: make(chan struct{}, 64), ended: make(chan error, 64)}
	s, err := server.New(append([]server.Option{server.Name("blocker"), server.Address("127.0.0.1:0"), server.Logger(quiet)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Handle(b); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Stop(ctx)
	})
	return b, s.Addr().String()
}

// Defect 4: the client's cancel reaches the handler, and a closed connection
// cancels its handlers.
func TestCancelReachesHandler(t *testing.T) {
	b, addr := startBlocker(t)
	cli := client.New(nil, client.Retries(0), client.RequestTimeout(0))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- cli.Call(ctx, "blocker", "Blocker.Wait", &HelloReq{}, new(HelloRsp), client.WithAddress(addr))
	}()
	<-b.started
	cancel()
	if err := <-done; status.Code(err) != status.Canceled {
		t.Fatalf("call: %v", err)
	}
	select {
	case cause := <-b.ended:
		if !errors.Is(cause, context.Canceled) {
			t.Fatalf("handler ended by %v", cause)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler was not canceled when its caller canceled")
	}

	// Closing the client closes its connection: the handler is canceled.
	go func() {
		done <- cli.Call(context.Background(), "blocker", "Blocker.Wait", &HelloReq{}, new(HelloRsp), client.WithAddress(addr))
	}()
	<-b.started
	cli.Close()
	<-done
	select {
	case cause := <-b.ended:
		if !errors.Is(cause, server.ErrConnClosed) {
			t.Fatalf("handler ended by %v, want ErrConnClosed", cause)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the handler was not canceled when its connection closed")
	}
}

// Defect 5: the per-connection stream limit is advertised; a client opens
// more connections instead of queueing or being refused.
func TestStreamLimitOpensConnections(t *testing.T) {
	b, addr := startBlocker(t, server.MaxStreamsPerConn(2))
	cli := client.New(nil, client.Retries(0))
	defer cli.Close()
	const n = 6
	errs := make(chan error, n)
	for range n {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			errs <- cli.Call(ctx, "blocker", "Blocker.Wait", &HelloReq{}, new(HelloRsp), client.WithAddress(addr))
		}()
	}
	for i := range n {
		select {
		case <-b.started:
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d of %d calls reached a handler at once", i, n)
		}
	}
	for range n {
		if err := <-errs; status.Code(err) != status.Timeout || errors.Is(err, client.ErrRefused) {
			t.Errorf("call: %v, want its timeout (not a refusal)", err)
		}
		<-b.ended
	}
}

// Defect 5: a flood of requests on a connection that never reads its
// responses costs the server a bounded number of goroutines, frees the
// concurrency slots, and does not deny service to a well-behaved client.
func TestNeverReadingFloodDoesNotStarveOthers(t *testing.T) {
	e := newEnv(t, 1, server.MaxConcurrentRequests(64), server.WriteTimeout(30*time.Second))
	addr := e.servers[0].Addr().String()
	base := runtime.NumGoroutine()
	var flood []byte
	for i := range 20_000 { // each answer is as large as its request (4 KB)
		flood = append(flood, request(t, uint64(i+1), "Greeter.Hello", `{"name":"`+strings.Repeat("x", 4000)+`"}`)...)
	}
	c, _ := rawConn(t, addr)
	var sent atomic.Int64
	go func() { // stops when the server stops reading (or closes)
		for b := flood; len(b) > 0; {
			n, err := c.Write(b[:min(len(b), 64<<10)])
			sent.Add(int64(n))
			if err != nil {
				return
			}
			b = b[n:]
		}
	}()
	// A well-behaved client calls, without retries, while the flood is
	// read and after it stalled (the server stopped reading it).
	var ok, total, peak int
	good := func() {
		total++
		if _, err := call(e, &HelloReq{Name: "good"}, client.WithRetries(0)); err == nil {
			ok++
		} else if total-ok < 5 {
			t.Logf("call %d: %v", total, err)
		}
		peak = max(peak, runtime.NumGoroutine()-base)
	}
	last, still := int64(-1), time.Now()
	registrytest.Eventually(t, 20*time.Second, func() error {
		good()
		if n := sent.Load(); n != last {
			last, still = n, time.Now()
		}
		if time.Since(still) < time.Second {
			return fmt.Errorf("the flood is still being read (%d bytes)", last)
		}
		return nil
	})
	for range 300 {
		good()
	}
	t.Logf("flood stalled after %d MiB; %d/%d calls ok; peak %d extra goroutines", last>>20, ok, total, peak)
	if ok < total*99/100 {
		t.Errorf("%d of %d well-behaved calls succeeded during the flood", ok, total)
	}
	// One connection's handlers take at most half the concurrency slots;
	// they queue their answers and return, and no goroutine but the
	// connection's writer waits for the client (the flood used to hold 57k).
	if peak > 32+30 {
		t.Errorf("%d extra goroutines during the flood, want at most about 32", peak)
	}
}

// Defect 5: an idle connection is told to go away and closed; a connection
// that starts a frame and stalls is closed after the frame timeout; a
// connection over the cap is refused; and a partial 4 MiB frame costs the
// server kilobytes, not megabytes.
func TestServerBoundsIdleAndPartialConnections(t *testing.T) {
	e := newEnv(t, 1, server.IdleTimeout(100*time.Millisecond), server.FrameTimeout(150*time.Millisecond), server.MaxConnections(300))
	addr := e.servers[0].Addr().String()

	c, r := rawConn(t, addr)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var f wire.Frame
	if err := r.Next(&f); err != nil || f.Kind != wire.KindGoAway {
		t.Fatalf("idle connection: %+v, %v; want GoAway", f, err)
	}
	if err := r.Next(&f); err == nil {
		t.Fatalf("idle connection not closed after GoAway: %+v", f)
	}

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	var conns []net.Conn
	for range 200 {
		c, _ := rawConn(t, addr)
		c.Write([]byte{0, 0x40, 0, 0, wire.KindRequest, 0, 0, 0, 0, 0, 0, 0, 1, 0, 3, 'A'}) // 4 MiB announced
		conns = append(conns, c)
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > 40<<20 {
		t.Errorf("200 partial 4 MiB frames grew the heap by %d MiB", grown>>20)
	}
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		r := wire.NewReader(c, 0)
		var ne net.Error
		if err := r.Next(&f); err == nil || (errors.As(err, &ne) && ne.Timeout()) {
			t.Fatalf("stalled connection %d: got %+v, %v; want it closed", i, f, err)
		}
	}

	// At the cap, the connection idle the longest makes room for a new
	// one: an idle flood does not lock out a new client.
	s2 := e.start(t, 9, server.MaxConnections(3))
	var idle []*wire.Reader
	for range 3 {
		c, r := rawConn(t, s2.Addr().String())
		c.SetReadDeadline(time.Now().Add(time.Second)) // the ones that stay time out: not gone
		idle = append(idle, r)
	}
	if err := e.cli.Call(context.Background(), "greeter", "Greeter.Hello", &HelloReq{}, new(HelloRsp), client.WithAddress(s2.Addr().String())); err != nil {
		t.Fatalf("a new client at the cap: %v", err)
	}
	// One of the idle connections made room: told to go away, or closed.
	gone := 0
	for _, r := range idle {
		var g wire.Frame
		err := r.Next(&g)
		var ne net.Error
		if (err == nil && g.Kind == wire.KindGoAway) || (err != nil && !(errors.As(err, &ne) && ne.Timeout())) {
			gone++
		}
	}
	if gone == 0 {
		t.Fatal("no idle connection made room for the new client")
	}

	// When every connection is busy, the new one is refused at once.
	b, addr := startBlocker(t, server.MaxConnections(2))
	for range 2 {
		cli := client.New(nil, client.ConnsPerNode(1), client.Retries(0))
		defer cli.Close()
		go cli.Call(context.Background(), "blocker", "Blocker.Wait", &HelloReq{}, new(HelloRsp), client.WithAddress(addr), client.WithRequestTimeout(2*time.Second))
		<-b.started
	}
	x, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	x.Write([]byte(wire.Preface))
	x.SetReadDeadline(time.Now().Add(5 * time.Second))
	rr := wire.NewReader(x, 0)
	if err := rr.Next(&f); err != nil || f.Kind != wire.KindGoAway {
		t.Fatalf("connection over a cap of busy connections: %+v, %v; want GoAway", f, err)
	}
}

// Defect 2: an endpoint the server publishes as idempotent is retried after
// a failure after which it may have run; its other endpoints are not.
func TestPublishedIdempotentEndpointIsRetried(t *testing.T) {
	e := newEnv(t, 0)
	for i := range 2 {
		g := &Greeter{node: fmt.Sprint("idem-", i)}
		s, err := server.New(server.Name("greeter"), server.ID(g.node), server.Address("127.0.0.1:0"), server.Registry(e.reg), server.Logger(quiet),
			server.DrainGrace(10*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Handle(g, server.Idempotent("Hello")); err != nil {
			t.Fatal(err)
		}
		if err := s.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		e.servers, e.greet = append(e.servers, s), append(e.greet, g)
	}
	svc := e.servers[0].Service()
	for _, ep := range svc.Endpoints {
		want := map[string]string(nil)
		if ep.Name == "Greeter.Hello" {
			want = map[string]string{registry.MetaIdempotent: "true"}
		}
		if fmt.Sprint(ep.Metadata) != fmt.Sprint(want) {
			t.Fatalf("endpoint %s metadata %v, want %v", ep.Name, ep.Metadata, want)
		}
	}
	// Connect to both nodes first: under load a dial could outlast the
	// attempt's timeout, which is a (not run) wait rather than the timeout
	// after sending that this test is about.
	for _, s := range e.servers {
		if _, err := call(e, &HelloReq{}, client.WithAddress(s.Addr().String())); err != nil {
			t.Fatal(err)
		}
	}
	e.greet[0].calls.Store(0)
	e.greet[1].calls.Store(0)
	_, err := call(e, &HelloReq{Delay: time.Second}, client.WithRequestTimeout(150*time.Millisecond), client.WithRetries(1))
	var te *client.TransportError
	if !errors.As(err, &te) || te.Op != "timeout" {
		t.Fatalf("err = %v", err)
	}
	if a, b := e.greet[0].calls.Load(), e.greet[1].calls.Load(); a != 1 || b != 1 {
		t.Fatalf("handler ran %d+%d times, want once per node (a published idempotent endpoint is retried)", a, b)
	}
	if err := e.servers[0].Handle(&Greeter{}, server.Idempotent("Nope")); !errors.Is(err, server.ErrBadHandler) && !errors.Is(err, server.ErrRunning) {
		t.Fatalf("unknown name: %v", err)
	}

	// A node that leaves the registry while its call hangs (a frozen node
	// whose registration expired) still has its call retried: what the
	// node published is known from when it was picked.
	done := make(chan error, 1)
	before0, before1 := e.greet[0].calls.Load(), e.greet[1].calls.Load()
	go func() {
		_, err := call(e, &HelloReq{Delay: time.Second}, client.WithRequestTimeout(300*time.Millisecond), client.WithRetries(1),
			client.WithSelectOptions(selector.WithSelectStrategy(selector.RoundRobin())))
		done <- err
	}()
	registrytest.Eventually(t, 5*time.Second, func() error {
		if e.greet[0].calls.Load() == before0 && e.greet[1].calls.Load() == before1 {
			return errors.New("no handler started")
		}
		return nil
	})
	first := 0
	if e.greet[1].calls.Load() != before1 {
		first = 1
	}
	if err := e.reg.Deregister(context.Background(), e.servers[first].Service()); err != nil {
		t.Fatal(err)
	}
	<-done
	if a, b := e.greet[0].calls.Load()-before0, e.greet[1].calls.Load()-before1; a != 1 || b != 1 {
		t.Fatalf("handler ran %d+%d times after its node left, want once per node", a, b)
	}
}

// Defect 9: out-of-range call options are clamped, never a call that makes
// no attempt.
func TestCallOptionBounds(t *testing.T) {
	e := newEnv(t, 1)
	for _, opts := range [][]client.CallOption{
		{client.WithRetries(-5)},
		{client.WithRequestTimeout(-time.Second)},
		{client.WithRequestTimeout(1 << 62)},
	} {
		if _, err := call(e, &HelloReq{Name: "x"}, opts...); err != nil {
			t.Errorf("%d options: %v", len(opts), err)
		}
	}
}

// Hedging (issue 9): an idempotent call that a slow node has not answered
// within the hedge delay goes to a second node too; the first answer wins
// and the slow handler is canceled. A call that is not idempotent is never
// hedged.
func TestHedging(t *testing.T) {
	e := newEnv(t, 2)
	rr := client.WithSelectOptions(selector.WithSelectStrategy(selector.RoundRobin()))
	for i := range 6 {
		start := time.Now()
		rsp, err := call(e, &HelloReq{Name: "h", Delay: 2 * time.Second, SlowOn: "node-0"}, rr, client.WithIdempotent(), client.WithHedge(30*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		took := time.Since(start)
		if rsp.Node != "node-1" || took > time.Second {
			t.Fatalf("call %d answered by %s after %v, want the fast node at once", i, rsp.Node, took)
		}
	}
	// Each call ran at most once per node; the slow runs were canceled.
	if a, b := e.greet[0].calls.Load(), e.greet[1].calls.Load(); a > 6 || b != 6 {
		t.Fatalf("handlers ran %d (slow) and %d (fast) times for 6 calls", a, b)
	}
	// Not idempotent: never hedged, whatever the delay.
	before := e.greet[0].calls.Load() + e.greet[1].calls.Load()
	for range 4 {
		if _, err := call(e, &HelloReq{Name: "h", Delay: 100 * time.Millisecond, SlowOn: "node-0"}, rr, client.WithHedge(10*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.greet[0].calls.Load() + e.greet[1].calls.Load() - before; n != 4 {
		t.Fatalf("4 calls that are not idempotent ran %d times with a hedge set", n)
	}
}

// Issue 10 (part of 1): a node of another framework under the same name
// (go-micro publishes protocol "grpc" or "mucp") is skipped at once, never
// dialled; when only such nodes exist the call fails at once, saying why.
func TestForeignProtocolNodesAreSkipped(t *testing.T) {
	e := newEnv(t, 1)
	hung := hungListener(t) // a dial to it would hang
	svc := &registry.Service{Name: "greeter", Version: "1.0.0", Nodes: []*registry.Node{{ID: "gomicro-1", Address: hung,
		Metadata: map[string]string{registry.MetaProtocol: "grpc"}}}}
	if err := e.reg.Register(context.Background(), svc); err != nil {
		t.Fatal(err)
	}
	if got := e.servers[0].Service().Nodes[0].Metadata[registry.MetaProtocol]; got != registry.ProtocolBeacon {
		t.Fatalf("a Beacon node publishes protocol %q", got)
	}
	registrytest.Eventually(t, 5*time.Second, func() error {
		svcs, _ := e.sel.Cache().GetService(context.Background(), "greeter")
		if n := len(registry.Flatten(svcs)); n != 2 {
			return fmt.Errorf("%d nodes", n)
		}
		return nil
	})
	start := time.Now()
	for range 20 {
		if _, err := call(e, &HelloReq{Name: "x"}, client.WithRetries(0)); err != nil {
			t.Fatalf("a call with a go-micro node beside: %v", err)
		}
	}
	within(t, "20 calls beside a go-micro node", time.Since(start), time.Second)
	e.reg.Deregister(context.Background(), e.servers[0].Service())
	registrytest.Eventually(t, 5*time.Second, func() error {
		svcs, _ := e.sel.Cache().GetService(context.Background(), "greeter")
		if n := len(registry.Flatten(svcs)); n != 1 {
			return fmt.Errorf("%d nodes", n)
		}
		return nil
	})
	start = time.Now()
	_, err := call(e, &HelloReq{Name: "x"})
	within(t, "a call to go-micro nodes only", time.Since(start), 100*time.Millisecond)
	if !errors.Is(err, client.ErrProtocol) || !strings.Contains(err.Error(), `"grpc"`) {
		t.Fatalf("err = %v, want ErrProtocol naming grpc", err)
	}
}
