package client

import (
	"context"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/transport"
)

// CallInfo describes one call to a call interceptor.
type CallInfo struct {
	Service  string
	Endpoint string
	// Request and Response are Call's req and rsp: Response is filled when
	// next returns nil.
	Request, Response any
	// Options are the call's options, after the client's defaults and the
	// CallOptions given to Call; an interceptor may change them before
	// calling next (e.g. set Idempotent, or RequestTimeout).
	Options CallOptions
}

// Invoker runs a call: selection, attempts and retries.
type Invoker func(ctx context.Context, call *CallInfo) error

// Interceptor wraps every call once, above the retry loop: one Call is seen
// once whatever its attempts (see AttemptInterceptor for those). It calls
// next to proceed (or not, to answer itself) and may change ctx (e.g. add
// outgoing metadata). The error it returns is Call's.
type Interceptor func(ctx context.Context, call *CallInfo, next Invoker) error

// Attempt describes one attempt of a call to an attempt interceptor.
type Attempt struct {
	Service  string
	Endpoint string
	Number   int            // 1 for the first attempt
	Node     *registry.Node // nil when called by address (WithAddress)
	Address  string
	Protocol string // the node's protocol (registry.MetaProtocol)
	// Request is what is sent: its Metadata is the call's outgoing
	// metadata (shared: replace it with a copy to add entries, e.g. a
	// trace context per attempt). Response is filled when next returns nil
	// or a handler's error.
	Request  *transport.Request
	Response *transport.Response
	caller   transport.Caller
}

// AttemptInvoker sends one attempt. Its error is nil on an OK answer, a
// *status.Error carrying a handler's error status, or a *TransportError
// (or ctx's error) when no answer came.
type AttemptInvoker func(ctx context.Context, a *Attempt) error

// AttemptInterceptor wraps every attempt, below the retry loop: a call
// retried on another node is seen once per node tried. Hedged attempts run
// concurrently, each through the chain.
type AttemptInterceptor func(ctx context.Context, a *Attempt, next AttemptInvoker) error

// WithInterceptors adds call interceptors; the first given is the outermost
// (it sees the call first and its result last). They run in the caller's
// goroutine.
func WithInterceptors(is ...Interceptor) Option {
	return func(o *options) { o.interceptors = append(o.interceptors, is...) }
}

// WithAttemptInterceptors adds attempt interceptors; the first given is the
// outermost.
func WithAttemptInterceptors(is ...AttemptInterceptor) Option {
	return func(o *options) { o.attemptInterceptors = append(o.attemptInterceptors, is...) }
}

// chainCalls composes interceptors around final.
func chainCalls(is []Interceptor, final Invoker) Invoker {
	next := final
	for i := len(is) - 1; i >= 0; i-- {
		in, n := is[i], next
		next = func(ctx context.Context, c *CallInfo) error { return in(ctx, c, n) }
	}
	return next
}

// chainAttempts composes attempt interceptors around final.
func chainAttempts(is []AttemptInterceptor, final AttemptInvoker) AttemptInvoker {
	next := final
	for i := len(is) - 1; i >= 0; i-- {
		in, n := is[i], next
		next = func(ctx context.Context, a *Attempt) error { return in(ctx, a, n) }
	}
	return next
}
