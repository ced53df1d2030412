// Package cmd turns command-line flags and environment variables into
// Beacon's settings, and names the registry backends and selector
// strategies. It is the only package that imports github.com/urfave/cli/v2.
//
// Every standard flag has three sources, highest first: the flag itself,
// BEACON_<NAME>, and go-micro's MICRO_<NAME>. Defaults come from the
// packages that own them (server.DefaultRegisterTTL, ...), so help text and
// behaviour cannot disagree. Durations accept Go syntax ("15s", "1m") or, as
// go-micro's flags did, a plain number of seconds ("15"). Values are
// bounded (server.MaxRegisterTTL, MaxClientRequestTimeout, MaxClientRetries):
// one out of range, or a number of seconds too large for a time.Duration, is
// an error naming the flag and the bound.
//
// --registry_empty_hold sets how long the selector's cache keeps serving
// the last nodes of a service when news that it has none may come from a
// registry that restarted empty (see registry/cache, cache.WithEmptyHold).
// Unless set, it is the register TTL: a restarted registry has every live
// server again within one register interval. 0 disables the hold.
//
// An application adds its own flags beside these (Parse's extra argument);
// they are parsed in the same pass and are not clobbered.
package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/consul"
	"github.com/beacon-go/beacon/registry/etcd"
	"github.com/beacon-go/beacon/registry/kubernetes"
	"github.com/beacon-go/beacon/registry/mdns"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/registry/static"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/server"
)

// Flag and Context are urfave/cli's, re-exported so that applications can
// declare flags for beacon.Flags and read them in beacon.Action.
type (
	Flag    = cli.Flag
	Context = cli.Context
)

// Names of the standard flags.
const (
	FlagRegistry             = "registry"
	FlagRegistryAddress      = "registry_address"
	FlagRegisterTTL          = "register_ttl"
	FlagRegisterInterval     = "register_interval"
	FlagServerAddress        = "server_address"
	FlagClientRetries        = "client_retries"
	FlagClientRequestTimeout = "client_request_timeout"
	FlagSelector             = "selector"
	FlagRegistryEmptyHold    = "registry_empty_hold"
	FlagRegistryMDNSKey      = "registry_mdns_key"
)

// DefaultRegistry is the registry used when none is named.
const DefaultRegistry = "mdns"

// DefaultSelector is the selector strategy used when none is named.
const DefaultSelector = "leastloaded"

// Bounds of the client's flags, read from the client package (the register
// TTL and interval are bounded by server.MaxRegisterTTL).
const (
	MaxClientRetries        = client.MaxRetries
	MaxClientRequestTimeout = client.MaxRequestTimeout
)

// Errors.
var (
	ErrUnknownRegistry = errors.New("cmd: unknown registry")
	ErrUnknownSelector = errors.New("cmd: unknown selector")
	ErrOutOfRange      = errors.New("cmd: value out of range")
)

// Config holds the standard settings after parsing.
type Config struct {
	Registry             string
	RegistryAddress      []string
	RegisterTTL          time.Duration
	RegisterInterval     time.Duration
	ServerAddress        string
	ClientRetries        int
	ClientRequestTimeout time.Duration
	Selector             string
	// RegistryEmptyHold is the selector cache's empty hold; unless set
	// explicitly it is RegisterTTL.
	RegistryEmptyHold time.Duration
	// RegistryMDNSKey signs and checks mdns records (mdns.WithKey) when
	// not empty.
	RegistryMDNSKey string
	// LogLevel and LogFormat: see NewLogger.
	LogLevel  slog.Level
	LogFormat string
	// go-micro's server flags and the drain grace.
	ServerAdvertise, ServerID, ServerName, ServerVersion string
	ServerMetadata                                       map[string]string
	DrainGrace                                           time.Duration
	// TLS holds the TLS flags (tls.go); TLS.Options turns them into
	// server and client options.
	TLS TLSConfig
	// RegistrySecurity holds the registry's TLS and credential flags
	// (registry_security.go); pass it to NewRegistry with
	// WithRegistrySecurity.
	RegistrySecurity RegistrySecurity
	// Set tells which settings were given explicitly (flag or env), by flag
	// name; the others hold defaults.
	Set map[string]bool
}

func envs(name string) []string {
	u := strings.ToUpper(name)
	return []string{"BEACON_" + u, "MICRO_" + u}
}

// Flags returns the standard flags. Each call returns new values.
func Flags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{Name: FlagRegistry, EnvVars: envs(FlagRegistry), Value: DefaultRegistry,
			Usage: "service registry: " + strings.Join(RegistryNames(), ", ")},
		&cli.StringFlag{Name: FlagRegistryAddress, EnvVars: envs(FlagRegistryAddress),
			Usage: "comma-separated registry addresses (host:port)"},
		&cli.GenericFlag{Name: FlagRegisterTTL, EnvVars: envs(FlagRegisterTTL), Value: newDuration(server.DefaultRegisterTTL, server.MaxRegisterTTL),
			Usage: "time to live of a registration (duration, or seconds; at most " + server.MaxRegisterTTL.String() + ")"},
		&cli.GenericFlag{Name: FlagRegisterInterval, EnvVars: envs(FlagRegisterInterval), Value: newDuration(server.DefaultRegisterInterval, server.MaxRegisterTTL),
			Usage: "interval of re-registration; must be below the TTL (duration, or seconds)"},
		&cli.StringFlag{Name: FlagServerAddress, EnvVars: envs(FlagServerAddress), Value: server.DefaultAddress,
			Usage: "address the server listens on"},
		&cli.IntFlag{Name: FlagClientRetries, EnvVars: envs(FlagClientRetries), Value: client.DefaultRetries,
			Usage: "retries of a call on another node after a transport error (0 to " + strconv.Itoa(MaxClientRetries) + ")"},
		&cli.GenericFlag{Name: FlagClientRequestTimeout, EnvVars: envs(FlagClientRequestTimeout), Value: newDuration(client.DefaultRequestTimeout, MaxClientRequestTimeout),
			Usage: "timeout of one call attempt (duration, or seconds; at most " + MaxClientRequestTimeout.String() + ")"},
		&cli.StringFlag{Name: FlagSelector, EnvVars: envs(FlagSelector), Value: DefaultSelector,
			Usage: "node selection strategy: " + strings.Join(SelectorNames(), ", ")},
		&cli.GenericFlag{Name: FlagRegistryEmptyHold, EnvVars: envs(FlagRegistryEmptyHold), Value: newDuration(server.DefaultRegisterTTL, server.MaxRegisterTTL),
			DefaultText: "the register TTL",
			Usage:       "how long the last nodes of a service keep serving when the registry may have restarted empty; 0: not at all (duration, or seconds)"},
		&cli.StringFlag{Name: FlagRegistryMDNSKey, EnvVars: envs(FlagRegistryMDNSKey), DefaultText: "none",
			Usage: "mdns: shared key (at least 16 bytes) to sign records and drop those not signed with it; prefer the environment to the command line"},
	}, append(append(append(serverFlags(), logFlags()...), tlsFlags()...), registrySecurityFlags()...)...)
}

// ConfigFrom reads the standard settings from a parsed context and checks
// the registry and selector names and the number of retries (an error
// matching ErrOutOfRange past MaxClientRetries).
func ConfigFrom(c *cli.Context) (Config, error) {
	cfg := Config{
		Registry:             c.String(FlagRegistry),
		RegisterTTL:          durationOf(c, FlagRegisterTTL, server.DefaultRegisterTTL),
		RegisterInterval:     durationOf(c, FlagRegisterInterval, server.DefaultRegisterInterval),
		ServerAddress:        c.String(FlagServerAddress),
		ClientRetries:        c.Int(FlagClientRetries),
		ClientRequestTimeout: durationOf(c, FlagClientRequestTimeout, client.DefaultRequestTimeout),
		Selector:             c.String(FlagSelector),
		RegistryEmptyHold:    durationOf(c, FlagRegistryEmptyHold, server.DefaultRegisterTTL),
		RegistryMDNSKey:      c.String(FlagRegistryMDNSKey),
		LogFormat:            c.String(FlagLogFormat),
		Set:                  map[string]bool{},
	}
	var err error
	if cfg.LogLevel, err = ParseLevel(c.String(FlagLogLevel)); err != nil {
		return cfg, err
	}
	if _, err := NewLogger(io.Discard, cfg.LogLevel, cfg.LogFormat); err != nil {
		return cfg, err
	}
	for _, a := range strings.Split(c.String(FlagRegistryAddress), ",") {
		if a = strings.TrimSpace(a); a != "" {
			cfg.RegistryAddress = append(cfg.RegistryAddress, a)
		}
	}
	for _, n := range []string{FlagRegistry, FlagRegistryAddress, FlagRegisterTTL, FlagRegisterInterval,
		FlagServerAddress, FlagClientRetries, FlagClientRequestTimeout, FlagSelector, FlagLogLevel, FlagLogFormat} {
		cfg.Set[n] = c.IsSet(n)
	}
	cfg.Set[FlagRegistryEmptyHold] = c.IsSet(FlagRegistryEmptyHold)
	cfg.Set[FlagRegistryMDNSKey] = c.IsSet(FlagRegistryMDNSKey)
	if !cfg.Set[FlagRegistryEmptyHold] {
		cfg.RegistryEmptyHold = cfg.RegisterTTL
	}
	if err := tlsFrom(c, &cfg); err != nil {
		return cfg, err
	}
	if err := serverFrom(c, &cfg); err != nil {
		return cfg, err
	}
	if err := registrySecurityFrom(c, &cfg); err != nil {
		return cfg, err
	}
	if _, ok := registries()[cfg.Registry]; !ok {
		return cfg, fmt.Errorf("%w %q: valid registries are %s", ErrUnknownRegistry, cfg.Registry, strings.Join(RegistryNames(), ", "))
	}
	if _, ok := selector.Strategies()[cfg.Selector]; !ok {
		return cfg, fmt.Errorf("%w %q: valid selectors are %s", ErrUnknownSelector, cfg.Selector, strings.Join(SelectorNames(), ", "))
	}
	if cfg.ClientRetries < 0 || cfg.ClientRetries > MaxClientRetries {
		return cfg, fmt.Errorf("%w: --%s %d, want 0 to %d", ErrOutOfRange, FlagClientRetries, cfg.ClientRetries, MaxClientRetries)
	}
	return cfg, nil
}

// App describes the program for Parse and NewService.
type App struct {
	// Name, Usage and Version head the help text (--help); Version also
	// answers --version. Name defaults to the program's file name.
	Name, Usage, Version string
	// Output receives help text (default: stdout of the process via cli).
	Output io.Writer
	// Flags are the program's own flags (NewService), parsed with Beacon's;
	// Action runs after the parse with the parsed context.
	Flags  []cli.Flag
	Action func(*cli.Context) error
	// Args are the arguments NewService parses, without the program name:
	// nil means os.Args[1:], an empty non-nil slice none (the environment
	// still applies).
	Args []string
	// Registry and RegistryAddress are the program's choice of registry
	// (NewService), which --registry and --registry_address override
	// (default mdns).
	Registry        string
	RegistryAddress []string
}

// Parse parses args (args[0] is the program name) with the standard flags
// plus extra. On success action, if not nil, runs with the parsed context.
// helpShown is true when --help was asked for: nothing else ran.
func Parse(app App, args []string, extra []cli.Flag, action func(*cli.Context) error) (cfg Config, helpShown bool, err error) {
	ran := false
	usage := app.Usage
	if usage == "" {
		usage = "a Beacon service (flags: see below; each also reads BEACON_<NAME> and MICRO_<NAME>)"
	}
	a := &cli.App{
		Name:            app.Name,
		Usage:           usage,
		Version:         app.Version,
		HideVersion:     app.Version == "",
		HideHelpCommand: true,
		Flags:           append(Flags(), extra...),
		ExitErrHandler:  func(*cli.Context, error) {}, // never os.Exit from a library
		Action: func(c *cli.Context) error {
			ran = true
			var err error
			if cfg, err = ConfigFrom(c); err != nil {
				return err
			}
			if action != nil {
				return action(c)
			}
			return nil
		},
	}
	if app.Output != nil {
		a.Writer, a.ErrWriter = app.Output, app.Output
	}
	if len(args) == 0 {
		args = []string{app.Name}
	}
	if err := a.Run(args); err != nil {
		return cfg, false, err
	}
	return cfg, !ran, nil
}

// RegistryFactory makes a registry from addresses (empty: the backend's
// default).
type RegistryFactory func(ctx context.Context, addrs []string, log *slog.Logger) (registry.Registry, error)

// MDNSKey makes an mdns registry sign its records and drop those not
// signed with key (mdns.WithKey); empty: no key.
func MDNSKey(key string) RegistryOption {
	return func(o *registryOptions) { o.mdnsKey = []byte(key) }
}

// RegistryOptions returns the backend settings of the configuration, for
// NewRegistry.
func (c Config) RegistryOptions() []RegistryOption {
	return []RegistryOption{MDNSKey(c.RegistryMDNSKey), WithRegistrySecurity(c.RegistrySecurity)}
}

// registries is the table of registry names; explicit code, no init()
// registration.
func registries(ro ...RegistryOption) map[string]RegistryFactory {
	var o registryOptions
	for _, f := range ro {
		f(&o)
	}
	return map[string]RegistryFactory{
		"mdns": func(ctx context.Context, addrs []string, log *slog.Logger) (registry.Registry, error) {
			return mdns.New(ctx, mdns.WithAddrs(addrs...), mdns.WithLogger(log), mdns.WithKey(o.mdnsKey))
		},
		"etcd": func(ctx context.Context, addrs []string, log *slog.Logger) (registry.Registry, error) {
			return etcd.New(ctx, etcd.WithAddrs(addrs...), etcd.WithLogger(log))
		},
		"consul": func(ctx context.Context, addrs []string, log *slog.Logger) (registry.Registry, error) {
			return consul.New(ctx, consul.WithAddrs(addrs...), consul.WithLogger(log))
		},
		"memory": func(_ context.Context, _ []string, log *slog.Logger) (registry.Registry, error) {
			return memory.New(memory.WithLogger(log)), nil
		},
		// kubernetes: --registry_address items namespace=<ns>, kubeconfig=<path>,
		// context=<name>, port=<port name>; none: in-cluster or $KUBECONFIG.
		// Note: this entry makes cmd (and so every Beacon program) link client-go.
		"kubernetes": func(_ context.Context, addrs []string, log *slog.Logger) (registry.Registry, error) {
			return kubernetes.New(kubernetes.WithAddress(addrs...), kubernetes.WithLogger(log))
		},
		// static: --registry_address is an inline list
		// ("greeter=127.0.0.1:8001,127.0.0.1:8002;orders=127.0.0.1:9000"; the
		// commas split above are put back) or a file ("file:<path>", or a path
		// ending in .json, .yaml or .yml), watched and reloaded.
		"static": func(_ context.Context, addrs []string, log *slog.Logger) (registry.Registry, error) {
			return static.New(static.WithAddress(strings.Join(addrs, ",")), static.WithLogger(log))
		},
	}
}

// RegistryNames lists the registry names, sorted.
func RegistryNames() []string {
	var names []string
	for n := range registries() {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// SelectorNames lists the selector strategy names, sorted.
func SelectorNames() []string {
	var names []string
	for n := range selector.Strategies() {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// NewRegistry makes the named registry. An unknown name is an error matching
// ErrUnknownRegistry that lists the valid names. etcd and consul get their
// TLS settings and credentials from WithRegistrySecurity and, for what it
// leaves unset, from their own environment variables
// (RegistrySecurity.Resolve); settings that do not fit the registry are an
// error matching ErrRegistrySecurity.
func NewRegistry(ctx context.Context, name string, addrs []string, log *slog.Logger, opts ...RegistryOption) (registry.Registry, error) {
	f, ok := registries(opts...)[name]
	if !ok {
		return nil, fmt.Errorf("%w %q: valid registries are %s", ErrUnknownRegistry, name, strings.Join(RegistryNames(), ", "))
	}
	if log == nil {
		log = slog.Default()
	}
	var o registryOptions
	for _, opt := range opts {
		opt(&o)
	}
	sec, err := o.sec.Resolve(name, addrs)
	if err != nil {
		return nil, err
	}
	if sf, ok := securedRegistries()[name]; ok {
		if src := sec.redacted(); len(src) > 0 {
			log.Debug("registry TLS and credentials", append([]any{"registry", name}, src...)...)
		}
		return sf(ctx, addrs, sec, log)
	}
	return f(ctx, addrs, log)
}

// NewStrategy returns the named selector strategy.
func NewStrategy(name string) (selector.Strategy, error) {
	f, ok := selector.Strategies()[name]
	if !ok {
		return nil, fmt.Errorf("%w %q: valid selectors are %s", ErrUnknownSelector, name, strings.Join(SelectorNames(), ", "))
	}
	return f(), nil
}

// durationValue is a cli.Generic duration from 0 (or above 0: positive) to
// max that also accepts whole seconds.
type durationValue struct {
	d, max   time.Duration
	positive bool
}

func newDuration(d, max time.Duration) *durationValue { return &durationValue{d: d, max: max} }

// DurationFlag returns a duration flag like the standard ones: Go syntax
// ("15s") or whole seconds ("15"), at most max, and above zero when
// positive; read it with DurationOf.
func DurationFlag(name string, def, max time.Duration, positive bool, usage string) cli.Flag {
	return &cli.GenericFlag{Name: name, EnvVars: envs(name), Value: &durationValue{d: def, max: max, positive: positive}, Usage: usage}
}

// DurationOf reads a flag made by DurationFlag (or a standard duration
// flag); def when the context has no such flag.
func DurationOf(c *cli.Context, name string, def time.Duration) time.Duration {
	return durationOf(c, name, def)
}

func durationOf(c *cli.Context, name string, def time.Duration) time.Duration {
	if v, ok := c.Generic(name).(*durationValue); ok && v != nil {
		return v.d
	}
	return def
}

// Set parses a duration ("15s") or a whole number of seconds ("15"). A
// negative value, or one above the maximum (a number of seconds too large
// for a time.Duration included), is an error that gives the maximum; the
// flag package adds the flag's name.
func (v *durationValue) Set(s string) error {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		switch {
		case n < 0:
			return fmt.Errorf("negative duration %q", s)
		case n == 0 && v.positive:
			return fmt.Errorf("%w: %q, want more than 0", ErrOutOfRange, s)
		case err != nil || n > int64(v.max/time.Second):
			return fmt.Errorf("%w: %s seconds, want at most %v", ErrOutOfRange, s, v.max)
		}
		v.d = time.Duration(n) * time.Second
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is neither a duration (15s) nor a number of seconds; want at most %v", s, v.max)
	}
	if d < 0 {
		return fmt.Errorf("negative duration %q", s)
	}
	if d == 0 && v.positive {
		return fmt.Errorf("%w: %q, want more than 0", ErrOutOfRange, s)
	}
	if d > v.max {
		return fmt.Errorf("%w: %v, want at most %v", ErrOutOfRange, d, v.max)
	}
	v.d = d
	return nil
}

func (v *durationValue) String() string {
	if v == nil {
		return ""
	}
	return v.d.String()
}

// serverOnly are the standard flags that only a server uses.
var serverOnly = map[string]bool{
	FlagServerAddress: true, FlagRegisterTTL: true, FlagRegisterInterval: true, FlagTLSClientAuth: true,
	FlagServerAdvertise: true, FlagServerID: true, FlagServerName: true, FlagServerVersion: true, FlagServerMetadata: true, FlagServerDrainGrace: true,
}

// ClientFlags returns the standard flags a program that only calls and
// inspects (a CLI) uses: Flags without the server's (--server_address,
// --register_ttl, --register_interval, --tls_client_auth). ConfigFrom reads
// a context parsed with them; the server's settings then hold defaults.
func ClientFlags() []cli.Flag {
	var out []cli.Flag
	for _, f := range Flags() {
		if !serverOnly[f.Names()[0]] {
			out = append(out, f)
		}
	}
	return out
}
