package cmd_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/cmd"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/cache"
	"github.com/beacon-go/beacon/server"
)

func TestDefaultsComeFromTheirPackages(t *testing.T) {
	cfg, help, err := cmd.Parse(cmd.App{Name: "t"}, []string{"t"}, nil, nil)
	if err != nil || help {
		t.Fatal(err, help)
	}
	if cfg.Registry != cmd.DefaultRegistry || cfg.RegisterTTL != server.DefaultRegisterTTL ||
		cfg.RegisterInterval != server.DefaultRegisterInterval || cfg.ClientRetries != client.DefaultRetries ||
		cfg.ClientRequestTimeout != client.DefaultRequestTimeout || cfg.Selector != cmd.DefaultSelector ||
		cfg.ServerAddress != server.DefaultAddress || cfg.RegistryEmptyHold != server.DefaultRegisterTTL {
		t.Fatalf("defaults %+v", cfg)
	}
	if cache.DefaultEmptyHold != server.DefaultRegisterTTL {
		t.Errorf("cache.DefaultEmptyHold %v, want the default register TTL %v", cache.DefaultEmptyHold, server.DefaultRegisterTTL)
	}
	var out bytes.Buffer
	_, help, err = cmd.Parse(cmd.App{Name: "t", Output: &out}, []string{"t", "--help"}, nil, nil)
	if err != nil || !help {
		t.Fatalf("--help: help=%v err=%v", help, err)
	}
	for _, want := range []string{"(default: 15s)", "(default: 5s)", "(default: 2)", "BEACON_REGISTRY", "MICRO_REGISTRY",
		"--registry_empty_hold", "BEACON_REGISTRY_EMPTY_HOLD", "MICRO_REGISTRY_EMPTY_HOLD"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q:\n%s", want, out.String())
		}
	}
}

func TestSources(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want func(cmd.Config) bool
	}{
		{"flag", nil, []string{"--registry", "etcd", "--registry_address", "a:1, b:2"}, func(c cmd.Config) bool {
			return c.Registry == "etcd" && strings.Join(c.RegistryAddress, ",") == "a:1,b:2" && c.Set[cmd.FlagRegistry]
		}},
		{"beacon env", map[string]string{"BEACON_REGISTRY": "consul"}, nil, func(c cmd.Config) bool { return c.Registry == "consul" }},
		{"micro env", map[string]string{"MICRO_REGISTRY": "etcd", "MICRO_REGISTER_TTL": "30"}, nil, func(c cmd.Config) bool {
			return c.Registry == "etcd" && c.RegisterTTL == 30*time.Second && c.Set[cmd.FlagRegisterTTL]
		}},
		{"beacon env beats micro env", map[string]string{"BEACON_REGISTRY": "consul", "MICRO_REGISTRY": "etcd"}, nil,
			func(c cmd.Config) bool { return c.Registry == "consul" }},
		{"flag beats env", map[string]string{"BEACON_SELECTOR": "random"}, []string{"--selector", "roundrobin"},
			func(c cmd.Config) bool { return c.Selector == "roundrobin" }},
		{"durations", nil, []string{"--register_ttl", "1m", "--register_interval", "20", "--client_request_timeout", "250ms"},
			func(c cmd.Config) bool {
				return c.RegisterTTL == time.Minute && c.RegisterInterval == 20*time.Second && c.ClientRequestTimeout == 250*time.Millisecond
			}},
		{"unset is not set", nil, nil, func(c cmd.Config) bool { return !c.Set[cmd.FlagRegistry] && !c.Set[cmd.FlagRegisterTTL] }},
		{"empty hold", nil, []string{"--registry_empty_hold", "30"}, func(c cmd.Config) bool {
			return c.RegistryEmptyHold == 30*time.Second && c.Set[cmd.FlagRegistryEmptyHold]
		}},
		{"empty hold beacon env", map[string]string{"BEACON_REGISTRY_EMPTY_HOLD": "2s500ms"}, nil, func(c cmd.Config) bool {
			return c.RegistryEmptyHold == 2500*time.Millisecond && c.Set[cmd.FlagRegistryEmptyHold]
		}},
		{"empty hold micro env, 0 disables", map[string]string{"MICRO_REGISTRY_EMPTY_HOLD": "0"}, nil, func(c cmd.Config) bool {
			return c.RegistryEmptyHold == 0 && c.Set[cmd.FlagRegistryEmptyHold]
		}},
		{"empty hold defaults to the register TTL", nil, []string{"--register_ttl", "1m"}, func(c cmd.Config) bool {
			return c.RegistryEmptyHold == time.Minute && !c.Set[cmd.FlagRegistryEmptyHold]
		}},
		{"empty hold beats the register TTL", nil, []string{"--register_ttl", "1m", "--registry_empty_hold", "5s"}, func(c cmd.Config) bool {
			return c.RegistryEmptyHold == 5*time.Second && c.RegisterTTL == time.Minute
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			cfg, _, err := cmd.Parse(cmd.App{Name: "t"}, append([]string{"t"}, tc.args...), nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !tc.want(cfg) {
				t.Fatalf("config %+v", cfg)
			}
		})
	}
}

func TestBadValues(t *testing.T) {
	tests := []struct {
		args []string
		want error
		text string
	}{
		{[]string{"--registry", "zookeeper"}, cmd.ErrUnknownRegistry, "consul, etcd, kubernetes, mdns, memory, static"},
		{[]string{"--selector", "leastconn"}, cmd.ErrUnknownSelector, "random, roundrobin"},
		{[]string{"--register_ttl", "soon"}, nil, "neither a duration"},
		{[]string{"--registry_empty_hold", "soon"}, nil, "neither a duration"},
		{[]string{"--registry_empty_hold", "-1s"}, nil, "negative duration"},
	}
	for _, tc := range tests {
		_, _, err := cmd.Parse(cmd.App{Name: "t"}, append([]string{"t"}, tc.args...), nil, nil)
		if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%v: err = %v, want %v mentioning %q", tc.args, err, tc.want, tc.text)
		}
	}
	if _, err := cmd.NewRegistry(context.Background(), "nope", nil, nil); !errors.Is(err, cmd.ErrUnknownRegistry) {
		t.Errorf("NewRegistry(nope) = %v", err)
	}
}

func TestAppFlagsNotClobbered(t *testing.T) {
	var got string
	var n int
	cfg, _, err := cmd.Parse(cmd.App{Name: "t"}, []string{"t", "--greeting", "hi", "--registry", "memory", "--count", "3"},
		[]cli.Flag{&cli.StringFlag{Name: "greeting"}, &cli.IntFlag{Name: "count"}},
		func(c *cli.Context) error { got, n = c.String("greeting"), c.Int("count"); return nil })
	if err != nil || got != "hi" || n != 3 || cfg.Registry != "memory" {
		t.Fatalf("app flags: %q %d %+v %v", got, n, cfg, err)
	}
}

// TestRanges: durations and counts beyond their bounds (or beyond what a
// time.Duration holds) are refused with an error naming the flag and the
// bound; values at the bound are accepted.
func TestRanges(t *testing.T) {
	maxTTL, maxTimeout := server.MaxRegisterTTL.String(), cmd.MaxClientRequestTimeout.String()
	tests := []struct {
		name string
		env  map[string]string
		args []string
		ok   func(cmd.Config) bool // nil: want an error
		is   error                 // the error matches it, if not nil
		text []string              // the error mentions each
	}{
		{"TTL seconds at the bound", nil, []string{"--register_ttl", "86400"}, func(c cmd.Config) bool { return c.RegisterTTL == server.MaxRegisterTTL }, nil, nil},
		{"TTL duration at the bound", nil, []string{"--register_ttl", maxTTL}, func(c cmd.Config) bool { return c.RegisterTTL == server.MaxRegisterTTL }, nil, nil},
		{"TTL seconds above the bound", nil, []string{"--register_ttl", "86401"}, nil, nil, []string{"register_ttl", maxTTL}},
		{"TTL duration above the bound", nil, []string{"--register_ttl", "24h0m1s"}, nil, nil, []string{"register_ttl", maxTTL}},
		{"TTL seconds overflowing a duration", nil, []string{"--register_ttl", "20000000000"}, nil, nil, []string{"register_ttl", maxTTL}},
		{"TTL seconds overflowing int64", nil, []string{"--register_ttl", "99999999999999999999"}, nil, nil, []string{"register_ttl", maxTTL}},
		{"TTL duration overflowing", nil, []string{"--register_ttl", "9999999999h"}, nil, nil, []string{"register_ttl", maxTTL}},
		{"TTL from the environment", map[string]string{"MICRO_REGISTER_TTL": "20000000000"}, nil, nil, nil, []string{"register_ttl", maxTTL}},
		{"negative TTL", nil, []string{"--register_ttl", "-5"}, nil, nil, []string{"register_ttl", "negative"}},
		{"interval above the bound", nil, []string{"--register_interval", "25h"}, nil, nil, []string{"register_interval", maxTTL}},
		{"timeout at the bound", nil, []string{"--client_request_timeout", "3600"}, func(c cmd.Config) bool { return c.ClientRequestTimeout == cmd.MaxClientRequestTimeout }, nil, nil},
		{"timeout above the bound", nil, []string{"--client_request_timeout", "3601"}, nil, nil, []string{"client_request_timeout", maxTimeout}},
		{"retries at the bound", nil, []string{"--client_retries", "100"}, func(c cmd.Config) bool { return c.ClientRetries == cmd.MaxClientRetries }, nil, nil},
		{"retries above the bound", nil, []string{"--client_retries", "101"}, nil, cmd.ErrOutOfRange, []string{"--client_retries 101", "0 to 100"}},
		{"negative retries", map[string]string{"BEACON_CLIENT_RETRIES": "-1"}, nil, nil, cmd.ErrOutOfRange, []string{"--client_retries -1", "0 to 100"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			cfg, _, err := cmd.Parse(cmd.App{Name: "t", Output: io.Discard}, append([]string{"t"}, tc.args...), nil, nil)
			if tc.ok != nil {
				if err != nil || !tc.ok(cfg) {
					t.Fatalf("config %+v, err %v", cfg, err)
				}
				return
			}
			if err == nil || (tc.is != nil && !errors.Is(err, tc.is)) {
				t.Fatalf("err = %v, want an error matching %v", err, tc.is)
			}
			for _, s := range tc.text {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
}

func TestLogFlags(t *testing.T) {
	tests := []struct {
		args    []string
		env     map[string]string
		level   slog.Level
		format  string
		wantErr bool
	}{
		{nil, nil, slog.LevelInfo, "text", false},
		{[]string{"--log_level", "debug", "--log_format", "json"}, nil, slog.LevelDebug, "json", false},
		{nil, map[string]string{"MICRO_LOG_LEVEL": "WARN"}, slog.LevelWarn, "text", false},
		{nil, map[string]string{"BEACON_LOG_FORMAT": "json"}, slog.LevelInfo, "json", false},
		{[]string{"--log_level", "loud"}, nil, 0, "", true},
		{[]string{"--log_format", "xml"}, nil, 0, "", true},
	}
	for _, tc := range tests {
		for k, v := range tc.env {
			t.Setenv(k, v)
		}
		cfg, _, err := cmd.Parse(cmd.App{Name: "t", Output: io.Discard}, append([]string{"t"}, tc.args...), nil, nil)
		if tc.wantErr {
			if !errors.Is(err, cmd.ErrBadLog) {
				t.Errorf("%v: err = %v, want ErrBadLog", tc.args, err)
			}
			continue
		}
		if err != nil || cfg.LogLevel != tc.level || cfg.LogFormat != tc.format {
			t.Errorf("%v %v: level %v format %q err %v; want %v %q", tc.args, tc.env, cfg.LogLevel, cfg.LogFormat, err, tc.level, tc.format)
		}
		var buf bytes.Buffer
		log, err := cmd.NewLogger(&buf, cfg.LogLevel, cfg.LogFormat)
		if err != nil {
			t.Fatal(err)
		}
		log.Warn("hello", "k", "v")
		want := `level=WARN msg=hello k=v`
		if tc.format == "json" {
			want = `"level":"WARN","msg":"hello","k":"v"`
		}
		if !strings.Contains(buf.String(), want) {
			t.Errorf("%s log line %q lacks %q", tc.format, buf.String(), want)
		}
		for k := range tc.env {
			os.Unsetenv(k)
		}
	}
}

// TestMDNSKey: the key comes from the flag or either variable, and reaches
// the mdns registry (a key too short fails before any socket is opened).
func TestMDNSKey(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		args []string
	}{
		{nil, []string{"--registry_mdns_key", "k1"}},
		{map[string]string{"BEACON_REGISTRY_MDNS_KEY": "k1"}, nil},
		{map[string]string{"MICRO_REGISTRY_MDNS_KEY": "k1"}, nil},
		{map[string]string{"BEACON_REGISTRY_MDNS_KEY": "k1", "MICRO_REGISTRY_MDNS_KEY": "k2"}, nil},
	} {
		for k, v := range tc.env {
			t.Setenv(k, v)
		}
		cfg, _, err := cmd.Parse(cmd.App{Name: "t"}, append([]string{"t"}, tc.args...), nil, nil)
		if err != nil || cfg.RegistryMDNSKey != "k1" || !cfg.Set[cmd.FlagRegistryMDNSKey] {
			t.Fatalf("%v %v: key %q set %v, %v", tc.env, tc.args, cfg.RegistryMDNSKey, cfg.Set[cmd.FlagRegistryMDNSKey], err)
		}
		for k := range tc.env {
			os.Unsetenv(k)
		}
		_, err = cmd.NewRegistry(context.Background(), "mdns", nil, nil, cfg.RegistryOptions()...)
		if !errors.Is(err, registry.ErrInvalid) || !strings.Contains(err.Error(), "mdns.key") {
			t.Fatalf("mdns registry with a 2-byte key: %v", err)
		}
	}
	var out bytes.Buffer
	t.Setenv("BEACON_REGISTRY_MDNS_KEY", "secret-secret-secret")
	cmd.Parse(cmd.App{Name: "t", Output: &out}, []string{"t", "--help"}, nil, nil)
	if !strings.Contains(out.String(), "BEACON_REGISTRY_MDNS_KEY") || strings.Contains(out.String(), "secret-secret") {
		t.Errorf("help shows the key or misses its variable:\n%s", out.String())
	}
}
