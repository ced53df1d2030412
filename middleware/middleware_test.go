package middleware_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/codec"
	"github.com/beacon-go/beacon/internal/wire"
	"github.com/beacon-go/beacon/metadata"
	"github.com/beacon-go/beacon/middleware"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/server"
	"github.com/beacon-go/beacon/status"
	"github.com/beacon-go/beacon/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.DiscardHandler)

type Req struct {
	Fail  int  `json:"fail,omitempty"`
	Panic bool `json:"panic,omitempty"`
}

// Rsp echoes the request metadata the handler saw.
type Rsp struct {
	Seen map[string]string `json:"seen"`
}

// echo is the handler: it answers with the metadata it received and sets
// response metadata "x-echo" (the caller's "x-id") and "x-node".
func echo(ctx context.Context, req *Req, rsp *Rsp) error {
	md, _ := metadata.FromIncomingContext(ctx)
	rsp.Seen = md
	if err := server.SetResponseMetadata(ctx, metadata.New("x-echo", md.Get("x-id"), "x-node", "n1")); err != nil {
		return err
	}
	if req.Panic {
		panic("handler panic")
	}
	if req.Fail != 0 {
		return status.Newf(req.Fail, "failing with %d", req.Fail)
	}
	return nil
}

// startServer starts a server of service "echo" with endpoint Echo.Call on
// 127.0.0.1, registered in reg.
func startServer(t *testing.T, reg *memory.Registry, opts ...server.Option) *server.Server {
	t.Helper()
	opts = append([]server.Option{server.Name("echo"), server.ID("n1"), server.Address("127.0.0.1:0"),
		server.Registry(reg), server.DrainGrace(time.Millisecond), server.Logger(quiet)}, opts...)
	s, err := server.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	if err := server.HandleFunc(s, "Echo.Call", echo); err != nil {
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
	return s
}

func newClient(t *testing.T, reg *memory.Registry, opts ...client.Option) *client.Client {
	t.Helper()
	sel := selector.New(reg, selector.WithLogger(quiet))
	c := client.New(sel, append([]client.Option{client.Logger(quiet),
		client.WithDefaultBackoff(client.ExponentialBackoff(time.Millisecond, 2*time.Millisecond))}, opts...)...)
	t.Cleanup(func() {
		c.Close()
		sel.Close()
	})
	return c
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

// TestMetadataRoundTrip: request metadata from the caller's context reaches
// the handler's, response metadata reaches the caller, on success and on a
// handler's error; calls without metadata carry none.
func TestMetadataRoundTrip(t *testing.T) {
	reg := memory.New()
	defer reg.Close()
	startServer(t, reg)
	c := newClient(t, reg)
	tests := []struct {
		name     string
		md       metadata.MD
		fail     int
		wantCode int
	}{
		{"token and trace", metadata.New("authorization", "Bearer t0k", "traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "x-id", "7"), 0, status.OK},
		{"on a handler error", metadata.New("x-id", "8"), 418, 418},
		{"none", nil, 0, status.OK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cx := ctx(t)
			if tc.md != nil {
				cx = metadata.NewOutgoingContext(cx, tc.md)
			}
			var got metadata.MD
			rsp := new(Rsp)
			err := c.Call(cx, "echo", "Echo.Call", &Req{Fail: tc.fail}, rsp, client.ResponseMetadata(&got))
			if status.Code(err) != tc.wantCode {
				t.Fatalf("err = %v, want code %d", err, tc.wantCode)
			}
			if err == nil && fmt.Sprint(rsp.Seen) != fmt.Sprint(map[string]string(tc.md)) {
				t.Errorf("handler saw %v, want %v", rsp.Seen, tc.md)
			}
			if got.Get("x-echo") != tc.md.Get("x-id") || got.Get("x-node") != "n1" {
				t.Errorf("response metadata %v, want x-echo=%q x-node=n1", got, tc.md.Get("x-id"))
			}
		})
	}
}

// TestMetadataLimits: metadata over the limits, or malformed, is refused by
// the client before anything is sent (400, not run), and by the server
// without running the handler (431, not run) when a peer sends it anyway.
func TestMetadataLimits(t *testing.T) {
	reg := memory.New()
	defer reg.Close()
	s := startServer(t, reg)
	c := newClient(t, reg)
	many := metadata.MD{}
	for i := range metadata.MaxEntries + 1 {
		many[fmt.Sprintf("k%d", i)] = "v"
	}
	tests := []struct {
		name string
		md   metadata.MD
	}{
		{"too many entries", many},
		{"too many bytes", metadata.MD{"big": strings.Repeat("x", metadata.MaxSize)}},
		{"bad key", metadata.MD{"Bad Key": "v"}},
		{"control character", metadata.MD{"k": "a\nb"}},
	}
	for _, tc := range tests {
		t.Run("client/"+tc.name, func(t *testing.T) {
			err := c.Call(metadata.NewOutgoingContext(ctx(t), tc.md), "echo", "Echo.Call", &Req{}, new(Rsp))
			var me *metadata.Error
			if status.Code(err) != status.BadRequest || !errors.Is(err, client.ErrNotRun) || !errors.As(err, &me) {
				t.Fatalf("err = %v, want 400, not run, a *metadata.Error", err)
			}
		})
		t.Run("server/"+tc.name, func(t *testing.T) {
			nc, err := net.Dial("tcp", s.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			nc.SetDeadline(time.Now().Add(5 * time.Second))
			r := wire.NewReader(nc, 1<<20)
			nc.Write([]byte(wire.Preface))
			var f wire.Frame
			if err := r.Next(&f); err != nil || f.Kind != wire.KindSettings {
				t.Fatalf("settings: %v", err)
			}
			frame, err := wire.AppendRequest(nil, 1, "Echo.Call", "", 0, tc.md, []byte("{}"))
			if err != nil {
				t.Fatal(err)
			}
			nc.Write(frame)
			if err := r.Next(&f); err != nil || f.Kind != wire.KindResponse {
				t.Fatalf("response: %v", err)
			}
			if f.Status != status.HeaderTooLarge || f.Flags&wire.FlagNotRun == 0 {
				t.Fatalf("status %d flags %b detail %q; want 431, not run", f.Status, f.Flags, f.Detail)
			}
		})
	}
}

// TestInterceptorOrder: interceptors run in the order given (the first is
// outermost), a call is seen once by call interceptors and once per attempt
// by attempt interceptors (the first address is dead: two attempts), and
// the server's interceptors see the request metadata.
func TestInterceptorOrder(t *testing.T) {
	var mu sync.Mutex
	var trace []string
	note := func(s string) {
		mu.Lock()
		trace = append(trace, s)
		mu.Unlock()
	}
	callI := func(name string) client.Interceptor {
		return func(ctx context.Context, c *client.CallInfo, next client.Invoker) error {
			note(name + ">")
			err := next(metadata.AppendToOutgoingContext(ctx, "x-"+name, "1"), c)
			note("<" + name)
			return err
		}
	}
	attemptI := func(name string) client.AttemptInterceptor {
		return func(ctx context.Context, a *client.Attempt, next client.AttemptInvoker) error {
			note(fmt.Sprintf("%s%d>", name, a.Number))
			err := next(ctx, a)
			note(fmt.Sprintf("<%s%d", name, a.Number))
			return err
		}
	}
	serverI := func(name string) server.Interceptor {
		return func(ctx context.Context, req any, info *server.HandlerInfo, next server.HandlerFunc) (any, error) {
			md, _ := metadata.FromIncomingContext(ctx)
			note(fmt.Sprintf("%s(%s,%s,a=%s)>", name, info.Endpoint, info.Protocol, md.Get("x-a")))
			rsp, err := next(ctx, req)
			note("<" + name)
			return rsp, err
		}
	}
	reg := memory.New()
	defer reg.Close()
	s := startServer(t, reg, server.WithInterceptors(serverI("S1"), serverI("S2")))
	c := newClient(t, reg, client.WithInterceptors(callI("a"), callI("b")),
		client.WithAttemptInterceptors(attemptI("A"), attemptI("B")))
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	rsp := new(Rsp)
	if err := c.Call(ctx(t), "echo", "Echo.Call", &Req{}, rsp, client.WithAddress(deadAddr, s.Addr().String())); err != nil {
		t.Fatal(err)
	}
	want := "a> b> A1> B1> <B1 <A1 A2> B2> S1(Echo.Call,beacon,a=1)> S2(Echo.Call,beacon,a=1)> <S2 <S1 <B2 <A2 <b <a"
	if got := strings.Join(trace, " "); got != want {
		t.Fatalf("order\n got %s\nwant %s", got, want)
	}
	if rsp.Seen["x-a"] != "1" || rsp.Seen["x-b"] != "1" {
		t.Fatalf("handler saw %v, want x-a and x-b from the interceptors", rsp.Seen)
	}
}

// TestBearerAuth: the auth example: a token from the client's metadata (or
// an HTTP Authorization header) is checked by a server interceptor; calls
// without it or with a wrong one get 401 and the handler does not run.
func TestBearerAuth(t *testing.T) {
	reg := memory.New()
	defer reg.Close()
	s := startServer(t, reg, server.WithInterceptors(middleware.ServerLog(quiet), middleware.BearerAuth(middleware.StaticTokens("s3cret"))))
	tests := []struct {
		name  string
		token string // "": no token
		want  int
	}{
		{"right token", "s3cret", status.OK},
		{"wrong token", "guess", status.Unauthorized},
		{"no token", "", status.Unauthorized},
	}
	for _, tc := range tests {
		t.Run("wire/"+tc.name, func(t *testing.T) {
			var opts []client.Option
			if tc.token != "" {
				opts = append(opts, client.WithInterceptors(middleware.BearerToken(tc.token)))
			}
			c := newClient(t, reg, opts...)
			err := c.Call(ctx(t), "echo", "Echo.Call", &Req{}, new(Rsp))
			if status.Code(err) != tc.want {
				t.Fatalf("err = %v, want code %d", err, tc.want)
			}
		})
		t.Run("http/"+tc.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(ctx(t), http.MethodPost, "http://"+s.Addr().String()+"/Echo.Call", strings.NewReader("{}"))
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			res, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			io.Copy(io.Discard, res.Body)
			if want := max(tc.want, 200); res.StatusCode != want {
				t.Fatalf("HTTP status %d, want %d", res.StatusCode, want)
			}
		})
	}
	http.DefaultClient.CloseIdleConnections()
}

// TestHTTPMetadata: HTTP request headers arrive as request metadata (HTTP's
// own headers excluded), response metadata leaves as response headers.
func TestHTTPMetadata(t *testing.T) {
	reg := memory.New()
	defer reg.Close()
	s := startServer(t, reg)
	req, _ := http.NewRequestWithContext(ctx(t), http.MethodPost, "http://"+s.Addr().String()+"/Echo.Call", strings.NewReader("{}"))
	req.Header.Set("X-Id", "42")
	req.Header.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	defer http.DefaultClient.CloseIdleConnections()
	var rsp Rsp
	body, _ := io.ReadAll(res.Body)
	if err := (codec.JSON{}).Unmarshal(body, &rsp); err != nil {
		t.Fatal(err, string(body))
	}
	if rsp.Seen["x-id"] != "42" || rsp.Seen["traceparent"] == "" {
		t.Fatalf("handler saw %v, want x-id and traceparent", rsp.Seen)
	}
	for _, own := range []string{"content-type", "user-agent", "accept-encoding", "content-length"} {
		if _, ok := rsp.Seen[own]; ok {
			t.Errorf("HTTP's own header %q arrived as metadata", own)
		}
	}
	if res.Header.Get("X-Echo") != "42" || res.Header.Get("X-Node") != "n1" {
		t.Fatalf("response headers %v, want X-Echo: 42 and X-Node: n1", res.Header)
	}
}

// TestRecovery: a panic in a handler or in an interceptor becomes status
// 500 for that call alone; the server keeps serving.
func TestRecovery(t *testing.T) {
	reg := memory.New()
	defer reg.Close()
	var logs bytes.Buffer
	var logMu sync.Mutex
	log := slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &logMu}, nil))
	panicky := func(ctx context.Context, req any, info *server.HandlerInfo, next server.HandlerFunc) (any, error) {
		if md, _ := metadata.FromIncomingContext(ctx); md.Get("x-panic") != "" {
			panic("interceptor panic")
		}
		return next(ctx, req)
	}
	startServer(t, reg, server.WithInterceptors(panicky), server.Logger(log))
	c := newClient(t, reg)
	for _, tc := range []struct {
		name string
		ctx  context.Context
		req  *Req
	}{
		{"handler", ctx(t), &Req{Panic: true}},
		{"interceptor", metadata.AppendToOutgoingContext(ctx(t), "x-panic", "1"), &Req{}},
	} {
		if err := c.Call(tc.ctx, "echo", "Echo.Call", tc.req, new(Rsp)); status.Code(err) != status.InternalError {
			t.Errorf("%s panic: err = %v, want 500", tc.name, err)
		}
	}
	if err := c.Call(ctx(t), "echo", "Echo.Call", &Req{}, new(Rsp)); err != nil {
		t.Fatalf("after the panics: %v", err)
	}
	logMu.Lock()
	defer logMu.Unlock()
	if n := strings.Count(logs.String(), "panicked"); n != 2 {
		t.Fatalf("%d panics logged, want 2:\n%s", n, logs.String())
	}
}

type lockedWriter struct {
	w  io.Writer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestLogging: the logging interceptors log a call once, each attempt, and
// the server's request, at debug level.
func TestLogging(t *testing.T) {
	reg := memory.New()
	defer reg.Close()
	var buf bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(&lockedWriter{w: &buf, mu: &mu}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	startServer(t, reg, server.WithInterceptors(middleware.ServerLog(log)))
	c := newClient(t, reg, client.WithInterceptors(middleware.ClientLog(log)), client.WithAttemptInterceptors(middleware.AttemptLog(log)))
	if err := c.Call(ctx(t), "echo", "Echo.Call", &Req{}, new(Rsp)); err != nil {
		t.Fatal(err)
	}
	if err := c.Call(ctx(t), "echo", "Echo.Call", &Req{Fail: 404}, new(Rsp)); status.Code(err) != 404 {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	out := buf.String()
	for _, want := range []string{
		`level=DEBUG msg="client: call" service=echo endpoint=Echo.Call status=0`,
		`level=INFO msg="client: call" service=echo endpoint=Echo.Call status=404`,
		`level=DEBUG msg="client: attempt" service=echo endpoint=Echo.Call attempt=1 node=n1`,
		`level=DEBUG msg="server: request" endpoint=Echo.Call`,
		`level=INFO msg="server: request" endpoint=Echo.Call`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

// TestTransportHandler: the server's dispatch as a transport.Handler (what
// another transport serves) runs the same handlers, interceptors and
// metadata, and refuses unknown endpoints without running anything.
func TestTransportHandler(t *testing.T) {
	reg := memory.New()
	defer reg.Close()
	s := startServer(t, reg, server.WithInterceptors(middleware.BearerAuth(middleware.StaticTokens("t"))))
	h := s.Handler()
	tests := []struct {
		name       string
		req        transport.Request
		wantStatus int
		wantNotRun bool
	}{
		{"ok", transport.Request{Endpoint: "Echo.Call", ContentType: codec.JSONContentType, Metadata: metadata.New("authorization", "Bearer t", "x-id", "3"), Body: []byte("{}")}, status.OK, false},
		{"no token", transport.Request{Endpoint: "Echo.Call", Body: []byte("{}")}, status.Unauthorized, false},
		{"unknown endpoint", transport.Request{Endpoint: "Nope.Nope"}, status.NotFound, true},
		{"bad metadata", transport.Request{Endpoint: "Echo.Call", Metadata: metadata.MD{"A B": "x"}}, status.HeaderTooLarge, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var rsp transport.Response
			h.Serve(ctx(t), &tc.req, &rsp)
			if rsp.Status != tc.wantStatus || rsp.NotRun != tc.wantNotRun {
				t.Fatalf("response %+v, want status %d not-run %v", rsp, tc.wantStatus, tc.wantNotRun)
			}
			if tc.name == "ok" && (rsp.Metadata.Get("x-echo") != "3" || !strings.Contains(string(rsp.Body), `"x-id":"3"`)) {
				t.Fatalf("response %+v %s", rsp, rsp.Body)
			}
		})
	}
}
