package consul

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
)

// TestACL: a real agent with ACLs in default-deny mode (and HTTPS with
// client certificates beside its plain HTTP port). The right token works;
// a wrong token fails New with ErrPermission; no token (the anonymous one)
// is ErrPermission on registration and listing, where the registry used to
// say "backend unavailable" and list nothing.
func TestACL(t *testing.T) {
	pk := testserver.MustPKI(t, "beacon-client")
	a := testserver.MustStartConsul(t, testserver.WithACL("3f1b3c3e-7c55-4d0c-9a52-6a1d2f0e0b01"), testserver.WithTLS(pk, true))
	tok, err := a.CreateToken("svc", `service_prefix "" { policy = "write" }
node_prefix "" { policy = "read" }`)
	if err != nil {
		t.Fatal(err)
	}
	narrow, err := a.CreateToken("narrow", `service "other" { policy = "read" }`)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	t.Setenv("CONSUL_HTTP_TOKEN_FILE", "")
	name := uniqueName(t)
	s := service(name, "1", 0, 1)
	rec := &recorder{}

	t.Run("right token", func(t *testing.T) {
		r := newRegistryAt(t, a.Addr(), WithToken(tok))
		if err := r.Register(ctxT(t), s, registry.RegisterTTL(10*time.Second)); err != nil {
			t.Fatal(err)
		}
		if err := r.Register(ctxT(t), s, registry.RegisterTTL(10*time.Second)); err != nil { // heartbeat
			t.Fatal(err)
		}
		wantNodes(t, r, 5*time.Second, name, s.Nodes[0].ID)
		list, err := r.ListServices(ctxT(t))
		if err != nil || len(list) == 0 {
			t.Fatalf("ListServices = %v, %v", list, err)
		}
	})

	t.Run("wrong token", func(t *testing.T) {
		start := time.Now()
		r, err := New(ctxT(t), WithAddrs(a.Addr()), WithToken("00000000-0000-0000-0000-000000000bad"), WithLogger(testLogger(t)))
		if err == nil {
			r.Close()
			t.Fatal("New succeeded with a token consul does not know")
		}
		if !errors.Is(err, registry.ErrPermission) || errors.Is(err, registry.ErrUnavailable) {
			t.Errorf("err = %v, want ErrPermission only", err)
		}
		t.Logf("New failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
	})

	t.Run("no token", func(t *testing.T) {
		r := newRegistryAt(t, a.Addr(), WithLogger(slogTo(rec)))
		err := r.Register(ctxT(t), service(name, "1", 1, 1), registry.RegisterTTL(10*time.Second))
		if !errors.Is(err, registry.ErrPermission) || errors.Is(err, registry.ErrUnavailable) {
			t.Errorf("Register: err = %v, want ErrPermission only", err)
		}
		if err != nil && !strings.Contains(err.Error(), "anonymous") {
			t.Errorf("Register: err = %v, want it to say the anonymous token was used", err)
		}
		list, err := r.ListServices(ctxT(t))
		if !errors.Is(err, registry.ErrPermission) {
			t.Errorf("ListServices = %v, %v; want ErrPermission", list, err)
		}
		if _, err := r.GetService(ctxT(t), name); !errors.Is(err, registry.ErrNotFound) || !strings.Contains(err.Error(), "anonymous") {
			t.Errorf("GetService: err = %v, want ErrNotFound saying the anonymous token may not see it", err)
		}
		w, err := r.Watch(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		registryEventually(t, 5*time.Second, func() bool { return rec.has("permission denied") })
		w.Stop()
	})

	t.Run("token without read permission", func(t *testing.T) {
		r := newRegistryAt(t, a.Addr(), WithToken(narrow))
		if _, err := r.ListServices(ctxT(t)); !errors.Is(err, registry.ErrPermission) {
			t.Errorf("ListServices: err = %v, want ErrPermission (consul filtered the catalog)", err)
		}
		if _, err := r.GetService(ctxT(t), name); !errors.Is(err, registry.ErrPermission) {
			t.Errorf("GetService: err = %v, want ErrPermission (consul filtered the nodes)", err)
		}
	})

	t.Run("token from the environment", func(t *testing.T) {
		t.Setenv("CONSUL_HTTP_TOKEN", tok)
		r := newRegistryAt(t, a.Addr())
		wantNodes(t, r, 5*time.Second, name, s.Nodes[0].ID)

		file := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(file, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("CONSUL_HTTP_TOKEN", "00000000-0000-0000-0000-000000000bad")
		t.Setenv("CONSUL_HTTP_TOKEN_FILE", file) // the file wins, as in consul's tools
		r = newRegistryAt(t, a.Addr())
		wantNodes(t, r, 5*time.Second, name, s.Nodes[0].ID)

		// WithToken wins over both, even though the consul library reads
		// the environment itself.
		r = newRegistryAt(t, a.Addr(), WithToken(tok))
		t.Setenv("CONSUL_HTTP_TOKEN_FILE", "")
		if err := r.Register(ctxT(t), service(name, "1", 2, 1), registry.RegisterTTL(10*time.Second)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("https with a client certificate", func(t *testing.T) {
		r := newRegistryAt(t, "https://"+a.HTTPSAddr(), WithToken(tok), WithTLSFiles(pk.CA, pk.ClientCert, pk.ClientKey))
		wantNodes(t, r, 5*time.Second, name, s.Nodes[0].ID, service(name, "1", 2, 1).Nodes[0].ID)
		for what, opts := range map[string][]Option{
			"no client certificate": {WithTLSFiles(pk.CA, "", "")},
			"untrusted server":      {WithTLSFiles(pk.OtherCA, pk.ClientCert, pk.ClientKey)},
		} {
			r, err := New(ctxT(t), append(opts, WithAddrs("https://"+a.HTTPSAddr()), WithToken(tok), WithLogger(testLogger(t)))...)
			if err == nil {
				r.Close()
				t.Errorf("%s: New succeeded", what)
				continue
			}
			if !errors.Is(err, registry.ErrUnavailable) {
				t.Errorf("%s: err = %v, want ErrUnavailable", what, err)
			}
			t.Logf("%s: %v", what, err)
		}
	})
}

func registryEventually(t *testing.T, wait time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func slogTo(h *recorder) *slog.Logger { return slog.New(h) }

// has reports whether an Error record's message contains s.
func (h *recorder) has(s string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range h.recs {
		if r.Level >= slog.LevelError && strings.Contains(r.Message, s) {
			return true
		}
	}
	return false
}
