package beacongrpc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcmd "google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/beacon-go/beacon/codec"
	"github.com/beacon-go/beacon/metadata"
	"github.com/beacon-go/beacon/status"
	"github.com/beacon-go/beacon/transport"
)

// DefaultConnIdleTimeout: a Caller closes the connection to a node unused
// for this long.
const DefaultConnIdleTimeout = 5 * time.Minute

// ErrClosed: the Caller was closed.
var ErrClosed = errors.New("beacongrpc: caller closed")

// CallerOption configures a Caller.
type CallerOption func(*callerOptions)

type callerOptions struct {
	dial       []grpc.DialOption
	idle       time.Duration
	reflection bool
}

// WithDialOptions adds options to every grpc.ClientConn the Caller makes,
// after its own (insecure transport credentials, its stats handler), e.g.
// grpc.WithTransportCredentials for TLS.
func WithDialOptions(opts ...grpc.DialOption) CallerOption {
	return func(o *callerOptions) { o.dial = append(o.dial, opts...) }
}

// WithConnIdleTimeout sets how long a connection to a node may go unused
// before the Caller closes it (default DefaultConnIdleTimeout).
func WithConnIdleTimeout(d time.Duration) CallerOption {
	return func(o *callerOptions) { o.idle = d }
}

// WithReflection makes the Caller translate JSON requests to protobuf with
// the descriptors of the node's server reflection service
// (grpc.reflection.v1), and protobuf responses back to JSON, so that JSON
// calls work with gRPC servers that serve reflection but do not accept JSON
// (JSONCodec). Descriptors are fetched once per connection and method. A
// node without reflection gets the JSON as it is. The beacon CLI uses it.
func WithReflection() CallerOption { return func(o *callerOptions) { o.reflection = true } }

// Caller is a transport.Caller for gRPC nodes (registry.ProtocolGRPC):
//
//	cl := client.New(selector.New(reg, selector.WithProtocols(registry.ProtocolBeacon, registry.ProtocolGRPC)),
//		client.WithCaller(registry.ProtocolGRPC, beacongrpc.NewCaller()))
//	err := cl.Call(ctx, "greeter", "helloworld.Greeter.SayHello", &pb.HelloRequest{Name: "Ann"}, rsp)
//
// Connections: one grpc.ClientConn per node address (target
// "passthrough:///<address>", so the address is dialled as it is, never
// resolved by gRPC), made on the first call to the node, closed when unused
// for the idle timeout and on Close.
//
// Endpoints: a Beacon endpoint "pkg.Service.Method" is the gRPC full method
// "/pkg.Service/Method" (the last dot separates the method: the names
// Server publishes); an endpoint that starts with "/" is a full method used
// as it is. A short name ("Greeter.SayHello" for a service in a package)
// that the node does not know is resolved with the node's server
// reflection, when it serves it, to the one service whose name ends with
// ".Greeter" (cached per connection); otherwise the call fails with status
// 404, not run.
//
// Bodies: the body the client encoded is sent as it is, with the gRPC
// content-subtype of its codec: "proto" for application/protobuf (any gRPC
// server), "json" for application/json (the server must register
// JSONCodec, or the Caller WithReflection translates); another content
// type is status 400, not run. The response's bytes come back for the
// client to decode with the same codec.
//
// Metadata travels both ways: the call's metadata as gRPC request metadata;
// the response's headers and trailers (without content-type and binary
// "-bin" keys; dropped whole when over the limits of package metadata) as
// the response metadata. The attempt's deadline is the RPC's.
//
// Errors: a failure before the RPC reached the node (the connection could
// not be made, the node refused the stream: gRPC's Unavailable without an
// answer of the server, including after its transparent retry) is a
// *transport.Error with NotRun, so the client retries it on another node
// whatever the call; a connection lost after the request was sent is a
// *transport.Error that may have run; the node's answer with an error
// status is a response with the status of HTTPStatus(code) and the message
// as detail (the server's own "unknown service/method" is 404, not run).
//
// Ping (transport.Pinger) is the standard health check (service "") and
// Connecting (transport.DialState) reports a connection still being made.
type Caller struct {
	o      callerOptions
	dial   []grpc.DialOption
	mu     sync.Mutex
	conns  map[string]*conn
	closed bool
	stop   chan struct{}
	swept  chan struct{} // the sweeper's end; nil when not started
}

var (
	_ transport.Caller    = (*Caller)(nil)
	_ transport.Pinger    = (*Caller)(nil)
	_ transport.DialState = (*Caller)(nil)
)

// conn is the connection to one node.
type conn struct {
	cc     *grpc.ClientConn
	active int       // calls using it; under Caller.mu
	last   time.Time // when a call last released it; under Caller.mu
	refl   reflCache
}

// NewCaller returns a Caller.
func NewCaller(opts ...CallerOption) *Caller {
	o := callerOptions{idle: DefaultConnIdleTimeout}
	for _, f := range opts {
		f(&o)
	}
	dial := append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(tracking{}),
	}, o.dial...)
	return &Caller{o: o, dial: dial, conns: map[string]*conn{}, stop: make(chan struct{})}
}

// get returns the connection to addr, made if need be, marked in use.
func (c *Caller) get(addr string) (*conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, &transport.Error{Addr: addr, Op: "dial", NotRun: true, Err: ErrClosed}
	}
	cn, ok := c.conns[addr]
	if !ok {
		cc, err := grpc.NewClient("passthrough:///"+addr, c.dial...)
		if err != nil {
			return nil, &transport.Error{Addr: addr, Op: "dial", NotRun: true, Err: err}
		}
		cn = &conn{cc: cc}
		c.conns[addr] = cn
		if c.swept == nil && c.o.idle > 0 {
			c.swept = make(chan struct{})
			go c.sweep()
		}
	}
	cn.active++
	return cn, nil
}

func (c *Caller) put(cn *conn) {
	c.mu.Lock()
	cn.active--
	cn.last = time.Now()
	c.mu.Unlock()
}

// sweep closes connections unused for the idle timeout.
func (c *Caller) sweep() {
	defer close(c.swept)
	t := time.NewTicker(max(c.o.idle/2, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case now := <-t.C:
			var idle []*conn
			c.mu.Lock()
			for addr, cn := range c.conns {
				if cn.active == 0 && now.Sub(cn.last) >= c.o.idle {
					delete(c.conns, addr)
					idle = append(idle, cn)
				}
			}
			c.mu.Unlock()
			for _, cn := range idle {
				cn.cc.Close()
			}
		}
	}
}

// Conns returns the number of open connections (for tests and metrics).
func (c *Caller) Conns() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.conns)
}

// Close closes every connection; calls in flight fail. It is idempotent.
func (c *Caller) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	conns := c.conns
	c.conns = map[string]*conn{}
	close(c.stop)
	swept := c.swept
	c.mu.Unlock()
	if swept != nil {
		<-swept
	}
	var errs []error
	for _, cn := range conns {
		errs = append(errs, cn.cc.Close())
	}
	return errors.Join(errs...)
}

// Connecting implements transport.DialState: the connection to addr is
// being made.
func (c *Caller) Connecting(addr string) bool {
	c.mu.Lock()
	cn := c.conns[addr]
	c.mu.Unlock()
	return cn != nil && cn.cc.GetState() == connectivity.Connecting
}

// ErrNotServing: the node's health service says it is not serving.
var ErrNotServing = errors.New("beacongrpc: node not serving")

// Ping implements transport.Pinger with the standard health check of the
// server as a whole (service ""): nil when it answers SERVING, or does not
// serve the health service (it answered); ErrNotServing otherwise. A
// connection waiting to reconnect is retried at once.
func (c *Caller) Ping(ctx context.Context, addr string) error {
	cn, err := c.get(addr)
	if err != nil {
		return err
	}
	defer c.put(cn)
	if cn.cc.GetState() == connectivity.TransientFailure {
		cn.cc.ResetConnectBackoff()
	}
	rsp, err := healthpb.NewHealthClient(cn.cc).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	switch {
	case grpcstatus.Code(err) == codes.Unimplemented:
		return nil
	case err != nil:
		return &transport.Error{Addr: addr, Op: "dial", NotRun: true, Err: err}
	case rsp.GetStatus() != healthpb.HealthCheckResponse_SERVING:
		return fmt.Errorf("%w: %s", ErrNotServing, rsp.GetStatus())
	}
	return nil
}

// FullMethod returns the gRPC full method of a Beacon endpoint:
// "pkg.Service.Method" is "/pkg.Service/Method"; an endpoint that starts
// with "/" is returned as it is. It reports false for a name without a dot.
func FullMethod(endpoint string) (string, bool) {
	if strings.HasPrefix(endpoint, "/") {
		return endpoint, strings.Count(endpoint, "/") == 2 && !strings.HasSuffix(endpoint, "/")
	}
	i := strings.LastIndexByte(endpoint, '.')
	if i <= 0 || i == len(endpoint)-1 {
		return "", false
	}
	return "/" + endpoint[:i] + "/" + endpoint[i+1:], true
}

// Call implements transport.Caller.
func (c *Caller) Call(ctx context.Context, addr string, req *transport.Request, rsp *transport.Response) error {
	method, ok := FullMethod(req.Endpoint)
	if !ok {
		*rsp = transport.Response{Status: status.NotFound, NotRun: true, Body: rsp.Body[:0],
			Detail: fmt.Sprintf("endpoint %q is not a gRPC method: gRPC endpoints are named package.Service.Method (e.g. helloworld.Greeter.SayHello)", req.Endpoint)}
		return nil
	}
	sub, ok := subtypes[req.ContentType]
	if !ok {
		*rsp = transport.Response{Status: status.BadRequest, NotRun: true, Body: rsp.Body[:0],
			Detail: fmt.Sprintf("content type %q has no gRPC codec (%s or %s)", req.ContentType, codec.ProtoContentType, codec.JSONContentType)}
		return nil
	}
	cn, err := c.get(addr)
	if err != nil {
		return err
	}
	defer c.put(cn)
	if c.o.reflection && sub == rawJSON {
		if done, err := c.callTranslated(ctx, cn, addr, method, req, rsp); done {
			return err
		}
	}
	err = c.invoke(ctx, cn, addr, method, sub, req, req.Body, rsp)
	if err == nil && rsp.Status == status.NotFound && rsp.NotRun && strings.HasPrefix(rsp.Detail, "unknown service ") && !strings.HasPrefix(req.Endpoint, "/") {
		// A short name: the server ran nothing. Ask its reflection.
		if full, ok := cn.refl.resolve(ctx, cn.cc, method); ok {
			err = c.invoke(ctx, cn, addr, full, sub, req, req.Body, rsp)
		} else {
			rsp.Detail += fmt.Sprintf(" (endpoint %q: gRPC endpoints are named package.Service.Method; a short name needs the node to serve reflection)", req.Endpoint)
		}
	}
	return err
}

// invoke makes the RPC with body and fills rsp, or returns a
// *transport.Error or ctx's error.
func (c *Caller) invoke(ctx context.Context, cn *conn, addr, method string, sub rawCodec, req *transport.Request, body []byte, rsp *transport.Response) error {
	parent := ctx
	var cancel context.CancelFunc
	if !req.Deadline.IsZero() {
		ctx, cancel = context.WithDeadline(ctx, req.Deadline)
	} else {
		ctx, cancel = context.WithCancel(ctx)
	}
	defer cancel()
	if len(req.Metadata) > 0 {
		md := make(grpcmd.MD, len(req.Metadata))
		for k, v := range req.Metadata {
			md[k] = []string{v}
		}
		ctx = grpcmd.NewOutgoingContext(ctx, md)
	}
	tr := new(tracker)
	ctx = context.WithValue(ctx, trackerKey{}, tr)
	var hdr, trl grpcmd.MD
	out := rawBody{b: rsp.Body[:0]}
	err := cn.cc.Invoke(ctx, method, &rawBody{b: body}, &out, grpc.ForceCodecV2(sub), grpc.Header(&hdr), grpc.Trailer(&trl))
	*rsp = transport.Response{Body: out.b[:0]}
	if err == nil {
		rsp.Body, rsp.ContentType, rsp.Metadata = out.b, req.ContentType, responseMetadata(hdr, trl)
		return nil
	}
	st := grpcstatus.Convert(err)
	sent := tr.sent.Load()
	if tr.answered.Load() {
		// The server's answer: an error status.
		if st.Code() == codes.DeadlineExceeded && !req.Deadline.IsZero() && !time.Now().Before(req.Deadline) {
			return &transport.Error{Addr: addr, Op: "timeout", Err: fmt.Errorf("%w: %s", context.DeadlineExceeded, st.Message())}
		}
		rsp.Status, rsp.Detail, rsp.Metadata = HTTPStatus(st.Code()), st.Message(), responseMetadata(hdr, trl)
		rsp.NotRun = st.Code() == codes.Unimplemented && (strings.HasPrefix(st.Message(), "unknown service ") ||
			strings.HasPrefix(st.Message(), "unknown method ") || strings.HasPrefix(st.Message(), "malformed method name"))
		if rsp.NotRun {
			rsp.Status = status.NotFound
		}
		return nil
	}
	// No answer from the server.
	if perr := parent.Err(); perr != nil {
		return perr
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	switch {
	case closed:
		return &transport.Error{Addr: addr, Op: "read", NotRun: !sent, Err: ErrClosed}
	case st.Code() == codes.DeadlineExceeded:
		return &transport.Error{Addr: addr, Op: "timeout", NotRun: !sent, Err: fmt.Errorf("%w: %s", context.DeadlineExceeded, st.Message())}
	case !sent && st.Code() == codes.Unavailable:
		return &transport.Error{Addr: addr, Op: "dial", NotRun: true, Err: st.Err()}
	case !sent:
		// Refused on this side before anything was sent (a request larger
		// than allowed, ...): the same anywhere, so an answer, not run.
		rsp.Status, rsp.Detail, rsp.NotRun = HTTPStatus(st.Code()), st.Message(), true
		if st.Code() == codes.ResourceExhausted {
			rsp.Status = status.TooLarge
		}
		return nil
	default:
		return &transport.Error{Addr: addr, Op: "read", Err: st.Err()}
	}
}

// HTTPStatus maps a gRPC status code to Beacon's HTTP-like status codes:
// OK 0, InvalidArgument, FailedPrecondition and OutOfRange 400,
// Unauthenticated 401, PermissionDenied 403, NotFound 404, DeadlineExceeded
// 408, AlreadyExists and Aborted 409, ResourceExhausted 429, Canceled 499,
// Unknown, Internal and DataLoss 500, Unimplemented 501, Unavailable 503.
func HTTPStatus(c codes.Code) int {
	switch c {
	case codes.OK:
		return status.OK
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange:
		return status.BadRequest
	case codes.Unauthenticated:
		return status.Unauthorized
	case codes.PermissionDenied:
		return status.Forbidden
	case codes.NotFound:
		return status.NotFound
	case codes.DeadlineExceeded:
		return status.Timeout
	case codes.AlreadyExists, codes.Aborted:
		return 409
	case codes.ResourceExhausted:
		return 429
	case codes.Canceled:
		return status.Canceled
	case codes.Unimplemented:
		return 501
	case codes.Unavailable:
		return status.Unavailable
	default: // Unknown, Internal, DataLoss, and codes beyond
		return status.InternalError
	}
}

// responseMetadata is the response's headers and trailers as Beacon
// metadata: without content-type and binary keys, values of one key
// joined with ","; nil when empty or over the limits of package metadata.
func responseMetadata(hdr, trl grpcmd.MD) metadata.MD {
	if len(hdr)+len(trl) == 0 {
		return nil
	}
	var md metadata.MD
	for _, m := range []grpcmd.MD{hdr, trl} {
		for k, vs := range m {
			if k == "content-type" || strings.HasSuffix(k, "-bin") || len(vs) == 0 {
				continue
			}
			if md == nil {
				md = metadata.MD{}
			}
			md[k] = strings.Join(vs, ",")
		}
	}
	if metadata.Validate(md) != nil {
		return nil
	}
	return md
}

// tracker follows one call's attempts through gRPC's stats events: whether
// the last attempt's request headers left (sent) and whether the server
// answered with a status (answered).
type tracker struct{ sent, answered atomic.Bool }

type trackerKey struct{}

// tracking is the stats.Handler of the Caller's connections.
type tracking struct{}

func (tracking) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (tracking) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (tracking) HandleConn(context.Context, stats.ConnStats) {}
func (tracking) HandleRPC(ctx context.Context, s stats.RPCStats) {
	tr, _ := ctx.Value(trackerKey{}).(*tracker)
	if tr == nil {
		return
	}
	switch s.(type) {
	case *stats.Begin: // an attempt, the first or a transparent retry
		tr.sent.Store(false)
		tr.answered.Store(false)
	case *stats.OutHeader:
		tr.sent.Store(true)
	case *stats.InTrailer:
		tr.answered.Store(true)
	}
}
