package selector_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/cache"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/registry/registrytest"
	"github.com/beacon-go/beacon/selector"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// faulty wraps a registry and fails on demand, counting fetches.
type faulty struct {
	registry.Registry
	fail    atomic.Bool
	gets    atomic.Int32
	watches atomic.Int32
	delay   time.Duration
}

var errDown = errors.New("registry down")

func (f *faulty) GetService(ctx context.Context, name string, o ...registry.GetOption) ([]*registry.Service, error) {
	f.gets.Add(1)
	if f.delay > 0 {
		time.Sleep(f.delay) // simulates a slow backend so concurrent misses overlap
	}
	if f.fail.Load() {
		return nil, errDown
	}
	return f.Registry.GetService(ctx, name, o...)
}

func (f *faulty) Watch(ctx context.Context, o ...registry.WatchOption) (registry.Watcher, error) {
	f.watches.Add(1)
	if f.fail.Load() {
		return nil, errDown
	}
	return f.Registry.Watch(ctx, o...)
}

func service(name, version string, from, n int) *registry.Service {
	s := &registry.Service{Name: name, Version: version, Endpoints: []*registry.Endpoint{{Name: "Greeter.Hello"}}}
	for i := from; i < from+n; i++ {
		s.Nodes = append(s.Nodes, &registry.Node{ID: fmt.Sprintf("n%03d", i), Address: fmt.Sprintf("127.0.0.1:%d", 10000+i),
			Metadata: map[string]string{"zone": fmt.Sprintf("z%d", i%2)}})
	}
	return s
}

func setup(t testing.TB, n int, opts ...selector.Option) (*memory.Registry, *selector.Cached) {
	r := memory.New()
	if n > 0 {
		if err := r.Register(context.Background(), service("greeter", "1.0.0", 0, n)); err != nil {
			t.Fatal(err)
		}
	}
	s := selector.New(r, opts...)
	t.Cleanup(func() { s.Close(); r.Close() })
	return r, s
}

func TestRoundRobinRotatesAcrossCalls(t *testing.T) {
	_, s := setup(t, 3, selector.WithStrategy(selector.RoundRobin()))
	counts := map[string]int{}
	var order []string
	for range 9 {
		next, err := s.Select(context.Background(), "greeter")
		if err != nil {
			t.Fatal(err)
		}
		pk, err := next()
		n := pk.Node
		if err != nil {
			t.Fatal(err)
		}
		counts[n.ID]++
		order = append(order, n.ID)
	}
	for id, c := range counts {
		if c != 3 {
			t.Errorf("node %s picked %d times in 9 calls, want 3 (order %v)", id, c, order)
		}
	}
	for i := 3; i < 9; i++ {
		if order[i] != order[i-3] {
			t.Fatalf("not a rotation: %v", order)
		}
	}
}

func TestRandomReachesAll(t *testing.T) {
	_, s := setup(t, 3, selector.WithStrategy(selector.Random()))
	seen := map[string]bool{}
	for i := 0; i < 1000 && len(seen) < 3; i++ {
		next, _ := s.Select(context.Background(), "greeter")
		pk, _ := next()
		n := pk.Node
		seen[n.ID] = true
	}
	if len(seen) != 3 {
		t.Fatalf("random reached %d of 3 nodes", len(seen))
	}
}

func TestFilters(t *testing.T) {
	r, s := setup(t, 2, selector.WithStrategy(selector.RoundRobin()))
	if err := r.Register(context.Background(), service("greeter", "2.0.0", 2, 2)); err != nil {
		t.Fatal(err)
	}
	registrytest.Eventually(t, 5*time.Second, func() error {
		next, err := s.Select(context.Background(), "greeter", selector.WithFilter(selector.FilterVersion("2.0.0")))
		if err != nil {
			return err
		}
		pk, _ := next()
		n := pk.Node
		if n.ID != "n002" && n.ID != "n003" {
			return fmt.Errorf("version filter let %s through", n.ID)
		}
		return nil
	})
	tests := []struct {
		name    string
		filters []selector.Filter
		want    map[string]bool
		err     error
	}{
		{"version", []selector.Filter{selector.FilterVersion("1.0.0")}, map[string]bool{"n000": true, "n001": true}, nil},
		{"metadata", []selector.Filter{selector.FilterMetadata("zone", "z1")}, map[string]bool{"n001": true, "n003": true}, nil},
		{"both", []selector.Filter{selector.FilterVersion("2.0.0"), selector.FilterMetadata("zone", "z0")}, map[string]bool{"n002": true}, nil},
		{"endpoint", []selector.Filter{selector.FilterEndpoint("Greeter.Hello")}, map[string]bool{"n000": true, "n001": true, "n002": true, "n003": true}, nil},
		{"no endpoint", []selector.Filter{selector.FilterEndpoint("Nope.No")}, nil, selector.ErrNoneAvailable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			next, err := s.Select(context.Background(), "greeter", selector.WithFilter(tc.filters...))
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]bool{}
			for range 20 {
				pk, err := next()
				n := pk.Node
				if err != nil {
					t.Fatal(err)
				}
				got[n.ID] = true
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("picked %v, want %v", got, tc.want)
			}
		})
	}
}

func TestNotFoundThenAppears(t *testing.T) {
	r, s := setup(t, 0)
	if _, err := s.Select(context.Background(), "greeter"); !errors.Is(err, selector.ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if err := r.Register(context.Background(), service("greeter", "1", 0, 1)); err != nil {
		t.Fatal(err)
	}
	registrytest.Eventually(t, 5*time.Second, func() error {
		_, err := s.Select(context.Background(), "greeter")
		return err
	})
}

func TestWatchUpdatesSnapshot(t *testing.T) {
	r, s := setup(t, 1)
	if _, err := s.Select(context.Background(), "greeter"); err != nil {
		t.Fatal(err)
	}
	if err := r.Register(context.Background(), service("greeter", "1.0.0", 1, 1)); err != nil {
		t.Fatal(err)
	}
	waitNodes(t, s, "n000", "n001")
	if err := r.Deregister(context.Background(), service("greeter", "1.0.0", 0, 1)); err != nil {
		t.Fatal(err)
	}
	waitNodes(t, s, "n001")
}

func waitNodes(t *testing.T, s *selector.Cached, want ...string) {
	t.Helper()
	registrytest.Eventually(t, 5*time.Second, func() error {
		e, err := s.Cache().Entry(context.Background(), "greeter")
		if err != nil {
			return err
		}
		var got []string
		for _, n := range e.Snapshot().Nodes {
			got = append(got, n.ID)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			return fmt.Errorf("nodes %v, want %v", got, want)
		}
		return nil
	})
}

func TestServesLastSnapshotWhenRegistryFails(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	if err := mem.Register(context.Background(), service("greeter", "1", 0, 3)); err != nil {
		t.Fatal(err)
	}
	f := &faulty{Registry: mem}
	s := selector.New(f, selector.WithCacheOptions(cache.WithRefreshInterval(20*time.Millisecond)))
	defer s.Close()
	if _, err := s.Select(context.Background(), "greeter"); err != nil {
		t.Fatal(err)
	}
	f.fail.Store(true)
	calls := f.gets.Load() + f.watches.Load()
	// Let several refreshes fail.
	registrytest.Eventually(t, 15*time.Second, func() error {
		if _, err := s.Select(context.Background(), "greeter"); err != nil {
			t.Fatalf("Select while the registry fails: %v", err)
		}
		if f.gets.Load()+f.watches.Load() < calls+3 {
			return errors.New("refreshes not attempted yet")
		}
		return nil
	})
	for range 30 {
		next, err := s.Select(context.Background(), "greeter")
		if err != nil {
			t.Fatalf("Select while the registry fails: %v", err)
		}
		if _, err := next(); err != nil {
			t.Fatalf("Next while the registry fails: %v", err)
		}
	}
	// An uncached service reports the registry's error.
	if _, err := s.Select(context.Background(), "other"); !errors.Is(err, errDown) {
		t.Fatalf("uncached Select err = %v, want the registry error", err)
	}
	f.fail.Store(false)
}

func TestConcurrentMissesShareOneFetch(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	if err := mem.Register(context.Background(), service("greeter", "1", 0, 3)); err != nil {
		t.Fatal(err)
	}
	f := &faulty{Registry: mem, delay: 50 * time.Millisecond}
	s := selector.New(f)
	defer s.Close()
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Select(context.Background(), "greeter"); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	// One fetch for the miss; the watch loop's resync may add one more.
	if g := f.gets.Load(); g > 2 {
		t.Fatalf("%d fetches for 50 concurrent first lookups, want 1 (+1 resync)", g)
	}
	// The watch starts in the background, once.
	registrytest.Eventually(t, 5*time.Second, func() error {
		if f.watches.Load() == 0 {
			return errors.New("no watch yet")
		}
		return nil
	})
	if w := f.watches.Load(); w != 1 {
		t.Fatalf("%d watches, want 1", w)
	}
}

func TestEjection(t *testing.T) {
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	_, s := setup(t, 3, selector.WithStrategy(selector.RoundRobin()), selector.WithClock(clock), selector.WithEjection(time.Second, 8*time.Second))
	pick := func(k int) map[string]int {
		got := map[string]int{}
		for range k {
			next, err := s.Select(context.Background(), "greeter")
			if err != nil {
				t.Fatal(err)
			}
			pk, err := next()
			n := pk.Node
			if err != nil {
				t.Fatal(err)
			}
			got[n.ID]++
		}
		return got
	}
	pick(3)
	dead := &registry.Node{ID: "n001"}
	s.Mark("greeter", dead, errors.New("connection refused"))
	if got := pick(30); got["n001"] != 0 || got["n000"] == 0 || got["n002"] == 0 {
		t.Fatalf("ejected node picked: %v", got)
	}
	advance(1100 * time.Millisecond)
	if got := pick(30); got["n001"] == 0 {
		t.Fatalf("node not back after its cool-off: %v", got)
	}
	// A second failure ejects it for longer (2 s).
	s.Mark("greeter", dead, errors.New("refused again"))
	advance(1100 * time.Millisecond)
	if got := pick(30); got["n001"] != 0 {
		t.Fatalf("cool-off did not grow: %v", got)
	}
	advance(time.Second)
	s.Mark("greeter", dead, nil) // success clears it
	if got := pick(30); got["n001"] == 0 {
		t.Fatalf("success did not clear the ejection: %v", got)
	}
	// Every node ejected: nodes are still returned.
	for _, id := range []string{"n000", "n001", "n002"} {
		s.Mark("greeter", &registry.Node{ID: id}, errors.New("down"))
	}
	if got := pick(9); len(got) == 0 {
		t.Fatal("no node returned with every node ejected")
	}
	s.Reset("greeter")
	if got := pick(9); len(got) != 3 {
		t.Fatalf("after Reset picked %v, want all 3", got)
	}
	// Eight calls in flight when a node hangs fail together: one incident,
	// one base cool-off (it used to be 2^7 s, and the node stayed out for
	// the maximum long after it recovered).
	for range 8 {
		s.Mark("greeter", dead, errors.New("timeout"))
	}
	advance(1100 * time.Millisecond)
	if got := pick(30); got["n001"] == 0 {
		t.Fatalf("failures of one incident counted many times: %v", got)
	}
}

// TestOnEject: the OnEject functions hear each ejection once, however many
// incidents it lasts, and its end, whatever ends it (an answer, Reset, the
// node leaving the registry), outside the selector's locks.
func TestOnEject(t *testing.T) {
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	var evMu sync.Mutex
	var events []string
	var s *selector.Cached
	hook := func(service string, n *registry.Node, ejected bool) {
		s.Reset("other") // calling back into the selector does not deadlock
		evMu.Lock()
		defer evMu.Unlock()
		events = append(events, fmt.Sprintf("%s/%s/%v", service, n.ID, ejected))
	}
	want := func(w ...string) {
		t.Helper()
		evMu.Lock()
		defer evMu.Unlock()
		if fmt.Sprint(events) != fmt.Sprint(w) {
			t.Fatalf("events %v, want %v", events, w)
		}
		events = nil
	}
	r, s := setup(t, 3, selector.WithStrategy(selector.RoundRobin()), selector.WithClock(clock),
		selector.WithEjection(time.Second, 8*time.Second), selector.OnEject(hook), selector.OnEject(nil))
	ctx := context.Background()
	next, err := s.Select(ctx, "greeter")
	if err != nil {
		t.Fatal(err)
	}
	dead := &registry.Node{ID: "n001"}
	for range 3 { // one incident
		s.Mark("greeter", dead, errors.New("refused"))
	}
	want("greeter/n001/true")
	// Its trial request fails: a repeated incident, not a new ejection.
	advance(1100 * time.Millisecond)
	var probe selector.Pick
	for range 10 {
		p, err := next()
		if err != nil {
			t.Fatal(err)
		}
		if p.Probe {
			probe = p
			break
		}
		p.Done(selector.Outcome{Skipped: true})
	}
	if probe.Node == nil || probe.Node.ID != "n001" {
		t.Fatalf("no trial request for n001: %+v", probe)
	}
	probe.Done(selector.Outcome{Err: errors.New("refused again")})
	want()
	s.Mark("greeter", dead, nil)
	want("greeter/n001/false")
	s.Mark("greeter", dead, nil)
	want()
	s.Mark("greeter", &registry.Node{ID: "n002"}, errors.New("down"))
	s.Reset("greeter")
	want("greeter/n002/true", "greeter/n002/false")
	// An ejected node that leaves the registry is no longer ejected.
	s.Mark("greeter", &registry.Node{ID: "n000"}, errors.New("down"))
	want("greeter/n000/true")
	if err := r.Deregister(ctx, &registry.Service{Name: "greeter", Nodes: []*registry.Node{{ID: "n000"}}}); err != nil {
		t.Fatal(err)
	}
	registrytest.Eventually(t, 5*time.Second, func() error {
		if _, err := s.Select(ctx, "greeter"); err != nil {
			return err
		}
		p, err := next()
		if err != nil {
			return err
		}
		p.Done(selector.Outcome{Skipped: true})
		evMu.Lock()
		defer evMu.Unlock()
		if len(events) == 0 {
			return errors.New("no report yet")
		}
		return nil
	})
	want("greeter/n000/false")
}

func TestClose(t *testing.T) {
	_, s := setup(t, 1)
	if _, err := s.Select(context.Background(), "greeter"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := s.Select(context.Background(), "other"); !errors.Is(err, selector.ErrClosed) {
		t.Fatalf("Select after Close = %v, want ErrClosed", err)
	}
}

// settle waits until the cache's snapshot of greeter stopped changing (the
// watch's first events and resync have been applied).
func settle(t *testing.T, s *selector.Cached) {
	t.Helper()
	e, err := s.Cache().Entry(context.Background(), "greeter")
	if err != nil {
		t.Fatal(err)
	}
	last, since := e.Snapshot(), time.Now()
	registrytest.Eventually(t, 5*time.Second, func() error {
		if cur := e.Snapshot(); cur != last {
			last, since = cur, time.Now()
		}
		if time.Since(since) < 100*time.Millisecond {
			return errors.New("snapshot still changing")
		}
		return nil
	})
}

func strategies() []selector.Strategy {
	return []selector.Strategy{selector.RoundRobin(), selector.Random(), selector.LeastLoaded()}
}

// Select, Next and Done allocate nothing, for every strategy, with an
// ejected node and weights too.
func TestSelectZeroAllocs(t *testing.T) {
	for _, strat := range strategies() {
		for _, n := range []int{3, 100} {
			var ejections atomic.Int32 // an OnEject function costs picking nothing
			r, s := setup(t, n, selector.WithStrategy(strat), selector.OnEject(func(string, *registry.Node, bool) { ejections.Add(1) }))
			ctx := context.Background()
			if _, err := s.Select(ctx, "greeter"); err != nil {
				t.Fatal(err)
			}
			run := func(what string) {
				settle(t, s) // a snapshot that changes is rebuilt (and allocates) once
				allocs := testing.AllocsPerRun(1000, func() {
					next, _ := s.Select(ctx, "greeter")
					p, _ := next()
					p.Done(selector.Outcome{Latency: time.Millisecond})
				})
				if allocs != 0 {
					t.Errorf("%s: Select+Next+Done with %d nodes%s: %v allocs, want 0", strat, n, what, allocs)
				}
			}
			run("")
			s.Mark("greeter", &registry.Node{ID: "n001"}, errors.New("refused"))
			run(", one ejected")
			svc := service("greeter", "1.0.0", 0, n)
			svc.Nodes[0].Metadata[selector.MetaWeight] = "3"
			if err := r.Register(ctx, svc); err != nil {
				t.Fatal(err)
			}
			registrytest.Eventually(t, 5*time.Second, func() error {
				for range 50 {
					next, _ := s.Select(ctx, "greeter")
					if p, _ := next(); p.Node.Metadata[selector.MetaWeight] == "3" {
						p.Done(selector.Outcome{Skipped: true})
						return nil
					} else {
						p.Done(selector.Outcome{Skipped: true})
					}
				}
				return errors.New("weighted node not seen yet")
			})
			run(", weighted")
		}
	}
}

// BenchmarkSelect measures Select + Next + Done (the end time given, as the
// client gives it) for every strategy.
func BenchmarkSelect(b *testing.B) {
	at := time.Now()
	for _, strat := range strategies() {
		for _, n := range []int{3, 10, 100} {
			_, s := setup(b, n, selector.WithStrategy(strat))
			ctx := context.Background()
			if _, err := s.Select(ctx, "greeter"); err != nil {
				b.Fatal(err)
			}
			b.Run(fmt.Sprintf("%s/nodes=%d/serial", strat, n), func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					next, _ := s.Select(ctx, "greeter")
					p, _ := next()
					p.Done(selector.Outcome{Latency: time.Millisecond, At: at})
				}
			})
			b.Run(fmt.Sprintf("%s/nodes=%d/parallel", strat, n), func(b *testing.B) {
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						next, _ := s.Select(ctx, "greeter")
						p, _ := next()
						p.Done(selector.Outcome{Latency: time.Millisecond, At: at})
					}
				})
			})
		}
	}
}

// TestRarelyCalledServiceFollowsRegistry: the cache drops an entry nobody
// read for two refresh intervals; the next Select of the service must look
// it up again instead of serving the dropped entry's nodes forever, and the
// service's ejections survive the renewal.
func TestRarelyCalledServiceFollowsRegistry(t *testing.T) {
	now := time.Unix(1000, 0) // frozen: an ejection lasts for the whole test
	r, s := setup(t, 2, selector.WithClock(func() time.Time { return now }),
		selector.WithCacheOptions(cache.WithRefreshInterval(20*time.Millisecond)))
	ctx := context.Background()
	if _, err := s.Select(ctx, "greeter"); err != nil {
		t.Fatal(err)
	}
	first, err := s.Cache().Entry(ctx, "greeter")
	if err != nil {
		t.Fatal(err)
	}
	s.Mark("greeter", &registry.Node{ID: "n000"}, errors.New("connection refused"))
	// Nobody calls the service: the cache drops its entry.
	registrytest.Eventually(t, 5*time.Second, func() error {
		if e, err := s.Cache().Entry(ctx, "greeter"); err != nil || e == first {
			return fmt.Errorf("entry still cached (%v)", err)
		}
		return nil
	})
	if err := r.Register(ctx, service("greeter", "1.0.0", 2, 1)); err != nil {
		t.Fatal(err)
	}
	registrytest.Eventually(t, 5*time.Second, func() error {
		next, err := s.Select(ctx, "greeter")
		if err != nil {
			return err
		}
		seen := map[string]bool{}
		for range 6 {
			pk, err := next()
			n := pk.Node
			if err != nil {
				return err
			}
			seen[n.ID] = true
		}
		if !seen["n002"] {
			return fmt.Errorf("picked %v, want the new node n002", seen)
		}
		if seen["n000"] {
			return fmt.Errorf("picked the ejected node n000: ejections were lost (%v)", seen)
		}
		return nil
	})
}

// TestScaleToZeroIsNotFoundAtOnce: every node of a service deregisters, one
// by one, on a healthy watch; callers get ErrNotFound within a second, even
// with the default empty hold.
func TestScaleToZeroIsNotFoundAtOnce(t *testing.T) {
	r, s := setup(t, 2)
	ctx := context.Background()
	if _, err := s.Select(ctx, "greeter"); err != nil {
		t.Fatal(err)
	}
	// A node that joins shows that the watch is live.
	if err := r.Register(ctx, service("greeter", "1.0.0", 2, 1)); err != nil {
		t.Fatal(err)
	}
	waitNodes(t, s, "n000", "n001", "n002")
	for i := range 3 {
		if err := r.Deregister(ctx, service("greeter", "1.0.0", i, 1)); err != nil {
			t.Fatal(err)
		}
	}
	registrytest.Eventually(t, time.Second, func() error {
		if _, err := s.Select(ctx, "greeter"); !errors.Is(err, selector.ErrNotFound) {
			return fmt.Errorf("Select = %v, want ErrNotFound", err)
		}
		return nil
	})
}
