package cache_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/cache"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/registry/registrytest"
)

// recorder keeps what a subscription delivered.
type recorder struct {
	mu    sync.Mutex
	snaps []*cache.Snapshot
}

func (r *recorder) f(s *cache.Snapshot) {
	r.mu.Lock()
	r.snaps = append(r.snaps, s)
	r.mu.Unlock()
}

func (r *recorder) all() []*cache.Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*cache.Snapshot(nil), r.snaps...)
}

func snapIDs(s *cache.Snapshot) string {
	var out []string
	for _, n := range s.Nodes {
		out = append(out, n.ID)
	}
	return fmt.Sprint(out)
}

// wantLast waits until the last delivered snapshot has the node IDs want.
func (r *recorder) wantLast(t *testing.T, want string) {
	t.Helper()
	registrytest.Eventually(t, 5*time.Second, func() error {
		all := r.all()
		if len(all) == 0 {
			return errors.New("nothing delivered")
		}
		if got := snapIDs(all[len(all)-1]); got != want {
			return fmt.Errorf("last delivered %s, want %s", got, want)
		}
		return nil
	})
}

// TestSubscribeCurrentThenChanges: the current snapshot first, then every
// change, each the snapshot the entry serves; no snapshot twice in a row.
func TestSubscribeCurrentThenChanges(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	c := cache.New(mem)
	defer c.Close()
	ctx := context.Background()
	mem.Register(ctx, svc("a"))
	var r recorder
	cancel, err := c.Subscribe(ctx, "greeter", r.f)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	r.wantLast(t, "[a]")
	mem.Register(ctx, svc("a", "b"))
	r.wantLast(t, "[a b]")
	mem.Deregister(ctx, svc("a"))
	r.wantLast(t, "[b]")
	e, err := c.Entry(ctx, "greeter")
	if err != nil {
		t.Fatal(err)
	}
	all := r.all()
	if last := all[len(all)-1]; last != e.Snapshot() {
		t.Fatal("the last delivered snapshot is not the one the entry serves")
	}
	for i := 1; i < len(all); i++ {
		if all[i] == all[i-1] {
			t.Fatalf("snapshot %d delivered twice in a row", i)
		}
	}
	cancel()
	cancel() // idempotent
	n := len(r.all())
	mem.Register(ctx, svc("b", "c"))
	registrytest.Eventually(t, 5*time.Second, func() error {
		if got := ids(e); got != "[b c]" {
			return fmt.Errorf("entry %s", got)
		}
		return nil
	})
	time.Sleep(20 * time.Millisecond)
	if len(r.all()) != n {
		t.Fatal("delivered after cancel returned")
	}
}

// TestSubscribeUnknownService: a service the registry does not know is
// subscribed to; its empty snapshot comes first, its nodes when they appear.
func TestSubscribeUnknownService(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	c := cache.New(mem)
	defer c.Close()
	var r recorder
	cancel, err := c.Subscribe(context.Background(), "greeter", r.f)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	r.wantLast(t, "[]")
	mem.Register(context.Background(), svc("a"))
	r.wantLast(t, "[a]")
}

// TestSubscribeSlowCallbackNeverBlocksTheCache: while f is stuck, the entry
// keeps following the registry; f then gets the latest snapshot, not the
// ones in between.
func TestSubscribeSlowCallbackNeverBlocksTheCache(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	c := cache.New(mem)
	defer c.Close()
	ctx := context.Background()
	mem.Register(ctx, svc("n0"))
	release := make(chan struct{})
	var r recorder
	var calls atomic.Int32
	cancel, err := c.Subscribe(ctx, "greeter", func(s *cache.Snapshot) {
		if calls.Add(1) == 2 {
			<-release // the first change blocks f
		}
		r.f(s)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	r.wantLast(t, "[n0]")
	e, err := c.Entry(ctx, "greeter")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"n0"}
	for i := 1; i <= 50; i++ {
		id := fmt.Sprintf("n%d", i)
		want = append(want, id)
		mem.Register(ctx, svc(want...))
	}
	// The entry follows while f is blocked.
	registrytest.Eventually(t, 5*time.Second, func() error {
		if n := len(e.Snapshot().Nodes); n != 51 {
			return fmt.Errorf("entry has %d nodes", n)
		}
		return nil
	})
	close(release)
	registrytest.Eventually(t, 5*time.Second, func() error {
		all := r.all()
		if n := len(all[len(all)-1].Nodes); n != 51 {
			return fmt.Errorf("last delivered has %d nodes", n)
		}
		return nil
	})
	if n := calls.Load(); n > 4 {
		t.Fatalf("f called %d times: the 50 changes made while it was blocked were not coalesced", n)
	}
}

// TestSubscribeStaleOnFailure: a failing registry never delivers an empty
// list; the subscriber sees the nodes again as soon as the registry answers.
func TestSubscribeStaleOnFailure(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	b := &broken{Registry: mem}
	c := cache.New(b, cache.WithRefreshInterval(20*time.Millisecond))
	defer c.Close()
	ctx := context.Background()
	mem.Register(ctx, svc("a", "b"))
	var r recorder
	cancel, err := c.Subscribe(ctx, "greeter", r.f)
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	r.wantLast(t, "[a b]")
	b.down()
	mem.Deregister(ctx, svc("a", "b")) // unheard while failing
	g := b.calls.Load()
	registrytest.Eventually(t, 10*time.Second, func() error {
		if b.calls.Load() < g+3 {
			return errors.New("waiting for failed registry calls")
		}
		return nil
	})
	mem.Register(ctx, svc("b", "c"))
	b.fail.Store(false)
	r.wantLast(t, "[b c]")
	for i, s := range r.all() {
		if len(s.Nodes) == 0 {
			t.Fatalf("snapshot %d delivered empty", i)
		}
	}
}

// TestSubscribedEntryNotDropped: an entry nobody reads but somebody
// subscribed to stays live and watched; without the subscriber it is
// dropped.
func TestSubscribedEntryNotDropped(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	c := cache.New(mem, cache.WithRefreshInterval(5*time.Millisecond))
	defer c.Close()
	ctx := context.Background()
	mem.Register(ctx, svc("a"))
	var r recorder
	cancel, err := c.Subscribe(ctx, "greeter", r.f)
	if err != nil {
		t.Fatal(err)
	}
	e, err := c.Entry(ctx, "greeter")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // twenty refresh intervals unread
	if e.Dropped() {
		t.Fatal("a subscribed entry was dropped")
	}
	mem.Register(ctx, svc("a", "b"))
	r.wantLast(t, "[a b]")
	cancel()
	waitDropped(t, e)
}

// TestSubscribeRacesTheDrop: subscriptions taken while the entry is being
// dropped for idleness always end up on a live entry that follows the
// registry.
func TestSubscribeRacesTheDrop(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	c := cache.New(mem, cache.WithRefreshInterval(time.Millisecond))
	defer c.Close()
	ctx := context.Background()
	mem.Register(ctx, svc("a"))
	for i := range 30 {
		// Let the entry go idle and be dropped, or nearly.
		time.Sleep(time.Duration(i%4) * time.Millisecond)
		var r recorder
		cancel, err := c.Subscribe(ctx, "greeter", r.f)
		if err != nil {
			t.Fatal(err)
		}
		r.wantLast(t, "[a]")
		time.Sleep(3 * time.Millisecond) // several refresh ticks
		e, err := c.Entry(ctx, "greeter")
		if err != nil {
			t.Fatal(err)
		}
		if e.Dropped() {
			t.Fatal("subscribed entry dropped")
		}
		cancel()
	}
}

// TestSubscribeEnds: ctx, Close and a failed first lookup.
func TestSubscribeEnds(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	b := &broken{Registry: mem}
	c := cache.New(b)
	ctx := context.Background()
	mem.Register(ctx, svc("a"))

	// A failed first fetch subscribes nothing.
	b.fail.Store(true)
	if _, err := c.Subscribe(ctx, "greeter", func(*cache.Snapshot) {}); !errors.Is(err, errDown) {
		t.Fatalf("Subscribe on a failing registry: %v", err)
	}
	b.fail.Store(false)
	// An invalid name.
	if _, err := c.Subscribe(ctx, "", func(*cache.Snapshot) {}); !errors.Is(err, registry.ErrInvalid) {
		t.Fatalf("Subscribe(\"\"): %v", err)
	}

	// ctx ends the subscription; f may cancel its own ctx.
	sctx, scancel := context.WithCancel(ctx)
	var n atomic.Int32
	cancel1, err := c.Subscribe(sctx, "greeter", func(*cache.Snapshot) {
		n.Add(1)
		scancel()
	})
	if err != nil {
		t.Fatal(err)
	}
	cancel1() // returns once the goroutine ended
	mem.Register(ctx, svc("a", "b"))
	time.Sleep(20 * time.Millisecond)
	if n.Load() != 1 {
		t.Fatalf("f called %d times after its ctx was canceled", n.Load())
	}

	// Close ends every subscription and waits for f in progress.
	started := make(chan struct{})
	var inF, returned, after atomic.Bool
	cancel2, err := c.Subscribe(ctx, "greeter", func(*cache.Snapshot) {
		if inF.Swap(true) {
			after.Store(true)
			return
		}
		close(started)
		time.Sleep(50 * time.Millisecond)
		returned.Store(true)
	})
	if err != nil {
		t.Fatal(err)
	}
	<-started
	c.Close()
	if !returned.Load() {
		t.Fatal("Close returned while f was running")
	}
	mem.Register(ctx, svc("c"))
	time.Sleep(20 * time.Millisecond)
	if after.Load() {
		t.Fatal("f called after Close")
	}
	cancel2() // after Close: returns at once
	if _, err := c.Subscribe(ctx, "greeter", func(*cache.Snapshot) {}); !errors.Is(err, cache.ErrClosed) {
		t.Fatalf("Subscribe after Close: %v", err)
	}
}
