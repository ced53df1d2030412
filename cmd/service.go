package cmd

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/beacon-go/beacon"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/server"
	"github.com/beacon-go/beacon/tlsconfig"
)

// Names of go-micro's server flags and the drain grace.
const (
	FlagServerAdvertise  = beacon.SettingServerAdvertise
	FlagServerID         = beacon.SettingServerID
	FlagServerName       = beacon.SettingServerName
	FlagServerVersion    = beacon.SettingServerVersion
	FlagServerMetadata   = beacon.SettingServerMetadata
	FlagServerDrainGrace = beacon.SettingServerDrainGrace
)

// ErrHelp is returned by NewService when --help (or --version) was asked
// for and printed: the program should exit successfully.
var ErrHelp = errors.New("cmd: help shown")

func serverFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: FlagServerAdvertise, EnvVars: envs(FlagServerAdvertise),
			Usage: "address registered for callers (default: the listen address, with this host's IP when it listens on all)"},
		&cli.StringFlag{Name: FlagServerID, EnvVars: envs(FlagServerID), Usage: "node ID (default: the name and a random suffix)"},
		&cli.StringFlag{Name: FlagServerName, EnvVars: envs(FlagServerName), Usage: "service name (overrides the program's)"},
		&cli.StringFlag{Name: FlagServerVersion, EnvVars: envs(FlagServerVersion), Usage: "service version (overrides the program's)"},
		&cli.StringSliceFlag{Name: FlagServerMetadata, EnvVars: envs(FlagServerMetadata), Usage: "node metadata key=value (repeatable; comma-separated in the environment)"},
		&cli.GenericFlag{Name: FlagServerDrainGrace, EnvVars: envs(FlagServerDrainGrace), Value: newDuration(server.DefaultDrainGrace, server.MaxRegisterTTL),
			Usage: "how long Stop keeps serving after deregistering, while callers learn that the node left (duration, or seconds)"},
	}
}

// serverFrom reads the server flags into cfg.
func serverFrom(c *cli.Context, cfg *Config) error {
	cfg.ServerAdvertise = c.String(FlagServerAdvertise)
	cfg.ServerID = c.String(FlagServerID)
	cfg.ServerName = c.String(FlagServerName)
	cfg.ServerVersion = c.String(FlagServerVersion)
	cfg.DrainGrace = durationOf(c, FlagServerDrainGrace, server.DefaultDrainGrace)
	var err error
	if cfg.ServerMetadata, err = beacon.ParseMetadata(c.StringSlice(FlagServerMetadata)); err != nil {
		return err
	}
	for _, n := range []string{FlagServerAdvertise, FlagServerID, FlagServerName, FlagServerVersion, FlagServerMetadata, FlagServerDrainGrace} {
		cfg.Set[n] = c.IsSet(n)
	}
	return nil
}

// Options returns the beacon options of the settings given explicitly
// (on the command line or in the environment), for beacon.Explicit.
func (cfg Config) Options() []beacon.Option {
	var opts []beacon.Option
	add := func(flag string, o beacon.Option) {
		if cfg.Set[flag] {
			opts = append(opts, o)
		}
	}
	add(FlagServerAddress, beacon.Address(cfg.ServerAddress))
	add(FlagServerAdvertise, beacon.Advertise(cfg.ServerAdvertise))
	add(FlagServerID, beacon.ID(cfg.ServerID))
	add(FlagServerName, beacon.Name(cfg.ServerName))
	add(FlagServerVersion, beacon.Version(cfg.ServerVersion))
	add(FlagServerMetadata, beacon.Metadata(cfg.ServerMetadata))
	add(FlagServerDrainGrace, beacon.DrainGrace(cfg.DrainGrace))
	add(FlagRegisterTTL, beacon.RegisterTTL(cfg.RegisterTTL))
	add(FlagRegisterInterval, beacon.RegisterInterval(cfg.RegisterInterval))
	add(FlagClientRetries, beacon.Retries(cfg.ClientRetries))
	add(FlagClientRequestTimeout, beacon.RequestTimeout(cfg.ClientRequestTimeout))
	add(FlagRegistryEmptyHold, beacon.RegistryEmptyHold(cfg.RegistryEmptyHold))
	add(FlagLogLevel, beacon.LogLevel(cfg.LogLevel))
	add(FlagLogFormat, beacon.LogFormat(cfg.LogFormat))
	if cfg.Set[FlagSelector] {
		if s, err := NewStrategy(cfg.Selector); err == nil {
			opts = append(opts, beacon.Strategy(s))
		}
	}
	if cfg.TLS.Enabled() {
		opts = append(opts, beacon.TLS(tlsconfig.Files{Cert: cfg.TLS.Cert, Key: cfg.TLS.Key, CA: cfg.TLS.CA, ClientAuth: cfg.TLS.ClientAuth}))
	}
	return opts
}

// NewService is beacon.NewService with a command line: it parses args
// (app.Args; nil: os.Args[1:]; an empty, non-nil slice: none) with the
// standard flags and app.Flags, then the environment, and builds the
// service: the settings given on the command line or in the environment
// beat those of opts (see the beacon package doc), and the registry is
// the one --registry names (default mdns, or app.Registry), unless opts
// give beacon.Registry. When --help or --version was asked for it prints it
// to app.Output and returns ErrHelp. app.Action, if set, runs after the
// parse with the parsed context (the program's own flags).
func NewService(app App, opts ...beacon.Option) (*beacon.Service, error) {
	args := app.Args
	if args == nil {
		args = os.Args[1:]
	}
	name := app.Name
	if name == "" {
		name = filepath.Base(os.Args[0])
	}
	cfg, help, err := Parse(app, append([]string{name}, args...), app.Flags, app.Action)
	if err != nil {
		return nil, err
	}
	if help {
		return nil, ErrHelp
	}
	regName, addrs := cfg.Registry, cfg.RegistryAddress
	if !cfg.Set[FlagRegistry] && app.Registry != "" {
		regName = app.Registry
	}
	if !cfg.Set[FlagRegistryAddress] && len(app.RegistryAddress) > 0 {
		addrs = app.RegistryAddress
	}
	factory := func(ctx context.Context, log *slog.Logger) (registry.Registry, error) {
		r, err := NewRegistry(ctx, regName, addrs, log, cfg.RegistryOptions()...)
		if err != nil {
			return nil, &registryError{name: regName, err: err}
		}
		return r, nil
	}
	return beacon.NewService(append(opts, beacon.WithRegistryFactory(factory), beacon.Explicit(cfg.Options()...))...)
}

type registryError struct {
	name string
	err  error
}

func (e *registryError) Error() string { return "beacon: registry " + e.name + ": " + e.err.Error() }
func (e *registryError) Unwrap() error { return e.err }
