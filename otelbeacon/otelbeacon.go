// Package otelbeacon traces and measures Beacon calls with OpenTelemetry:
// interceptors for the client (one span per call, one per attempt) and the
// server (one span per request), W3C trace context and baggage carried in
// the call metadata, and metrics of calls, attempts, retries, requests,
// node ejections and registry events and failures.
//
// It is the only Beacon package that imports OpenTelemetry: a program that
// does not import it does not link OpenTelemetry.
//
// # Use
//
//	inst, err := otelbeacon.New() // the global providers; or WithTracerProvider, WithMeterProvider
//	sel := selector.New(reg, inst.SelectorOptions()...)
//	cli := client.New(sel, inst.ClientOptions()...)
//	srv, err := server.New(server.Name("greeter"), server.WithInterceptors(inst.ServerInterceptor()))
//
// ClientOptions gives the call interceptor and the attempt interceptor;
// put them first among the client's interceptors so that their spans and
// durations cover the others. The attempt interceptor is the one that
// sends the trace context: the call interceptor alone traces and measures
// calls but does not propagate. The server interceptor continues the
// caller's trace (over HTTP too: a "traceparent" header is request
// metadata) and puts its span in the handler's context, so calls the
// handler makes with that context are children of it.
//
// # Spans
//
// A client call is a span of kind internal named "<service>/<endpoint>";
// each attempt (retries and hedged attempts included) is a child of kind
// client with the same name, and the server's request a span of kind
// server, a child of the attempt (a remote parent). Attributes:
//
//	rpc.system              "beacon"                          all
//	rpc.service             the service name                  all
//	rpc.method              the endpoint, e.g. "Greeter.Hello" all
//	beacon.status_code      the status code (0: OK)           all
//	beacon.attempt          the attempt number (1 for the first) attempt
//	beacon.node.id          the node's ID                     attempt (by name), server
//	server.address, server.port  the node's address           attempt
//	beacon.protocol         "beacon", "http", a transport's   attempt, server
//	beacon.transport.error  the failed step: "dial", "write", "read", "timeout", "refused"...  attempt, when no answer came
//	network.peer.address, network.peer.port  the caller       server, when known
//
// rpc.* and beacon.protocol are given when the span starts, so samplers see
// them; the others when it ends. A call, attempt or request that fails (any
// status but OK) ends with span status Error and the error's text as its
// description. A failed attempt without an answer has status code 503 (408
// for a timeout, 499 when the caller gave up), as the client reports it.
// Request and response bodies and metadata values are never recorded.
//
// # Metrics
//
// Durations are histograms in seconds. Attributes are rpc.system,
// rpc.service and rpc.method, plus beacon.status_code on the counters and
// histograms of finished calls, and beacon.protocol on attempts and
// requests.
//
//	beacon.client.calls               {call}     calls finished
//	beacon.client.errors              {call}     calls finished with a status other than OK
//	beacon.client.call.duration       s          call duration, retries and backoff included
//	beacon.client.calls.in_flight     {call}     calls under way (no status code)
//	beacon.client.attempts            {attempt}  attempts finished
//	beacon.client.retries             {attempt}  attempts after the first of their call (no status code)
//	beacon.client.attempt.duration    s          attempt duration
//	beacon.server.requests            {request}  requests handled
//	beacon.server.errors              {request}  requests answered with a status other than OK
//	beacon.server.request.duration    s          handler duration, interceptors after this one included
//	beacon.server.requests.in_flight  {request}  requests being handled (no status code)
//	beacon.selector.ejections         {ejection} nodes ejected (rpc.service)
//	beacon.selector.ejected           {node}     nodes ejected now (rpc.service)
//	beacon.registry.events            {event}    registry events applied to the cache (rpc.service, beacon.registry.event: create, update, delete)
//	beacon.registry.errors            {error}    registry failures (rpc.service, beacon.registry.operation: fetch, watch)
//
// The selector and registry metrics come from SelectorOptions (or
// CacheOptions for a cache made apart).
//
// # Cost
//
// The span names, start options and metric attribute sets of each service,
// endpoint, protocol and status code are built once and reused, so metrics
// cost no allocation per call; spans cost what the tracer provider makes
// them cost. With no-op providers a call through the client's and the
// server's interceptors costs 8 allocations more than one without
// interceptors (3 of them the no-op tracer's contexts, the rest the
// interceptor chains'); see BenchmarkCall and BenchmarkCallInProcess, and
// the README for figures.
package otelbeacon

import (
	"context"
	"errors"
	"maps"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/metadata"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/cache"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/server"
	"github.com/beacon-go/beacon/status"
	"github.com/beacon-go/beacon/transport"
)

// ScopeName is the instrumentation scope of the tracer and the meter.
const ScopeName = "github.com/beacon-go/beacon/otelbeacon"

// System is the value of rpc.system.
const System = "beacon"

// Attribute keys.
const (
	KeySystem         = attribute.Key("rpc.system")
	KeyService        = attribute.Key("rpc.service")
	KeyMethod         = attribute.Key("rpc.method")
	KeyStatusCode     = attribute.Key("beacon.status_code")
	KeyAttempt        = attribute.Key("beacon.attempt")
	KeyNodeID         = attribute.Key("beacon.node.id")
	KeyProtocol       = attribute.Key("beacon.protocol")
	KeyTransportError = attribute.Key("beacon.transport.error")
	KeyServerAddress  = attribute.Key("server.address")
	KeyServerPort     = attribute.Key("server.port")
	KeyPeerAddress    = attribute.Key("network.peer.address")
	KeyPeerPort       = attribute.Key("network.peer.port")
	KeyRegistryEvent  = attribute.Key("beacon.registry.event")
	KeyRegistryOp     = attribute.Key("beacon.registry.operation")
)

// DurationBuckets are the bucket bounds of the duration histograms, in
// seconds: 100 µs to 10 s (the SDK's default bounds are made for
// milliseconds). A view of the meter provider may replace them.
var DurationBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// Option configures New.
type Option func(*config)

type config struct {
	tp   trace.TracerProvider
	mp   metric.MeterProvider
	prop propagation.TextMapPropagator
}

// WithTracerProvider sets the tracer provider (default: the global one,
// otel.GetTracerProvider, read when New runs; a global set later is used
// too, as the global provider delegates to it).
func WithTracerProvider(tp trace.TracerProvider) Option { return func(c *config) { c.tp = tp } }

// WithMeterProvider sets the meter provider (default: the global one).
func WithMeterProvider(mp metric.MeterProvider) Option { return func(c *config) { c.mp = mp } }

// WithPropagator sets how the trace context travels in call metadata
// (default: W3C trace context and baggage, propagation.TraceContext{} and
// propagation.Baggage{}, whatever the global propagator is).
func WithPropagator(p propagation.TextMapPropagator) Option { return func(c *config) { c.prop = p } }

// Instrumentation makes the interceptors and options that trace and measure
// Beacon. One Instrumentation may serve any number of clients, servers and
// selectors; it is safe for concurrent use.
type Instrumentation struct {
	tracer trace.Tracer
	prop   propagation.TextMapPropagator

	calls, callErrors metric.Int64Counter
	callDuration      metric.Float64Histogram
	callsInFlight     metric.Int64UpDownCounter
	attempts, retries metric.Int64Counter
	attemptDuration   metric.Float64Histogram

	requests, requestErrors metric.Int64Counter
	requestDuration         metric.Float64Histogram
	requestsInFlight        metric.Int64UpDownCounter

	ejections                      metric.Int64Counter
	ejected                        metric.Int64UpDownCounter
	registryEvents, registryErrors metric.Int64Counter

	routes  routes // by service, endpoint and protocol ("" for calls)
	service routes // by service alone, for the selector's and registry's metrics
}

// New returns an Instrumentation. It fails only when the meter provider
// refuses an instrument.
func New(opts ...Option) (*Instrumentation, error) {
	var c config
	for _, o := range opts {
		o(&c)
	}
	if c.tp == nil {
		c.tp = otel.GetTracerProvider()
	}
	if c.mp == nil {
		c.mp = otel.GetMeterProvider()
	}
	if c.prop == nil {
		c.prop = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	}
	i := &Instrumentation{tracer: c.tp.Tracer(ScopeName), prop: c.prop}
	m := c.mp.Meter(ScopeName)
	var errs []error
	counter := func(name, unit, desc string) metric.Int64Counter {
		x, err := m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return x
	}
	updown := func(name, unit, desc string) metric.Int64UpDownCounter {
		x, err := m.Int64UpDownCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return x
	}
	histogram := func(name, desc string) metric.Float64Histogram {
		x, err := m.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(DurationBuckets...))
		errs = append(errs, err)
		return x
	}
	i.calls = counter("beacon.client.calls", "{call}", "Calls finished.")
	i.callErrors = counter("beacon.client.errors", "{call}", "Calls finished with a status other than OK.")
	i.callDuration = histogram("beacon.client.call.duration", "Duration of calls, retries and backoff included.")
	i.callsInFlight = updown("beacon.client.calls.in_flight", "{call}", "Calls under way.")
	i.attempts = counter("beacon.client.attempts", "{attempt}", "Attempts finished.")
	i.retries = counter("beacon.client.retries", "{attempt}", "Attempts after the first of their call.")
	i.attemptDuration = histogram("beacon.client.attempt.duration", "Duration of attempts.")
	i.requests = counter("beacon.server.requests", "{request}", "Requests handled.")
	i.requestErrors = counter("beacon.server.errors", "{request}", "Requests answered with a status other than OK.")
	i.requestDuration = histogram("beacon.server.request.duration", "Duration of request handling.")
	i.requestsInFlight = updown("beacon.server.requests.in_flight", "{request}", "Requests being handled.")
	i.ejections = counter("beacon.selector.ejections", "{ejection}", "Nodes ejected by the selector.")
	i.ejected = updown("beacon.selector.ejected", "{node}", "Nodes ejected now.")
	i.registryEvents = counter("beacon.registry.events", "{event}", "Registry events applied to the cache.")
	i.registryErrors = counter("beacon.registry.errors", "{error}", "Registry fetches and watches that failed.")
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return i, nil
}

// ClientOptions returns the client options that install the call and the
// attempt interceptors (put them first among the client's options that add
// interceptors, so that they are outermost).
func (i *Instrumentation) ClientOptions() []client.Option {
	return []client.Option{client.WithInterceptors(i.ClientInterceptor()), client.WithAttemptInterceptors(i.AttemptInterceptor())}
}

// SelectorOptions returns the selector options that count ejections
// (selector.OnEject) and, through the cache the selector creates, registry
// events and failures (see CacheOptions).
func (i *Instrumentation) SelectorOptions() []selector.Option {
	return []selector.Option{selector.OnEject(i.onEject), selector.WithCacheOptions(i.CacheOptions()...)}
}

// CacheOptions returns the cache options that count registry events and
// failures (cache.OnEvent, cache.OnError), for a cache made apart (a
// selector given one with selector.WithCache does not pass it options).
func (i *Instrumentation) CacheOptions() []cache.Option {
	return []cache.Option{cache.OnEvent(i.onEvent), cache.OnError(i.onError)}
}

// ClientInterceptor returns the call interceptor: a span of kind internal
// per call, and the call metrics.
func (i *Instrumentation) ClientInterceptor() client.Interceptor {
	return func(ctx context.Context, c *client.CallInfo, next client.Invoker) error {
		r := i.routes.get(c.Service, c.Endpoint, "")
		start := time.Now()
		ctx, span := i.tracer.Start(ctx, r.name, r.internal...)
		i.callsInFlight.Add(ctx, 1, r.plain...)
		err := next(ctx, c)
		i.callsInFlight.Add(ctx, -1, r.plain...)
		code := status.Code(err)
		o := r.code(code)
		i.calls.Add(ctx, 1, o.add...)
		if err != nil {
			i.callErrors.Add(ctx, 1, o.add...)
		}
		i.callDuration.Record(ctx, time.Since(start).Seconds(), o.rec...)
		end(span, o, code, err)
		return err
	}
}

// AttemptInterceptor returns the attempt interceptor: a span of kind client
// per attempt, the trace context sent in the attempt's request metadata,
// and the attempt metrics.
//
// The trace context is added to a copy of the request metadata. When the
// result would be over the limits of package metadata, the attempt goes
// without it rather than fail.
func (i *Instrumentation) AttemptInterceptor() client.AttemptInterceptor {
	return func(ctx context.Context, a *client.Attempt, next client.AttemptInvoker) error {
		r := i.routes.get(a.Service, a.Endpoint, a.Protocol)
		start := time.Now()
		ctx, span := i.tracer.Start(ctx, r.name, r.client...)
		i.inject(ctx, a.Request)
		if a.Number > 1 {
			i.retries.Add(ctx, 1, r.plain...)
		}
		err := next(ctx, a)
		code, op := attemptCode(err)
		o := r.code(code)
		i.attempts.Add(ctx, 1, o.add...)
		i.attemptDuration.Record(ctx, time.Since(start).Seconds(), o.rec...)
		if span.IsRecording() {
			// One SetAttributes: each grows the span's attributes.
			attrs := make([]attribute.KeyValue, 0, 6)
			attrs = append(attrs, KeyStatusCode.Int(code), KeyAttempt.Int(a.Number))
			if a.Node != nil {
				attrs = append(attrs, KeyNodeID.String(a.Node.ID))
			}
			if host, port, err := net.SplitHostPort(a.Address); err == nil {
				attrs = append(attrs, KeyServerAddress.String(host))
				if p, err := strconv.Atoi(port); err == nil {
					attrs = append(attrs, KeyServerPort.Int(p))
				}
			} else {
				attrs = append(attrs, KeyServerAddress.String(a.Address))
			}
			if op != "" {
				attrs = append(attrs, KeyTransportError.String(op))
			}
			span.SetAttributes(attrs...)
			setStatus(span, code, err)
		}
		span.End()
		return err
	}
}

// ServerInterceptor returns the server interceptor: the caller's trace
// context taken from the request metadata, a span of kind server per
// request (in the handler's context), and the request metrics.
func (i *Instrumentation) ServerInterceptor() server.Interceptor {
	return func(ctx context.Context, req any, info *server.HandlerInfo, next server.HandlerFunc) (any, error) {
		r := i.routes.get(info.Service, info.Endpoint, info.Protocol)
		start := time.Now()
		if md, ok := metadata.FromIncomingContext(ctx); ok {
			ctx = i.prop.Extract(ctx, carrier(md))
		}
		ctx, span := i.tracer.Start(ctx, r.name, r.server...)
		i.requestsInFlight.Add(ctx, 1, r.plain...)
		// The deferred part runs when the handler panics too (the server
		// recovers the panic into status 500).
		var rsp any
		var err error
		panicked := true
		defer func() {
			i.requestsInFlight.Add(ctx, -1, r.plain...)
			code := serverCode(ctx, err)
			if panicked {
				code, err = status.InternalError, errPanic
			}
			o := r.code(code)
			i.requests.Add(ctx, 1, o.add...)
			if code != status.OK {
				i.requestErrors.Add(ctx, 1, o.add...)
			}
			i.requestDuration.Record(ctx, time.Since(start).Seconds(), o.rec...)
			if span.IsRecording() {
				attrs := make([]attribute.KeyValue, 0, 4)
				attrs = append(attrs, KeyStatusCode.Int(code))
				if info.Node != "" {
					attrs = append(attrs, KeyNodeID.String(info.Node))
				}
				if ta, ok := info.Remote.(*net.TCPAddr); ok {
					attrs = append(attrs, KeyPeerAddress.String(ta.IP.String()), KeyPeerPort.Int(ta.Port))
				} else if info.Remote != nil {
					attrs = append(attrs, KeyPeerAddress.String(info.Remote.String()))
				}
				span.SetAttributes(attrs...)
				setStatus(span, code, err)
			}
			span.End()
		}()
		rsp, err = next(ctx, req)
		panicked = false
		return rsp, err
	}
}

var errPanic = errors.New("handler panicked")

// end sets the span's status code (o's attribute) and status, and ends it.
func end(span trace.Span, o *opts, code int, err error) {
	if span.IsRecording() {
		span.SetAttributes(o.span...)
		setStatus(span, code, err)
	}
	span.End()
}

// setStatus sets the span's status Error for a code other than OK.
func setStatus(span trace.Span, code int, err error) {
	if code != status.OK {
		desc := ""
		if err != nil {
			desc = err.Error()
		}
		span.SetStatus(codes.Error, desc)
	}
}

// attemptCode is the status code of an attempt's outcome, as the client
// reports failures without an answer, and the failed step of those.
func attemptCode(err error) (int, string) {
	if err == nil {
		return status.OK, ""
	}
	var te *transport.Error
	switch {
	case errors.As(err, &te):
		if te.Op == "timeout" {
			return status.Timeout, te.Op
		}
		return status.Unavailable, te.Op
	case errors.Is(err, context.DeadlineExceeded):
		return status.Timeout, ""
	case errors.Is(err, context.Canceled):
		return status.Canceled, ""
	}
	return status.Code(err), ""
}

// serverCode is the status code the server answers err with.
func serverCode(ctx context.Context, err error) int {
	if err == nil {
		return status.OK
	}
	var se *status.Error
	switch {
	case errors.As(err, &se):
		return se.Code
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded):
		return status.Timeout
	case errors.Is(err, context.Canceled):
		return status.Canceled
	}
	return status.Code(err)
}

// inject adds the trace context of ctx to a copy of req's metadata.
func (i *Instrumentation) inject(ctx context.Context, req *transport.Request) {
	if !trace.SpanContextFromContext(ctx).IsValid() && baggage.FromContext(ctx).Len() == 0 {
		return // nothing to send (a no-op tracer without a parent)
	}
	md := make(metadata.MD, len(req.Metadata)+2)
	maps.Copy(md, req.Metadata)
	i.prop.Inject(ctx, carrier(md))
	if len(md) > metadata.MaxEntries || md.Size() > metadata.MaxSize {
		return
	}
	req.Metadata = md
}

// carrier is call metadata as a propagation.TextMapCarrier.
type carrier metadata.MD

func (c carrier) Get(key string) string { return metadata.MD(c).Get(key) }

func (c carrier) Set(key, value string) {
	k := strings.ToLower(key)
	if metadata.CheckKey(k) == nil && metadata.CheckValue(k, value) == nil {
		c[k] = value
	}
}

func (c carrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// The selector's and the cache's hooks.

func (i *Instrumentation) onEject(service string, _ *registry.Node, ejected bool) {
	o := i.service.get(service, "", "").plain
	ctx := context.Background()
	if ejected {
		i.ejections.Add(ctx, 1, o...)
		i.ejected.Add(ctx, 1, o...)
	} else {
		i.ejected.Add(ctx, -1, o...)
	}
}

func (i *Instrumentation) onEvent(service string, t registry.EventType) {
	r := i.service.get(service, "", "")
	i.registryEvents.Add(context.Background(), 1, r.event(t)...)
}

func (i *Instrumentation) onError(service, op string, _ error) {
	r := i.service.get(service, "", "")
	i.registryErrors.Add(context.Background(), 1, r.op(op)...)
}

// maxRoutes bounds the attribute sets kept: past it (endpoints named from
// unbounded input), sets are built per call.
const maxRoutes = 4096

type routeKey struct{ service, endpoint, protocol string }

// routes are the spans' names and the metrics' attribute sets, built once
// per key. Reads take no lock.
type routes struct {
	m  atomic.Pointer[map[routeKey]*route]
	mu sync.Mutex
}

func (rs *routes) get(service, endpoint, protocol string) *route {
	k := routeKey{service, endpoint, protocol}
	if m := rs.m.Load(); m != nil {
		if r, ok := (*m)[k]; ok {
			return r
		}
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	var old map[routeKey]*route
	if m := rs.m.Load(); m != nil {
		old = *m
	}
	if r, ok := old[k]; ok {
		return r
	}
	r := newRoute(k)
	if len(old) < maxRoutes {
		m := make(map[routeKey]*route, len(old)+1)
		maps.Copy(m, old)
		m[k] = r
		rs.m.Store(&m)
	}
	return r
}

// route is what the instruments need of one service, endpoint and protocol.
type route struct {
	name  string               // the spans' name
	base  []attribute.KeyValue // the metrics' attributes without a status code
	plain []metric.AddOption   // base as an option
	codes atomic.Pointer[map[int]*opts]
	mu    sync.Mutex

	// The spans' start options: kind and the attributes known at the start
	// (rpc.system, rpc.service, rpc.method, beacon.protocol), which
	// samplers see.
	internal, client, server []trace.SpanStartOption
}

type opts struct {
	add  []metric.AddOption
	rec  []metric.RecordOption
	span []attribute.KeyValue // the extra attribute alone, for spans
}

func newRoute(k routeKey) *route {
	r := &route{name: k.service}
	base := []attribute.KeyValue{KeySystem.String(System), KeyService.String(k.service)}
	if k.endpoint != "" {
		r.name = k.service + "/" + k.endpoint
		base = append(base, KeyMethod.String(k.endpoint))
	}
	if k.protocol != "" {
		base = append(base, KeyProtocol.String(k.protocol))
	}
	attrs := trace.WithAttributes(base...)
	r.internal = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindInternal), attrs}
	r.client = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient), attrs}
	r.server = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindServer), attrs}
	r.base = base
	r.plain = []metric.AddOption{metric.WithAttributeSet(attribute.NewSet(base...))}
	return r
}

// extra returns the options of the route's attributes plus kv, built once
// per key of the route.
func (r *route) extra(key int, kv attribute.KeyValue) *opts {
	if m := r.codes.Load(); m != nil {
		if o, ok := (*m)[key]; ok {
			return o
		}
	}
	attrs := append(r.base[:len(r.base):len(r.base)], kv)
	set := metric.WithAttributeSet(attribute.NewSet(attrs...))
	o := &opts{add: []metric.AddOption{set}, rec: []metric.RecordOption{set}, span: []attribute.KeyValue{kv}}
	r.mu.Lock()
	defer r.mu.Unlock()
	var old map[int]*opts
	if m := r.codes.Load(); m != nil {
		old = *m
	}
	if prev, ok := old[key]; ok {
		return prev
	}
	if len(old) < 256 {
		m := make(map[int]*opts, len(old)+1)
		maps.Copy(m, old)
		m[key] = o
		r.codes.Store(&m)
	}
	return o
}

// code returns the options of the route's attributes and a status code.
func (r *route) code(c int) *opts { return r.extra(c, KeyStatusCode.Int(c)) }

// Keys of the registry's attributes in a route's extra map: negative, so
// they do not meet status codes.
const (
	keyCreate = -1 - iota
	keyUpdate
	keyDelete
	keyEventOther
	keyFetch
	keyWatch
	keyOpOther
)

func (r *route) event(t registry.EventType) []metric.AddOption {
	switch t {
	case registry.Create:
		return r.extra(keyCreate, KeyRegistryEvent.String("create")).add
	case registry.Update:
		return r.extra(keyUpdate, KeyRegistryEvent.String("update")).add
	case registry.Delete:
		return r.extra(keyDelete, KeyRegistryEvent.String("delete")).add
	}
	return r.extra(keyEventOther, KeyRegistryEvent.String(t.String())).add
}

func (r *route) op(op string) []metric.AddOption {
	switch op {
	case cache.OpFetch:
		return r.extra(keyFetch, KeyRegistryOp.String(op)).add
	case cache.OpWatch:
		return r.extra(keyWatch, KeyRegistryOp.String(op)).add
	}
	return r.extra(keyOpOther, KeyRegistryOp.String("other")).add
}
