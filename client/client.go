// Package client calls services by name.
//
// Call selects a node per attempt through a selector (by default the cached
// selector over a registry), sends the request over a pooled, multiplexed
// TCP connection (see internal/wire) and waits for the response. The
// attempt's deadline (the smaller of ctx's and the request timeout) travels
// to the server, whose handler context carries it; when the caller gives up
// (ctx canceled, deadline passed) the client tells the server, which cancels
// the handler's context.
//
// Every wait ends with ctx or the attempt's deadline: selection, the dial
// (shared by the callers of a node and bounded by the dial timeout; a node
// whose connects hang is avoided while others are ready), the wait for a
// free stream, the write (a peer that stops reading holds no caller), the
// response, and the backoff between attempts.
//
// Retries: an attempt is retried on a different node, after a jittered,
// context-aware backoff, only when the request provably did not run: the
// dial failed, nothing of the request left whole, or the node refused it
// without running it (draining, over its concurrency bounds). A failure
// after which the request may have run (a timeout, a connection broken after
// sending) and a handler's own status 503 are retried only when the call is
// idempotent: WithIdempotent, or an endpoint the node publishes as
// idempotent (server.Idempotent). Every other handler error is returned as
// it is. The error Call returns is a *status.Error whose Causes keep every
// attempt's error (a *TransportError says which case happened); read it
// with errors.As, and errors.Is(err, ErrNotRun) for "provably not run".
//
// Limits: a request larger than the node advertises is refused before it is
// sent (status 413); a response larger than MaxMessageSize fails its call
// alone. Each connection carries at most as many requests as the node
// advertises; past that the client opens another connection (up to
// MaxConnsPerNode) rather than queue or be refused.
//
// With TLS (client.TLS) each connection does a TLS handshake after the
// dial, within the dial timeout, and nodes are picked by whether they
// advertise TLS (registry.MetaTLS); see TLS.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/beacon-go/beacon/codec"
	"github.com/beacon-go/beacon/internal/backoff"
	"github.com/beacon-go/beacon/internal/wire"
	"github.com/beacon-go/beacon/metadata"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/status"
	"github.com/beacon-go/beacon/transport"
)

// Defaults, the one place they are defined; flags and docs read them here.
const (
	DefaultRetries        = 2
	DefaultRequestTimeout = 5 * time.Second
	DefaultDialTimeout    = 2 * time.Second
	DefaultBackoffBase    = 10 * time.Millisecond
	DefaultBackoffMax     = 500 * time.Millisecond
	DefaultConnsPerNode   = 2
	// DefaultMaxConnsPerNode caps the connections to one node, opened past
	// ConnsPerNode only when every connection is at the node's advertised
	// limit of requests in flight.
	DefaultMaxConnsPerNode = 16
	DefaultMaxMessageSize  = wire.DefaultMaxFrame
	// DefaultWriteStall bounds a write that makes no progress when no call
	// deadline does (a cancel frame, a background flush).
	DefaultWriteStall = 10 * time.Second
	// DefaultProbeTimeout bounds the ping that a node's trial after an
	// ejection must answer before a request is sent to it.
	DefaultProbeTimeout = 500 * time.Millisecond
)

// Bounds: a retry count or per-attempt timeout beyond them (or negative) is
// taken as the bound (or 0), in options and per call alike; flags refuse
// them with an error (package cmd).
const (
	MaxRetries        = 100
	MaxRequestTimeout = time.Hour
)

// ErrClosed: the client was closed.
var ErrClosed = errors.New("client: closed")

// ErrProtocol: the service's nodes speak a protocol other than Beacon's
// (their registry.MetaProtocol metadata); nothing was sent.
var ErrProtocol = errors.New("client: node speaks another protocol")

// ErrNoSelector: a call by service name on a client made without a selector.
var ErrNoSelector = errors.New("client: no selector (use WithAddress)")

// Backoff returns how long to wait before retry number attempt (1-based).
type Backoff func(attempt int) time.Duration

// ExponentialBackoff returns full-jitter exponential backoff: a random delay
// up to base*2^(attempt-1), capped at max.
func ExponentialBackoff(base, max time.Duration) Backoff {
	return func(attempt int) time.Duration {
		d := base << min(attempt-1, 20)
		if d <= 0 || d > max {
			d = max
		}
		return rand.N(d) + 1
	}
}

// Option configures a Client.
type Option func(*options)

type options struct {
	call            CallOptions
	dialTimeout     time.Duration
	connsPerNode    int
	maxConnsPerNode int
	maxMessage      int
	writeStall      time.Duration
	dial            DialFunc
	codecs          *codec.Set
	log             *slog.Logger

	interceptors        []Interceptor
	attemptInterceptors []AttemptInterceptor
	callers             map[string]transport.Caller
	tls                 *tlsSetup // nil: no TLS (tls.go)
}

// DialFunc opens a connection to a node, like net.Dialer.DialContext. It
// must return when ctx ends.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// CallOptions are the settings of one call.
type CallOptions struct {
	Retries        int
	RequestTimeout time.Duration // per attempt; 0: only ctx bounds it
	Backoff        Backoff
	SelectOptions  []selector.SelectOption
	Addresses      []string // call these addresses directly, bypassing the selector
	ContentType    string   // "" : protobuf for proto.Message requests, else JSON
	// Idempotent says the call may run more than once: it is then retried
	// on another node after any transport failure, even one after which the
	// request may have run (a timeout, a broken connection), and after a
	// handler's status 503. Without it, only requests that provably did not
	// run are retried, unless the node publishes the endpoint as idempotent
	// (registry.MetaIdempotent in the endpoint's metadata).
	Idempotent bool
	// Hedge, when positive, sends an idempotent call (see Idempotent) to a
	// second node if the first has not answered within it; the first answer
	// wins and the other attempt is canceled. Calls that are not idempotent
	// are never hedged.
	Hedge time.Duration
	// ResponseMetadata, when set, receives the response metadata of the
	// attempt that answered (nil when it sent none), error answers included.
	ResponseMetadata *metadata.MD
}

// CallOption configures one call.
type CallOption func(*CallOptions)

// Retries sets the default number of retries after the first attempt.
func Retries(n int) Option { return func(o *options) { o.call.Retries = n } }

// RequestTimeout sets the default per-attempt timeout.
func RequestTimeout(d time.Duration) Option { return func(o *options) { o.call.RequestTimeout = d } }

// WithDefaultBackoff sets the default backoff between attempts.
func WithDefaultBackoff(b Backoff) Option { return func(o *options) { o.call.Backoff = b } }

// DialTimeout bounds connecting to a node (default DefaultDialTimeout).
func DialTimeout(d time.Duration) Option { return func(o *options) { o.dialTimeout = d } }

// ConnsPerNode sets how many multiplexed connections are opened per node
// when they are busy (default DefaultConnsPerNode).
func ConnsPerNode(n int) Option { return func(o *options) { o.connsPerNode = max(n, 1) } }

// MaxConnsPerNode caps the connections per node (default
// DefaultMaxConnsPerNode); past ConnsPerNode, one more is opened only when
// every connection has as many requests in flight as the node allows. When
// all are full, a call waits for a free slot, until its deadline.
func MaxConnsPerNode(n int) Option { return func(o *options) { o.maxConnsPerNode = max(n, 1) } }

// MaxMessageSize sets the largest response accepted, in bytes (default
// DefaultMaxMessageSize). A larger response fails its call alone with
// status 413; the connection keeps serving.
func MaxMessageSize(n int) Option { return func(o *options) { o.maxMessage = n } }

// Dialer replaces the function that connects to nodes (default: TCP with
// keep-alive). It runs under the dial timeout.
func Dialer(d DialFunc) Option { return func(o *options) { o.dial = d } }

// Codecs sets the codecs by content type (default codec.NewSet()).
func Codecs(s *codec.Set) Option { return func(o *options) { o.codecs = s } }

// Logger sets the logger (default slog.Default()).
func Logger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithCaller makes the client speak protocol (a node's
// registry.MetaProtocol) through c, e.g. a gRPC transport. Beacon's own
// wire ("beacon", and nodes that name no protocol) is built in. The client
// closes c on Close. Nodes of a protocol without a Caller are skipped when
// picked (ErrProtocol when no other node is usable); note that the selector
// offers only nodes of the protocols it was made for
// (selector.WithProtocols).
func WithCaller(protocol string, c transport.Caller) Option {
	return func(o *options) {
		if o.callers == nil {
			o.callers = map[string]transport.Caller{}
		}
		o.callers[protocol] = c
	}
}

// ResponseMetadata stores the response metadata of the call's answering
// attempt in *md.
func ResponseMetadata(md *metadata.MD) CallOption {
	return func(o *CallOptions) { o.ResponseMetadata = md }
}

// WithRetries sets the number of retries of this call.
func WithRetries(n int) CallOption { return func(o *CallOptions) { o.Retries = n } }

// WithRequestTimeout sets this call's per-attempt timeout.
func WithRequestTimeout(d time.Duration) CallOption {
	return func(o *CallOptions) { o.RequestTimeout = d }
}

// WithBackoff sets this call's backoff.
func WithBackoff(b Backoff) CallOption { return func(o *CallOptions) { o.Backoff = b } }

// WithSelectOptions passes options (filters, strategy) to the selector.
func WithSelectOptions(so ...selector.SelectOption) CallOption {
	return func(o *CallOptions) { o.SelectOptions = append(o.SelectOptions, so...) }
}

// WithAddress calls the given addresses directly (retries rotate through
// them) instead of selecting nodes of the service.
func WithAddress(addrs ...string) CallOption {
	return func(o *CallOptions) { o.Addresses = addrs }
}

// WithIdempotent declares that this call may safely run more than once; see
// CallOptions.Idempotent.
func WithIdempotent() CallOption { return func(o *CallOptions) { o.Idempotent = true } }

// WithHedge hedges this call after d; see CallOptions.Hedge.
func WithHedge(d time.Duration) CallOption { return func(o *CallOptions) { o.Hedge = d } }

// WithContentType sets the request's content type (e.g. codec.ProtoContentType).
func WithContentType(ct string) CallOption { return func(o *CallOptions) { o.ContentType = ct } }

// Client calls services. It is safe for concurrent use.
type Client struct {
	sel           selector.Selector
	o             options
	wire          *wireCaller
	invokeCall    Invoker        // the call interceptors around invoke; nil: none
	invokeAttempt AttemptInvoker // the attempt interceptors around send
	closed        atomic.Bool
	states        sync.Pool // *attemptState
}

// attemptState is one attempt's request and response; pooled.
type attemptState struct {
	req transport.Request
	rsp transport.Response
	a   Attempt
}

// New returns a client that finds nodes with sel (which may be nil when
// every call passes WithAddress). The client does not close sel.
func New(sel selector.Selector, opts ...Option) *Client {
	o := options{
		call: CallOptions{
			Retries: DefaultRetries, RequestTimeout: DefaultRequestTimeout,
			Backoff: ExponentialBackoff(DefaultBackoffBase, DefaultBackoffMax),
		},
		dialTimeout: DefaultDialTimeout, connsPerNode: DefaultConnsPerNode, maxConnsPerNode: DefaultMaxConnsPerNode,
		maxMessage: DefaultMaxMessageSize, writeStall: DefaultWriteStall, log: slog.Default(),
	}
	for _, f := range opts {
		f(&o)
	}
	if o.codecs == nil {
		o.codecs = codec.NewSet()
	}
	if o.dial == nil {
		d := &net.Dialer{KeepAlive: 15 * time.Second}
		o.dial = d.DialContext
	}
	o.maxConnsPerNode = max(o.maxConnsPerNode, o.connsPerNode)
	c := &Client{sel: sel, o: o}
	c.wire = newWireCaller(&c.o)
	c.states.New = func() any { return new(attemptState) }
	if len(o.interceptors) > 0 {
		c.invokeCall = chainCalls(o.interceptors, c.invoke)
	}
	c.invokeAttempt = chainAttempts(o.attemptInterceptors, c.send)
	return c
}

// Selector returns the client's selector.
func (c *Client) Selector() selector.Selector { return c.sel }

// Call calls endpoint (e.g. "Greeter.Hello") of service with req and decodes
// the response into rsp. It blocks until a response, the last attempt's
// failure, or ctx's end: every wait (selection, dial, a free stream, the
// write, the response, the backoff) ends with ctx or the attempt's deadline.
// See the package doc for retries. The error is a *status.Error (errors.As);
// errors.Is(err, ErrNotRun) tells that no attempt ran. The outgoing
// metadata of ctx (metadata.NewOutgoingContext) travels with every attempt;
// metadata over the limits of package metadata fails the call before
// anything is sent (status 400).
func (c *Client) Call(ctx context.Context, service, endpoint string, req, rsp any, opts ...CallOption) error {
	if c.closed.Load() {
		return &status.Error{Code: status.Unavailable, Detail: "client closed", Causes: []error{ErrClosed, ErrNotRun}}
	}
	ci := CallInfo{Service: service, Endpoint: endpoint, Request: req, Response: rsp, Options: c.o.call}
	if len(opts) > 0 {
		o := c.o.call // options see a copy of their own, so a call without options keeps ci on the stack
		for _, f := range opts {
			f(&o)
		}
		ci.Options = o
	}
	if c.invokeCall != nil {
		hci := new(CallInfo)
		*hci = ci
		return c.invokeCall(ctx, hci)
	}
	return c.invoke(ctx, &ci)
}

// invoke is a call below the call interceptors: selection, attempts, retries.
func (c *Client) invoke(ctx context.Context, ci *CallInfo) error {
	o := &ci.Options
	service, endpoint, req, rsp := ci.Service, ci.Endpoint, ci.Request, ci.Response
	o.Retries = min(max(o.Retries, 0), MaxRetries)
	o.RequestTimeout = min(max(o.RequestTimeout, 0), MaxRequestTimeout)
	if err := checkEndpoint(endpoint); err != nil {
		return err
	}
	md, _ := metadata.FromOutgoingContext(ctx)
	if len(md) > 0 {
		if err := metadata.Validate(md); err != nil {
			return &status.Error{Code: status.BadRequest, Detail: "request metadata: not sent", Causes: []error{err, ErrNotRun}}
		}
	}
	cd, err := c.o.codecs.For(o.ContentType, req)
	if err != nil {
		return &status.Error{Code: status.BadRequest, Detail: "request codec", Causes: []error{err}}
	}
	if len(cd.ContentType()) > maxContentType {
		return status.Newf(status.BadRequest, "content type of %d bytes: the limit is %d", len(cd.ContentType()), maxContentType)
	}
	buf := c.wire.free.getBuf()
	defer c.wire.free.putBuf(buf)
	body, err := cd.Marshal(*buf, req)
	if err != nil {
		return &status.Error{Code: status.BadRequest, Detail: "encode request", Causes: []error{err}}
	}
	*buf = body

	var next selector.Next
	if len(o.Addresses) == 0 {
		if c.sel == nil {
			return &status.Error{Code: status.BadRequest, Detail: service, Causes: []error{ErrNoSelector}}
		}
		next, err = c.sel.Select(ctx, service, o.SelectOptions...)
		if err != nil {
			code := status.Unavailable
			switch {
			case errors.Is(err, selector.ErrNotFound):
				code = status.NotFound
			case errors.Is(ctx.Err(), context.DeadlineExceeded):
				code = status.Timeout
			case errors.Is(ctx.Err(), context.Canceled):
				code = status.Canceled
			}
			return &status.Error{Code: code, Detail: fmt.Sprintf("select %s", service), Causes: []error{err}}
		}
	}
	call := callData{service: service, endpoint: endpoint, cd: cd, md: md, body: body}

	var tried [8]string
	var causes []error
	attempts := o.Retries + 1
	for attempt := 0; attempt < attempts; attempt++ {
		if attempt > 0 {
			if !backoff.Sleep(ctx, o.Backoff(attempt)) {
				break
			}
		}
		var pk selector.Pick
		var addr string
		if next == nil {
			addr = o.Addresses[attempt%len(o.Addresses)]
		} else {
			pk, err = c.pickUntried(ctx, next, tried[:min(attempt, len(tried))])
			if err != nil {
				causes = append(causes, err)
				break
			}
			addr = pk.Node.Address
			if attempt < len(tried) {
				tried[attempt] = addr
			}
		}
		start := time.Now()
		hedge := o.Hedge > 0 && pk.Node != nil && (o.Idempotent || idempotent(pk.Service, endpoint))
		if hedge {
			hc, ho := call, *o // the hedge's goroutines hold these: copies, so a call without hedging allocates neither
			err = c.hedged(ctx, next, pk, tried[:min(attempt+1, len(tried))], &hc, attempt+1, rsp, &ho)
		} else {
			st := c.states.Get().(*attemptState)
			err = c.attempt(ctx, st, start, &call, attempt+1, pk.Node, addr, o.RequestTimeout)
			if err == nil || st.rsp.Status != status.OK {
				if o.ResponseMetadata != nil {
					*o.ResponseMetadata = st.rsp.Metadata
				}
			}
			if err == nil {
				err = c.decode(cd, st.rsp.ContentType, st.rsp.Body, rsp)
			}
			c.putState(st)
		}
		te := asTransportError(err)
		isTE := te != nil
		if pk.Node != nil && !hedge {
			var failure error
			if isTE {
				failure = err
			}
			switch {
			case !isTE && err != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)):
				// The caller gave up: nothing learnt of the node.
				if pk.Done != nil {
					pk.Done(selector.Outcome{Skipped: true})
				}
			case pk.Done != nil:
				end := time.Now()
				pk.Done(selector.Outcome{Latency: end.Sub(start), Err: failure, At: end})
			default:
				c.sel.Mark(service, pk.Node, failure)
			}
		}
		if err == nil {
			return nil
		}
		if ctxOver(ctx) {
			causes = append(causes, fmt.Errorf("attempt %d: %w", attempt+1, err))
			break
		}
		var retry bool
		switch {
		case isTE && te.NotRun:
			retry = true
		case isTE, status.Code(err) == status.Unavailable:
			// It may have run (a timeout or a broken connection after the
			// request left), or the handler itself answered 503.
			retry = o.Idempotent || idempotent(pk.Service, endpoint)
		}
		if !retry {
			return finalError(service, endpoint, attempt, causes, err)
		}
		causes = append(causes, fmt.Errorf("attempt %d: %w", attempt+1, err))
	}
	code := status.Unavailable
	switch {
	case ctxOver(ctx) && ctx.Err() == nil: // its deadline passed; its timer has yet to fire
		code = status.Timeout
		causes = append(causes, context.DeadlineExceeded)
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		code = status.Timeout
		causes = append(causes, ctx.Err())
	case errors.Is(ctx.Err(), context.Canceled):
		code = status.Canceled
		causes = append(causes, ctx.Err())
	}
	return &status.Error{Code: code, Detail: fmt.Sprintf("call %s %s failed after %d attempt(s)", service, endpoint, len(causes)), Causes: causes}
}

// asTransportError is errors.As(err, &te) for a *TransportError, without
// the allocation of the target errors.As needs.
func asTransportError(err error) *TransportError {
	for err != nil {
		switch x := err.(type) {
		case *TransportError:
			return x
		case interface{ Unwrap() error }:
			err = x.Unwrap()
		case interface{ Unwrap() []error }:
			for _, e := range x.Unwrap() {
				if te := asTransportError(e); te != nil {
					return te
				}
			}
			return nil
		default:
			var te *TransportError
			if errors.As(err, &te) { // an As method
				return te
			}
			return nil
		}
	}
	return nil
}

// ctxOver reports whether ctx is done or its deadline has passed.
func ctxOver(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

// finalError is the error of a call that stops at an attempt that is not
// retried: the handler's answer as it is, or a transport failure after which
// the request may have run.
func finalError(service, endpoint string, attempt int, causes []error, err error) error {
	var te *TransportError
	if errors.As(err, &te) {
		code := status.Unavailable
		if te.Op == "timeout" {
			code = status.Timeout
		}
		detail := fmt.Sprintf("call %s %s: %v; not retried: the request may have run and the call is not idempotent (client.WithIdempotent)", service, endpoint, err)
		return &status.Error{Code: code, Detail: detail, Causes: append(causes, fmt.Errorf("attempt %d: %w", attempt+1, err))}
	}
	if len(causes) == 0 {
		return err
	}
	se := new(status.Error)
	if errors.As(err, &se) {
		return &status.Error{Code: se.Code, Detail: se.Detail, Causes: append(causes, err)}
	}
	return &status.Error{Code: status.InternalError, Detail: err.Error(), Causes: append(causes, err)}
}

// idempotent reports whether the service version a node belongs to
// publishes the endpoint as idempotent (known when the attempt was picked:
// the node may have left the registry since).
func idempotent(svc *registry.Service, endpoint string) bool {
	if svc == nil {
		return false
	}
	for _, ep := range svc.Endpoints {
		if ep != nil && ep.Name == endpoint {
			return ep.Metadata[registry.MetaIdempotent] == "true"
		}
	}
	return false
}

// maxContentType is the longest content type the wire carries.
const maxContentType = 255

// checkEndpoint refuses an endpoint name that no node can publish.
func checkEndpoint(endpoint string) error {
	switch {
	case endpoint == "":
		return status.New(status.BadRequest, "empty endpoint name")
	case len(endpoint) > registry.MaxEndpointNameLen:
		return status.Newf(status.BadRequest, "endpoint name of %d bytes: the limit is %d (registry.MaxEndpointNameLen)", len(endpoint), registry.MaxEndpointNameLen)
	}
	return nil
}

// pickUntried asks next for a node whose address was not tried yet and whose
// connection is not still being set up (a node whose connects hang must not
// hold callers while others are ready); after a few misses (fewer nodes than
// attempts) it accepts a tried or connecting one. A probe pick (an ejected
// node's trial) is used only if the node answers a ping first, so a node
// still hung costs no call. Picks not used are handed back.
func (c *Client) pickUntried(ctx context.Context, next selector.Next, tried []string) (selector.Pick, error) {
	var first, fresh selector.Pick
	var foreign *registry.Node
	var refused error // a node the client's TLS setup does not call (tls.go)
	skip := func(p selector.Pick) {
		if p.Done != nil {
			p.Done(selector.Outcome{Skipped: true})
		}
	}
	defer func() { // hand back the fallbacks not returned
		if first.Node != nil {
			skip(first)
		}
		if fresh.Node != nil {
			skip(fresh)
		}
	}()
	for range max(2*len(tried)+3, 8) {
		p, err := next()
		if err != nil {
			return selector.Pick{}, err
		}
		if c.callerFor(p.Node) == nil {
			// A node of a protocol this client does not speak (go-micro's
			// grpc or mucp under the same name): skipped at once, never
			// dialled.
			if p.Done != nil {
				p.Done(selector.Outcome{Skipped: true})
			}
			foreign = p.Node
			continue
		}
		if err := c.o.tls.admit(p.Node); err != nil && c.callerFor(p.Node) == transport.Caller(c.wire) {
			// TLS rules are the wire's; another Caller brings its own.
			skip(p)
			refused = err
			continue
		}
		if p.Probe {
			if c.alive(ctx, p.Node) {
				return p, nil
			}
			if p.Done != nil {
				p.Done(selector.Outcome{ProbeFailed: true})
			}
			continue
		}
		if slices.Contains(tried, p.Node.Address) {
			if first.Node == nil {
				first = p
			} else {
				skip(p)
			}
			continue
		}
		if ds, ok := c.callerFor(p.Node).(transport.DialState); ok && ds.Connecting(p.Node.Address) {
			if fresh.Node == nil {
				fresh = p
			} else {
				skip(p)
			}
			continue
		}
		return p, nil
	}
	if fresh.Node != nil {
		p := fresh
		fresh = selector.Pick{}
		return p, nil
	}
	if first.Node != nil {
		p := first
		first = selector.Pick{}
		return p, nil
	}
	if refused != nil {
		return selector.Pick{}, refused
	}
	if foreign != nil {
		return selector.Pick{}, fmt.Errorf("%w: node %s at %s speaks %q, and the client has no caller for it (client.WithCaller)", ErrProtocol,
			foreign.ID, foreign.Address, foreign.Metadata[registry.MetaProtocol])
	}
	return selector.Pick{}, selector.ErrNoneAvailable
}

// callerFor returns the Caller for n's protocol, or nil.
func (c *Client) callerFor(n *registry.Node) transport.Caller {
	proto := n.Metadata[registry.MetaProtocol]
	if proto == "" || proto == registry.ProtocolBeacon {
		return c.wire
	}
	return c.o.callers[proto]
}

// alive pings n, within DefaultProbeTimeout and ctx; a node whose Caller
// cannot ping is taken as alive.
func (c *Client) alive(ctx context.Context, n *registry.Node) bool {
	pg, ok := c.callerFor(n).(transport.Pinger)
	if !ok {
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, DefaultProbeTimeout)
	defer cancel()
	return pg.Ping(ctx, n.Address) == nil
}

// callData is what every attempt of one call shares.
type callData struct {
	service, endpoint string
	cd                codec.Codec
	md                metadata.MD
	body              []byte
}

func (c *Client) putState(st *attemptState) {
	body := st.rsp.Body
	if cap(body) > 64<<10 {
		body = nil
	}
	*st = attemptState{}
	st.rsp.Body = body[:0]
	c.states.Put(st)
}

// attempt makes attempt number n of a call to addr (node n, nil when called
// by address) through the attempt interceptors, bounded by ctx and the
// per-attempt timeout. The answer is in st.rsp; a handler's error status is
// returned as a *status.Error, a refusal as a *TransportError.
func (c *Client) attempt(ctx context.Context, st *attemptState, start time.Time, call *callData, n int, node *registry.Node, addr string, timeout time.Duration) error {
	var deadline time.Time
	if timeout > 0 {
		deadline = start.Add(timeout)
	}
	if d, ok := ctx.Deadline(); ok && (deadline.IsZero() || d.Before(deadline)) {
		deadline = d
	}
	st.req = transport.Request{Service: call.service, Endpoint: call.endpoint, ContentType: call.cd.ContentType(), Metadata: call.md, Body: call.body, Deadline: deadline}
	caller := transport.Caller(c.wire)
	proto := registry.ProtocolBeacon
	if node != nil {
		if caller = c.callerFor(node); caller == nil {
			return &TransportError{Addr: addr, Op: "dial", NotRun: true, Err: ErrProtocol}
		}
		if p := node.Metadata[registry.MetaProtocol]; p != "" {
			proto = p
		}
	}
	st.a = Attempt{Service: call.service, Endpoint: call.endpoint, Number: n, Node: node, Address: addr, Protocol: proto, Request: &st.req, Response: &st.rsp, caller: caller}
	return c.invokeAttempt(ctx, &st.a)
}

// send is the innermost attempt invoker: the Caller's round trip, and the
// answer's status turned into an error.
func (c *Client) send(ctx context.Context, a *Attempt) error {
	if err := a.caller.Call(ctx, a.Address, a.Request, a.Response); err != nil {
		return err
	}
	r := a.Response
	switch {
	case r.Status == status.OK:
		return nil
	case r.Status == status.Unavailable && r.NotRun:
		return &TransportError{Addr: a.Address, Op: "refused", NotRun: true, Err: fmt.Errorf("%w: %s", ErrRefused, r.Detail)}
	case r.Status == status.Timeout && !r.NotRun && !a.Request.Deadline.IsZero() && !time.Now().Before(a.Request.Deadline):
		// The handler gave up at the deadline the attempt sent it (the
		// node's copy ends a transit time after the client's): the same
		// outcome as no answer by the deadline, and retried alike.
		return &TransportError{Addr: a.Address, Op: "timeout", Err: fmt.Errorf("the node answered %d at the attempt's deadline (%s): %w", r.Status, r.Detail, context.DeadlineExceeded)}
	default:
		return &status.Error{Code: r.Status, Detail: r.Detail}
	}
}

// decode decodes a response body of content type ctype ("": cd's) into rsp.
func (c *Client) decode(cd codec.Codec, ctype string, body []byte, rsp any) error {
	rcd := cd
	if ctype != "" && ctype != cd.ContentType() {
		var err error
		if rcd, err = c.o.codecs.Get(ctype); err != nil {
			return &status.Error{Code: status.InternalError, Detail: "response codec", Causes: []error{err}}
		}
	}
	if err := rcd.Unmarshal(body, rsp); err != nil {
		return &status.Error{Code: status.InternalError, Detail: "decode response", Causes: []error{err}}
	}
	return nil
}

// hedged makes the attempt on pk and, when no answer came within o.Hedge, a
// second one on another node; the first answer wins and is decoded into
// rsp, the other attempt is canceled (its handler too). It reports both
// picks' outcomes and returns when both attempts have ended, with nil or
// the first attempt's error.
func (c *Client) hedged(ctx context.Context, next selector.Next, pk selector.Pick, tried []string, call *callData, number int, rsp any, o *CallOptions) error {
	type result struct {
		i   int
		err error
		st  *attemptState
	}
	service := call.service
	results := make(chan result, 2)
	var cancels [2]context.CancelFunc
	picks := []selector.Pick{pk}
	starts := []time.Time{time.Now()}
	launch := func(i int, p selector.Pick) {
		actx, cancel := context.WithCancel(ctx)
		cancels[i] = cancel
		go func() {
			st := c.states.Get().(*attemptState)
			err := c.attempt(actx, st, time.Now(), call, number, p.Node, p.Node.Address, o.RequestTimeout)
			results <- result{i, err, st}
		}()
	}
	launch(0, pk)
	timer := time.NewTimer(o.Hedge)
	defer timer.Stop()
	running, won := 1, -1
	var errs [2]error
	var winner *attemptState
	for running > 0 {
		select {
		case r := <-results:
			running--
			p := picks[r.i]
			var te *TransportError
			switch {
			case won >= 0 && r.err != nil && errors.Is(r.err, context.Canceled):
				if p.Done != nil {
					p.Done(selector.Outcome{Skipped: true}) // the loser, canceled
				}
			case errors.As(r.err, &te):
				if p.Done != nil {
					p.Done(selector.Outcome{Latency: time.Since(starts[r.i]), Err: r.err})
				} else {
					c.sel.Mark(service, p.Node, r.err)
				}
			default:
				if p.Done != nil {
					p.Done(selector.Outcome{Latency: time.Since(starts[r.i])})
				}
			}
			errs[r.i] = r.err
			if r.err == nil && won < 0 {
				won, winner = r.i, r.st
				for k, cancel := range cancels {
					if k != r.i && cancel != nil {
						cancel()
					}
				}
			} else {
				if r.i == 0 && o.ResponseMetadata != nil && r.st.rsp.Status != status.OK {
					*o.ResponseMetadata = r.st.rsp.Metadata
				}
				c.putState(r.st)
			}
		case <-timer.C:
			if won >= 0 || len(picks) > 1 {
				continue
			}
			p2, err := c.pickUntried(ctx, next, append(tried[:len(tried):len(tried)], pk.Node.Address))
			if err != nil || p2.Node.Address == pk.Node.Address {
				if err == nil && p2.Done != nil {
					p2.Done(selector.Outcome{Skipped: true})
				}
				continue
			}
			picks, starts = append(picks, p2), append(starts, time.Now())
			running++
			launch(1, p2)
		}
	}
	for _, cancel := range cancels {
		if cancel != nil {
			cancel()
		}
	}
	if won >= 0 {
		if o.ResponseMetadata != nil {
			*o.ResponseMetadata = winner.rsp.Metadata
		}
		err := c.decode(call.cd, winner.rsp.ContentType, winner.rsp.Body, rsp)
		c.putState(winner)
		return err
	}
	return errs[0]
}

// Close closes every connection (the wire's and those of the Callers given
// with WithCaller) and waits for the client's goroutines. Calls in flight
// fail. It does not close the selector.
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	errs := []error{c.wire.Close()}
	for _, cl := range c.o.callers {
		errs = append(errs, cl.Close())
	}
	return errors.Join(errs...)
}
