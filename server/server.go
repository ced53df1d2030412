// Package server serves handlers to Beacon clients and keeps the service
// registered while it runs.
//
// Start listens, registers the service (one node: ID, advertised address,
// metadata, endpoints) with the register TTL, and re-registers every
// register interval; a failed heartbeat is logged and retried with backoff,
// never fatal, and recreates a record the backend lost. Stop deregisters
// first, keeps serving for a drain grace period so that callers' caches drop
// the node, then tells connected clients to go away (requests that still
// arrive are refused with a retryable 503, never half-run), waits for
// in-flight requests up to the shutdown timeout, and closes.
//
// A handler's context ends with the caller's deadline, the caller's cancel,
// the client's connection closing (cause ErrConnClosed) or the server's
// stop (cause ErrStopped); read the cause with context.Cause.
//
// What one peer can cost is bounded, with defaults in one place (the
// Default* limits below, each an option): connections (MaxConnections),
// requests in flight per connection until their response is written
// (MaxStreamsPerConn, advertised to clients), handlers running at once
// (MaxConcurrentRequests, a slot freed when the handler returns), message
// size (MaxMessageSize, advertised; an oversized request is answered alone
// with 413), read buffers that grow only as bytes arrive, an idle timeout,
// a timeout for a started request's bytes (FrameTimeout), and a write
// timeout for a client that stops reading. The server's own refusals are
// marked "not run" on the wire, distinct from a handler's answer.
//
// With TLS (server.TLS) every connection starts with a TLS handshake, run in
// the connection's goroutine within the frame timeout, and the node
// advertises registry.MetaTLS; see TLS.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"reflect"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/beacon-go/beacon/codec"
	"github.com/beacon-go/beacon/internal/wire"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrar"
	"github.com/beacon-go/beacon/transport"
)

// Defaults, the one place they are defined (the registration's are
// package registrar's); flags and docs read them here.
const (
	DefaultAddress          = ":0"
	DefaultRegisterTTL      = registrar.DefaultTTL
	DefaultRegisterInterval = registrar.DefaultInterval
	DefaultDrainGrace       = registrar.DefaultDrainGrace
	DefaultShutdownTimeout  = 10 * time.Second
	DefaultMaxMessageSize   = wire.DefaultMaxFrame
)

// Limits on what one peer can cost a server: the defaults, all in one place.
// Each has an option of the same name. With the defaults, an idle
// connection costs about 12 KiB (a goroutine and a 4 KiB read buffer;
// measured), so DefaultMaxConnections idle connections stay near 120 MiB; a
// connection that sends requests and never reads the answers holds at most
// DefaultMaxStreamsPerConn requests and one blocked writer, and is closed
// once it is a megabyte of answers behind or after DefaultWriteTimeout.
const (
	// DefaultMaxConnections caps open client connections. At the cap, the
	// connection with nothing in flight that has been idle the longest is
	// told to go away and closed to make room; when every connection is
	// busy, the new one is told to go away and closed at once.
	DefaultMaxConnections = 10000
	// DefaultMaxStreamsPerConn bounds the requests in flight on one
	// connection (advertised: clients open another connection rather than
	// exceed it; a request past it is refused without running).
	DefaultMaxStreamsPerConn = wire.DefaultMaxStreams
	// DefaultIdleTimeout: a connection with nothing in flight and no bytes
	// for this long is told to go away, and closed after one more.
	DefaultIdleTimeout = 5 * time.Minute
	// DefaultFrameTimeout bounds how long a request's bytes (and the
	// connection's preface) may take to arrive once they started.
	DefaultFrameTimeout = 10 * time.Second
	// DefaultWriteTimeout bounds how long a response write may make no
	// progress (a client that stopped reading); the connection is then
	// closed.
	DefaultWriteTimeout = 10 * time.Second
)

// MaxRegisterTTL bounds the register TTL, and so the register interval,
// which must be below the TTL (registrar.MaxTTL): New enforces it, and
// flags and docs read it here.
const MaxRegisterTTL = registrar.MaxTTL

// Errors.
var (
	ErrBadInterval = errors.New("server: register interval must be positive and below the register TTL")
	ErrBadTTL      = errors.New("server: register TTL out of range")
	ErrRunning     = errors.New("server: already started")
	ErrNoName      = errors.New("server: no service name")
	ErrNoHandlers  = errors.New("server: no handlers")
	// ErrStopped is the cause (context.Cause) of a handler's context
	// canceled because the server stopped before the handler returned.
	ErrStopped = errors.New("server: stopped")
	// ErrConnClosed is the cause of a handler's context canceled because the
	// client's connection closed.
	ErrConnClosed = errors.New("server: client connection closed")
)

// Option configures a Server.
type Option func(*options)

type options struct {
	name, version, id    string
	metadata             map[string]string
	address, advertise   string
	listener             net.Listener
	reg                  registry.Registry
	ttl, interval        time.Duration
	drainGrace, shutdown time.Duration
	maxMessage           int
	maxConcurrent        int
	maxConns, maxStreams int
	idleTimeout          time.Duration
	frameTimeout         time.Duration
	writeTimeout         time.Duration
	noHTTP               bool
	tls                  *tlsConfig // nil: plain TCP (tls.go)
	codecs               *codec.Set
	log                  *slog.Logger
	interceptors         []Interceptor
	transport            transport.Server // nil: the built-in wire and HTTP
	transportProto       string
	inline               time.Duration // 0: every handler in a goroutine of its own
}

// Name sets the service name (required).
func Name(n string) Option { return func(o *options) { o.name = n } }

// Version sets the service version.
func Version(v string) Option { return func(o *options) { o.version = v } }

// ID sets the node ID (default: name-<random hex>).
func ID(id string) Option { return func(o *options) { o.id = id } }

// Metadata sets the node's metadata.
func Metadata(md map[string]string) Option { return func(o *options) { o.metadata = md } }

// Address sets the listen address (default DefaultAddress: every interface,
// a free port).
func Address(a string) Option { return func(o *options) { o.address = a } }

// Advertise sets the address registered for callers (default: the listen
// address, with an unspecified host replaced by this host's first
// non-loopback IPv4 address, or 127.0.0.1).
func Advertise(a string) Option { return func(o *options) { o.advertise = a } }

// Listener makes the server use l instead of listening itself.
func Listener(l net.Listener) Option { return func(o *options) { o.listener = l } }

// Registry sets the registry to register in; without one the server serves
// but registers nowhere.
func Registry(r registry.Registry) Option { return func(o *options) { o.reg = r } }

// RegisterTTL sets the TTL of the registration (default DefaultRegisterTTL,
// at most MaxRegisterTTL).
func RegisterTTL(d time.Duration) Option { return func(o *options) { o.ttl = d } }

// RegisterInterval sets the heartbeat interval; it must be below the TTL
// (default DefaultRegisterInterval).
func RegisterInterval(d time.Duration) Option { return func(o *options) { o.interval = d } }

// DrainGrace sets how long Stop keeps serving after deregistering (default
// DefaultDrainGrace).
func DrainGrace(d time.Duration) Option { return func(o *options) { o.drainGrace = d } }

// ShutdownTimeout bounds how long Stop waits for in-flight requests
// (default DefaultShutdownTimeout); their contexts are then canceled.
func ShutdownTimeout(d time.Duration) Option { return func(o *options) { o.shutdown = d } }

// MaxMessageSize sets the largest request accepted, in bytes (default
// DefaultMaxMessageSize; advertised to clients, which refuse larger requests
// before sending). A larger request that still arrives is skipped and
// answered alone with status 413; the connection keeps serving.
func MaxMessageSize(n int) Option { return func(o *options) { o.maxMessage = n } }

// MaxConcurrentRequests bounds the handlers a server runs at once (default
// 0: no bound). A request past the bound is answered at once with status
// 503 without running, which clients retry on another node. A slot is freed
// when the handler returns, not when its response is written.
func MaxConcurrentRequests(n int) Option { return func(o *options) { o.maxConcurrent = n } }

// MaxConnections caps open client connections (default
// DefaultMaxConnections).
func MaxConnections(n int) Option { return func(o *options) { o.maxConns = n } }

// MaxStreamsPerConn bounds the requests in flight on one connection, from
// arrival until the response is queued (default DefaultMaxStreamsPerConn).
// With MaxConcurrentRequests set, a connection gets at most half of those
// slots, so that one connection cannot take them all; the limit a server
// advertises is the smaller of the two.
func MaxStreamsPerConn(n int) Option { return func(o *options) { o.maxStreams = n } }

// IdleTimeout sets when an idle connection is told to go away (default
// DefaultIdleTimeout).
func IdleTimeout(d time.Duration) Option { return func(o *options) { o.idleTimeout = d } }

// FrameTimeout bounds the arrival of a started request (default
// DefaultFrameTimeout).
func FrameTimeout(d time.Duration) Option { return func(o *options) { o.frameTimeout = d } }

// WriteTimeout bounds a response write that makes no progress (default
// DefaultWriteTimeout).
func WriteTimeout(d time.Duration) Option { return func(o *options) { o.writeTimeout = d } }

// DefaultInlineBudget is how long a handler may run on its connection's
// reading goroutine before reading moves to a new goroutine (InlineBudget).
const DefaultInlineBudget = 500 * time.Microsecond

// InlineBudget sets how long a quick handler may run on the goroutine that
// reads its connection (default DefaultInlineBudget; 0: every request runs
// in a goroutine of its own, as in net/http and grpc-go).
//
// A handler whose recent runs averaged under a quarter of the budget runs
// inline: no goroutine is created, its stack is already grown, and the
// answers to the requests a client sent together go out in one write. One
// that runs past the budget (it blocked, or got slow) does not hold up the
// connection: reading moves to a new goroutine at the budget (a watchdog
// timer, armed once per batch), the slow handler answers from where it
// is, and the endpoint runs in goroutines of its own until its runs are
// quick again. So a request on a connection waits at most about the
// budget for a handler that happened to run before it.
func InlineBudget(d time.Duration) Option { return func(o *options) { o.inline = max(d, 0) } }

// Codecs sets the codecs by content type (default codec.NewSet()).
func Codecs(s *codec.Set) Option { return func(o *options) { o.codecs = s } }

// Logger sets the logger (default slog.Default()).
func Logger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

type runState int

const (
	stateNew runState = iota
	stateRunning
	stateDraining
	stateStopped
)

// Server serves handlers. Its methods are safe for concurrent use.
type Server struct {
	o        options
	handlers map[string]*handler
	bufs     bufPool
	slots    chan struct{} // nil: no bound on concurrent requests
	refusing atomic.Bool   // set when GoAway goes out: new requests get 503
	refused  atomic.Int64  // connections refused over the cap
	draining atomic.Bool   // Stop began: /health says so
	web      *web          // HTTP on the same port; nil when off or not started
	streams  int           // requests in flight allowed per connection
	// intercept runs the interceptors around a handler; nil: none.
	intercept func(ctx context.Context, req any, info *HandlerInfo, final HandlerFunc) (any, error)

	mu       sync.Mutex
	state    runState
	ln       net.Listener
	conns    map[*conn]struct{}
	svc      *registry.Service
	inflight flight
	connWG   sync.WaitGroup

	causeKey   any // the key context.Cause asks for (stream.Value)
	baseCtx    context.Context
	cancelBase context.CancelCauseFunc
	rg         *registrar.Registrar // nil: no registry
	acceptDone chan struct{}
}

// New returns a server; it checks the options (a name, a TTL of at most
// MaxRegisterTTL, else ErrBadTTL; an interval below the TTL, else
// ErrBadInterval) and serves nothing until Start.
func New(opts ...Option) (*Server, error) {
	o := options{
		address: DefaultAddress, ttl: DefaultRegisterTTL, interval: DefaultRegisterInterval,
		drainGrace: DefaultDrainGrace, shutdown: DefaultShutdownTimeout, maxMessage: DefaultMaxMessageSize,
		maxConns: DefaultMaxConnections, maxStreams: DefaultMaxStreamsPerConn, idleTimeout: DefaultIdleTimeout,
		frameTimeout: DefaultFrameTimeout, writeTimeout: DefaultWriteTimeout, inline: DefaultInlineBudget,
		log: slog.Default(),
	}
	for _, f := range opts {
		f(&o)
	}
	if o.codecs == nil {
		o.codecs = codec.NewSet()
	}
	if o.name == "" {
		return nil, ErrNoName
	}
	if err := registry.ValidateName(o.name); err != nil {
		return nil, err
	}
	if o.ttl > MaxRegisterTTL {
		return nil, fmt.Errorf("%w: %v, want at most %v", ErrBadTTL, o.ttl, MaxRegisterTTL)
	}
	if o.interval <= 0 || o.ttl <= 0 || o.interval >= o.ttl {
		return nil, fmt.Errorf("%w (interval %v, TTL %v)", ErrBadInterval, o.interval, o.ttl)
	}
	if o.id == "" {
		o.id = registrar.NewID(o.name)
	}
	if err := registry.ValidateNodeID("server id", o.id); err != nil {
		return nil, err
	}
	if err := registry.ValidateMetadata("server metadata", o.metadata); err != nil {
		return nil, err
	}
	if err := checkLimits(&o); err != nil {
		return nil, err
	}
	if err := checkTLS(&o); err != nil {
		return nil, err
	}
	s := &Server{o: o, handlers: map[string]*handler{}, conns: map[*conn]struct{}{}}
	s.streams = o.maxStreams
	if o.maxConcurrent > 0 {
		s.slots = make(chan struct{}, o.maxConcurrent)
		s.streams = min(s.streams, max(1, o.maxConcurrent/2))
	}
	s.intercept = chainHandlers(o.interceptors)
	s.baseCtx, s.cancelBase = context.WithCancelCause(context.Background())
	s.causeKey = cancelCauseKey()
	return s, nil
}

// ErrBadLimit: a limit option is out of range.
var ErrBadLimit = errors.New("server: limit out of range")

func checkLimits(o *options) error {
	switch {
	case o.maxMessage < 1024 || o.maxMessage > wire.MaxFrameLimit:
		return fmt.Errorf("%w: MaxMessageSize %d (want 1 KiB to 4 GiB)", ErrBadLimit, o.maxMessage)
	case o.maxConcurrent < 0:
		return fmt.Errorf("%w: MaxConcurrentRequests %d (want 0 for no bound, or more)", ErrBadLimit, o.maxConcurrent)
	case o.maxConns < 1:
		return fmt.Errorf("%w: MaxConnections %d (want 1 or more)", ErrBadLimit, o.maxConns)
	case o.maxStreams < 1 || o.maxStreams > 1<<20:
		return fmt.Errorf("%w: MaxStreamsPerConn %d (want 1 to %d)", ErrBadLimit, o.maxStreams, 1<<20)
	case o.idleTimeout < 0 || o.frameTimeout < 0 || o.writeTimeout < 0:
		return fmt.Errorf("%w: negative timeout", ErrBadLimit)
	}
	return nil
}

// Handle adds every exported method of h of the form
// func(ctx context.Context, req *Req, rsp *Rsp) error as endpoint "T.Method"
// (T without its package and pointer). It must be called before Start.
//
// An exported method that looks like a handler must have exactly that form:
// one that takes a context.Context (at any position), or exactly two
// pointers (a request and a response, the context forgotten). Otherwise
// Handle fails with an error matching ErrBadHandler that names every such
// method and what is wrong, e.g. "server: not a handler: Greeter.Hello:
// request must be a pointer (got greeter.HelloReq)"; so does a handler
// method with a pointer receiver when h is not a pointer. Other methods
// (String() string, Close() error, Init(*Config) error, ...) are ignored;
// to keep a method of the handler's look that is not an endpoint, unexport
// it or move it to another type. An endpoint already added, by Handle or by
// HandleFunc, is an error matching ErrBadHandler naming the endpoint and
// both sources. On error nothing is added.
func (s *Server) Handle(h any, opts ...HandlerOption) error {
	hs, err := handlersOf(h)
	if err != nil {
		return err
	}
	if err := applyHandlerOptions(hs, opts); err != nil {
		return err
	}
	return s.add(hs...)
}

// HandleFunc adds one typed endpoint without reflection, e.g.
// server.HandleFunc(s, "Greeter.Hello", g.Hello). It must be called before
// Start. An endpoint already added, by Handle or by HandleFunc, is an error
// matching ErrBadHandler naming the endpoint and both sources.
func HandleFunc[Req, Rsp any](s *Server, endpoint string, fn func(ctx context.Context, req *Req, rsp *Rsp) error, opts ...HandlerOption) error {
	if endpoint == "" {
		return fmt.Errorf("%w: empty endpoint name", ErrBadHandler)
	}
	reqT, rspT := reflect.TypeFor[Req](), reflect.TypeFor[Rsp]()
	h := &handler{
		name:     endpoint,
		endpoint: &registry.Endpoint{Name: endpoint, Request: describe(reqT.Name(), reqT, 0), Response: describe(rspT.Name(), rspT, 0)},
		source:   fmt.Sprintf("HandleFunc[%s, %s]", reqT, rspT),
		decode: func(c codec.Codec, body []byte) (any, error) {
			req := new(Req)
			if err := codec.UnmarshalRequest(c, body, req); err != nil {
				return nil, &decodeError{err}
			}
			return req, nil
		},
		call: func(ctx context.Context, r any) (any, error) {
			req, ok := r.(*Req)
			if !ok {
				return nil, fmt.Errorf("server: %s: an interceptor passed a %T request, want %T", endpoint, r, req)
			}
			rsp := new(Rsp)
			if err := fn(ctx, req, rsp); err != nil {
				return nil, err
			}
			return rsp, nil
		},
	}
	if err := applyHandlerOptions([]*handler{h}, opts); err != nil {
		return err
	}
	return s.add(h)
}

func (s *Server) add(hs ...*handler) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != stateNew {
		return ErrRunning
	}
	for _, h := range hs {
		if prev, dup := s.handlers[h.name]; dup {
			return fmt.Errorf("%w: endpoint %s added twice: first by %s, again by %s", ErrBadHandler, h.name, prev.source, h.source)
		}
	}
	for _, h := range hs {
		s.handlers[h.name] = h
	}
	return nil
}

// Start listens, starts serving, registers and starts the heartbeat. It
// returns once the server accepts connections. The first registration is
// made under ctx; if it fails for a reason other than invalid input, the
// error is logged and the heartbeat keeps trying.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != stateNew {
		return ErrRunning
	}
	if len(s.handlers) == 0 {
		return ErrNoHandlers
	}
	ln := s.o.listener
	if ln == nil {
		var err error
		var lc net.ListenConfig
		if ln, err = lc.Listen(ctx, "tcp", s.o.address); err != nil {
			return fmt.Errorf("server: listen: %w", err)
		}
	}
	adv := s.o.advertise
	if adv == "" {
		adv = advertiseAddr(ln.Addr())
	}
	md := maps.Clone(s.o.metadata)
	if md == nil {
		md = map[string]string{}
	}
	if _, ok := md[registry.MetaProtocol]; !ok {
		md[registry.MetaProtocol] = registry.ProtocolBeacon
		if s.o.transport != nil {
			md[registry.MetaProtocol] = s.o.transportProto
		}
	}
	s.advertiseTLS(md)
	svc := &registry.Service{Name: s.o.name, Version: s.o.version, Nodes: []*registry.Node{{ID: s.o.id, Address: adv, Metadata: md}}}
	for _, name := range slices.Sorted(maps.Keys(s.handlers)) {
		svc.Endpoints = append(svc.Endpoints, s.handlers[name].endpoint)
	}
	if err := registry.Validate(svc); err != nil {
		ln.Close()
		return err
	}
	s.ln, s.svc, s.state = ln, svc, stateRunning
	s.acceptDone = make(chan struct{})
	if t := s.o.transport; t != nil {
		go func() {
			defer close(s.acceptDone)
			if err := t.Serve(ln, dispatch{s}); err != nil && !errors.Is(err, net.ErrClosed) {
				s.o.log.Error("server: transport stopped", "protocol", s.o.transportProto, "err", err)
			}
		}()
	} else {
		if !s.o.noHTTP {
			s.web = newWeb(s)
		}
		go s.accept(ln)
	}

	if s.o.reg != nil {
		rg, err := registrar.New(s.o.reg, svc, registrar.TTL(s.o.ttl), registrar.Interval(s.o.interval),
			registrar.DrainGrace(s.o.drainGrace), registrar.Logger(s.o.log), registrar.LogPrefix("server"))
		if err == nil {
			err = rg.Start(ctx) // logs a failure other than invalid input; the heartbeat retries
		}
		if err != nil {
			s.state = stateStopped
			ln.Close()
			<-s.acceptDone
			if s.web != nil {
				s.web.stop(ctx)
			}
			return err
		}
		s.rg = rg
	}
	return nil
}

// Addr returns the listen address (nil before Start).
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Service returns a copy of the registered service (nil before Start).
func (s *Server) Service() *registry.Service {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.svc.Copy()
}

// Stop deregisters, drains and stops the server; see the package doc for
// the order. ctx bounds the whole of it: when it ends, in-flight requests are
// canceled and connections closed at once. Stop returns the deregistration
// error, if any; it always stops the server. It is idempotent.
func (s *Server) Stop(ctx context.Context) error {
	s.mu.Lock()
	if s.state != stateRunning {
		if s.state == stateNew {
			s.state = stateStopped
			s.cancelBase(ErrStopped)
		}
		s.mu.Unlock()
		return nil
	}
	s.state = stateDraining
	s.draining.Store(true)
	svc := s.svc
	s.mu.Unlock()

	var derr error
	if s.rg != nil {
		// Deregister, then keep serving for the drain grace while callers'
		// caches learn that the node left.
		derr = s.rg.Stop(ctx)
	}

	s.refusing.Store(true)
	if t := s.o.transport; t != nil {
		tctx, cancel := context.WithTimeout(ctx, s.o.shutdown)
		if err := t.Shutdown(tctx); err != nil {
			s.o.log.Warn("server: transport shutdown", "protocol", s.o.transportProto, "err", err)
		}
		cancel()
	}
	s.ln.Close()
	<-s.acceptDone
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	var told sync.WaitGroup
	for _, c := range conns {
		told.Go(c.goAway)
	}
	told.Wait()

	done := s.inflight.drain()
	t := time.NewTimer(s.o.shutdown)
	select {
	case <-done:
	case <-t.C:
		s.o.log.Warn("server: shutdown timeout; canceling in-flight requests")
	case <-ctx.Done():
		s.o.log.Warn("server: stop context ended; canceling in-flight requests")
	}
	t.Stop()
	s.cancelBase(ErrStopped)
	if s.web != nil {
		wctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		s.web.stop(wctx) // HTTP requests in flight were waited for above
		cancel()
	}
	// Closing the connections also unblocks handlers stuck writing to a
	// client that does not read.
	for _, c := range conns {
		c.close()
	}
	<-done
	s.mu.Lock()
	s.state = stateStopped // the accept loop has ended: conns holds no other connection
	s.mu.Unlock()
	s.connWG.Wait()
	s.o.log.Info("server: stopped", "service", svc.Name, "node", s.o.id)
	return derr
}

func (s *Server) accept(ln net.Listener) {
	defer close(s.acceptDone)
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Temporary errors (EMFILE, ...): back off and keep serving.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.o.log.Warn("server: accept failed", "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.mu.Lock()
		if s.state == stateStopped {
			s.mu.Unlock()
			nc.Close()
			continue
		}
		if len(s.conns) >= s.o.maxConns {
			// Make room: the connection idle the longest goes, so that an
			// idle flood does not lock out new clients.
			victim := s.idlest()
			if victim == nil {
				s.mu.Unlock()
				s.refuseConn(nc)
				continue
			}
			delete(s.conns, victim)
			s.mu.Unlock()
			victim.goAway() // queued at once; a write waits at most a second
			victim.close()
			s.mu.Lock()
			if s.state == stateStopped {
				s.mu.Unlock()
				nc.Close()
				continue
			}
		}
		c := newConn(s, s.secure(nc))
		s.conns[c] = struct{}{}
		s.connWG.Add(1)
		s.mu.Unlock()
		go c.serve()
	}
}

// idlest returns the connection with nothing in flight that has been idle
// the longest, or nil; s.mu is held.
func (s *Server) idlest() *conn {
	var best *conn
	var bestAt int64
	for c := range s.conns {
		if c.closed.Load() || c.inFlight() > 0 || c.httpBusy.Load() {
			continue
		}
		if at := c.active.Load(); best == nil || at < bestAt {
			best, bestAt = c, at
		}
	}
	return best
}

// refuseConn tells a connection over the cap to go away (before any
// Settings, so the client knows nothing ran) and closes it.
func (s *Server) refuseConn(nc net.Conn) {
	if n := s.refused.Add(1); n&(n-1) == 0 { // log the 1st, 2nd, 4th, 8th, ... refusal
		s.o.log.Warn("server: connection limit reached; refusing connections", "remote", nc.RemoteAddr(), "limit", s.o.maxConns, "refused", n)
	}
	if s.o.tls == nil { // a TLS client would read the frame as a bad handshake
		_ = nc.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		_, _ = nc.Write(wire.AppendGoAway(nil))
	}
	nc.Close()
}

func (s *Server) removeConn(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// advertiseAddr turns a listen address into one that others can reach.
func advertiseAddr(a net.Addr) string { return registrar.AdvertiseAddr(a) }
