package otelbeacon_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/codec"
	"github.com/beacon-go/beacon/metadata"
	"github.com/beacon-go/beacon/middleware"
	"github.com/beacon-go/beacon/otelbeacon"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/server"
	"github.com/beacon-go/beacon/status"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.DiscardHandler)

type Req struct {
	Fail  int  `json:"fail,omitempty"`
	Panic bool `json:"panic,omitempty"`
}

// Rsp tells what the handler saw: its request metadata, the span of its
// context and the baggage.
type Rsp struct {
	Seen    map[string]string `json:"seen"`
	TraceID string            `json:"trace_id"`
	SpanID  string            `json:"span_id"`
	Baggage string            `json:"baggage"`
}

// echo is the handler: it answers with what it saw and sends its trace ID
// back as response metadata "x-trace-id".
func echo(ctx context.Context, req *Req, rsp *Rsp) error {
	md, _ := metadata.FromIncomingContext(ctx)
	sc := trace.SpanContextFromContext(ctx)
	rsp.Seen, rsp.TraceID, rsp.SpanID = md, sc.TraceID().String(), sc.SpanID().String()
	rsp.Baggage = baggage.FromContext(ctx).Member("tenant").Value()
	if err := server.SetResponseMetadata(ctx, metadata.New("x-trace-id", sc.TraceID().String())); err != nil {
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

// env is a tracer provider and a meter provider over in-memory readers,
// and the instrumentation over them.
type env struct {
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	reader *sdkmetric.ManualReader
	mp     *sdkmetric.MeterProvider
	inst   *otelbeacon.Instrumentation
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader()}
	e.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(e.spans))
	e.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(e.reader))
	t.Cleanup(func() {
		ctx := context.Background()
		e.tp.Shutdown(ctx)
		e.mp.Shutdown(ctx)
	})
	var err error
	if e.inst, err = otelbeacon.New(otelbeacon.WithTracerProvider(e.tp), otelbeacon.WithMeterProvider(e.mp)); err != nil {
		t.Fatal(err)
	}
	return e
}

// startServer starts server n1 of service "echo" (endpoint Echo.Call) on
// 127.0.0.1, registered in reg, traced by e and checking bearer tokens.
func (e *env) startServer(t *testing.T, reg *memory.Registry) *server.Server {
	t.Helper()
	s, err := server.New(server.Name("echo"), server.ID("n1"), server.Address("127.0.0.1:0"),
		server.Registry(reg), server.DrainGrace(time.Millisecond), server.Logger(quiet),
		server.WithInterceptors(e.inst.ServerInterceptor(), middleware.BearerAuth(middleware.StaticTokens("s3cret"))))
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

// newClient returns a client over a selector of reg, both instrumented by
// e, sending the bearer token.
func (e *env) newClient(t *testing.T, reg registry.Registry, opts ...selector.Option) (*client.Client, *selector.Cached) {
	t.Helper()
	sel := selector.New(reg, append(append([]selector.Option{selector.WithLogger(quiet)}, e.inst.SelectorOptions()...), opts...)...)
	copts := append(e.inst.ClientOptions(), client.WithInterceptors(middleware.BearerToken("s3cret")), client.Logger(quiet),
		client.WithDefaultBackoff(client.ExponentialBackoff(time.Millisecond, 2*time.Millisecond)))
	c := client.New(sel, copts...)
	t.Cleanup(func() {
		c.Close()
		sel.Close()
	})
	return c, sel
}

func ctxT(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func eventually(t *testing.T, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ended waits for n ended spans and returns them by kind.
func (e *env) ended(t *testing.T, n int) map[trace.SpanKind][]sdktrace.ReadOnlySpan {
	t.Helper()
	eventually(t, func() error {
		if got := len(e.spans.Ended()); got != n {
			return fmt.Errorf("%d spans ended, want %d", got, n)
		}
		return nil
	})
	out := map[trace.SpanKind][]sdktrace.ReadOnlySpan{}
	for _, s := range e.spans.Ended() {
		out[s.SpanKind()] = append(out[s.SpanKind()], s)
	}
	return out
}

func attr(s sdktrace.ReadOnlySpan, k attribute.Key) attribute.Value {
	for _, kv := range s.Attributes() {
		if kv.Key == k {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// wantAttrs checks the span's attributes (values compared as printed).
func wantAttrs(t *testing.T, s sdktrace.ReadOnlySpan, kv ...attribute.KeyValue) {
	t.Helper()
	for _, w := range kv {
		if got := attr(s, w.Key); got.Emit() != w.Value.Emit() || got.Type() != w.Value.Type() {
			t.Errorf("span %s (%s): %s = %q (%s), want %q", s.Name(), s.SpanKind(), w.Key, got.Emit(), got.Type(), w.Value.Emit())
		}
	}
}

func (e *env) collect(t *testing.T) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := e.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	return rm
}

func metricNamed(rm metricdata.ResourceMetrics, name string) (metricdata.Metrics, bool) {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

func matches(set attribute.Set, kv []attribute.KeyValue) bool {
	for _, w := range kv {
		v, ok := set.Value(w.Key)
		if !ok || v.Emit() != w.Value.Emit() {
			return false
		}
	}
	return true
}

// sum adds the points of the counter name whose attributes include kv.
func sum(rm metricdata.ResourceMetrics, name string, kv ...attribute.KeyValue) int64 {
	m, _ := metricNamed(rm, name)
	s, _ := m.Data.(metricdata.Sum[int64])
	var n int64
	for _, dp := range s.DataPoints {
		if matches(dp.Attributes, kv) {
			n += dp.Value
		}
	}
	return n
}

// count adds the counts of the histogram name whose attributes include kv.
func count(rm metricdata.ResourceMetrics, name string, kv ...attribute.KeyValue) uint64 {
	m, _ := metricNamed(rm, name)
	h, _ := m.Data.(metricdata.Histogram[float64])
	var n uint64
	for _, dp := range h.DataPoints {
		if matches(dp.Attributes, kv) {
			n += dp.Count
		}
	}
	return n
}

var (
	svcEcho  = otelbeacon.KeyService.String("echo")
	methEcho = otelbeacon.KeyMethod.String("Echo.Call")
	sysAttr  = otelbeacon.KeySystem.String("beacon")
)

func code(c int) attribute.KeyValue { return otelbeacon.KeyStatusCode.Int(c) }

// wantIdle checks that no call or request is counted in flight.
func wantIdle(t *testing.T, rm metricdata.ResourceMetrics) {
	t.Helper()
	for _, name := range []string{"beacon.client.calls.in_flight", "beacon.server.requests.in_flight"} {
		if _, ok := metricNamed(rm, name); !ok {
			t.Errorf("no metric %s", name)
		}
		if n := sum(rm, name); n != 0 {
			t.Errorf("%s = %d, want 0", name, n)
		}
	}
}

// TestTraceAndTokenThroughMetadata: a call under a span of the caller's,
// with a bearer token and baggage, is a call span (child of the caller's),
// an attempt span (child of the call span) and a server span (child of the
// attempt span, a remote parent, in the same trace); the handler sees the
// token, the trace context and the baggage, its context holds the server
// span, and its trace ID comes back in the response metadata. Metrics count
// the call, the attempt and the request, and nothing stays in flight.
func TestTraceAndTokenThroughMetadata(t *testing.T) {
	e := newEnv(t)
	reg := memory.New()
	defer reg.Close()
	srv := e.startServer(t, reg)
	c, _ := e.newClient(t, reg)

	ctx, parent := e.tp.Tracer("test").Start(ctxT(t), "caller")
	m, _ := baggage.NewMember("tenant", "acme")
	bg, _ := baggage.New(m)
	ctx = baggage.ContextWithBaggage(ctx, bg)
	ctx = metadata.AppendToOutgoingContext(ctx, "x-id", "7")
	out, _ := metadata.FromOutgoingContext(ctx)
	var rmd metadata.MD
	rsp := new(Rsp)
	if err := c.Call(ctx, "echo", "Echo.Call", &Req{}, rsp, client.ResponseMetadata(&rmd)); err != nil {
		t.Fatal(err)
	}
	parent.End()

	if rsp.Seen["authorization"] != "Bearer s3cret" || rsp.Seen["traceparent"] == "" || rsp.Seen["x-id"] != "7" {
		t.Fatalf("handler saw %v, want the token, a traceparent and x-id", rsp.Seen)
	}
	if fmt.Sprint(out) != "map[x-id:7]" {
		t.Fatalf("the caller's metadata became %v: the attempt interceptor must copy it", out)
	}
	if rsp.Baggage != "acme" || !strings.Contains(rsp.Seen["baggage"], "tenant=acme") {
		t.Fatalf("handler's baggage %q (metadata %q), want tenant=acme", rsp.Baggage, rsp.Seen["baggage"])
	}
	spans := e.ended(t, 4)
	call, attempt, srvSpan := spans[trace.SpanKindInternal][0], spans[trace.SpanKindClient][0], spans[trace.SpanKindServer][0]
	tid := parent.SpanContext().TraceID()
	for _, s := range []sdktrace.ReadOnlySpan{call, attempt, srvSpan} {
		if s.SpanContext().TraceID() != tid {
			t.Errorf("span %s %s in trace %s, want %s", s.Name(), s.SpanKind(), s.SpanContext().TraceID(), tid)
		}
		if s.Name() != "echo/Echo.Call" {
			t.Errorf("span name %q", s.Name())
		}
		if s.Status().Code != codes.Unset {
			t.Errorf("span %s status %v", s.SpanKind(), s.Status())
		}
	}
	if call.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("call span's parent %s, want the caller's %s", call.Parent().SpanID(), parent.SpanContext().SpanID())
	}
	if attempt.Parent().SpanID() != call.SpanContext().SpanID() || attempt.Parent().IsRemote() {
		t.Errorf("attempt span's parent %v, want the call span %s (local)", attempt.Parent(), call.SpanContext().SpanID())
	}
	if srvSpan.Parent().SpanID() != attempt.SpanContext().SpanID() || !srvSpan.Parent().IsRemote() {
		t.Errorf("server span's parent %v, want the attempt span %s (remote)", srvSpan.Parent(), attempt.SpanContext().SpanID())
	}
	if rsp.SpanID != srvSpan.SpanContext().SpanID().String() || rsp.TraceID != tid.String() {
		t.Errorf("handler's context has span %s/%s, want the server span %s/%s", rsp.TraceID, rsp.SpanID, tid, srvSpan.SpanContext().SpanID())
	}
	if rmd.Get("x-trace-id") != tid.String() {
		t.Errorf("response metadata %v, want x-trace-id %s", rmd, tid)
	}
	host, port, _ := net.SplitHostPort(srv.Addr().String())
	var portN int
	fmt.Sscan(port, &portN)
	wantAttrs(t, call, sysAttr, svcEcho, methEcho, code(0))
	wantAttrs(t, attempt, sysAttr, svcEcho, methEcho, code(0), otelbeacon.KeyAttempt.Int(1), otelbeacon.KeyNodeID.String("n1"),
		otelbeacon.KeyServerAddress.String(host), otelbeacon.KeyServerPort.Int(portN), otelbeacon.KeyProtocol.String("beacon"))
	wantAttrs(t, srvSpan, sysAttr, svcEcho, methEcho, code(0), otelbeacon.KeyNodeID.String("n1"),
		otelbeacon.KeyProtocol.String("beacon"), otelbeacon.KeyPeerAddress.String("127.0.0.1"))
	for _, s := range []sdktrace.ReadOnlySpan{call, attempt, srvSpan} {
		for _, kv := range s.Attributes() {
			if strings.Contains(string(kv.Key), "body") || strings.Contains(kv.Value.Emit(), "s3cret") {
				t.Errorf("span %s records %s=%s", s.SpanKind(), kv.Key, kv.Value.Emit())
			}
		}
	}

	rm := e.collect(t)
	for _, w := range []struct {
		name string
		want int64
		kv   []attribute.KeyValue
	}{
		{"beacon.client.calls", 1, []attribute.KeyValue{sysAttr, svcEcho, methEcho, code(0)}},
		{"beacon.client.errors", 0, nil},
		{"beacon.client.attempts", 1, []attribute.KeyValue{svcEcho, methEcho, code(0), otelbeacon.KeyProtocol.String("beacon")}},
		{"beacon.client.retries", 0, nil},
		{"beacon.server.requests", 1, []attribute.KeyValue{sysAttr, svcEcho, methEcho, code(0), otelbeacon.KeyProtocol.String("beacon")}},
		{"beacon.server.errors", 0, nil},
	} {
		if got := sum(rm, w.name, w.kv...); got != w.want {
			t.Errorf("%s%v = %d, want %d", w.name, w.kv, got, w.want)
		}
	}
	for _, h := range []string{"beacon.client.call.duration", "beacon.client.attempt.duration", "beacon.server.request.duration"} {
		if n := count(rm, h, svcEcho, methEcho, code(0)); n != 1 {
			t.Errorf("%s: %d samples, want 1", h, n)
		}
		m, _ := metricNamed(rm, h)
		if m.Unit != "s" {
			t.Errorf("%s unit %q, want s", h, m.Unit)
		}
	}
	wantIdle(t, rm)
}

// deadAddr returns an address on 127.0.0.1 where nothing listens.
func deadAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// TestRetry: a call whose first address is dead makes two attempt spans
// under its call span, the first failed (503, "dial"), and the server span
// is the child of the second; retries counts one.
func TestRetry(t *testing.T) {
	e := newEnv(t)
	reg := memory.New()
	defer reg.Close()
	srv := e.startServer(t, reg)
	c, _ := e.newClient(t, reg)
	if err := c.Call(ctxT(t), "echo", "Echo.Call", &Req{}, new(Rsp), client.WithAddress(deadAddr(t), srv.Addr().String())); err != nil {
		t.Fatal(err)
	}
	spans := e.ended(t, 4)
	call, srvSpan := spans[trace.SpanKindInternal][0], spans[trace.SpanKindServer][0]
	attempts := spans[trace.SpanKindClient]
	if len(attempts) != 2 {
		t.Fatalf("%d attempt spans, want 2", len(attempts))
	}
	first, second := attempts[0], attempts[1]
	if attr(first, otelbeacon.KeyAttempt).AsInt64() != 1 {
		first, second = second, first
	}
	for _, a := range attempts {
		if a.Parent().SpanID() != call.SpanContext().SpanID() {
			t.Errorf("attempt span's parent %s, want the call span", a.Parent().SpanID())
		}
	}
	wantAttrs(t, first, otelbeacon.KeyAttempt.Int(1), code(status.Unavailable), otelbeacon.KeyTransportError.String("dial"))
	if first.Status().Code != codes.Error {
		t.Errorf("failed attempt's status %v, want Error", first.Status())
	}
	wantAttrs(t, second, otelbeacon.KeyAttempt.Int(2), code(0))
	if srvSpan.Parent().SpanID() != second.SpanContext().SpanID() {
		t.Errorf("server span's parent %s, want the second attempt %s", srvSpan.Parent().SpanID(), second.SpanContext().SpanID())
	}
	if call.Status().Code != codes.Unset {
		t.Errorf("call span status %v", call.Status())
	}
	rm := e.collect(t)
	if n := sum(rm, "beacon.client.retries", svcEcho, methEcho); n != 1 {
		t.Errorf("retries = %d, want 1", n)
	}
	if n := sum(rm, "beacon.client.attempts", code(status.Unavailable)); n != 1 {
		t.Errorf("failed attempts = %d, want 1", n)
	}
	if n := sum(rm, "beacon.client.attempts", code(0)); n != 1 {
		t.Errorf("answered attempts = %d, want 1", n)
	}
	if n := sum(rm, "beacon.client.calls", code(0)); n != 1 {
		t.Errorf("calls = %d, want 1", n)
	}
	wantIdle(t, rm)
}

// TestErrors: a handler's error, a refusal by an interceptor after the
// otel one (no token) and a handler's panic end the spans with status
// Error and the code, and count as errors by code on both sides; nothing
// stays in flight.
func TestErrors(t *testing.T) {
	e := newEnv(t)
	reg := memory.New()
	defer reg.Close()
	srv := e.startServer(t, reg)
	c, _ := e.newClient(t, reg)
	for _, tc := range []struct {
		req  *Req
		code int
	}{{&Req{Fail: 404}, 404}, {&Req{Panic: true}, 500}} {
		if err := c.Call(ctxT(t), "echo", "Echo.Call", tc.req, new(Rsp)); status.Code(err) != tc.code {
			t.Fatalf("err = %v, want code %d", err, tc.code)
		}
	}
	bare := client.New(nil, client.Logger(quiet)) // no token
	defer bare.Close()
	if err := bare.Call(ctxT(t), "echo", "Echo.Call", &Req{}, new(Rsp), client.WithAddress(srv.Addr().String())); status.Code(err) != status.Unauthorized {
		t.Fatalf("err = %v, want 401", err)
	}
	spans := e.ended(t, 7) // 2 calls of 3 spans, and the server span of the refused one
	for kind, ss := range spans {
		for _, s := range ss {
			c := attr(s, otelbeacon.KeyStatusCode).AsInt64()
			if s.Status().Code != codes.Error || !strings.Contains(s.Status().Description, fmt.Sprint(c)) && c != 500 {
				t.Errorf("%s span with code %d: status %v, want Error", kind, c, s.Status())
			}
		}
	}
	if len(spans[trace.SpanKindServer]) != 3 {
		t.Fatalf("%d server spans, want 3", len(spans[trace.SpanKindServer]))
	}
	rm := e.collect(t)
	for _, code := range []int{404, 500} {
		for _, name := range []string{"beacon.client.errors", "beacon.client.calls", "beacon.server.errors", "beacon.client.attempts"} {
			if n := sum(rm, name, svcEcho, methEcho, otelbeacon.KeyStatusCode.Int(code)); n != 1 {
				t.Errorf("%s{code %d} = %d, want 1", name, code, n)
			}
		}
	}
	if n := sum(rm, "beacon.server.errors", otelbeacon.KeyStatusCode.Int(401)); n != 1 {
		t.Errorf("server errors{401} = %d, want 1", n)
	}
	if n := sum(rm, "beacon.server.requests"); n != 3 {
		t.Errorf("server requests = %d, want 3", n)
	}
	wantIdle(t, rm)
}

// TestHTTPTraceparent: an HTTP request with a traceparent header (as curl
// sends it) is handled in a server span of that trace.
func TestHTTPTraceparent(t *testing.T) {
	e := newEnv(t)
	reg := memory.New()
	defer reg.Close()
	srv := e.startServer(t, reg)
	req, _ := http.NewRequestWithContext(ctxT(t), http.MethodPost, "http://"+srv.Addr().String()+"/Echo.Call", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer s3cret")
	req.Header.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	var rsp Rsp
	if err := (codec.JSON{}).Unmarshal(body, &rsp); err != nil || res.StatusCode != 200 {
		t.Fatalf("HTTP %d %s: %v", res.StatusCode, body, err)
	}
	spans := e.ended(t, 1)
	s := spans[trace.SpanKindServer][0]
	if s.SpanContext().TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" || s.Parent().SpanID().String() != "00f067aa0ba902b7" || !s.Parent().IsRemote() {
		t.Fatalf("server span %s parent %v, want trace 4bf92f3577b34da6a3ce929d0e0e4736 under 00f067aa0ba902b7", s.SpanContext().TraceID(), s.Parent())
	}
	if rsp.TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" || res.Header.Get("X-Trace-Id") != rsp.TraceID {
		t.Fatalf("handler's trace %s, X-Trace-Id %q", rsp.TraceID, res.Header.Get("X-Trace-Id"))
	}
	wantAttrs(t, s, otelbeacon.KeyProtocol.String("http"), code(0))
	rm := e.collect(t)
	if n := sum(rm, "beacon.server.requests", otelbeacon.KeyProtocol.String("http")); n != 1 {
		t.Errorf("HTTP requests = %d, want 1", n)
	}
}

// TestEjectionsAndRegistryEvents: a node registered at a dead address is
// ejected (counted once, and counted as ejected until it leaves the
// registry); the selector's watch counts the registry's events.
func TestEjectionsAndRegistryEvents(t *testing.T) {
	e := newEnv(t)
	reg := memory.New()
	defer reg.Close()
	e.startServer(t, reg)
	dead := &registry.Service{Name: "echo", Version: "dead", Nodes: []*registry.Node{{ID: "dead", Address: deadAddr(t)}}}
	if err := reg.Register(context.Background(), dead); err != nil {
		t.Fatal(err)
	}
	c, _ := e.newClient(t, reg)
	svc := otelbeacon.KeyService.String("echo")
	eventually(t, func() error {
		if err := c.Call(ctxT(t), "echo", "Echo.Call", &Req{}, new(Rsp)); err != nil {
			return err
		}
		if n := sum(e.collect(t), "beacon.selector.ejections", svc); n != 1 {
			return fmt.Errorf("ejections = %d", n)
		}
		return nil
	})
	for range 5 { // the dead node stays out: no new ejection
		if err := c.Call(ctxT(t), "echo", "Echo.Call", &Req{}, new(Rsp)); err != nil {
			t.Fatal(err)
		}
	}
	rm := e.collect(t)
	if n := sum(rm, "beacon.selector.ejections", svc); n != 1 {
		t.Errorf("ejections = %d, want 1", n)
	}
	if n := sum(rm, "beacon.selector.ejected", svc); n != 1 {
		t.Errorf("ejected = %d, want 1", n)
	}
	if n := sum(rm, "beacon.client.retries", svc); n < 1 {
		t.Errorf("retries = %d, want at least 1", n)
	}
	// The selector's watch saw both nodes; the dead one leaves.
	ev := func(s string) attribute.KeyValue { return otelbeacon.KeyRegistryEvent.String(s) }
	if n := sum(rm, "beacon.registry.events", svc, ev("create")); n != 2 {
		t.Errorf("create events = %d, want 2", n)
	}
	if err := reg.Deregister(context.Background(), dead); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() error {
		if err := c.Call(ctxT(t), "echo", "Echo.Call", &Req{}, new(Rsp)); err != nil {
			return err
		}
		rm := e.collect(t)
		if n := sum(rm, "beacon.registry.events", svc, ev("delete")); n != 1 {
			return fmt.Errorf("delete events = %d", n)
		}
		if n := sum(rm, "beacon.selector.ejected", svc); n != 0 {
			return fmt.Errorf("ejected = %d after the node left", n)
		}
		return nil
	})
	if n := sum(e.collect(t), "beacon.registry.errors"); n != 0 {
		t.Errorf("registry errors = %d, want 0", n)
	}
}

// failing is a registry that fails while told to.
type failing struct {
	registry.Registry
	fail atomic.Bool
	mu   sync.Mutex
	ws   []registry.Watcher
}

var errDown = errors.New("registry down")

// down makes the registry fail and ends the watches open.
func (f *failing) down() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail.Store(true)
	for _, w := range f.ws {
		w.Stop()
	}
}

func (f *failing) GetService(ctx context.Context, name string, o ...registry.GetOption) ([]*registry.Service, error) {
	if f.fail.Load() {
		return nil, errDown
	}
	return f.Registry.GetService(ctx, name, o...)
}

func (f *failing) Watch(ctx context.Context, o ...registry.WatchOption) (registry.Watcher, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail.Load() {
		return nil, errDown
	}
	w, err := f.Registry.Watch(ctx, o...)
	if err == nil {
		f.ws = append(f.ws, w)
	}
	return w, err
}

// TestRegistryErrors: fetches and watches that fail are counted by service
// and operation; the last nodes keep serving.
func TestRegistryErrors(t *testing.T) {
	e := newEnv(t)
	reg := memory.New()
	defer reg.Close()
	e.startServer(t, reg)
	f := &failing{Registry: reg}
	f.fail.Store(true)
	c, _ := e.newClient(t, f)
	if err := c.Call(ctxT(t), "echo", "Echo.Call", &Req{}, new(Rsp)); err == nil {
		t.Fatal("call found the service in a registry that is down")
	}
	svc := otelbeacon.KeyService.String("echo")
	op := func(s string) attribute.KeyValue { return otelbeacon.KeyRegistryOp.String(s) }
	if n := sum(e.collect(t), "beacon.registry.errors", svc, op("fetch")); n != 1 {
		t.Fatalf("fetch errors = %d, want 1", n)
	}
	f.fail.Store(false)
	if err := c.Call(ctxT(t), "echo", "Echo.Call", &Req{}, new(Rsp)); err != nil {
		t.Fatal(err)
	}
	f.down() // the watch ends, opening another fails
	eventually(t, func() error {
		if n := sum(e.collect(t), "beacon.registry.errors", svc, op("watch")); n < 2 {
			return fmt.Errorf("watch errors = %d, want 2 or more", n)
		}
		return nil
	})
	if err := c.Call(ctxT(t), "echo", "Echo.Call", &Req{}, new(Rsp)); err != nil {
		t.Fatalf("the last nodes do not serve while the registry is down: %v", err)
	}
}

// TestMetadataFull: when the trace context would take the request metadata
// over its limits, the call goes without it rather than fail.
func TestMetadataFull(t *testing.T) {
	e := newEnv(t)
	reg := memory.New()
	defer reg.Close()
	e.startServer(t, reg)
	c, _ := e.newClient(t, reg)
	md := metadata.MD{}
	for i := range metadata.MaxEntries - 1 { // the token takes the last entry
		md[fmt.Sprint("k", i)] = "v"
	}
	rsp := new(Rsp)
	if err := c.Call(metadata.NewOutgoingContext(ctxT(t), md), "echo", "Echo.Call", &Req{}, rsp); err != nil {
		t.Fatal(err)
	}
	if _, ok := rsp.Seen["traceparent"]; ok || len(rsp.Seen) != metadata.MaxEntries {
		t.Fatalf("handler saw %d entries (traceparent %q), want %d without a traceparent", len(rsp.Seen), rsp.Seen["traceparent"], metadata.MaxEntries)
	}
	spans := e.ended(t, 3)
	if spans[trace.SpanKindServer][0].Parent().IsValid() {
		t.Fatalf("server span has a parent without a trace context sent")
	}
}

// sampler records the attributes samplers are given.
type sampler struct {
	mu   sync.Mutex
	seen map[string]string // span kind: attributes
}

func (s *sampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	var kv []string
	for _, a := range p.Attributes {
		kv = append(kv, string(a.Key)+"="+a.Value.Emit())
	}
	slices.Sort(kv)
	s.seen[p.Kind.String()] = strings.Join(kv, " ")
	return sdktrace.AlwaysSample().ShouldSample(p)
}

func (s *sampler) Description() string { return "recording" }

// TestSamplerSeesRPCAttributes: the attributes known when a span starts
// (rpc.*, beacon.protocol) are given to the sampler.
func TestSamplerSeesRPCAttributes(t *testing.T) {
	smp := &sampler{seen: map[string]string{}}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(smp))
	defer tp.Shutdown(context.Background())
	inst, err := otelbeacon.New(otelbeacon.WithTracerProvider(tp))
	if err != nil {
		t.Fatal(err)
	}
	e := &env{inst: inst}
	reg := memory.New()
	defer reg.Close()
	e.startServer(t, reg)
	c, _ := e.newClient(t, reg)
	if err := c.Call(ctxT(t), "echo", "Echo.Call", &Req{}, new(Rsp)); err != nil {
		t.Fatal(err)
	}
	smp.mu.Lock()
	defer smp.mu.Unlock()
	want := map[string]string{
		"internal": "rpc.method=Echo.Call rpc.service=echo rpc.system=beacon",
		"client":   "beacon.protocol=beacon rpc.method=Echo.Call rpc.service=echo rpc.system=beacon",
		"server":   "beacon.protocol=beacon rpc.method=Echo.Call rpc.service=echo rpc.system=beacon",
	}
	if fmt.Sprint(smp.seen) != fmt.Sprint(want) {
		t.Fatalf("sampler saw %v, want %v", smp.seen, want)
	}
}
