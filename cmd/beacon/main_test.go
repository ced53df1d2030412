package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beacon-go/beacon/examples/greeter"
	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/consul"
	"github.com/beacon-go/beacon/registry/etcd"
	"github.com/beacon-go/beacon/registry/registrytest"
	"github.com/beacon-go/beacon/server"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.DiscardHandler)

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) { s.mu.Lock(); defer s.mu.Unlock(); return s.b.Write(p) }
func (s *syncBuf) String() string              { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func beacon(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb syncBuf
	code := run(context.Background(), append([]string{"beacon"}, args...), &out, &errb)
	return out.String(), errb.String(), code
}

// backends are the real registries the CLI is tested against here; mdns is
// tested across a namespace LAN in registry/mdns.
func backends(t *testing.T) map[string]func() (registry.Registry, []string) {
	return map[string]func() (registry.Registry, []string){
		"etcd": func() (registry.Registry, []string) {
			srv := testserver.MustStartEtcd(t)
			r, err := etcd.New(context.Background(), etcd.WithAddrs(srv.Endpoints()...), etcd.WithLogger(quiet))
			if err != nil {
				t.Fatal(err)
			}
			return r, []string{"--registry", "etcd", "--registry_address", strings.Join(srv.Endpoints(), ",")}
		},
		"consul": func() (registry.Registry, []string) {
			srv := testserver.MustStartConsul(t)
			r, err := consul.New(context.Background(), consul.WithAddrs(srv.Addr()), consul.WithLogger(quiet))
			if err != nil {
				t.Fatal(err)
			}
			return r, []string{"--registry", "consul", "--registry_address", srv.Addr()}
		},
	}
}

func TestCLI(t *testing.T) {
	for name, mk := range backends(t) {
		t.Run(name, func(t *testing.T) {
			reg, flags := mk()
			defer reg.Close()
			srv, err := server.New(server.Name("greeter"), server.Version("1.0.0"), server.Address("127.0.0.1:0"),
				server.Registry(reg), server.Logger(quiet), server.DrainGrace(0), server.Metadata(map[string]string{"zone": "a"}),
				server.RegisterTTL(5*time.Second), server.RegisterInterval(time.Second))
			if err != nil {
				t.Fatal(err)
			}
			srv.Handle(&greeter.Greeter{Node: "n1"})
			if err := srv.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			defer srv.Stop(context.Background())
			id := srv.Service().Nodes[0].ID

			registrytest.Eventually(t, 10*time.Second, func() error {
				out, errs, code := beacon(t, append(flags, "services")...)
				if code != 0 || !strings.Contains(out, "greeter") || !strings.Contains(out, "1.0.0") {
					return fmt.Errorf("services: code %d out %q err %q", code, out, errs)
				}
				return nil
			})
			// The same through the environment, BEACON_* and go-micro's MICRO_* names.
			for _, prefix := range []string{"BEACON_", "MICRO_"} {
				t.Setenv(prefix+"REGISTRY", flags[1])
				t.Setenv(prefix+"REGISTRY_ADDRESS", flags[3])
				out, errs, code := beacon(t, "services")
				os.Unsetenv(prefix + "REGISTRY")
				os.Unsetenv(prefix + "REGISTRY_ADDRESS")
				if code != 0 || !strings.Contains(out, "greeter") {
					t.Fatalf("services with %sREGISTRY env: %d %q %q", prefix, code, out, errs)
				}
			}
			out, _, code := beacon(t, append(flags, "--json", "services")...)
			var rows []serviceRow
			if code != 0 || json.Unmarshal([]byte(out), &rows) != nil {
				t.Fatalf("services --json: %d %q", code, out)
			}
			found := false
			for _, r := range rows {
				found = found || (r.Name == "greeter" && r.Nodes == 1)
			}
			if !found {
				t.Fatalf("services --json lacks greeter with 1 node: %q", out)
			}

			out, errs, code := beacon(t, append(flags, "describe", "greeter")...)
			for _, want := range []string{id, srv.Service().Nodes[0].Address, "zone=a", "Greeter.Hello", "HelloReq{name string}"} {
				if code != 0 || !strings.Contains(out, want) {
					t.Fatalf("describe lacks %q: code %d\n%s%s", want, code, out, errs)
				}
			}

			out, errs, code = beacon(t, append(flags, "call", "greeter", "Greeter.Hello", `{"name":"Ann"}`)...)
			if code != 0 || !strings.Contains(out, `"msg": "Hello Ann"`) {
				t.Fatalf("call: %d %q %q", code, out, errs)
			}
			out, _, code = beacon(t, append(flags, "--json", "call", "greeter", "Greeter.Hello", `{"name":"Bo"}`)...)
			if code != 0 || strings.TrimSpace(out) != `{"msg":"Hello Bo","node":"n1"}` {
				t.Fatalf("call --json: %d %q", code, out)
			}
			// Errors: exit codes and messages.
			cases := []struct {
				args []string
				code int
				want string
			}{
				{[]string{"call", "greeter", "Greeter.Hello", `{"name":""}`}, 1, "status 400"},
				{[]string{"call", "greeter", "Greeter.Hello", `{not json`}, 2, "not valid JSON"},
				{[]string{"call", "nosuch", "A.B", `{}`}, 1, "status 404"},
				{[]string{"call", "greeter"}, 2, "usage"},
				{[]string{"describe", "nosuch"}, 1, "not found"},
			}
			for _, c := range cases {
				_, errs, code := beacon(t, append(flags, c.args...)...)
				if code != c.code || !strings.Contains(errs, c.want) {
					t.Errorf("%v: code %d stderr %q; want %d and %q", c.args, code, errs, c.code, c.want)
				}
			}

			// watch prints live events.
			ctx, cancel := context.WithCancel(context.Background())
			var wout, werr syncBuf
			done := make(chan int)
			go func() {
				done <- run(ctx, append([]string{"beacon"}, append(flags, "watch", "greeter")...), &wout, &werr)
			}()
			registrytest.Eventually(t, 10*time.Second, func() error {
				if !strings.Contains(wout.String(), "create") || !strings.Contains(wout.String(), id) {
					return fmt.Errorf("watch printed %q %q", wout.String(), werr.String())
				}
				return nil
			})
			srv.Stop(context.Background())
			registrytest.Eventually(t, 10*time.Second, func() error {
				if !strings.Contains(wout.String(), "delete") {
					return fmt.Errorf("no delete in %q", wout.String())
				}
				return nil
			})
			cancel()
			if code := <-done; code != 0 {
				t.Fatalf("watch exit %d: %s", code, werr.String())
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	if _, errs, code := beacon(t, "--registry", "zookeeper", "services"); code != 2 || !strings.Contains(errs, "valid registries are consul, etcd, kubernetes, mdns, memory, static") {
		t.Fatalf("unknown registry: %d %q", code, errs)
	}
}
