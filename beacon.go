// Package beacon builds services that find each other and call each other
// by name.
//
//	reg, _ := etcd.New(ctx, etcd.WithAddrs("10.0.0.1:2379")) // any registry
//	svc, err := beacon.NewService(beacon.Name("greeter"), beacon.Version("1.2.0"), beacon.Registry(reg))
//	if err != nil { ... }
//	svc.Handle(&Greeter{}) // methods func(ctx, *Req, *Rsp) error become endpoints "Greeter.Hello"
//	err = svc.Run()        // listen, register, heartbeat; on SIGINT/SIGTERM deregister, drain, stop
//
// This package links only what it uses: the registry a program gives it in
// code, not every backend. Package cmd adds the command line (--registry
// etcd, --server_address, ... and the program's own flags) and chooses the
// registry by name: cmd.NewService.
//
// # Settings and their precedence
//
// Every setting has a code option here, an environment variable
// (BEACON_<NAME>, then go-micro's MICRO_<NAME>; see EnvNames and the
// Setting* names) and, with package cmd, a flag (--<name>). One rule
// decides between them, for every setting: the command line (when the
// program opts into it with package cmd) beats the environment, which beats
// code, which beats the built-in default. Options passed through
// ServerOptions and ClientOptions are code: a setting from the environment
// or the command line beats them too. NoEnv makes a program ignore the
// environment. Objects given in code (Registry, Selector, Logger) are used
// as they are.
package beacon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/middleware"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/cache"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/server"
	"github.com/beacon-go/beacon/tlsconfig"
)

// DefaultRegistryTimeout bounds connecting to the registry in NewService.
const DefaultRegistryTimeout = 10 * time.Second

// ErrNoRegistry: NewService was given neither a registry nor a way to make
// one.
var ErrNoRegistry = errors.New("beacon: no registry: give beacon.Registry(r), or use cmd.NewService to choose one with --registry")

// ErrTLSSettings: the TLS settings do not make a configuration (a
// certificate without its key, client auth without a CA, serving without a
// certificate).
var ErrTLSSettings = errors.New("beacon: incomplete TLS settings")

// Option configures a Service.
type Option func(*options)

type hook func(context.Context) error

// RegistryFactory makes the registry of a service given no Registry (package
// cmd passes one for --registry); the service closes what it returns.
type RegistryFactory func(ctx context.Context, log *slog.Logger) (registry.Registry, error)

type options struct {
	name, version, id string
	metadata          map[string]string
	address           string
	advertise         string
	reg               registry.Registry
	regFactory        RegistryFactory
	sel               selector.Selector
	strategy          selector.Strategy
	ttl, interval     time.Duration
	drainGrace        time.Duration
	drainSet          bool
	retries           int
	retriesSet        bool
	reqTimeout        time.Duration
	reqTimeoutSet     bool
	emptyHold         time.Duration
	emptyHoldSet      bool
	logLevel          slog.Level
	logLevelSet       bool
	logFormat         string
	tls               tlsconfig.Files
	noEnv             bool
	getenv            func(string) string
	explicitOpts      []Option
	beforeStart       []hook
	afterStart        []hook
	beforeStop        []hook
	afterStop         []hook
	log               *slog.Logger
	serverOpts        []server.Option
	clientOpts        []client.Option

	// explicit holds the settings given by the environment or the command
	// line (by name): they beat ServerOptions and ClientOptions too.
	explicit  map[string]bool
	aboveCode bool // options now applied come from the environment or Explicit
}

// Name sets the service name (--server_name); a service without a name is
// a client only.
func Name(n string) Option { return func(o *options) { o.name = n; o.mark(SettingServerName) } }

// Version sets the service version (--server_version).
func Version(v string) Option {
	return func(o *options) { o.version = v; o.mark(SettingServerVersion) }
}

// ID sets the node ID (--server_id; default: the name and a random suffix).
func ID(id string) Option { return func(o *options) { o.id = id; o.mark(SettingServerID) } }

// Metadata sets the node's metadata (--server_metadata k=v).
func Metadata(md map[string]string) Option {
	return func(o *options) { o.metadata = md; o.mark(SettingServerMetadata) }
}

// Address sets the server's listen address (--server_address).
func Address(a string) Option {
	return func(o *options) { o.address = a; o.mark(SettingServerAddress) }
}

// Advertise sets the address registered for callers (--server_advertise).
func Advertise(a string) Option {
	return func(o *options) { o.advertise = a; o.mark(SettingServerAdvertise) }
}

// Registry sets the registry. The service does not close a registry given
// this way.
func Registry(r registry.Registry) Option { return func(o *options) { o.reg = r } }

// WithRegistryFactory makes the registry when none is given with Registry
// (package cmd uses it for --registry).
func WithRegistryFactory(f RegistryFactory) Option { return func(o *options) { o.regFactory = f } }

// Selector sets the selector object used by the client (Strategy and
// RegistryEmptyHold then do not apply). The service does not close a
// selector given this way.
func Selector(s selector.Selector) Option { return func(o *options) { o.sel = s } }

// Strategy sets the selector's strategy (--selector; default
// selector.LeastLoaded).
func Strategy(s selector.Strategy) Option { return func(o *options) { o.strategy = s } }

// RegistryEmptyHold sets how long the last nodes of a service keep serving
// when news that it has none may come from a registry restarted empty
// (--registry_empty_hold; default: the register TTL; 0: no hold).
func RegistryEmptyHold(d time.Duration) Option {
	return func(o *options) { o.emptyHold, o.emptyHoldSet = d, true }
}

// RegisterTTL sets the registration TTL (--register_ttl), at most
// server.MaxRegisterTTL.
func RegisterTTL(d time.Duration) Option {
	return func(o *options) { o.ttl = d; o.mark(SettingRegisterTTL) }
}

// RegisterInterval sets the heartbeat interval (--register_interval).
func RegisterInterval(d time.Duration) Option {
	return func(o *options) { o.interval = d; o.mark(SettingRegisterInterval) }
}

// DrainGrace sets how long Stop keeps serving after deregistering, while
// callers' caches learn that the node left (--server_drain_grace; default
// server.DefaultDrainGrace). Tests usually want 0.
func DrainGrace(d time.Duration) Option {
	return func(o *options) { o.drainGrace, o.drainSet = d, true; o.mark(SettingServerDrainGrace) }
}

// Retries sets the client's retries of a call on another node
// (--client_retries; default client.DefaultRetries).
func Retries(n int) Option {
	return func(o *options) { o.retries, o.retriesSet = n, true; o.mark(SettingClientRetries) }
}

// RequestTimeout sets the client's per-attempt timeout
// (--client_request_timeout; default client.DefaultRequestTimeout).
func RequestTimeout(d time.Duration) Option {
	return func(o *options) { o.reqTimeout, o.reqTimeoutSet = d, true; o.mark(SettingClientRequestTimeout) }
}

// LogLevel sets the level of the default logger (--log_level; default
// info; at debug the service logs a line per request, call and attempt).
func LogLevel(l slog.Level) Option { return func(o *options) { o.logLevel, o.logLevelSet = l, true } }

// LogFormat sets the format of the default logger: "text" or "json"
// (--log_format).
func LogFormat(f string) Option { return func(o *options) { o.logFormat = f } }

// TLS sets the TLS files (--tls_cert, --tls_key, --tls_ca,
// --tls_client_auth): with any of them the client speaks TLS and a service
// with a name serves TLS only (see package tlsconfig; the files are
// reloaded when they change).
func TLS(f tlsconfig.Files) Option { return func(o *options) { o.tls = f; o.mark(SettingTLSCert) } }

// NoEnv makes the service ignore the environment (BEACON_*, MICRO_*).
func NoEnv() Option { return func(o *options) { o.noEnv = true } }

// WithGetenv reads the environment with getenv instead of os.Getenv
// (tests).
func WithGetenv(getenv func(string) string) Option { return func(o *options) { o.getenv = getenv } }

// Explicit applies opts above the environment: package cmd passes the
// settings given on the command line this way. Settings they set beat
// ServerOptions and ClientOptions too.
func Explicit(opts ...Option) Option {
	return func(o *options) { o.explicitOpts = append(o.explicitOpts, opts...) }
}

// BeforeStart adds a hook run before the server starts; an error aborts Start.
func BeforeStart(fn func(context.Context) error) Option {
	return func(o *options) { o.beforeStart = append(o.beforeStart, fn) }
}

// AfterStart adds a hook run after the server started and registered.
func AfterStart(fn func(context.Context) error) Option {
	return func(o *options) { o.afterStart = append(o.afterStart, fn) }
}

// BeforeStop adds a hook run before the server deregisters and stops.
func BeforeStop(fn func(context.Context) error) Option {
	return func(o *options) { o.beforeStop = append(o.beforeStop, fn) }
}

// AfterStop adds a hook run after the server stopped.
func AfterStop(fn func(context.Context) error) Option {
	return func(o *options) { o.afterStop = append(o.afterStop, fn) }
}

// Logger sets the logger of every part (default: NewLogger on stderr with
// LogLevel and LogFormat). At debug level the service logs one line per
// request served and per call and attempt made (package middleware).
func Logger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// ServerOptions passes further options to the server.
func ServerOptions(so ...server.Option) Option {
	return func(o *options) { o.serverOpts = append(o.serverOpts, so...) }
}

// ClientOptions passes further options to the client.
func ClientOptions(co ...client.Option) Option {
	return func(o *options) { o.clientOpts = append(o.clientOpts, co...) }
}

// Service is a server, a client and the registry and selector they share.
type Service struct {
	o       options
	reg     registry.Registry
	ownsReg bool
	sel     selector.Selector
	ownsSel bool
	cli     *client.Client
	srv     *server.Server

	mu      sync.Mutex
	started bool
	stopped bool
}

// mark records that setting name was given above code (by the environment
// or Explicit): it then beats ServerOptions and ClientOptions too.
func (o *options) mark(name string) {
	if o.aboveCode {
		o.explicit[name] = true
	}
}

// NewService reads the environment, makes the registry when it was not
// given (WithRegistryFactory, bounded by DefaultRegistryTimeout) and builds
// the server (for a service with a name) and the client. It starts nothing
// and parses no command line (package cmd does). See the package doc for
// the precedence of settings.
func NewService(opts ...Option) (*Service, error) {
	o := options{explicit: map[string]bool{}, logLevel: slog.LevelInfo, getenv: os.Getenv}
	for _, f := range opts {
		f(&o)
	}
	if !o.noEnv {
		if err := readEnv(&o, o.getenv); err != nil {
			return nil, err
		}
	}
	o.aboveCode = true
	for _, f := range o.explicitOpts {
		f(&o)
	}
	switch t := o.tls; {
	case t.Cert != "" && t.Key == "":
		return nil, fmt.Errorf("%w: a TLS certificate (--%s) needs its key (--%s)", ErrTLSSettings, SettingTLSCert, SettingTLSKey)
	case t.Key != "" && t.Cert == "":
		return nil, fmt.Errorf("%w: a TLS key (--%s) needs its certificate (--%s)", ErrTLSSettings, SettingTLSKey, SettingTLSCert)
	case t.ClientAuth && t.CA == "":
		return nil, fmt.Errorf("%w: client auth (--%s) needs a CA (--%s)", ErrTLSSettings, SettingTLSClientAuth, SettingTLSCA)
	}
	if o.log == nil {
		var err error
		if o.log, err = defaultLogger(&o); err != nil {
			return nil, err
		}
	}
	log := o.log
	tlsServer, tlsClient, err := TLSOptions(o.tls, o.name != "", log)
	if err != nil {
		return nil, err
	}
	s := &Service{o: o}
	ttl := o.ttl
	if ttl == 0 {
		ttl = server.DefaultRegisterTTL
	}

	s.reg = o.reg
	if s.reg == nil {
		if o.regFactory == nil {
			return nil, ErrNoRegistry
		}
		ctx, cancel := context.WithTimeout(context.Background(), DefaultRegistryTimeout)
		s.reg, err = o.regFactory(ctx, log)
		cancel()
		if err != nil {
			return nil, err
		}
		s.ownsReg = true
	}
	s.sel = o.sel
	if s.sel == nil {
		strategy := o.strategy
		if strategy == nil {
			strategy = selector.LeastLoaded()
		}
		// The cache's empty hold follows the register TTL unless set.
		hold := ttl
		if o.emptyHoldSet {
			hold = o.emptyHold
		}
		s.sel = selector.New(s.reg, selector.WithStrategy(strategy), selector.WithLogger(log),
			selector.WithCacheOptions(cache.WithEmptyHold(hold)))
		s.ownsSel = true
	}

	// Client: defaults and code, then ClientOptions (code), then what the
	// environment or the command line set.
	var copts []client.Option
	retries := func() client.Option { return client.Retries(o.retries) }
	timeout := func() client.Option { return client.RequestTimeout(o.reqTimeout) }
	if o.retriesSet {
		copts = append(copts, retries())
	}
	if o.reqTimeoutSet {
		copts = append(copts, timeout())
	}
	copts = append(copts, client.Logger(log))
	debug := log.Enabled(context.Background(), slog.LevelDebug)
	if debug { // one line per call and per attempt
		copts = append(copts, client.WithInterceptors(middleware.ClientLog(log)), client.WithAttemptInterceptors(middleware.AttemptLog(log)))
	}
	copts = append(copts, o.clientOpts...)
	if o.explicit[SettingClientRetries] {
		copts = append(copts, retries())
	}
	if o.explicit[SettingClientRequestTimeout] {
		copts = append(copts, timeout())
	}
	copts = append(copts, tlsClient...) // TLS settings: code or above, after ClientOptions
	s.cli = client.New(s.sel, copts...)

	if o.name != "" {
		settings := func(all bool) []server.Option {
			var so []server.Option
			add := func(name string, set bool, opt server.Option) {
				if set && (all || o.explicit[name]) {
					so = append(so, opt)
				}
			}
			add(SettingServerName, true, server.Name(o.name))
			add(SettingServerVersion, o.version != "", server.Version(o.version))
			add(SettingServerID, o.id != "", server.ID(o.id))
			add(SettingServerMetadata, o.metadata != nil, server.Metadata(o.metadata))
			add(SettingServerAddress, o.address != "", server.Address(o.address))
			add(SettingServerAdvertise, o.advertise != "", server.Advertise(o.advertise))
			add(SettingRegisterTTL, o.ttl != 0, server.RegisterTTL(o.ttl))
			add(SettingRegisterInterval, o.interval != 0, server.RegisterInterval(o.interval))
			add(SettingServerDrainGrace, o.drainSet, server.DrainGrace(o.drainGrace))
			return so
		}
		sopts := append(settings(true), server.Registry(s.reg), server.Logger(log))
		if debug { // one line per request
			sopts = append(sopts, server.WithInterceptors(middleware.ServerLog(log)))
		}
		sopts = append(sopts, o.serverOpts...)
		sopts = append(sopts, settings(false)...)
		sopts = append(sopts, tlsServer...)
		if s.srv, err = server.New(sopts...); err != nil {
			s.closeOwned()
			return nil, err
		}
	}
	return s, nil
}

// TLSOptions returns the server and client options of the TLS files: none
// when none is set; else the client speaks TLS and, when serving, the
// server serves TLS only (which needs a certificate and its key: else an
// error matching ErrTLSSettings). It reads the files (an error names them);
// the configs reload them when they change (package tlsconfig), logging to
// log.
func TLSOptions(f tlsconfig.Files, serving bool, log *slog.Logger) ([]server.Option, []client.Option, error) {
	if f.Cert == "" && f.Key == "" && f.CA == "" && !f.ClientAuth {
		return nil, nil, nil
	}
	f.Logger = log
	var sopts []server.Option
	if serving {
		if f.Cert == "" {
			return nil, nil, fmt.Errorf("%w: serving TLS needs --%s and --%s (TLS is on: --%s or --%s was given)",
				ErrTLSSettings, SettingTLSCert, SettingTLSKey, SettingTLSCA, SettingTLSClientAuth)
		}
		cfg, err := f.Server()
		if err != nil {
			return nil, nil, fmt.Errorf("beacon: --%s, --%s, --%s: %w", SettingTLSCert, SettingTLSKey, SettingTLSCA, err)
		}
		sopts = append(sopts, server.TLS(cfg))
	}
	cfg, err := f.Client()
	if err != nil {
		return nil, nil, fmt.Errorf("beacon: --%s, --%s, --%s: %w", SettingTLSCert, SettingTLSKey, SettingTLSCA, err)
	}
	return sopts, []client.Option{client.TLS(cfg)}, nil
}

// Name returns the service name.
func (s *Service) Name() string { return s.o.name }

// Registry returns the registry in use.
func (s *Service) Registry() registry.Registry { return s.reg }

// Client returns the service's client, for calling other services.
func (s *Service) Client() *client.Client { return s.cli }

// Server returns the service's server (nil when the service has no name:
// a client-only program).
func (s *Service) Server() *server.Server { return s.srv }

// Handle adds a handler value's methods as endpoints; see server.Handle.
// server.HandleFunc(s.Server(), ...) adds endpoints too.
func (s *Service) Handle(h any, opts ...server.HandlerOption) error {
	if s.srv == nil {
		return server.ErrNoName
	}
	return s.srv.Handle(h, opts...)
}

// Start runs the BeforeStart hooks, starts the server (listen, register,
// heartbeat) of a service with a name, and runs the AfterStart hooks. A
// service with a name serves: Start fails with an error matching
// server.ErrNoHandlers when no endpoint was added (by Handle or by
// server.HandleFunc on Server(), before Start or in a BeforeStart hook). A
// service without a name is a client only and starts no server.
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return server.ErrRunning
	}
	for _, h := range s.o.beforeStart {
		if err := h(ctx); err != nil {
			return err
		}
	}
	if s.srv != nil {
		if err := s.srv.Start(ctx); err != nil {
			if errors.Is(err, server.ErrNoHandlers) {
				return fmt.Errorf("beacon: service %s: %w: add endpoints with Handle or server.HandleFunc before Start, or build a client-only service without a Name", s.o.name, err)
			}
			return err
		}
	}
	s.started = true
	for _, h := range s.o.afterStart {
		if err := h(ctx); err != nil {
			return err
		}
	}
	return nil
}

// Stop runs the BeforeStop hooks, stops the server (deregister, drain,
// finish in-flight requests, close), closes the client and what the service
// created (selector, registry), and runs the AfterStop hooks. ctx bounds the
// drain. It is idempotent; it also releases a service that never started.
func (s *Service) Stop(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	s.stopped = true
	var errs []error
	for _, h := range s.o.beforeStop {
		errs = append(errs, h(ctx))
	}
	if s.srv != nil {
		errs = append(errs, s.srv.Stop(ctx))
	}
	errs = append(errs, s.cli.Close())
	s.closeOwned()
	for _, h := range s.o.afterStop {
		errs = append(errs, h(ctx))
	}
	return errors.Join(errs...)
}

func (s *Service) closeOwned() {
	if s.ownsSel && s.sel != nil {
		s.sel.Close()
	}
	if s.ownsReg && s.reg != nil {
		s.reg.Close()
	}
}

// Run starts the service and blocks until SIGINT or SIGTERM, then stops it
// (bounded by server.DefaultShutdownTimeout plus the drain).
func (s *Service) Run() error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := s.Start(ctx); err != nil {
		s.Stop(context.Background())
		return err
	}
	<-ctx.Done()
	stop()
	s.o.log.Info("beacon: signal received; stopping", "service", s.o.name)
	grace := server.DefaultDrainGrace
	if s.o.drainSet {
		grace = s.o.drainGrace
	}
	sctx, cancel := context.WithTimeout(context.Background(), server.DefaultShutdownTimeout+grace+5*time.Second)
	defer cancel()
	return s.Stop(sctx)
}
