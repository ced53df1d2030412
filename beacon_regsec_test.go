package beacon_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/beacon-go/beacon"
	"github.com/beacon-go/beacon/cmd"
	"github.com/beacon-go/beacon/examples/greeter"
	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry/registrytest"
)

type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// A service configured by the environment only (cmd.NewService, no
// arguments), on a consul with ACLs in
// default-deny mode: without a token it logs registry permission denied at
// ERROR (and keeps retrying); with BEACON_REGISTRY_TOKEN it registers.
func TestServiceRegistryACL(t *testing.T) {
	c := testserver.MustStartConsul(t, testserver.WithACL("2c9d7e6f-5a4b-4c3d-9e2f-0123456789ab"))
	tok, err := c.CreateToken("svc", `service_prefix "" { policy = "write" }
node_prefix "" { policy = "read" }`)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []string{"CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "BEACON_REGISTRY_TOKEN", "MICRO_REGISTRY_TOKEN"} {
		t.Setenv(e, "")
		os.Unsetenv(e)
	}
	t.Setenv("BEACON_REGISTRY", "consul")
	t.Setenv("BEACON_REGISTRY_ADDRESS", c.Addr())
	start := func(t *testing.T, log *lockedBuf) *beacon.Service {
		svc, err := cmd.NewService(cmd.App{Args: []string{}}, beacon.Name("greeter"), beacon.Address("127.0.0.1:0"),
			beacon.Logger(slog.New(slog.NewTextHandler(log, nil))), beacon.RegisterTTL(2*time.Second), beacon.RegisterInterval(500*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		if err := svc.Handle(&greeter.Greeter{Node: "a"}); err != nil {
			t.Fatal(err)
		}
		if err := svc.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { svc.Stop(context.Background()) })
		return svc
	}

	t.Run("no token", func(t *testing.T) {
		var log lockedBuf
		start(t, &log)
		registrytest.Eventually(t, 5*time.Second, func() error {
			if s := log.String(); strings.Count(s, "level=ERROR") < 2 || !strings.Contains(s, "registry permission denied") {
				return errors.New("no repeated ERROR permission denied lines: " + s)
			}
			return nil
		})
	})
	t.Run("token from BEACON_REGISTRY_TOKEN", func(t *testing.T) {
		t.Setenv("BEACON_REGISTRY_TOKEN", tok)
		var log lockedBuf
		svc := start(t, &log)
		registrytest.Eventually(t, 5*time.Second, func() error {
			_, err := svc.Registry().GetService(context.Background(), "greeter")
			return err
		})
		if strings.Contains(log.String(), "level=ERROR") {
			t.Errorf("errors logged: %s", log.String())
		}
	})
}
