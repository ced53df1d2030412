// Package registrytest is the conformance suite that every registry backend
// runs against a real instance of its backend: the same contract, the same
// assertions, for memory, mdns, etcd and consul.
//
// Use it from a backend's tests:
//
//	func TestConformance(t *testing.T) {
//		registrytest.Run(t, registrytest.Config{
//			New: func(t *testing.T) (registry.Registry, error) { return mybackend.New(...) },
//			TTL: 2 * time.Second,
//		})
//	}
//
// Every subtest uses service names of its own, so one backend server can be
// shared by all of them. Each subtest checks with goleak that no goroutine
// outlives the registry's Close.
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

// Config describes the backend under test.
type Config struct {
	// New returns a fresh registry connected to the backend. The suite
	// closes it.
	New func(t *testing.T) (registry.Registry, error)
	// TTL is the register TTL used by the expiry tests; it must be one the
	// backend accepts (etcd: at least 2 s). Default 1 s.
	TTL time.Duration
	// Wait bounds every wait for an event or a state. Default 5 s.
	Wait time.Duration
	// ExpiryGrace is how long after the TTL a node may still be seen. Default 2 s.
	ExpiryGrace time.Duration
	// Address returns the node address to register for node i; default
	// 127.0.0.1:(20000+i). Backends that check reachability override it.
	Address func(i int) string
	// LeakOptions are extra goleak options (goroutines of the backend's
	// client library that are known to linger after Close and are not ours).
	LeakOptions []goleak.Option
	// SkipLeakCheck disables the goroutine check (only for backends whose
	// client library cannot be shut down cleanly; say why where it is set).
	SkipLeakCheck bool
	// Seed, when set, marks a read-only backend (Register and Deregister
	// fail with registry.ErrReadOnly) and runs the read-only suite instead
	// (see RunReadOnly): Seed puts exactly services in place in what r
	// serves, replacing what an earlier Seed of the same test put there,
	// e.g. by rewriting the file r watches. Changes may show up later
	// (watchers and lookups are waited for up to Wait).
	Seed func(t *testing.T, r registry.Registry, services []*registry.Service) error
}

func (c *Config) defaults() {
	if c.TTL == 0 {
		c.TTL = time.Second
	}
	if c.Wait == 0 {
		c.Wait = 5 * time.Second
	}
	if c.ExpiryGrace == 0 {
		c.ExpiryGrace = 2 * time.Second
	}
	if c.Address == nil {
		c.Address = func(i int) string { return fmt.Sprintf("127.0.0.1:%d", 20000+i) }
	}
}

// Run runs the whole conformance suite (the read-only one when cfg.Seed
// is set).
func Run(t *testing.T, cfg Config) {
	if cfg.Seed != nil {
		RunReadOnly(t, cfg)
		return
	}
	cfg.defaults()
	tests := []struct {
		name string
		fn   func(*testing.T, *Config, registry.Registry, string)
	}{
		{"RegisterGetDeregister", testRegisterGetDeregister},
		{"VersionsAndNodes", testVersionsAndNodes},
		{"ListServices", testListServices},
		{"WatchBeforeChange", testWatchBefore},
		{"WatchAfterChange", testWatchAfter},
		{"WatchAllServices", testWatchAll},
		{"TTLExpiry", testTTLExpiry},
		{"HeartbeatKeepsAlive", testHeartbeat},
		{"ConcurrentRegister", testConcurrent},
		{"InvalidInput", testInvalid},
		{"WatcherStop", testWatcherStop},
		{"Close", testClose},
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
			closed := false
			t.Cleanup(func() {
				if !closed {
					_ = r.Close()
				}
				if !cfg.SkipLeakCheck && !t.Failed() {
					goleak.VerifyNone(t, leakOpts...)
				}
			})
			name := fmt.Sprintf("conf-%s-%08x", strings.ToLower(tc.name), rand.Uint32())
			tc.fn(t, &cfg, r, name)
		})
	}
}

// Service returns a test service with n nodes whose IDs are prefix-0...,
// addresses from cfg.Address.
func Service(cfg *Config, name, version string, firstNode, n int) *registry.Service {
	s := &registry.Service{
		Name:     name,
		Version:  version,
		Metadata: map[string]string{"team": "conformance"},
		Endpoints: []*registry.Endpoint{{
			Name:     "Greeter.Hello",
			Request:  &registry.Value{Name: "HelloReq", Type: "HelloReq", Values: []*registry.Value{{Name: "name", Type: "string"}}},
			Response: &registry.Value{Name: "HelloRsp", Type: "HelloRsp", Values: []*registry.Value{{Name: "msg", Type: "string"}}},
			Metadata: map[string]string{"stream": "false"},
		}},
	}
	for i := firstNode; i < firstNode+n; i++ {
		s.Nodes = append(s.Nodes, &registry.Node{
			ID:       fmt.Sprintf("%s-node-%d", name, i),
			Address:  cfg.Address(i),
			Metadata: map[string]string{"zone": fmt.Sprintf("z%d", i%2)},
		})
	}
	return s
}

func ctxT(t *testing.T, cfg *Config) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Wait)
	t.Cleanup(cancel)
	return ctx
}

func register(t *testing.T, cfg *Config, r registry.Registry, s *registry.Service, opts ...registry.RegisterOption) {
	t.Helper()
	if err := r.Register(ctxT(t, cfg), s, opts...); err != nil {
		t.Fatalf("Register(%s %s): %v", s.Name, s.Version, err)
	}
}

func deregister(t *testing.T, cfg *Config, r registry.Registry, s *registry.Service) {
	t.Helper()
	if err := r.Deregister(ctxT(t, cfg), s); err != nil {
		t.Fatalf("Deregister(%s): %v", s.Name, err)
	}
}

// Eventually polls cond every 10 ms until it returns nil or wait passes, and
// fails the test with cond's last error.
func Eventually(t testing.TB, wait time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not true within %v: %v", wait, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func nodeIDs(ss []*registry.Service) []string {
	var ids []string
	for _, s := range ss {
		for _, n := range s.Nodes {
			ids = append(ids, n.ID)
		}
	}
	slices.Sort(ids)
	return ids
}

func wantNodes(t *testing.T, cfg *Config, r registry.Registry, name string, want ...string) {
	t.Helper()
	slices.Sort(want)
	Eventually(t, cfg.Wait, func() error {
		got, err := r.GetService(ctxT(t, cfg), name)
		if len(want) == 0 {
			if errors.Is(err, registry.ErrNotFound) {
				return nil
			}
			return fmt.Errorf("GetService(%s) = %v, %v; want ErrNotFound", name, nodeIDs(got), err)
		}
		if err != nil {
			return fmt.Errorf("GetService(%s): %w", name, err)
		}
		if ids := nodeIDs(got); !slices.Equal(ids, want) {
			return fmt.Errorf("GetService(%s) nodes = %v, want %v", name, ids, want)
		}
		return nil
	})
}

// Events reads a watcher from a goroutine that ends when the watcher stops.
type Events struct {
	W       registry.Watcher
	C       chan *registry.Event
	wg      sync.WaitGroup
	pending []*registry.Event // read by Expect but not matched yet, in order
}

// Watch opens a watch and starts reading it; the watch is stopped and its
// reader joined at cleanup.
func Watch(t *testing.T, r registry.Registry, opts ...registry.WatchOption) *Events {
	t.Helper()
	w, err := r.Watch(context.Background(), opts...)
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	e := &Events{W: w, C: make(chan *registry.Event, 1024)}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer close(e.C)
		for {
			ev, err := w.Next()
			if err != nil {
				return
			}
			e.C <- ev
		}
	}()
	t.Cleanup(e.Stop)
	return e
}

// Stop stops the watcher and waits for its reader.
func (e *Events) Stop() {
	e.W.Stop()
	for range e.C {
	}
	e.wg.Wait()
}

// Expect waits for an event of type typ for node id and returns it. Events
// it reads that do not match are kept, in order, for later calls: the
// contract fixes the order of events per node, not across nodes.
func (e *Events) Expect(t testing.TB, wait time.Duration, typ registry.EventType, id string) *registry.Event {
	t.Helper()
	var seen []string
	for i, ev := range e.pending {
		seen = append(seen, ev.Type.String()+" "+ev.Service.Nodes[0].ID)
		if ev.Type == typ && ev.Service.Nodes[0].ID == id {
			e.pending = append(e.pending[:i], e.pending[i+1:]...)
			return ev
		}
		if ev.Service.Nodes[0].ID == id {
			break // an earlier event of the same node must be expected first
		}
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case ev, ok := <-e.C:
			if !ok {
				t.Fatalf("watcher ended while waiting for %v %s (seen %v)", typ, id, seen)
			}
			if len(ev.Service.Nodes) != 1 {
				t.Fatalf("event %v carries %d nodes, want exactly 1", ev.Type, len(ev.Service.Nodes))
			}
			seen = append(seen, ev.Type.String()+" "+ev.Service.Nodes[0].ID)
			if ev.Type == typ && ev.Service.Nodes[0].ID == id {
				return ev
			}
			e.pending = append(e.pending, ev)
		case <-timer.C:
			t.Fatalf("no %v event for %s within %v (seen %v)", typ, id, wait, seen)
		}
	}
}

func testRegisterGetDeregister(t *testing.T, cfg *Config, r registry.Registry, name string) {
	s := Service(cfg, name, "1.0.0", 0, 1)
	register(t, cfg, r, s, registry.RegisterTTL(30*time.Second))
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
		t.Errorf("endpoints lost in round trip: %+v", g.Endpoints)
	}
	n := g.Nodes[0]
	if n.Address != s.Nodes[0].Address || n.Metadata["zone"] != "z0" {
		t.Errorf("node = %+v, want address %s and zone z0", n, s.Nodes[0].Address)
	}
	// Mutating the result must not change the registry.
	g.Nodes[0].Address = "mutated:1"
	again, err := r.GetService(ctxT(t, cfg), name)
	if err != nil || again[0].Nodes[0].Address != s.Nodes[0].Address {
		t.Errorf("result aliases registry state: %v %v", again, err)
	}
	deregister(t, cfg, r, s)
	wantNodes(t, cfg, r, name)
	// Deregistering again is not an error.
	deregister(t, cfg, r, s)
	if _, err := r.GetService(ctxT(t, cfg), name+"-never"); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("GetService(unknown) err = %v, want ErrNotFound", err)
	}
}

func testVersionsAndNodes(t *testing.T, cfg *Config, r registry.Registry, name string) {
	v1 := Service(cfg, name, "1.0.0", 0, 2)
	v2 := Service(cfg, name, "2.0.0", 2, 1)
	register(t, cfg, r, v1, registry.RegisterTTL(30*time.Second))
	register(t, cfg, r, v2, registry.RegisterTTL(30*time.Second))
	wantNodes(t, cfg, r, name, v1.Nodes[0].ID, v1.Nodes[1].ID, v2.Nodes[0].ID)
	got, err := r.GetService(ctxT(t, cfg), name)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Version != "1.0.0" || got[1].Version != "2.0.0" ||
		len(got[0].Nodes) != 2 || len(got[1].Nodes) != 1 {
		t.Fatalf("want versions 1.0.0 (2 nodes) and 2.0.0 (1 node), got %s", describe(got))
	}
	deregister(t, cfg, r, &registry.Service{Name: name, Nodes: []*registry.Node{{ID: v1.Nodes[0].ID}}})
	wantNodes(t, cfg, r, name, v1.Nodes[1].ID, v2.Nodes[0].ID)
	deregister(t, cfg, r, v1)
	deregister(t, cfg, r, v2)
	wantNodes(t, cfg, r, name)
}

func testListServices(t *testing.T, cfg *Config, r registry.Registry, name string) {
	a := Service(cfg, name+"-a", "1.0.0", 0, 1)
	b := Service(cfg, name+"-b", "2.0.0", 1, 2)
	register(t, cfg, r, a, registry.RegisterTTL(30*time.Second))
	register(t, cfg, r, b, registry.RegisterTTL(30*time.Second))
	defer deregister(t, cfg, r, a)
	defer deregister(t, cfg, r, b)
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

func testWatchBefore(t *testing.T, cfg *Config, r registry.Registry, name string) {
	ev := Watch(t, r, registry.WatchService(name))
	other := Service(cfg, name+"-other", "1.0.0", 9, 1)
	s := Service(cfg, name, "1.0.0", 0, 1)
	register(t, cfg, r, other, registry.RegisterTTL(30*time.Second))
	defer deregister(t, cfg, r, other)
	register(t, cfg, r, s, registry.RegisterTTL(30*time.Second))
	id := s.Nodes[0].ID
	got := ev.Expect(t, cfg.Wait, registry.Create, id)
	if got.Service.Name != name || got.Service.Version != "1.0.0" || got.Service.Nodes[0].Address != s.Nodes[0].Address {
		t.Errorf("create event = %+v", got.Service)
	}
	s.Nodes[0].Metadata["zone"] = "changed"
	register(t, cfg, r, s, registry.RegisterTTL(30*time.Second))
	got = ev.Expect(t, cfg.Wait, registry.Update, id)
	if got.Service.Nodes[0].Metadata["zone"] != "changed" {
		t.Errorf("update event carries old metadata: %v", got.Service.Nodes[0].Metadata)
	}
	deregister(t, cfg, r, s)
	got = ev.Expect(t, cfg.Wait, registry.Delete, id)
	if got.Service.Name != name {
		t.Errorf("delete event for service %q, want %q", got.Service.Name, name)
	}
	// The filter holds: nothing about the other service arrived.
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

func testWatchAfter(t *testing.T, cfg *Config, r registry.Registry, name string) {
	s := Service(cfg, name, "1.0.0", 0, 2)
	register(t, cfg, r, s, registry.RegisterTTL(30*time.Second))
	wantNodes(t, cfg, r, name, s.Nodes[0].ID, s.Nodes[1].ID)
	ev := Watch(t, r, registry.WatchService(name))
	ev.Expect(t, cfg.Wait, registry.Create, s.Nodes[0].ID)
	ev.Expect(t, cfg.Wait, registry.Create, s.Nodes[1].ID)
	deregister(t, cfg, r, &registry.Service{Name: name, Nodes: s.Nodes[1:]})
	ev.Expect(t, cfg.Wait, registry.Delete, s.Nodes[1].ID)
	deregister(t, cfg, r, s)
	ev.Expect(t, cfg.Wait, registry.Delete, s.Nodes[0].ID)
}

func testWatchAll(t *testing.T, cfg *Config, r registry.Registry, name string) {
	ev := Watch(t, r)
	a := Service(cfg, name+"-a", "1.0.0", 0, 1)
	b := Service(cfg, name+"-b", "1.0.0", 1, 1)
	register(t, cfg, r, a, registry.RegisterTTL(30*time.Second))
	register(t, cfg, r, b, registry.RegisterTTL(30*time.Second))
	ev.Expect(t, cfg.Wait, registry.Create, a.Nodes[0].ID)
	deregister(t, cfg, r, a)
	deregister(t, cfg, r, b)
	ev.Expect(t, cfg.Wait, registry.Delete, a.Nodes[0].ID)
}

func testTTLExpiry(t *testing.T, cfg *Config, r registry.Registry, name string) {
	ev := Watch(t, r, registry.WatchService(name))
	s := Service(cfg, name, "1.0.0", 0, 1)
	start := time.Now()
	register(t, cfg, r, s, registry.RegisterTTL(cfg.TTL))
	ev.Expect(t, cfg.Wait, registry.Create, s.Nodes[0].ID)
	ev.Expect(t, cfg.TTL+cfg.ExpiryGrace+cfg.Wait, registry.Delete, s.Nodes[0].ID)
	if took := time.Since(start); took > cfg.TTL+cfg.ExpiryGrace {
		t.Errorf("node expired after %v, want within TTL %v + %v", took, cfg.TTL, cfg.ExpiryGrace)
	}
	wantNodes(t, cfg, r, name)
}

func testHeartbeat(t *testing.T, cfg *Config, r registry.Registry, name string) {
	ev := Watch(t, r, registry.WatchService(name))
	s := Service(cfg, name, "1.0.0", 0, 1)
	end := time.Now().Add(2 * cfg.TTL)
	for time.Now().Before(end) {
		register(t, cfg, r, s, registry.RegisterTTL(cfg.TTL))
		time.Sleep(cfg.TTL / 4) // the heartbeat interval itself, not a wait for an event
	}
	wantNodes(t, cfg, r, name, s.Nodes[0].ID)
	for {
		select {
		case e := <-ev.C:
			if e.Type != registry.Create {
				t.Fatalf("heartbeats of unchanged data produced a %v event", e.Type)
			}
		default:
			deregister(t, cfg, r, s)
			return
		}
	}
}

func testConcurrent(t *testing.T, cfg *Config, r registry.Registry, name string) {
	const n = 16
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	var ids []string
	for i := range n {
		s := Service(cfg, name, "1.0.0", i, 1)
		ids = append(ids, s.Nodes[0].ID)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- r.Register(ctxT(t, cfg), s, registry.RegisterTTL(30*time.Second))
			_, err := r.GetService(ctxT(t, cfg), name)
			if errors.Is(err, registry.ErrNotFound) {
				err = nil // eventually consistent backends may not show it yet
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	wantNodes(t, cfg, r, name, ids...)
	var dwg sync.WaitGroup
	for i := range n {
		dwg.Add(1)
		go func() {
			defer dwg.Done()
			if err := r.Deregister(ctxT(t, cfg), Service(cfg, name, "1.0.0", i, 1)); err != nil {
				t.Error(err)
			}
		}()
	}
	dwg.Wait()
	wantNodes(t, cfg, r, name)
}

func testInvalid(t *testing.T, cfg *Config, r registry.Registry, name string) {
	good := func() *registry.Service { return Service(cfg, name, "1.0.0", 0, 1) }
	bigMeta := map[string]string{}
	for i := range registry.MaxMetadataKeys + 1 {
		bigMeta[fmt.Sprint("k", i)] = "v"
	}
	cases := []struct {
		name string
		mut  func(s *registry.Service) *registry.Service
	}{
		{"nil service", func(*registry.Service) *registry.Service { return nil }},
		{"empty name", func(s *registry.Service) *registry.Service { s.Name = ""; return s }},
		{"space in name", func(s *registry.Service) *registry.Service { s.Name = "a b"; return s }},
		{"slash in name", func(s *registry.Service) *registry.Service { s.Name = "a/b"; return s }},
		{"double dot", func(s *registry.Service) *registry.Service { s.Name = "a..b"; return s }},
		{"too long name", func(s *registry.Service) *registry.Service { s.Name = strings.Repeat("a", 200); return s }},
		{"no nodes", func(s *registry.Service) *registry.Service { s.Nodes = nil; return s }},
		{"nil node", func(s *registry.Service) *registry.Service { s.Nodes = []*registry.Node{nil}; return s }},
		{"empty node id", func(s *registry.Service) *registry.Service { s.Nodes[0].ID = ""; return s }},
		{"slash in node id", func(s *registry.Service) *registry.Service { s.Nodes[0].ID = "a/b"; return s }},
		{"duplicate node", func(s *registry.Service) *registry.Service { s.Nodes = append(s.Nodes, s.Nodes[0]); return s }},
		{"empty address", func(s *registry.Service) *registry.Service { s.Nodes[0].Address = ""; return s }},
		{"no port", func(s *registry.Service) *registry.Service { s.Nodes[0].Address = "127.0.0.1"; return s }},
		{"bad port", func(s *registry.Service) *registry.Service { s.Nodes[0].Address = "127.0.0.1:99999"; return s }},
		{"no host", func(s *registry.Service) *registry.Service { s.Nodes[0].Address = ":8080"; return s }},
		{"bad host", func(s *registry.Service) *registry.Service { s.Nodes[0].Address = "a b:80"; return s }},
		{"too many metadata keys", func(s *registry.Service) *registry.Service { s.Nodes[0].Metadata = bigMeta; return s }},
		{"huge metadata value", func(s *registry.Service) *registry.Service {
			s.Metadata = map[string]string{"k": strings.Repeat("x", 100_000)}
			return s
		}},
		{"control char in metadata", func(s *registry.Service) *registry.Service { s.Metadata = map[string]string{"k": "a\x00b"}; return s }},
		{"empty endpoint name", func(s *registry.Service) *registry.Service { s.Endpoints[0].Name = ""; return s }},
	}
	for _, tc := range cases {
		err := r.Register(ctxT(t, cfg), tc.mut(good()), registry.RegisterTTL(30*time.Second))
		var ve *registry.ValidationError
		if !errors.Is(err, registry.ErrInvalid) || !errors.As(err, &ve) {
			t.Errorf("%s: Register err = %v, want a *ValidationError matching ErrInvalid", tc.name, err)
		}
	}
	for _, bad := range []string{"", "a b", "x/y", "..", strings.Repeat("n", 300)} {
		if _, err := r.GetService(ctxT(t, cfg), bad); !errors.Is(err, registry.ErrInvalid) {
			t.Errorf("GetService(%q) err = %v, want ErrInvalid", bad, err)
		}
	}
	if _, err := r.Watch(context.Background(), registry.WatchService("a b")); !errors.Is(err, registry.ErrInvalid) {
		t.Errorf("Watch(invalid name) err = %v, want ErrInvalid", err)
	}
	// Nothing was written by the rejected calls.
	if _, err := r.GetService(ctxT(t, cfg), name); !errors.Is(err, registry.ErrNotFound) {
		t.Errorf("after rejected registrations GetService = %v, want ErrNotFound", err)
	}
}

func testWatcherStop(t *testing.T, cfg *Config, r registry.Registry, name string) {
	w, err := r.Watch(context.Background(), registry.WatchService(name))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := w.Next()
		done <- err
	}()
	w.Stop()
	w.Stop() // idempotent
	select {
	case err := <-done:
		if !errors.Is(err, registry.ErrWatcherStopped) {
			t.Errorf("Next after Stop = %v, want ErrWatcherStopped", err)
		}
	case <-time.After(cfg.Wait):
		t.Fatal("Next still blocked after Stop")
	}
	ctx, cancel := context.WithCancel(context.Background())
	w2, err := r.Watch(ctx, registry.WatchService(name))
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := w2.Next(); !errors.Is(err, registry.ErrWatcherStopped) {
		t.Errorf("Next after context cancel = %v, want ErrWatcherStopped", err)
	}
	w2.Stop()
}

func testClose(t *testing.T, cfg *Config, r registry.Registry, name string) {
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
	if _, err := w.Next(); !errors.Is(err, registry.ErrWatcherStopped) {
		t.Errorf("Next after Close = %v, want ErrWatcherStopped", err)
	}
	if err := r.Register(ctxT(t, cfg), Service(cfg, name, "1", 0, 1)); !errors.Is(err, registry.ErrClosed) {
		t.Errorf("Register after Close = %v, want ErrClosed", err)
	}
	if _, err := r.GetService(ctxT(t, cfg), name); !errors.Is(err, registry.ErrClosed) {
		t.Errorf("GetService after Close = %v, want ErrClosed", err)
	}
}

func describe(ss []*registry.Service) string {
	var b strings.Builder
	for _, s := range ss {
		fmt.Fprintf(&b, "%s@%s(%d nodes) ", s.Name, s.Version, len(s.Nodes))
	}
	return b.String()
}
