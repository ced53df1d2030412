package cmd_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/cmd"
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
		{[]string{"--registry", "zookeeper"}, cmd.ErrUnknownRegistry, "consul, etcd, mdns, memory"},
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
