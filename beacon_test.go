package beacon_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beacon-go/beacon"
	"github.com/beacon-go/beacon/cmd"
	"github.com/beacon-go/beacon/examples/greeter"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/registry/registrytest"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/server"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.DiscardHandler)

func TestServiceEndToEnd(t *testing.T) {
	reg := memory.New()
	defer reg.Close()
	var order []string
	hook := func(name string) func(context.Context) error {
		return func(context.Context) error { order = append(order, name); return nil }
	}
	svc, err := beacon.NewService(beacon.Name("greeter"), beacon.Version("1.0.0"), beacon.Registry(reg),
		beacon.Address("127.0.0.1:0"), beacon.Logger(quiet),
		beacon.RegisterTTL(2*time.Second), beacon.RegisterInterval(500*time.Millisecond),
		beacon.ServerOptions(server.DrainGrace(10*time.Millisecond)),
		beacon.BeforeStart(hook("before-start")), beacon.AfterStart(hook("after-start")),
		beacon.BeforeStop(hook("before-stop")), beacon.AfterStop(hook("after-stop")))
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Handle(&greeter.Greeter{Node: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := svc.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	rsp := new(greeter.HelloRsp)
	if err := svc.Client().Call(context.Background(), "greeter", "Greeter.Hello", &greeter.HelloReq{Name: "Ann"}, rsp); err != nil || rsp.Msg != "Hello Ann" {
		t.Fatalf("call: %v %+v", err, rsp)
	}
	got, err := reg.GetService(context.Background(), "greeter")
	if err != nil || len(got[0].Endpoints) != 1 || got[0].Endpoints[0].Name != "Greeter.Hello" || got[0].Endpoints[0].Request.Values[0].Name != "name" {
		t.Fatalf("registered %+v, %v", got, err)
	}
	if err := svc.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.GetService(context.Background(), "greeter"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("after Stop: %v", err)
	}
	want := "[before-start after-start before-stop after-stop]"
	if s := "[" + strings.Join(order, " ") + "]"; s != want {
		t.Fatalf("hooks ran %s, want %s", s, want)
	}
}

// TestPrecedence: one rule for every setting: the command line (package
// cmd) beats the environment, which beats code (ServerOptions and
// ClientOptions included), which beats the default; NoEnv ignores the
// environment.
func TestPrecedence(t *testing.T) {
	reg := memory.New()
	defer reg.Close()
	start := func(t *testing.T, env map[string]string, args []string, opts ...beacon.Option) *beacon.Service {
		t.Helper()
		getenv := func(k string) string { return env[k] }
		opts = append([]beacon.Option{beacon.Name("p"), beacon.Registry(reg), beacon.Logger(quiet), beacon.Address("127.0.0.1:0"),
			beacon.WithGetenv(getenv), beacon.DrainGrace(0)}, opts...)
		var svc *beacon.Service
		var err error
		if args != nil {
			for k, v := range env {
				t.Setenv(k, v) // cmd reads the process environment
			}
			svc, err = cmd.NewService(cmd.App{Args: args}, opts...)
		} else {
			svc, err = beacon.NewService(opts...)
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { svc.Stop(context.Background()) })
		svc.Handle(&greeter.Greeter{Node: "a"})
		if err := svc.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		return svc
	}
	node := func(s *beacon.Service) *registry.Node { return s.Server().Service().Nodes[0] }
	tests := []struct {
		name   string
		env    map[string]string
		args   []string // nil: beacon.NewService, no command line
		opts   []beacon.Option
		wantID string
		wantMD string
	}{
		{"code", nil, nil, []beacon.Option{beacon.ID("code")}, "code", ""},
		{"ServerOptions are code", nil, nil, []beacon.Option{beacon.ServerOptions(server.ID("serveropt"))}, "serveropt", ""},
		{"env beats code", map[string]string{"BEACON_SERVER_ID": "env"}, nil, []beacon.Option{beacon.ID("code")}, "env", ""},
		{"env beats ServerOptions", map[string]string{"MICRO_SERVER_ID": "env"}, nil, []beacon.Option{beacon.ServerOptions(server.ID("serveropt"))}, "env", ""},
		{"NoEnv", map[string]string{"BEACON_SERVER_ID": "env"}, nil, []beacon.Option{beacon.ID("code"), beacon.NoEnv()}, "code", ""},
		{"metadata from env", map[string]string{"BEACON_SERVER_METADATA": "zone=a,rack=3"}, nil, nil, "", "rack=3 zone=a"},
		{"command line beats env", map[string]string{"BEACON_SERVER_ID": "env"}, []string{"--server_id", "flag"}, []beacon.Option{beacon.ID("code")}, "flag", ""},
		{"command line equal to code still beats ServerOptions", nil, []string{"--server_id", "same"}, []beacon.Option{beacon.ID("same"), beacon.ServerOptions(server.ID("serveropt"))}, "same", ""},
		{"command line metadata", nil, []string{"--server_metadata", "zone=b", "--server_metadata", "k=v"}, nil, "", "k=v zone=b"},
		{"no command line given: env and code", map[string]string{"BEACON_SERVER_ID": "env"}, []string{}, []beacon.Option{beacon.ID("code")}, "env", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svc := start(t, tc.env, tc.args, tc.opts...)
			n := node(svc)
			if tc.wantID != "" && n.ID != tc.wantID {
				t.Fatalf("node ID %q, want %q", n.ID, tc.wantID)
			}
			if tc.wantMD != "" {
				var kv []string
				for _, k := range []string{"k", "rack", "zone"} {
					if v, ok := n.Metadata[k]; ok {
						kv = append(kv, k+"="+v)
					}
				}
				if got := strings.Join(kv, " "); got != tc.wantMD {
					t.Fatalf("metadata %v, want %s", n.Metadata, tc.wantMD)
				}
			}
		})
	}
	// Bad values in the environment are errors naming the variable.
	_, err := beacon.NewService(beacon.Registry(reg), beacon.Logger(quiet), beacon.WithGetenv(func(k string) string {
		if k == "BEACON_CLIENT_RETRIES" {
			return "lots"
		}
		return ""
	}))
	if !errors.Is(err, beacon.ErrSetting) || !strings.Contains(err.Error(), "BEACON_CLIENT_RETRIES") {
		t.Fatalf("err = %v, want ErrSetting naming BEACON_CLIENT_RETRIES", err)
	}
}

func TestRefusals(t *testing.T) {
	tests := []struct {
		name string
		opts []beacon.Option
		want error
	}{
		{"interval not below TTL", []beacon.Option{beacon.Name("x"), beacon.RegisterTTL(time.Second), beacon.RegisterInterval(2 * time.Second)}, server.ErrBadInterval},
		{"invalid name", []beacon.Option{beacon.Name("bad name")}, registry.ErrInvalid},
		{"TTL above the maximum", []beacon.Option{beacon.Name("x"), beacon.RegisterTTL(server.MaxRegisterTTL + time.Second)}, server.ErrBadTTL},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := memory.New()
			defer reg.Close()
			_, err := beacon.NewService(append(tc.opts, beacon.Registry(reg), beacon.Logger(quiet))...)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestStartServesEveryWayOfAddingEndpoints: endpoints added with Handle or
// with server.HandleFunc on Server() are served and registered; a named
// service with no endpoint at all refuses to start; a service without a name
// (client only) starts without a server.
func TestStartServesEveryWayOfAddingEndpoints(t *testing.T) {
	tests := []struct {
		name    string
		svcName string
		add     func(*beacon.Service) error
		want    error // from Start
		serves  bool
	}{
		{"Handle", "greeter", func(s *beacon.Service) error { return s.Handle(&greeter.Greeter{Node: "a"}) }, nil, true},
		{"HandleFunc", "greeter", func(s *beacon.Service) error {
			return server.HandleFunc(s.Server(), "Greeter.Hello", (&greeter.Greeter{Node: "a"}).Hello)
		}, nil, true},
		{"no endpoints", "greeter", func(*beacon.Service) error { return nil }, server.ErrNoHandlers, false},
		{"client only", "", func(*beacon.Service) error { return nil }, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := memory.New()
			defer reg.Close()
			svc, err := beacon.NewService(beacon.Name(tc.svcName), beacon.Registry(reg),
				beacon.Address("127.0.0.1:0"), beacon.Logger(quiet), beacon.ServerOptions(server.DrainGrace(0)))
			if err != nil {
				t.Fatal(err)
			}
			defer svc.Stop(context.Background())
			if err := tc.add(svc); err != nil {
				t.Fatal(err)
			}
			if err := svc.Start(context.Background()); !errors.Is(err, tc.want) {
				t.Fatalf("Start = %v, want %v", err, tc.want)
			}
			if !tc.serves {
				if s := svc.Server(); s != nil && s.Addr() != nil {
					t.Fatalf("server listens on %v", s.Addr())
				}
				return
			}
			if svc.Server().Addr() == nil {
				t.Fatal("Start returned but the server does not listen")
			}
			got, err := reg.GetService(context.Background(), "greeter")
			if err != nil || len(got[0].Endpoints) != 1 || got[0].Endpoints[0].Name != "Greeter.Hello" {
				t.Fatalf("registered %+v, %v", got, err)
			}
			rsp := new(greeter.HelloRsp)
			if err := svc.Client().Call(context.Background(), "greeter", "Greeter.Hello", &greeter.HelloReq{Name: "Ann"}, rsp); err != nil || rsp.Msg != "Hello Ann" {
				t.Fatalf("call: %v %+v", err, rsp)
			}
		})
	}
}

// TestRegistryEmptyHold: the selector of a service holds the last nodes of
// a service that may come from a registry restarted empty (here one change
// removes every node) for the register TTL, or for --registry_empty_hold.
func TestRegistryEmptyHold(t *testing.T) {
	const ttl = 2 * time.Second
	tests := []struct {
		name string
		opt  beacon.Option
		held bool
	}{
		{"the register TTL by default", beacon.LogLevel(slog.LevelInfo), true},
		{"the option (--registry_empty_hold)", beacon.RegistryEmptyHold(0), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := memory.New()
			defer reg.Close()
			ctx := context.Background()
			greeter := &registry.Service{Name: "greeter", Version: "1", Nodes: []*registry.Node{
				{ID: "a", Address: "127.0.0.1:1"}, {ID: "b", Address: "127.0.0.1:2"}}}
			if err := reg.Register(ctx, greeter); err != nil {
				t.Fatal(err)
			}
			svc, err := beacon.NewService(beacon.Registry(reg), beacon.Logger(quiet), tc.opt,
				beacon.RegisterTTL(ttl), beacon.RegisterInterval(ttl/4))
			if err != nil {
				t.Fatal(err)
			}
			defer svc.Stop(ctx)
			sel := svc.Client().Selector()
			if _, err := sel.Select(ctx, "greeter"); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if err := reg.Deregister(ctx, greeter); err != nil {
				t.Fatal(err)
			}
			registrytest.Eventually(t, 5*time.Second, func() error {
				if _, err := sel.Select(ctx, "greeter"); !errors.Is(err, selector.ErrNotFound) {
					return fmt.Errorf("Select = %v, want ErrNotFound", err)
				}
				return nil
			})
			switch took := time.Since(start); {
			case tc.held && took < ttl:
				t.Fatalf("not found after %v, want the hold of the register TTL (%v)", took, ttl)
			case !tc.held && took >= time.Second:
				t.Fatalf("not found after %v, want no hold", took)
			}
		})
	}
}
