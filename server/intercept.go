package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"sync"
	"time"

	"github.com/beacon-go/beacon/codec"
	"github.com/beacon-go/beacon/metadata"
	"github.com/beacon-go/beacon/status"
	"github.com/beacon-go/beacon/transport"
)

// HandlerInfo describes the request being handled to an interceptor.
type HandlerInfo struct {
	Service  string
	Endpoint string // e.g. "Greeter.Hello"
	Node     string // this server's node ID
	Protocol string // how the request came: "beacon" (the wire), "http", or a transport's name
	Remote   net.Addr
}

// HandlerFunc runs a decoded request and returns the response value to
// encode, or an error (a *status.Error chooses the caller's status code).
type HandlerFunc func(ctx context.Context, req any) (any, error)

// Interceptor wraps every request the server runs, after it decoded the
// request (a body that does not decode, an unknown endpoint, or a request
// refused over the server's bounds never reaches interceptors, as in
// grpc-go). It calls next to run the handler (or not, to refuse: return a
// status.Error, e.g. status.Unauthorized) and may change ctx or req. The
// request metadata is metadata.FromIncomingContext(ctx); response metadata
// is set with SetResponseMetadata. It runs in the request's goroutine;
// a panic in it or the handler is recovered into status 500.
type Interceptor func(ctx context.Context, req any, info *HandlerInfo, next HandlerFunc) (any, error)

// WithInterceptors adds interceptors; the first given is the outermost (it
// sees the request first and the response last).
func WithInterceptors(is ...Interceptor) Option {
	return func(o *options) { o.interceptors = append(o.interceptors, is...) }
}

// ErrNotHandling: SetResponseMetadata was given a context that is not a
// handler's.
var ErrNotHandling = errors.New("server: not a handler's context")

// rspMetaKey finds a request's response metadata holder in its context.
type rspMetaKey struct{}

// reqCtx is a handler's context: the request's context and the response
// metadata the handler sets.
type reqCtx struct {
	context.Context
	respMeta
}

// respMeta holds the response metadata of a request (SetResponseMetadata).
type respMeta struct {
	mu  sync.Mutex
	out metadata.MD
}

func (c *reqCtx) Value(k any) any {
	if _, ok := k.(rspMetaKey); ok {
		return c
	}
	return c.Context.Value(k)
}

// metadata returns the response metadata set so far.
func (r *respMeta) metadata() metadata.MD {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.out
}

// SetResponseMetadata adds md to the response metadata of the request
// whose handler (or interceptor) context ctx is; later values win. It is
// safe for concurrent use. It fails, setting nothing, when the result would
// be over the limits of package metadata, or ctx is not a handler's
// (ErrNotHandling). Metadata set after the handler returned is not sent.
func SetResponseMetadata(ctx context.Context, md metadata.MD) error {
	c, ok := ctx.Value(rspMetaKey{}).(responseMetadata)
	if !ok {
		return ErrNotHandling
	}
	return c.setMetadata(md)
}

// responseMetadata holds a request's response metadata: a *reqCtx, or a
// *stream on the wire.
type responseMetadata interface {
	setMetadata(md metadata.MD) error
}

func (r *respMeta) setMetadata(md metadata.MD) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	next := metadata.Join(r.out, md)
	if err := metadata.Validate(next); err != nil {
		return err
	}
	r.out = next
	return nil
}

// chainHandlers composes interceptors around final.
func chainHandlers(is []Interceptor) func(ctx context.Context, req any, info *HandlerInfo, final HandlerFunc) (any, error) {
	if len(is) == 0 {
		return nil
	}
	return func(ctx context.Context, req any, info *HandlerInfo, final HandlerFunc) (any, error) {
		var step func(i int) HandlerFunc
		step = func(i int) HandlerFunc {
			if i == len(is) {
				return final
			}
			return func(ctx context.Context, req any) (any, error) { return is[i](ctx, req, info, step(i+1)) }
		}
		return step(0)(ctx, req)
	}
}

// run decodes body and calls the handler through the interceptors,
// turning a panic into an error. ctx is the handler's context (a *reqCtx).
func (s *Server) run(ctx context.Context, h *handler, cd codec.Codec, body []byte, proto string, remote net.Addr) (rsp any, err error) {
	defer func() {
		if p := recover(); p != nil {
			s.o.log.Error("server: handler panicked", "endpoint", h.name, "panic", p, "stack", string(debug.Stack()))
			err = status.Newf(status.InternalError, "handler %s panicked", h.name)
		}
	}()
	req, err := h.decode(cd, body)
	if err != nil {
		return nil, err
	}
	if s.intercept == nil {
		return h.call(ctx, req)
	}
	info := &HandlerInfo{Service: s.o.name, Endpoint: h.name, Node: s.o.id, Protocol: proto, Remote: remote}
	return s.intercept(ctx, req, info, h.call)
}

// incoming checks a request's metadata and puts it in ctx.
func incoming(ctx context.Context, md metadata.MD) (context.Context, *status.Error) {
	if len(md) == 0 {
		return ctx, nil
	}
	if err := metadata.Validate(md); err != nil {
		return ctx, status.Newf(status.HeaderTooLarge, "request metadata refused: %v; not run", err)
	}
	return metadata.NewIncomingContext(ctx, md), nil
}

// Handler returns the server's dispatch as a transport.Handler, for a
// transport other than the built-in wire and HTTP to serve the same
// handlers (with the same interceptors, limits and drain). It is valid
// after Start.
func (s *Server) Handler() transport.Handler { return dispatch{s} }

type dispatch struct{ s *Server }

// Serve implements transport.Handler.
func (d dispatch) Serve(ctx context.Context, req *transport.Request, rsp *transport.Response) {
	s := d.s
	refuse := func(code int, detail string) {
		*rsp = transport.Response{Status: code, Detail: detail, NotRun: true, Body: rsp.Body[:0]}
	}
	if s.refusing.Load() {
		refuse(status.Unavailable, "server is going away; not run")
		return
	}
	h, ok := s.handlers[req.Endpoint]
	if !ok {
		refuse(status.NotFound, fmt.Sprintf("unknown endpoint %q", req.Endpoint))
		return
	}
	cd, err := s.o.codecs.Get(req.ContentType)
	if err != nil {
		refuse(status.BadRequest, err.Error())
		return
	}
	if len(req.Body) > s.o.maxMessage {
		refuse(status.TooLarge, fmt.Sprintf("request of %d bytes is larger than the server's limit of %d bytes", len(req.Body), s.o.maxMessage))
		return
	}
	ctx, serr := incoming(ctx, req.Metadata)
	if serr != nil {
		refuse(serr.Code, serr.Detail)
		return
	}
	if s.slots != nil {
		select {
		case s.slots <- struct{}{}:
			defer func() { <-s.slots }()
		default:
			refuse(status.Unavailable, "server overloaded; not run")
			return
		}
	}
	if !s.inflight.enter() {
		refuse(status.Unavailable, "server is going away; not run")
		return
	}
	defer s.inflight.exit()
	var cancel context.CancelFunc
	if !req.Deadline.IsZero() {
		ctx, cancel = context.WithDeadline(ctx, req.Deadline)
	} else {
		ctx, cancel = context.WithCancel(ctx)
	}
	defer cancel()
	stop := context.AfterFunc(s.baseCtx, func() { cancel() })
	defer stop()
	rc := &reqCtx{Context: ctx}
	out, err := s.run(rc, h, cd, req.Body, "transport", nil)
	*rsp = transport.Response{Metadata: rc.metadata(), Body: rsp.Body[:0]}
	if err != nil {
		e := toStatus(ctx, err)
		rsp.Status, rsp.Detail = e.Code, e.Detail
		return
	}
	body, err := cd.Marshal(rsp.Body, out)
	if err != nil {
		rsp.Status, rsp.Detail = status.InternalError, fmt.Sprintf("encode response: %v", err)
		return
	}
	rsp.ContentType, rsp.Body = cd.ContentType(), body
}

// timeoutCtx returns ctx bounded by timeout (0: only a cancel).
func timeoutCtx(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if timeout > 0 {
		return context.WithTimeout(ctx, timeout)
	}
	return context.WithCancel(ctx)
}

// Transport serves the server's handlers with t on the server's listener,
// instead of the built-in wire and HTTP, and publishes protocol as the
// node's registry.MetaProtocol (unless Metadata sets it). Start runs
// t.Serve(listener, s.Handler()); Stop deregisters, waits the drain grace,
// refuses new requests (the Handler answers them "not run"), calls
// t.Shutdown bounded by the shutdown timeout, and waits for requests in
// flight. Interceptors, limits on concurrent requests and message size,
// and metadata checks apply as on the wire.
func Transport(protocol string, t transport.Server) Option {
	return func(o *options) { o.transport, o.transportProto = t, protocol }
}
