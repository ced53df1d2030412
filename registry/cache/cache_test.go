package cache_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/cache"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/registry/registrytest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// broken serves GetService from a memory registry until told to fail; its
// watches end at once with an error while failing.
type broken struct {
	registry.Registry
	fail  atomic.Bool
	quiet atomic.Bool // watches deliver nothing (only refreshes bring news)
	flaky atomic.Bool // GetService fails; watches carry on
	gets  atomic.Int32
	calls atomic.Int32 // GetService and Watch calls
	mu    sync.Mutex
	ws    []registry.Watcher

	failed   atomic.Int32 // GetService calls that returned an error
	answered atomic.Int32 // GetService calls that returned
}

// down makes the registry fail and breaks the watches already open.
func (b *broken) down() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fail.Store(true)
	for _, w := range b.ws {
		w.Stop()
	}
}

var errDown = errors.New("down")

func (b *broken) GetService(ctx context.Context, n string, o ...registry.GetOption) ([]*registry.Service, error) {
	b.gets.Add(1)
	b.calls.Add(1)
	defer b.answered.Add(1)
	if b.fail.Load() || b.flaky.Load() {
		b.failed.Add(1)
		return nil, errDown
	}
	return b.Registry.GetService(ctx, n, o...)
}

func (b *broken) Watch(ctx context.Context, o ...registry.WatchOption) (registry.Watcher, error) {
	b.calls.Add(1)
	b.mu.Lock() // so that down cannot miss a watch being opened
	defer b.mu.Unlock()
	if b.fail.Load() {
		return nil, errDown
	}
	if b.quiet.Load() {
		return registry.NewQueue(ctx, nil), nil
	}
	w, err := b.Registry.Watch(ctx, o...)
	if err == nil {
		b.ws = append(b.ws, w)
	}
	return w, err
}

func svc(ids ...string) *registry.Service {
	s := &registry.Service{Name: "greeter", Version: "1"}
	for i, id := range ids {
		s.Nodes = append(s.Nodes, &registry.Node{ID: id, Address: fmt.Sprintf("127.0.0.1:%d", 9000+i)})
	}
	return s
}

func ids(e *cache.Entry) string {
	var out []string
	for _, n := range e.Snapshot().Nodes {
		out = append(out, n.ID)
	}
	return fmt.Sprint(out)
}

func wantIDs(t *testing.T, e *cache.Entry, want string) {
	t.Helper()
	registrytest.Eventually(t, 5*time.Second, func() error {
		if got := ids(e); got != want {
			return fmt.Errorf("snapshot %s, want %s", got, want)
		}
		return nil
	})
}

func TestStaleOnErrorDroppedOnPositiveNews(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	b := &broken{Registry: mem}
	c := cache.New(b, cache.WithRefreshInterval(20*time.Millisecond), cache.WithEmptyHold(0))
	defer c.Close()
	ctx := context.Background()
	mem.Register(ctx, svc("a", "b"))
	e, err := c.Entry(ctx, "greeter")
	if err != nil {
		t.Fatal(err)
	}
	wantIDs(t, e, "[a b]")
	// The registry fails: GetService errors, watches break. The snapshot stays.
	b.down()
	mem.Deregister(ctx, svc("a")) // the cache cannot hear this
	g := b.calls.Load()
	registrytest.Eventually(t, 10*time.Second, func() error {
		e.Snapshot()
		if b.calls.Load() < g+3 {
			return errors.New("waiting for failed registry calls")
		}
		return nil
	})
	if got := ids(e); got != "[a b]" {
		t.Fatalf("snapshot changed while the registry failed: %s", got)
	}
	// The registry is back: the next successful answer is positive news.
	b.fail.Store(false)
	wantIDs(t, e, "[b]")
	// A delete event is positive news too.
	mem.Deregister(ctx, svc("b"))
	wantIDs(t, e, "[]")
}

func TestRefreshBringsNewsWithoutWatch(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	b := &broken{Registry: mem}
	b.quiet.Store(true)
	c := cache.New(b, cache.WithRefreshInterval(20*time.Millisecond))
	defer c.Close()
	ctx := context.Background()
	mem.Register(ctx, svc("a"))
	e, err := c.Entry(ctx, "greeter")
	if err != nil {
		t.Fatal(err)
	}
	mem.Register(ctx, svc("a", "b"))
	wantIDs(t, e, "[a b]")
}

func TestIdleEntryDropped(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	b := &broken{Registry: mem}
	c := cache.New(b, cache.WithRefreshInterval(10*time.Millisecond))
	defer c.Close()
	ctx := context.Background()
	mem.Register(ctx, svc("a"))
	e1, err := c.Entry(ctx, "greeter")
	if err != nil {
		t.Fatal(err)
	}
	registrytest.Eventually(t, 5*time.Second, func() error {
		e2, err := c.Entry(ctx, "greeter")
		if err != nil {
			return err
		}
		if e2 == e1 {
			return errors.New("idle entry still cached")
		}
		return nil
	})
}

// waitDropped polls until the cache has dropped e for idleness.
func waitDropped(t *testing.T, e *cache.Entry) {
	t.Helper()
	registrytest.Eventually(t, 5*time.Second, func() error {
		if !e.Dropped() {
			return errors.New("entry not dropped yet")
		}
		return nil
	})
}

// TestDroppedEntrySaysSo: a dropped entry keeps its last snapshot and says
// that it was dropped to every later read; looking the name up again gives
// a live entry that follows the registry.
func TestDroppedEntrySaysSo(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	c := cache.New(mem, cache.WithRefreshInterval(10*time.Millisecond))
	defer c.Close()
	ctx := context.Background()
	mem.Register(ctx, svc("a"))
	e1, err := c.Entry(ctx, "greeter")
	if err != nil {
		t.Fatal(err)
	}
	if s, live := e1.Load(); !live || len(s.Nodes) != 1 {
		t.Fatalf("new entry: live %v, %d nodes", live, len(s.Nodes))
	}
	waitDropped(t, e1)
	if s, live := e1.Load(); live || len(s.Nodes) != 1 || !e1.Dropped() {
		t.Fatalf("dropped entry: live %v, %d nodes, dropped %v; want not live, its last node", live, len(s.Nodes), e1.Dropped())
	}
	e2, err := c.Entry(ctx, "greeter")
	if err != nil || e2 == e1 || e2.Dropped() {
		t.Fatalf("lookup after the drop: %p (dropped %p), %v", e2, e1, err)
	}
	mem.Register(ctx, svc("a", "b"))
	registrytest.Eventually(t, 5*time.Second, func() error {
		e, err := c.Renew(ctx, e1) // the live entry, whichever it is by now
		if err != nil {
			return err
		}
		if got := ids(e); got != "[a b]" {
			return fmt.Errorf("renewed entry %s, want [a b]", got)
		}
		return nil
	})
}

// TestReadEntryNotDropped: an entry read all the time is never dropped,
// however many refresh ticks pass.
func TestReadEntryNotDropped(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	b := &broken{Registry: mem}
	c := cache.New(b, cache.WithRefreshInterval(5*time.Millisecond))
	defer c.Close()
	ctx := context.Background()
	mem.Register(ctx, svc("a"))
	e, err := c.Entry(ctx, "greeter")
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, live := e.Load(); !live {
					t.Error("an entry in use was dropped")
					return
				}
				runtime.Gosched()
			}
		}()
	}
	g := b.gets.Load()
	registrytest.Eventually(t, 10*time.Second, func() error {
		if b.gets.Load() < g+30 {
			return errors.New("waiting for 30 refreshes")
		}
		return nil
	})
	// Checked while the readers run: once they stop, the entry is idle.
	if e2, err := c.Entry(ctx, "greeter"); err != nil || e2 != e {
		t.Errorf("entry replaced (%v)", err)
	}
	close(stop)
	wg.Wait()
}

// TestRenewWhileRegistryFails: renewing a dropped entry while the registry
// fails serves its last nodes from a live entry, which follows the registry
// once it is back.
func TestRenewWhileRegistryFails(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	b := &broken{Registry: mem}
	c := cache.New(b, cache.WithRefreshInterval(10*time.Millisecond))
	defer c.Close()
	ctx := context.Background()
	mem.Register(ctx, svc("a"))
	e1, err := c.Entry(ctx, "greeter")
	if err != nil {
		t.Fatal(err)
	}
	waitDropped(t, e1)
	b.down()
	if _, err := c.Entry(ctx, "greeter"); !errors.Is(err, errDown) {
		t.Fatalf("lookup while the registry fails: %v, want its error", err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.Renew(canceled, e1); err == nil {
		t.Fatal("Renew with a canceled context and a failing registry succeeded")
	}
	e2, err := c.Renew(ctx, e1)
	if err != nil {
		t.Fatalf("Renew while the registry fails: %v, want the last nodes", err)
	}
	if _, live := e2.Load(); !live || ids(e2) != "[a]" {
		t.Fatalf("renewed entry: live %v, nodes %s; want live, [a]", live, ids(e2))
	}
	if e, err := c.Entry(ctx, "greeter"); err != nil || e != e2 {
		t.Fatalf("lookup after Renew: %v, want the renewed entry", err)
	}
	b.fail.Store(false)
	mem.Register(ctx, svc("a", "b"))
	registrytest.Eventually(t, 5*time.Second, func() error {
		e, err := c.Renew(ctx, e1)
		if err != nil {
			return err
		}
		if got := ids(e); got != "[a b]" {
			return fmt.Errorf("entry %s, want [a b]", got)
		}
		return nil
	})
	c.Close()
	if _, err := c.Renew(ctx, e1); !errors.Is(err, cache.ErrClosed) {
		t.Fatalf("Renew after Close: %v, want ErrClosed", err)
	}
}

func TestFirstFetchErrorNotCached(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	b := &broken{Registry: mem}
	b.fail.Store(true)
	c := cache.New(b)
	defer c.Close()
	if _, err := c.Entry(context.Background(), "greeter"); !errors.Is(err, errDown) {
		t.Fatalf("err = %v, want the registry's", err)
	}
	b.fail.Store(false)
	mem.Register(context.Background(), svc("a"))
	e, err := c.Entry(context.Background(), "greeter")
	if err != nil || ids(e) != "[a]" {
		t.Fatalf("after recovery: %v %v", e, err)
	}
	if _, err := c.Entry(context.Background(), "bad name"); !errors.Is(err, registry.ErrInvalid) {
		t.Fatalf("invalid name: %v", err)
	}
	c.Close()
	if _, err := c.Entry(context.Background(), "other"); !errors.Is(err, cache.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

// TestEmptyHold: news that a service has no nodes left is believed at once
// when they left one by one on a healthy watch, and only after the hold
// when it may come from a registry that restarted empty.
func TestEmptyHold(t *testing.T) {
	const hold = 300 * time.Millisecond
	// deregister takes one call per argument, of comma-separated node IDs.
	deregister := func(calls ...string) func(*testing.T, *broken) {
		return func(t *testing.T, b *broken) {
			for _, ids := range calls {
				if err := b.Registry.Deregister(context.Background(), svc(strings.Split(ids, ",")...)); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	tests := []struct {
		name    string
		hold    time.Duration // 0: the default
		refresh time.Duration // 0: the default
		quiet   bool          // the watch reports nothing
		before  func(*testing.T, *broken)
		empty   func(*testing.T, *broken) // makes a and b leave
		held    bool
	}{
		{name: "deleted one by one on a healthy watch", empty: deregister("a", "b")},
		// One change of the registry removes every node: a consul agent
		// restarted empty answers so, an etcd re-list after a compaction too.
		{name: "one change removes every node", hold: hold, empty: deregister("a,b"), held: true},
		{name: "registry restarted empty", hold: hold, empty: func(t *testing.T, b *broken) {
			b.down() // the watch ends, fetches fail
			deregister("a", "b")(t, b)
			b.fail.Store(false) // back, empty: the re-watch's resync finds none
		}, held: true},
		{name: "a refresh finds none", hold: hold, refresh: 50 * time.Millisecond, quiet: true,
			empty: deregister("a", "b"), held: true},
		{name: "deleted one by one after a failed fetch", hold: hold, refresh: 50 * time.Millisecond,
			before: func(t *testing.T, b *broken) {
				b.flaky.Store(true)
				f := b.failed.Load()
				registrytest.Eventually(t, 5*time.Second, func() error {
					if b.failed.Load() < f+1 {
						return errors.New("waiting for a failed refresh")
					}
					return nil
				})
				b.flaky.Store(false)
			}, empty: deregister("a", "b"), held: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mem := memory.New()
			defer mem.Close()
			b := &broken{Registry: mem}
			b.quiet.Store(tc.quiet)
			var opts []cache.Option
			if tc.hold > 0 {
				opts = append(opts, cache.WithEmptyHold(tc.hold))
			}
			if tc.refresh > 0 {
				opts = append(opts, cache.WithRefreshInterval(tc.refresh))
			}
			c := cache.New(b, opts...)
			defer c.Close()
			ctx := context.Background()
			if err := mem.Register(ctx, svc("a")); err != nil {
				t.Fatal(err)
			}
			e, err := c.Entry(ctx, "greeter")
			if err != nil {
				t.Fatal(err)
			}
			// A node that joins shows that the cache follows the registry.
			if err := mem.Register(ctx, svc("b")); err != nil {
				t.Fatal(err)
			}
			wantIDs(t, e, "[a b]")
			if tc.before != nil {
				tc.before(t, b)
			}
			start := time.Now()
			tc.empty(t, b)
			wait := time.Second
			if tc.held {
				wait = 5 * time.Second
			}
			registrytest.Eventually(t, wait, func() error {
				if got := ids(e); got != "[]" {
					return fmt.Errorf("snapshot %s, want []", got)
				}
				return nil
			})
			if took := time.Since(start); tc.held && took < tc.hold {
				t.Fatalf("no nodes believed after %v, want the hold (%v)", took, tc.hold)
			}
		})
	}
}

// TestEmptyHoldBridgesARestart: a registry that restarted empty says so
// until the live servers register again; callers never see no nodes.
func TestEmptyHoldBridgesARestart(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	b := &broken{Registry: mem}
	c := cache.New(b, cache.WithEmptyHold(time.Minute))
	defer c.Close()
	ctx := context.Background()
	mem.Register(ctx, svc("a", "b"))
	e, err := c.Entry(ctx, "greeter")
	if err != nil {
		t.Fatal(err)
	}
	wantIDs(t, e, "[a b]")
	b.down()
	mem.Deregister(ctx, svc("a", "b"))
	// Back, empty: the re-watch's resync (the first fetch since the
	// failure: the refresh interval is long) finds no nodes...
	a := b.answered.Load()
	b.fail.Store(false)
	registrytest.Eventually(t, 5*time.Second, func() error {
		if got := ids(e); got == "[]" {
			t.Fatal("empty snapshot published during the hold")
		}
		if b.answered.Load() < a+1 {
			return errors.New("waiting for the re-watch and its resync")
		}
		return nil
	})
	// ... until the servers register again.
	mem.Register(ctx, svc("a"))
	registrytest.Eventually(t, 5*time.Second, func() error {
		switch got := ids(e); got {
		case "[a]":
			return nil
		case "[]":
			t.Fatal("empty snapshot published during the hold")
		default:
			return fmt.Errorf("snapshot %s, want [a]", got)
		}
		return nil
	})
}

// hooks records what the OnEvent and OnError functions hear.
type hooks struct {
	mu     sync.Mutex
	events map[string]int // "service/type"
	errs   map[string]int // "service/op"
}

func (h *hooks) options() []cache.Option {
	h.events, h.errs = map[string]int{}, map[string]int{}
	return []cache.Option{
		cache.OnEvent(func(service string, t registry.EventType) {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.events[service+"/"+t.String()]++
		}),
		cache.OnError(func(service, op string, err error) {
			if err == nil {
				panic("OnError without an error")
			}
			h.mu.Lock()
			defer h.mu.Unlock()
			h.errs[service+"/"+op]++
		}),
		cache.OnEvent(nil), cache.OnError(nil),
	}
}

// wait polls until cond holds for what the hooks heard.
func (h *hooks) wait(t *testing.T, what string, cond func(events, errs map[string]int) bool) {
	t.Helper()
	registrytest.Eventually(t, 10*time.Second, func() error {
		h.mu.Lock()
		defer h.mu.Unlock()
		if !cond(h.events, h.errs) {
			return fmt.Errorf("%s: events %v, errors %v", what, h.events, h.errs)
		}
		return nil
	})
}

// TestHooks: OnEvent hears every event of a cached service's watch (the
// first Create per node included), OnError every failed fetch and watch,
// and nothing of the cache's own shutdown.
func TestHooks(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	b := &broken{Registry: mem}
	var h hooks
	c := cache.New(b, append(h.options(), cache.WithRefreshInterval(time.Hour), cache.WithEmptyHold(0))...)
	defer c.Close()
	ctx := context.Background()
	mem.Register(ctx, svc("a", "b"))
	e, err := c.Entry(ctx, "greeter")
	if err != nil {
		t.Fatal(err)
	}
	h.wait(t, "first creates", func(ev, _ map[string]int) bool { return ev["greeter/create"] == 2 })
	mem.Register(ctx, svc("a", "b", "c")) // c appears
	mem.Register(ctx, svc("b"))           // b moves to another address
	mem.Deregister(ctx, svc("a"))
	h.wait(t, "changes", func(ev, _ map[string]int) bool {
		return ev["greeter/create"] == 3 && ev["greeter/update"] == 1 && ev["greeter/delete"] == 1
	})
	wantIDs(t, e, "[b c]")

	b.down() // the open watch ends with an error; opening another fails
	h.wait(t, "watch errors", func(_, errs map[string]int) bool { return errs["greeter/watch"] >= 2 })
	if _, err := c.Entry(ctx, "other"); !errors.Is(err, errDown) {
		t.Fatalf("lookup while down: %v", err)
	}
	h.wait(t, "fetch error", func(_, errs map[string]int) bool { return errs["other/fetch"] == 1 })
	b.fail.Store(false)
	b.flaky.Store(true) // the watch opens again, its resync fetch fails
	h.wait(t, "resync error", func(_, errs map[string]int) bool { return errs["greeter/fetch"] >= 1 })
	b.flaky.Store(false)
	c.Close()
	h.mu.Lock()
	defer h.mu.Unlock()
	for k := range h.errs {
		if !strings.HasPrefix(k, "greeter/") && k != "other/fetch" {
			t.Errorf("unexpected error report %s", k)
		}
	}
}
