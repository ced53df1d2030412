package registrytest

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beacon-go/beacon/registry"
)

// RunReadOnly runs the conformance suite of a read-only backend (one that
// serves services it does not own: a static list, a file): cfg.Seed puts
// services in place where the registry reads them. The cases of the
// read-write suite that need Register, Deregister or TTLs are replaced by
// the same checks driven by Seed: lookups, versions, ListServices, watches
// (current state first, then Create/Update/Delete per node as the seeded
// content changes), filters, invalid names, Stop and Close; and Register and
// Deregister must fail with an error matching registry.ErrReadOnly and change
// nothing.
//
// Every subtest gets a registry of its own from cfg.New and its own service
// names; goleak checks each one after Close, as in Run.
func RunReadOnly(t *testing.T, cfg Config) {
	if cfg.Seed == nil {
		t.Fatal("registrytest.RunReadOnly: Config.Seed is nil")
	}
	cfg.defaults()
	tests := []struct {
		name string
		fn   func(*testing.T, *Config, registry.Registry, string)
	}{
		{"ReadOnlyRefusesWrites", testROWrites},
		{"GetService", testROGet},
		{"VersionsAndNodes", testROVersions},
		{"ListServices", testROList},
		{"WatchBeforeChange", testROWatchBefore},
		{"WatchAfterChange", testROWatchAfter},
		{"WatchAllServices", testROWatchAll},
		{"ConcurrentReads", testROConcurrent},
		{"InvalidInput", testROInvalid},
		{"WatcherStop", testWatcherStop},
		{"Close", testROClose},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var leakOpts []goleak.Option
			if !cfg.SkipLeakCheck {
				leakOpts = append([]goleak.Option{goleak.IgnoreCurrent()}, cfg.LeakOptions...)
			}
			r, err := cfg.New(t)
			if err != nil {
				t.Fatalf("new registry: %v", err)
			}
			t.Cleanup(func() {
				_ = r.Close()
				if !cfg.SkipLeakCheck && !t.Failed() {
					goleak.VerifyNone(t, leakOpts...)
				}
			})
			name := fmt.Sprintf("conf-%s-%08x", strings.ToLower(tc.name), rand.Uint32())
			tc.fn(t, &cfg, r, name)
		})
	}
}

func seed(t *testing.T, cfg *Config, r registry.Registry, services ...*registry.Service) {
	t.Helper()
	var cp []*registry.Service
	for _, s := range services {
		cp = append(cp, s.Copy())
	}
	if err := cfg.Seed(t, r, cp); err != nil {
		t.Fatalf("Seed: %v", err)
	}
}

func testROWrites(t *testing.T, cfg *Config, r registry.Registry, name string) {
	keep := Service(cfg, name+"-kept", "1.0.0", 0, 1)
	seed(t, cfg, r, keep)
	wantNodes(t, cfg, r, keep.Name, keep.Nodes[0].ID)
	s := Service(cfg, name, "1.0.0", 1, 1)
	if err := r.Register(ctxT(t, cfg), s, registry.RegisterTTL(30*time.Second)); !errors.Is(err, registry.ErrReadOnly) {
		t.Errorf("Register err = %v, want one matching registry.ErrReadOnly", err)
	}
	if err := r.Deregister(ctxT(t, cfg), keep); !errors.Is(err, registry.ErrReadOnly) {
		t.Errorf("Deregister err = %v, want one matching registry.ErrReadOnly", err)
	}
	if _, err := r.GetService(ctxT(t, cfg), name); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("after a refused Register, GetService = %v, want ErrNotFound", err)
	}
	wantNodes(t, cfg, r, keep.Name, keep.Nodes[0].ID)
}

func testROGet(t *testing.T, cfg *Config, r registry.Registry, name string) {
	s := Service(cfg, name, "1.0.0", 0, 1)
	seed(t, cfg, r, s)
	wantNodes(t, cfg, r, name, s.Nodes[0].ID)
	got, err := r.GetService(ctxT(t, cfg), name)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("got %d versions, want 1", len(got))
	}
	g := got[0]
	if g.Name != name || g.Version != "1.0.0" {
		t.Errorf("got name %q version %q", g.Name, g.Version)
	}
	if g.Metadata["team"] != "conformance" {
		t.Errorf("service metadata lost: %v", g.Metadata)
	}
	if len(g.Endpoints) != 1 || g.Endpoints[0].Name != "Greeter.Hello" || g.Endpoints[0].Request == nil ||
		g.Endpoints[0].Request.Name != "HelloReq" || len(g.Endpoints[0].Request.Values) != 1 ||
		g.Endpoints[0].Metadata["stream"] != "false" {
		t.Errorf("endpoints lost: %+v", g.Endpoints)
	}
	n := g.Nodes[0]
	if n.Address != s.Nodes[0].Address || n.Metadata["zone"] != "z0" {
		t.Errorf("node = %+v, want address %s and zone z0", n, s.Nodes[0].Address)
	}
	g.Nodes[0].Address = "mutated:1"
	again, err := r.GetService(ctxT(t, cfg), name)
	if err != nil || again[0].Nodes[0].Address != s.Nodes[0].Address {
		t.Errorf("result aliases registry state: %v %v", again, err)
	}
	seed(t, cfg, r)
	wantNodes(t, cfg, r, name)
	if _, err := r.GetService(ctxT(t, cfg), name+"-never"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("GetService(unknown) err = %v, want ErrNotFound", err)
	}
}

func testROVersions(t *testing.T, cfg *Config, r registry.Registry, name string) {
	v1 := Service(cfg, name, "1.0.0", 0, 2)
	v2 := Service(cfg, name, "2.0.0", 2, 1)
	seed(t, cfg, r, v1, v2)
	wantNodes(t, cfg, r, name, v1.Nodes[0].ID, v1.Nodes[1].ID, v2.Nodes[0].ID)
	got, err := r.GetService(ctxT(t, cfg), name)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Version != "1.0.0" || got[1].Version != "2.0.0" ||
		len(got[0].Nodes) != 2 || len(got[1].Nodes) != 1 {
		t.Fatalf("want versions 1.0.0 (2 nodes) and 2.0.0 (1 node), got %s", describe(got))
	}
	one := v1.Copy()
	one.Nodes = one.Nodes[1:]
	seed(t, cfg, r, one, v2)
	wantNodes(t, cfg, r, name, v1.Nodes[1].ID, v2.Nodes[0].ID)
}

func testROList(t *testing.T, cfg *Config, r registry.Registry, name string) {
	a := Service(cfg, name+"-a", "1.0.0", 0, 1)
	b := Service(cfg, name+"-b", "2.0.0", 1, 2)
	seed(t, cfg, r, b, a)
	Eventually(t, cfg.Wait, func() error {
		list, err := r.ListServices(ctxT(t, cfg))
		if err != nil {
			return err
		}
		var mine []string
		for _, s := range list {
			if strings.HasPrefix(s.Name, name) {
				mine = append(mine, s.Name+"@"+s.Version)
			}
		}
		want := []string{a.Name + "@1.0.0", b.Name + "@2.0.0"}
		if !slices.Equal(mine, want) {
			return fmt.Errorf("ListServices has %v, want %v (sorted)", mine, want)
		}
		return nil
	})
}

func testROWatchBefore(t *testing.T, cfg *Config, r registry.Registry, name string) {
	ev := Watch(t, r, registry.WatchService(name))
	other := Service(cfg, name+"-other", "1.0.0", 9, 1)
	s := Service(cfg, name, "1.0.0", 0, 1)
	seed(t, cfg, r, other, s)
	id := s.Nodes[0].ID
	got := ev.Expect(t, cfg.Wait, registry.Create, id)
	if got.Service.Name != name || got.Service.Version != "1.0.0" || got.Service.Nodes[0].Address != s.Nodes[0].Address {
		t.Errorf("create event = %+v", got.Service)
	}
	s.Nodes[0].Metadata["zone"] = "changed"
	seed(t, cfg, r, other, s)
	got = ev.Expect(t, cfg.Wait, registry.Update, id)
	if got.Service.Nodes[0].Metadata["zone"] != "changed" {
		t.Errorf("update event carries old metadata: %v", got.Service.Nodes[0].Metadata)
	}
	seed(t, cfg, r, other)
	got = ev.Expect(t, cfg.Wait, registry.Delete, id)
	if got.Service.Name != name {
		t.Errorf("delete event for service %q, want %q", got.Service.Name, name)
	}
	for _, e := range ev.pending {
		if e.Service.Name != name {
			t.Fatalf("watch for %s delivered an event for %s", name, e.Service.Name)
		}
	}
	for {
		select {
		case e := <-ev.C:
			if e.Service.Name != name {
				t.Fatalf("watch for %s delivered an event for %s", name, e.Service.Name)
			}
		default:
			return
		}
	}
}

func testROWatchAfter(t *testing.T, cfg *Config, r registry.Registry, name string) {
	s := Service(cfg, name, "1.0.0", 0, 2)
	seed(t, cfg, r, s)
	wantNodes(t, cfg, r, name, s.Nodes[0].ID, s.Nodes[1].ID)
	ev := Watch(t, r, registry.WatchService(name))
	ev.Expect(t, cfg.Wait, registry.Create, s.Nodes[0].ID)
	ev.Expect(t, cfg.Wait, registry.Create, s.Nodes[1].ID)
	one := s.Copy()
	one.Nodes = one.Nodes[:1]
	seed(t, cfg, r, one)
	ev.Expect(t, cfg.Wait, registry.Delete, s.Nodes[1].ID)
	seed(t, cfg, r)
	ev.Expect(t, cfg.Wait, registry.Delete, s.Nodes[0].ID)
}

func testROWatchAll(t *testing.T, cfg *Config, r registry.Registry, name string) {
	a := Service(cfg, name+"-a", "1.0.0", 0, 1)
	seed(t, cfg, r, a)
	wantNodes(t, cfg, r, a.Name, a.Nodes[0].ID)
	ev := Watch(t, r)
	ev.Expect(t, cfg.Wait, registry.Create, a.Nodes[0].ID)
	b := Service(cfg, name+"-b", "1.0.0", 1, 1)
	seed(t, cfg, r, a, b)
	ev.Expect(t, cfg.Wait, registry.Create, b.Nodes[0].ID)
	seed(t, cfg, r, b)
	ev.Expect(t, cfg.Wait, registry.Delete, a.Nodes[0].ID)
	seed(t, cfg, r)
	ev.Expect(t, cfg.Wait, registry.Delete, b.Nodes[0].ID)
}

// testROConcurrent reads from many goroutines while the content changes
// (for the race detector), then checks that the last content wins.
func testROConcurrent(t *testing.T, cfg *Config, r registry.Registry, name string) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if _, err := r.GetService(ctx, name); err != nil && !errors.Is(err, registry.ErrNotFound) && ctx.Err() == nil {
					errs <- err
					return
				}
				if _, err := r.ListServices(ctx); err != nil && ctx.Err() == nil {
					errs <- err
					return
				}
			}
		}()
	}
	ev := Watch(t, r, registry.WatchService(name))
	var last *registry.Service
	for i := range 8 {
		last = Service(cfg, name, "1.0.0", i, 2)
		seed(t, cfg, r, last)
		time.Sleep(5 * time.Millisecond)
	}
	wantNodes(t, cfg, r, name, last.Nodes[0].ID, last.Nodes[1].ID)
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent read: %v", err)
	}
	// Whatever reloads were coalesced, the watcher ends on the last content.
	ev.Expect(t, cfg.Wait, registry.Create, last.Nodes[1].ID)
}

func testROInvalid(t *testing.T, cfg *Config, r registry.Registry, name string) {
	for _, bad := range []string{"", "a b", "x/y", "..", strings.Repeat("n", 300)} {
		if _, err := r.GetService(ctxT(t, cfg), bad); !errors.Is(err, registry.ErrInvalid) {
			t.Errorf("GetService(%q) err = %v, want ErrInvalid", bad, err)
		}
	}
	if _, err := r.Watch(context.Background(), registry.WatchService("a b")); !errors.Is(err, registry.ErrInvalid) {
		t.Errorf("Watch(invalid name) err = %v, want ErrInvalid", err)
	}
	if _, err := r.GetService(ctxT(t, cfg), name); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("GetService(%s) = %v, want ErrNotFound", name, err)
	}
}

func testROClose(t *testing.T, cfg *Config, r registry.Registry, name string) {
	s := Service(cfg, name, "1.0.0", 0, 1)
	seed(t, cfg, r, s)
	wantNodes(t, cfg, r, name, s.Nodes[0].ID)
	w, err := r.Watch(context.Background(), registry.WatchService(name))
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// The current state may have been delivered before Close; then Next
	// must end.
	for {
		if _, err := w.Next(); err != nil {
			if !errors.Is(err, registry.ErrWatcherStopped) {
				t.Errorf("Next after Close = %v, want ErrWatcherStopped", err)
			}
			break
		}
	}
	if _, err := r.GetService(ctxT(t, cfg), name); !errors.Is(err, registry.ErrClosed) {
		t.Errorf("GetService after Close = %v, want ErrClosed", err)
	}
	if err := r.Register(ctxT(t, cfg), s); !errors.Is(err, registry.ErrClosed) && !errors.Is(err, registry.ErrReadOnly) {
		t.Errorf("Register after Close = %v, want ErrClosed or ErrReadOnly", err)
	}
	// Seeding after Close must not panic or resurrect anything.
	_ = cfg.Seed(t, r, []*registry.Service{s})
}
