// Package beacon builds services that find each other and call each other
// by name.
//
//	svc, err := beacon.NewService(beacon.Name("greeter"), beacon.Version("1.2.0"))
//	if err != nil { ... }
//	svc.Handle(&Greeter{}) // methods func(ctx, *Req, *Rsp) error become endpoints "Greeter.Hello"
//	err = svc.Run()        // listen, register, heartbeat; on SIGINT/SIGTERM deregister, drain, stop
//
// NewService reads the standard flags and environment (see package cmd:
// --registry, BEACON_REGISTRY, MICRO_REGISTRY, ...) beside the
// application's own flags. A setting given explicitly on the command line or
// in the environment overrides the same setting given in code, which
// overrides the built-in default; a Registry or Selector object given in
// code is used as is. The default registry is mdns: zero configuration on
// one LAN.
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
	"github.com/beacon-go/beacon/cmd"
	"github.com/beacon-go/beacon/middleware"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/cache"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/server"
)

// DefaultRegistryTimeout bounds connecting to the registry in NewService.
const DefaultRegistryTimeout = 10 * time.Second

// Option configures a Service.
type Option func(*options)

type hook func(context.Context) error

type options struct {
	name, version string
	metadata      map[string]string
	address       string
	advertise     string
	reg           registry.Registry
	sel           selector.Selector
	ttl, interval time.Duration
	flags         []cmd.Flag
	action        func(*cmd.Context) error
	args          []string
	argsSet       bool
	beforeStart   []hook
	afterStart    []hook
	beforeStop    []hook
	afterStop     []hook
	log           *slog.Logger
	serverOpts    []server.Option
	clientOpts    []client.Option
	registryName  string
	registryAddrs []string
}

// Name sets the service name.
func Name(n string) Option { return func(o *options) { o.name = n } }

// Version sets the service version.
func Version(v string) Option { return func(o *options) { o.version = v } }

// Metadata sets the node's metadata.
func Metadata(md map[string]string) Option { return func(o *options) { o.metadata = md } }

// Address sets the server's listen address (flag --server_address).
func Address(a string) Option { return func(o *options) { o.address = a } }

// Advertise sets the address registered for callers.
func Advertise(a string) Option { return func(o *options) { o.advertise = a } }

// Registry sets the registry object (the --registry flag is then ignored).
// The service does not close a registry given this way.
func Registry(r registry.Registry) Option { return func(o *options) { o.reg = r } }

// RegistryName chooses a registry backend by name ("mdns", "etcd", "consul",
// "memory") and its addresses, like --registry and --registry_address.
func RegistryName(name string, addrs ...string) Option {
	return func(o *options) { o.registryName, o.registryAddrs = name, addrs }
}

// Selector sets the selector object used by the client (the --selector and
// --registry_empty_hold flags are then ignored). The service does not close
// a selector given this way.
func Selector(s selector.Selector) Option { return func(o *options) { o.sel = s } }

// RegisterTTL sets the registration TTL (flag --register_ttl), at most
// server.MaxRegisterTTL.
func RegisterTTL(d time.Duration) Option { return func(o *options) { o.ttl = d } }

// RegisterInterval sets the heartbeat interval (flag --register_interval).
func RegisterInterval(d time.Duration) Option { return func(o *options) { o.interval = d } }

// Flags adds the application's own command-line flags beside Beacon's.
func Flags(f ...cmd.Flag) Option { return func(o *options) { o.flags = append(o.flags, f...) } }

// Action runs after flags are parsed, with the parsed context, so the
// application can read its own flags. An error fails NewService.
func Action(fn func(*cmd.Context) error) Option { return func(o *options) { o.action = fn } }

// Args sets the command-line arguments to parse, without the program name
// (default os.Args[1:]). Args() parses no arguments: only the environment and
// code apply (tests use it, as os.Args then holds the test runner's flags).
func Args(args ...string) Option { return func(o *options) { o.args, o.argsSet = args, true } }

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

// Logger sets the logger of every part (default: cmd.NewLogger on stderr
// with --log_level and --log_format). At debug level the service logs one
// line per request served and per call and attempt made
// (package middleware).
func Logger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// ServerOptions passes further options to the server.
func ServerOptions(so ...server.Option) Option {
	return func(o *options) { o.serverOpts = append(o.serverOpts, so...) }
}

// ClientOptions passes further options to the client.
func ClientOptions(co ...client.Option) Option {
	return func(o *options) { o.clientOpts = append(o.clientOpts, co...) }
}

// ErrHelp is returned by NewService when --help was asked for (and printed).
var ErrHelp = errors.New("beacon: help shown")

// Service is a server, a client and the registry and selector they share.
type Service struct {
	o       options
	cfg     cmd.Config
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

// NewService parses flags and environment, connects to the registry (bounded
// by DefaultRegistryTimeout) and builds the server and client. It starts
// nothing. When --help was given it prints help and returns ErrHelp: the
// program should exit successfully.
func NewService(opts ...Option) (*Service, error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	args := os.Args
	if o.argsSet {
		args = append([]string{o.name}, o.args...)
	}
	cfg, help, err := cmd.Parse(cmd.App{Name: o.name, Version: o.version}, args, o.flags, o.action)
	if err != nil {
		return nil, err
	}
	if help {
		return nil, ErrHelp
	}
	if o.log == nil {
		// The one format of Beacon's programs (the CLI's too): --log_level,
		// --log_format, on stderr.
		if o.log, err = cmd.NewLogger(os.Stderr, cfg.LogLevel, cfg.LogFormat); err != nil {
			return nil, err
		}
	}
	// TLS flags (cmd/tls.go): after the options given in code, which they
	// override.
	tlsServer, tlsClient, err := cfg.TLS.Options(o.name != "", o.log)
	if err != nil {
		return nil, err
	}
	s := &Service{o: o, cfg: cfg}
	// Explicit flags/env override code, code overrides defaults.
	pick := func(flag string, code, fromFlags time.Duration) time.Duration {
		if cfg.Set[flag] || code == 0 {
			return fromFlags
		}
		return code
	}
	ttl := pick(cmd.FlagRegisterTTL, o.ttl, cfg.RegisterTTL)
	interval := pick(cmd.FlagRegisterInterval, o.interval, cfg.RegisterInterval)
	address := cfg.ServerAddress
	if !cfg.Set[cmd.FlagServerAddress] && o.address != "" {
		address = o.address
	}

	s.reg = o.reg
	if s.reg == nil {
		name, addrs := cfg.Registry, cfg.RegistryAddress
		if !cfg.Set[cmd.FlagRegistry] && o.registryName != "" {
			name = o.registryName
		}
		if !cfg.Set[cmd.FlagRegistryAddress] && len(o.registryAddrs) > 0 {
			addrs = o.registryAddrs
		}
		ctx, cancel := context.WithTimeout(context.Background(), DefaultRegistryTimeout)
		s.reg, err = cmd.NewRegistry(ctx, name, addrs, o.log, cfg.RegistryOptions()...)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("beacon: registry %s: %w", name, err)
		}
		s.ownsReg = true
	}
	s.sel = o.sel
	if s.sel == nil {
		strategy, err := cmd.NewStrategy(cfg.Selector)
		if err != nil {
			s.closeOwned()
			return nil, err
		}
		// The cache's empty hold follows the register TTL unless set (see cmd).
		hold := ttl
		if cfg.Set[cmd.FlagRegistryEmptyHold] {
			hold = cfg.RegistryEmptyHold
		}
		s.sel = selector.New(s.reg, selector.WithStrategy(strategy), selector.WithLogger(o.log),
			selector.WithCacheOptions(cache.WithEmptyHold(hold)))
		s.ownsSel = true
	}
	copts := []client.Option{client.Retries(cfg.ClientRetries), client.RequestTimeout(cfg.ClientRequestTimeout), client.Logger(o.log)}
	debug := o.log.Enabled(context.Background(), slog.LevelDebug)
	if debug { // one line per call and per attempt
		copts = append(copts, client.WithInterceptors(middleware.ClientLog(o.log)), client.WithAttemptInterceptors(middleware.AttemptLog(o.log)))
	}
	s.cli = client.New(s.sel, append(copts, append(o.clientOpts, tlsClient...)...)...)
	if o.name != "" {
		sopts := []server.Option{server.Name(o.name), server.Version(o.version), server.Metadata(o.metadata),
			server.Address(address), server.Registry(s.reg), server.RegisterTTL(ttl), server.RegisterInterval(interval),
			server.Logger(o.log)}
		if o.advertise != "" {
			sopts = append(sopts, server.Advertise(o.advertise))
		}
		if debug { // one line per request
			sopts = append(sopts, server.WithInterceptors(middleware.ServerLog(o.log)))
		}
		if s.srv, err = server.New(append(append(sopts, o.serverOpts...), tlsServer...)...); err != nil {
			s.closeOwned()
			return nil, err
		}
	}
	return s, nil
}

// Name returns the service name.
func (s *Service) Name() string { return s.o.name }

// Config returns the settings read from flags and environment.
func (s *Service) Config() cmd.Config { return s.cfg }

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
	sctx, cancel := context.WithTimeout(context.Background(), server.DefaultShutdownTimeout+server.DefaultDrainGrace+5*time.Second)
	defer cancel()
	return s.Stop(sctx)
}
