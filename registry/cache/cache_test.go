package cache_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
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
	gets  atomic.Int32
	calls atomic.Int32 // GetService and Watch calls
	mu    sync.Mutex
	ws    []registry.Watcher
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
	if b.fail.Load() {
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

func TestEmptyHold(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	c := cache.New(mem, cache.WithEmptyHold(300*time.Millisecond))
	defer c.Close()
	ctx := context.Background()
	mem.Register(ctx, svc("a", "b"))
	e, err := c.Entry(ctx, "greeter")
	if err != nil {
		t.Fatal(err)
	}
	// The registry restarts empty: every node "leaves" at once.
	start := time.Now()
	mem.Deregister(ctx, svc("a", "b"))
	// The servers register again within the hold: callers never saw none.
	mem.Register(ctx, svc("a"))
	wantIDs(t, e, "[a]")
	if held := ids(e); held == "[]" {
		t.Fatal("empty snapshot published during the hold")
	}
	// A service that really goes away is empty once the hold has passed.
	mem.Deregister(ctx, svc("a"))
	if got := ids(e); got != "[a]" && time.Since(start) < 300*time.Millisecond {
		t.Fatalf("snapshot %s during the hold, want the last nodes", got)
	}
	wantIDs(t, e, "[]")
}
