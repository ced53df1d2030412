package beacon

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/server"
)

// ErrSetting: a setting's value (from the environment or the command line)
// does not parse or is out of its bounds; the error names the setting.
var ErrSetting = errors.New("beacon: bad setting")

// EnvNames returns the environment variables of a setting, highest first:
// BEACON_<NAME> and go-micro's MICRO_<NAME> (e.g. "client_retries":
// BEACON_CLIENT_RETRIES, MICRO_CLIENT_RETRIES).
func EnvNames(setting string) []string {
	u := strings.ToUpper(setting)
	return []string{"BEACON_" + u, "MICRO_" + u}
}

// Names of the settings a Service reads from the environment (and, through
// package cmd, from the command line: --<name>).
const (
	SettingServerAddress        = "server_address"
	SettingServerAdvertise      = "server_advertise"
	SettingServerID             = "server_id"
	SettingServerName           = "server_name"
	SettingServerVersion        = "server_version"
	SettingServerMetadata       = "server_metadata"
	SettingServerDrainGrace     = "server_drain_grace"
	SettingRegisterTTL          = "register_ttl"
	SettingRegisterInterval     = "register_interval"
	SettingClientRetries        = "client_retries"
	SettingClientRequestTimeout = "client_request_timeout"
	SettingSelector             = "selector"
	SettingRegistryEmptyHold    = "registry_empty_hold"
	SettingLogLevel             = "log_level"
	SettingLogFormat            = "log_format"
	SettingTLSCert              = "tls_cert"
	SettingTLSKey               = "tls_key"
	SettingTLSCA                = "tls_ca"
	SettingTLSClientAuth        = "tls_client_auth"
)

// envSetting reads one setting's value into o.
type envSetting struct {
	name string
	set  func(o *options, v string) error
}

// envSettings is the table of settings read from the environment.
func envSettings() []envSetting {
	dur := func(max time.Duration, set func(o *options, d time.Duration)) func(*options, string) error {
		return func(o *options, v string) error {
			d, err := ParseDuration(v, max)
			if err != nil {
				return err
			}
			set(o, d)
			return nil
		}
	}
	str := func(set func(o *options, s string)) func(*options, string) error {
		return func(o *options, v string) error { set(o, v); return nil }
	}
	return []envSetting{
		{SettingServerAddress, str(func(o *options, s string) { o.address = s })},
		{SettingServerAdvertise, str(func(o *options, s string) { o.advertise = s })},
		{SettingServerID, str(func(o *options, s string) { o.id = s })},
		{SettingServerName, str(func(o *options, s string) { o.name = s })},
		{SettingServerVersion, str(func(o *options, s string) { o.version = s })},
		{SettingServerMetadata, func(o *options, v string) error {
			md, err := ParseMetadata(strings.Split(v, ","))
			if err != nil {
				return err
			}
			o.metadata = md
			return nil
		}},
		{SettingServerDrainGrace, dur(server.MaxRegisterTTL, func(o *options, d time.Duration) { o.drainGrace, o.drainSet = d, true })},
		{SettingRegisterTTL, dur(server.MaxRegisterTTL, func(o *options, d time.Duration) { o.ttl = d })},
		{SettingRegisterInterval, dur(server.MaxRegisterTTL, func(o *options, d time.Duration) { o.interval = d })},
		{SettingClientRetries, func(o *options, v string) error {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil || n < 0 || n > client.MaxRetries {
				return fmt.Errorf("%q: want 0 to %d", v, client.MaxRetries)
			}
			o.retries, o.retriesSet = n, true
			return nil
		}},
		{SettingClientRequestTimeout, dur(client.MaxRequestTimeout, func(o *options, d time.Duration) { o.reqTimeout, o.reqTimeoutSet = d, true })},
		{SettingSelector, func(o *options, v string) error {
			f, ok := selector.Strategies()[v]
			if !ok {
				return fmt.Errorf("%q: valid selectors are leastloaded, random, roundrobin", v)
			}
			o.strategy = f()
			return nil
		}},
		{SettingRegistryEmptyHold, dur(server.MaxRegisterTTL, func(o *options, d time.Duration) { o.emptyHold, o.emptyHoldSet = d, true })},
		{SettingLogLevel, func(o *options, v string) error {
			l, err := ParseLevel(v)
			if err != nil {
				return err
			}
			o.logLevel, o.logLevelSet = l, true
			return nil
		}},
		{SettingLogFormat, func(o *options, v string) error {
			if _, err := NewLogger(io.Discard, slog.LevelInfo, v); err != nil {
				return err
			}
			o.logFormat = v
			return nil
		}},
		{SettingTLSCert, str(func(o *options, s string) { o.tls.Cert = s })},
		{SettingTLSKey, str(func(o *options, s string) { o.tls.Key = s })},
		{SettingTLSCA, str(func(o *options, s string) { o.tls.CA = s })},
		{SettingTLSClientAuth, func(o *options, v string) error {
			b, err := strconv.ParseBool(strings.TrimSpace(v))
			if err != nil {
				return fmt.Errorf("%q: want true or false", v)
			}
			o.tls.ClientAuth = b
			return nil
		}},
	}
}

// readEnv applies the settings found in the environment (getenv) to o,
// marking them explicit.
func readEnv(o *options, getenv func(string) string) error {
	for _, s := range envSettings() {
		for _, name := range EnvNames(s.name) {
			v := getenv(name)
			if v == "" {
				continue
			}
			if err := s.set(o, v); err != nil {
				return fmt.Errorf("%w: %s: %v", ErrSetting, name, err)
			}
			o.explicit[s.name] = true
			break
		}
	}
	return nil
}

// ParseDuration reads a duration as the settings take it: Go syntax
// ("15s") or whole seconds ("15", as go-micro's flags did), from 0 to max.
func ParseDuration(v string, max time.Duration) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if n, err := strconv.ParseInt(v, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		switch {
		case n < 0:
			return 0, fmt.Errorf("negative duration %q", v)
		case err != nil || n > int64(max/time.Second):
			return 0, fmt.Errorf("%s seconds: want at most %v", v, max)
		}
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(v)
	switch {
	case err != nil:
		return 0, fmt.Errorf("%q is neither a duration (15s) nor a number of seconds", v)
	case d < 0:
		return 0, fmt.Errorf("negative duration %q", v)
	case d > max:
		return 0, fmt.Errorf("%v: want at most %v", d, max)
	}
	return d, nil
}

// ParseMetadata reads "k=v" pairs (go-micro's --server_metadata form).
func ParseMetadata(pairs []string) (map[string]string, error) {
	md := map[string]string{}
	for _, p := range pairs {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("metadata %q: want key=value", p)
		}
		md[k] = v
	}
	return md, nil
}

// ParseLevel reads a log level name (debug, info, warn, error;
// case-insensitive).
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(strings.TrimSpace(s))); err != nil {
		return 0, fmt.Errorf("log level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// NewLogger returns the logger of Beacon's programs, services and the CLI
// alike: slog's text (key=value) or JSON handler on w at level, so that one
// parser reads them all.
func NewLogger(w io.Writer, level slog.Leveler, format string) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: level}
	switch strings.ToLower(strings.TrimSpace(format)) {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want text or json", format)
}

// defaultLogger is the logger of a service given none.
func defaultLogger(o *options) (*slog.Logger, error) {
	return NewLogger(os.Stderr, o.logLevel, o.logFormat)
}
