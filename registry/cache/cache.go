// Package cache keeps an immutable, always-ready snapshot of each service a
// program looks up, fed by a registry watch, so that finding a service's
// nodes on a hot path costs no registry round trip, no lock and no
// allocation.
//
// The first lookup of a name fetches it from the registry (concurrent misses
// share one fetch) and starts one watch for it. Events build a new snapshot
// that replaces the old one atomically. Every RefreshInterval, and whenever
// the watch has to be re-opened, the service is fetched again in full.
//
// When the registry fails (errors, timeouts, unreachable) the last snapshot
// keeps serving: a snapshot changes only on positive news, that is an event
// from the registry or a successful answer (an empty one included).
//
// # Scale to zero and the empty hold
//
// News that a service has no nodes left is believed at once when they left
// one by one, each reported by its own Delete event on a healthy watch: a
// service scaled to zero is "not found" as soon as its last node
// deregisters. The same news is believed only after WithEmptyHold when it
// may come from a registry that restarted empty (a fresh consul agent, an
// etcd that lost its data), which says "no nodes" until the live servers
// register again, within one register interval:
//
//   - a full fetch finds no nodes: the resync after a watch is opened or
//     re-opened, or a periodic refresh (the watch did not report the nodes
//     leaving);
//   - one change of the registry deletes several nodes and leaves none.
//     Backends stamp the events of one change with one Timestamp: a consul
//     query answer, an etcd re-list after a compaction, an mdns expiry
//     sweep (a backend that leaves Timestamp zero makes all its deletions
//     look like one change);
//   - the registry failed (a fetch or a watch of the entry failed) less than
//     WithEmptyHold ago.
//
// Servers that register again during the hold end it. A single node deleted
// by a consul agent that restarted empty looks like a clean deregistration
// and is believed at once; several nodes that leave within one consul
// answer are held, like a restart.
//
// # Idle entries
//
// Entries not read for two refresh intervals are dropped and their watch
// stopped, but never while the registry is failing. A dropped entry keeps
// its last snapshot and says that it was dropped (Entry.Load,
// Entry.Dropped): a holder of entries, such as the selector, looks the name
// up again (Cache.Renew) rather than serve nodes that no longer follow the
// registry. An entry with a subscriber (see below) is never dropped. Close
// stops every watch.
//
// # Memory
//
// The nodes of an entry share their equal service metadata, endpoints and
// node metadata, however they arrived (a fetch, or watch events that each
// carry a copy of their own). An entry runs one goroutine; it reads its
// watch in the same select as its timers when the watch is a
// registry.Queue (what every backend's Watch returns), else through a
// second goroutine.
//
// # Subscriptions
//
// Cache.Subscribe hands a consumer (a gRPC resolver, say) a service's
// current snapshot and then each new one: the same snapshots that Entry and
// GetService serve, so a registry failure never delivers an empty list, and
// news of no nodes is held as described above. Deliveries never block the
// cache: each subscription runs its callback on a goroutine of its own, one
// call at a time, and when snapshots come faster than the callback returns
// it gets the latest one next (intermediate ones are skipped, never
// queued).
package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/beacon-go/beacon/internal/backoff"
	"github.com/beacon-go/beacon/registry"
)

// Defaults.
const (
	DefaultRefreshInterval = time.Minute
	DefaultFetchTimeout    = 5 * time.Second
	DefaultEmptyHold       = 15 * time.Second
)

// Option configures a Cache.
type Option func(*Cache)

// WithRefreshInterval sets how often a cached service is fetched again in
// full, besides its watch (default DefaultRefreshInterval).
func WithRefreshInterval(d time.Duration) Option { return func(c *Cache) { c.refresh = d } }

// WithFetchTimeout bounds each registry fetch (default DefaultFetchTimeout).
func WithFetchTimeout(d time.Duration) Option { return func(c *Cache) { c.fetchTimeout = d } }

// WithEmptyHold sets how long the last nodes of a service keep serving
// when news that none is left may come from a registry that restarted empty
// (see the package doc; default DefaultEmptyHold, the default register TTL;
// 0 disables it). Use the register TTL of the servers: a registry that
// restarted empty has them all again within one register interval, below
// the TTL. A service that really went away that way costs its callers
// transport errors, instead of "not found", for that long; one whose nodes
// deregistered one by one does not wait.
func WithEmptyHold(d time.Duration) Option { return func(c *Cache) { c.emptyHold = d } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(c *Cache) { c.log = l } }

// The operations OnError names.
const (
	// OpFetch: a full fetch of a service (GetService) failed: the first
	// lookup, the resync after a watch opened, or a periodic refresh.
	OpFetch = "fetch"
	// OpWatch: opening a service's watch failed, or the watch ended with
	// an error (the cache opens it again).
	OpWatch = "watch"
)

// OnEvent adds f, called with each event the registry's watch of a cached
// service delivers, before it is applied: the first ones (one Create per
// node the registry has when the watch opens) included. It runs in the
// goroutine that follows the service, so it must not block: it delays the
// service's updates. It must be safe for concurrent use (services are
// followed concurrently). Package otelbeacon counts events with it; give it
// to a selector's cache with selector.WithCacheOptions.
func OnEvent(f func(service string, t registry.EventType)) Option {
	return func(c *Cache) {
		if f != nil {
			c.onEvent = append(c.onEvent, f)
		}
	}
}

// OnError adds f, called when the registry fails the cache: op is OpFetch
// or OpWatch, err the registry's error (the cache's own shutdown is not
// reported). The cache keeps serving the last nodes meanwhile. It runs in
// the goroutine that follows the service or in a first lookup's, must be
// safe for concurrent use and must not block.
func OnError(f func(service, op string, err error)) Option {
	return func(c *Cache) {
		if f != nil {
			c.onError = append(c.onError, f)
		}
	}
}

// Node is one node of a snapshot with the service version it belongs to.
type Node struct {
	*registry.Node
	// Service is the version group the node belongs to (read-only).
	Service *registry.Service
}

// Snapshot is the immutable state of one service. Never modify it or
// anything it points to.
type Snapshot struct {
	// Services holds one entry per version, nodes sorted by ID, as
	// registry.GetService returns them.
	Services []*registry.Service
	// Nodes lists every node of every version in a stable order.
	Nodes []Node
	// Updated is when the snapshot was built from registry news.
	Updated time.Time
}

// Entry is the cache slot of one service name.
//
// The cache drops an entry that nobody read for two refresh intervals: it
// stops updating it and forgets it, and a later lookup of the name makes a
// new entry. A dropped entry keeps its last snapshot; Load and Dropped tell
// its holder, who looks the name up again (Cache.Entry or Cache.Renew).
// Reading an entry and dropping it exclude each other: an entry read since
// the last refresh tick is not dropped at that tick, and an entry that was
// dropped says so to every later read.
type Entry struct {
	name  string
	snap  atomic.Pointer[Snapshot]
	state atomic.Int32 // entryIdle, entryUsed or entryDropped
	stop  context.CancelFunc
	done  chan struct{}

	nsubs atomic.Int32 // subscribers; an entry that has some is never dropped
	subMu sync.Mutex
	subs  map[chan struct{}]struct{} // each subscriber's wake-up (capacity 1)
}

// store publishes s and wakes the entry's subscribers without waiting for
// any of them.
func (e *Entry) store(s *Snapshot) {
	e.snap.Store(s)
	if e.nsubs.Load() == 0 {
		return
	}
	e.subMu.Lock()
	for wake := range e.subs {
		select {
		case wake <- struct{}{}:
		default: // already woken: it reads the latest snapshot anyway
		}
	}
	e.subMu.Unlock()
}

func (e *Entry) subscribe(wake chan struct{}) {
	e.subMu.Lock()
	if e.subs == nil {
		e.subs = map[chan struct{}]struct{}{}
	}
	e.subs[wake] = struct{}{}
	e.nsubs.Add(1)
	e.subMu.Unlock()
}

func (e *Entry) unsubscribe(wake chan struct{}) {
	e.subMu.Lock()
	if _, ok := e.subs[wake]; ok {
		delete(e.subs, wake)
		e.nsubs.Add(-1)
	}
	e.subMu.Unlock()
}

// Entry states.
const (
	entryIdle    int32 = iota // not read since the last refresh tick
	entryUsed                 // read since the last refresh tick
	entryDropped              // dropped by the cache; final
)

// Name returns the service name.
func (e *Entry) Name() string { return e.name }

// Snapshot returns the current snapshot; it never blocks and never returns
// nil. Calling it counts as a use of the entry.
func (e *Entry) Snapshot() *Snapshot {
	s, _ := e.Load()
	return s
}

// Load returns the current snapshot, like Snapshot, and whether the entry
// is live: false once the cache has dropped it, so that the snapshot no
// longer follows the registry. A live read counts as a use, which keeps the
// entry from being dropped at the next refresh tick. It never blocks or
// allocates; on a used entry it costs two atomic loads.
func (e *Entry) Load() (s *Snapshot, live bool) {
	st := e.state.Load()
	if st == entryIdle && !e.state.CompareAndSwap(entryIdle, entryUsed) {
		st = e.state.Load() // another read or the drop came first
	}
	return e.snap.Load(), st != entryDropped
}

// Dropped reports whether the cache has dropped the entry (see Entry). It
// does not count as a use.
func (e *Entry) Dropped() bool { return e.state.Load() == entryDropped }

// Cache is a registry cache. It is safe for concurrent use.
type Cache struct {
	reg          registry.Registry
	log          *slog.Logger
	refresh      time.Duration
	fetchTimeout time.Duration
	emptyHold    time.Duration
	onEvent      []func(service string, t registry.EventType)
	onError      []func(service, op string, err error)

	entries atomic.Pointer[map[string]*Entry] // copy on write
	mu      sync.Mutex                        // serialises writers of entries
	group   singleflight.Group
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	closed  atomic.Bool
}

// ErrClosed: the cache was closed.
var ErrClosed = errors.New("cache: closed")

// New returns a cache in front of r. It starts no goroutine until the first
// lookup. Close it to stop its watches; it does not close r.
func New(r registry.Registry, opts ...Option) *Cache {
	c := &Cache{reg: r, log: slog.Default(), refresh: DefaultRefreshInterval, fetchTimeout: DefaultFetchTimeout, emptyHold: DefaultEmptyHold}
	for _, o := range opts {
		o(c)
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	m := map[string]*Entry{}
	c.entries.Store(&m)
	return c
}

// Registry returns the registry behind the cache.
func (c *Cache) Registry() registry.Registry { return c.reg }

// Entry returns the live cache entry for a service, fetching it on the
// first lookup (and on the first lookup after the entry was dropped). It
// blocks only on a miss, until the fetch ends or ctx is done. A service the
// registry does not know gets an entry with an empty snapshot (and a watch,
// so it fills when the service appears). A failed first fetch returns the
// error and caches nothing.
func (c *Cache) Entry(ctx context.Context, name string) (*Entry, error) {
	if e, ok := (*c.entries.Load())[name]; ok && !e.Dropped() {
		return e, nil
	}
	return c.miss(ctx, name)
}

// Renew returns the live entry of a dropped entry's service, like Entry: a
// registry fetch bounded by ctx when the name is not cached again yet. When
// that fetch fails because the registry fails, the new entry starts from
// old's last snapshot instead of failing, and follows the registry as soon
// as it answers (like an entry cached before the registry failed). Errors
// are ctx's, ErrClosed and those of an invalid name.
func (c *Cache) Renew(ctx context.Context, old *Entry) (*Entry, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	e, err := c.Entry(ctx, old.name)
	if err == nil || errors.Is(err, ErrClosed) || ctx.Err() != nil || errors.Is(err, registry.ErrInvalid) {
		return e, err
	}
	c.log.Warn("cache: fetch failed; serving the last known nodes of a dropped entry", "service", old.name,
		"registry", c.reg.String(), "err", err)
	return c.add(old.name, registry.Flatten(old.snap.Load().Services), time.Now())
}

func (c *Cache) miss(ctx context.Context, name string) (*Entry, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	if err := registry.ValidateName(name); err != nil {
		return nil, err
	}
	ch := c.group.DoChan(name, func() (any, error) {
		if e, ok := (*c.entries.Load())[name]; ok && !e.Dropped() {
			return e, nil
		}
		fctx, cancel := context.WithTimeout(c.ctx, c.fetchTimeout)
		defer cancel()
		svcs, err := c.reg.GetService(fctx, name)
		if err != nil && !errors.Is(err, registry.ErrNotFound) {
			if c.ctx.Err() == nil {
				c.failed(name, OpFetch, err)
			}
			return nil, fmt.Errorf("cache: fetch %s: %w", name, err)
		}
		return c.add(name, registry.Flatten(svcs), time.Time{})
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*Entry), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// failed tells the OnError functions.
func (c *Cache) failed(service, op string, err error) {
	for _, f := range c.onError {
		f(service, op, err)
	}
}

// add caches a new entry for name with the nodes of set and starts its
// watch; failedAt is when the registry last failed for it (zero: never).
// An entry already cached for name is returned instead.
func (c *Cache) add(name string, set registry.NodeSet, failedAt time.Time) (*Entry, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return nil, ErrClosed
	}
	old := *c.entries.Load()
	if e, ok := old[name]; ok {
		return e, nil
	}
	ctx, cancel := context.WithCancel(c.ctx)
	e := &Entry{name: name, stop: cancel, done: make(chan struct{})}
	e.snap.Store(build(set))
	e.state.Store(entryUsed)
	m := maps.Clone(old)
	m[name] = e
	c.entries.Store(&m)
	c.wg.Add(1)
	go c.run(ctx, e, set, failedAt)
	return e, nil
}

// drop forgets e unless it was read since the last refresh tick. It reports
// whether e was dropped.
func (c *Cache) drop(e *Entry) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !e.state.CompareAndSwap(entryIdle, entryDropped) {
		return false
	}
	old := *c.entries.Load()
	if old[e.name] != e {
		return true
	}
	m := maps.Clone(old)
	delete(m, e.name)
	c.entries.Store(&m)
	return true
}

// GetService returns the cached services of name (read-only: shared with
// other callers), fetching on a miss; ErrNotFound when it has no nodes.
func (c *Cache) GetService(ctx context.Context, name string) ([]*registry.Service, error) {
	e, err := c.Entry(ctx, name)
	if err != nil {
		return nil, err
	}
	s := e.Snapshot()
	if len(s.Nodes) == 0 {
		return nil, registry.ErrNotFound
	}
	return s.Services, nil
}

// Subscribe calls f with the current snapshot of the service name, then with
// every new snapshot of it, until cancel is called, ctx is done or the cache
// is closed.
//
// It looks the service up like Entry: it blocks only on a miss (a registry
// fetch bounded by ctx), and when that fails it returns the error and
// subscribes nothing. A service the registry does not know yet is
// subscribed to all the same: f first gets its empty snapshot, then its
// nodes when they appear.
//
// f runs on a goroutine of the subscription (never on the caller's), one
// call at a time, with snapshots in the order the cache made them. The
// cache never waits for f: snapshots that arrive while f runs are
// coalesced, and f next gets the latest one, so a slow f skips intermediate
// states but always ends on the current one. f never gets the same snapshot
// twice in a row. The snapshots are those that Entry and GetService serve,
// with the same guarantees (a registry failure never brings an empty one;
// see the package doc); they are shared and read-only.
//
// While subscribed, the service's entry is kept live (never dropped as
// idle) and watched.
//
// cancel ends the subscription and waits for a call of f in progress to
// return; after it returns f is not called again. It is idempotent and safe
// to call from any goroutine but f's own (from f, cancel ctx instead: that
// ends the subscription without waiting). Close ends every subscription and
// waits for their calls of f in progress to return, so f must not wait for
// Close.
func (c *Cache) Subscribe(ctx context.Context, name string, f func(*Snapshot)) (cancel func(), err error) {
	wake := make(chan struct{}, 1)
	var e *Entry
	for {
		if e, err = c.Entry(ctx, name); err != nil {
			return nil, err
		}
		e.subscribe(wake)
		// Reading the entry marks it used, so a refresh tick that did not
		// see the subscriber cannot drop it any more; if the drop came
		// first, the name is looked up again.
		if _, live := e.Load(); live {
			break
		}
		e.unsubscribe(wake)
	}
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		e.unsubscribe(wake)
		return nil, ErrClosed
	}
	c.wg.Add(1)
	c.mu.Unlock()
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer c.wg.Done()
		defer close(done)
		defer e.unsubscribe(wake)
		var last *Snapshot
		for {
			if s := e.snap.Load(); s != last {
				last = s
				f(s)
			}
			select {
			case <-wake:
				select {
				case <-stop: // canceled meanwhile: no further call
					return
				default:
				}
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-c.ctx.Done():
				return
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(stop) })
		<-done
	}, nil
}

// Close stops every watch and subscription and waits for the cache's
// goroutines, and for the subscriptions' calls in progress. Lookups after
// Close fail with ErrClosed; entries already handed out keep their last
// snapshot.
func (c *Cache) Close() error {
	c.mu.Lock()
	if c.closed.Swap(true) {
		c.mu.Unlock()
		return nil
	}
	c.cancel()
	c.mu.Unlock()
	c.wg.Wait()
	return nil
}

// run keeps one entry up to date until ctx ends. set holds the entry's
// nodes; failedAt is when the registry last failed for it (zero: never).
func (c *Cache) run(ctx context.Context, e *Entry, set registry.NodeSet, failedAt time.Time) {
	defer c.wg.Done()
	defer close(e.done)
	log := c.log.With("service", e.name, "registry", c.reg.String())
	bo := backoff.New(100*time.Millisecond, 10*time.Second)
	refresh := time.NewTicker(c.refresh)
	defer refresh.Stop()
	idle := 0
	lastFetchOK := true
	var in interner // shares what the nodes have alike
	in.all(set)
	failed := func() { failedAt = time.Now() }

	// publish swaps in a snapshot of set. News that takes the service from
	// some nodes to none is held for emptyHold first when it may come from
	// a registry that restarted empty (a fresh consul agent, an etcd that
	// lost its data): such a registry answers "no nodes" until the live
	// servers register again, within one register interval. why says what
	// makes the news suspect ("": nothing); a registry failure seen within
	// emptyHold makes any such news suspect. Nodes that left one by one,
	// each reported by its own event on a healthy watch, are believed at
	// once: a service scaled to zero is "not found" as soon as its last node
	// deregisters.
	var hold *time.Timer
	var holdC <-chan time.Time
	defer func() {
		if hold != nil {
			hold.Stop()
		}
	}()
	publish := func(why string) {
		if len(set) == 0 && len(e.snap.Load().Nodes) > 0 && c.emptyHold > 0 {
			if why == "" && !failedAt.IsZero() && time.Since(failedAt) < c.emptyHold {
				why = "the registry failed recently"
			}
			if why != "" {
				if holdC == nil {
					log.Info("cache: the registry reports no nodes; holding the last ones in case it restarted empty",
						"why", why, "for", c.emptyHold)
					hold = time.NewTimer(c.emptyHold)
					holdC = hold.C
				}
				return
			}
			log.Debug("cache: every node left")
		}
		if holdC != nil {
			hold.Stop()
			holdC = nil
		}
		e.store(build(set))
	}

	// The events of one registry change carry one Timestamp (backends
	// stamp each re-list or answer they turn into events at once). gone
	// counts the nodes deleted by the change being applied; massGone tells
	// whether the change that left set empty deleted several nodes at once.
	var batch time.Time
	gone := 0
	massGone := false
	apply := func(ev *registry.Event) bool {
		if ev == nil {
			return false
		}
		for _, f := range c.onEvent {
			f(e.name, ev.Type)
		}
		if !ev.Timestamp.Equal(batch) {
			batch, gone = ev.Timestamp, 0
		}
		n := len(set)
		changed := set.Apply(ev)
		if changed && ev.Type != registry.Delete && ev.Service != nil {
			for _, node := range ev.Service.Nodes {
				if node != nil {
					in.one(set, node.ID)
				}
			}
		}
		if ev.Type == registry.Delete {
			gone += n - len(set)
			if n > 0 && len(set) == 0 {
				massGone = gone > 1
			}
		}
		return changed
	}
	publishEvents := func() {
		why := ""
		if len(set) == 0 && massGone {
			why = "one change of the registry removed every node"
		}
		publish(why)
	}
	const fetchedNone = "a full fetch found no nodes"

	for ctx.Err() == nil {
		w, err := c.reg.Watch(ctx, registry.WatchService(e.name))
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failed()
			c.failed(e.name, OpWatch, err)
			log.Warn("cache: watch failed; serving the last snapshot", "err", err, "retry_in", bo.Peek())
			if !backoff.Sleep(ctx, bo.Next()) {
				return
			}
			continue
		}
		// Events are read without blocking (see source), so that
		// refreshes and shutdown are not stuck behind a blocking Next.
		src, release := sourceOf(ctx, w)
		stop := func() {
			w.Stop()
			release()
		}
		var werr error
		// drain applies what is queued; ok is false once the watch ended.
		drain := func() (changed, ok bool) {
			for {
				ev, got, err := src.TryNext()
				if err != nil {
					werr = err
					return changed, false
				}
				if !got {
					return changed, true
				}
				bo.Reset()
				changed = apply(ev) || changed
			}
		}
		// The watch's initial Create events do not report nodes that left
		// while we were not watching: resynchronise from a full fetch.
		if fresh, ok := c.fetch(ctx, e.name, log); ok {
			set = fresh
			in.all(set)
			publish(fetchedNone)
		} else {
			failed()
		}
		healthy := true
		for healthy {
			select {
			case <-src.Ready():
			case <-src.Done():
			case <-holdC:
				holdC = nil
				if len(set) == 0 {
					log.Info("cache: no nodes after the hold; the service is gone")
					e.store(build(set))
				}
				continue
			case <-refresh.C:
				if e.nsubs.Load() > 0 || e.state.CompareAndSwap(entryUsed, entryIdle) {
					// Subscribed, or read since the last tick. (A subscriber
					// that arrives after this check reads the entry, which
					// marks it used, before it relies on it: see Subscribe.)
					idle = 0
				} else if idle++; idle >= 2 && lastFetchOK && c.drop(e) {
					log.Debug("cache: dropping idle entry")
					stop()
					return
				}
				fresh, ok := c.fetch(ctx, e.name, log)
				if ok {
					set = fresh
					in.all(set)
					publish(fetchedNone)
				} else {
					failed()
				}
				lastFetchOK = ok
				continue
			case <-ctx.Done():
				stop()
				return
			}
			// Apply everything queued, then rebuild once.
			changed, ok := drain()
			healthy = ok
			if changed {
				publishEvents()
			}
		}
		stop()
		if werr != nil && ctx.Err() == nil {
			failed()
			c.failed(e.name, OpWatch, werr)
			log.Warn("cache: watch ended; serving the last snapshot and re-watching", "err", werr, "retry_in", bo.Peek())
		}
		if !backoff.Sleep(ctx, bo.Next()) {
			return
		}
	}
}

// source is what an entry reads events from without blocking.
// registry.Queue, which every backend's Watch returns, is one; any other
// Watcher is read by a goroutine into a Queue (sourceOf).
type source interface {
	Ready() <-chan struct{}
	Done() <-chan struct{}
	TryNext() (*registry.Event, bool, error)
}

// sourceOf returns w as a source, and a func that waits, once w is
// stopped, for the goroutine that reads it, if any.
func sourceOf(ctx context.Context, w registry.Watcher) (source, func()) {
	if q, ok := w.(source); ok {
		return q, func() {}
	}
	q := registry.NewQueue(ctx, nil)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ev, err := w.Next()
			if err != nil {
				q.StopWith(err)
				return
			}
			if !q.Push(ev) {
				return
			}
		}
	}()
	return q, func() {
		<-done
		q.Stop()
	}
}

// fetch gets the service in full. ok is false when the registry failed: the
// caller keeps its state.
func (c *Cache) fetch(ctx context.Context, name string, log *slog.Logger) (registry.NodeSet, bool) {
	fctx, cancel := context.WithTimeout(ctx, c.fetchTimeout)
	defer cancel()
	svcs, err := c.reg.GetService(fctx, name)
	switch {
	case err == nil || errors.Is(err, registry.ErrNotFound):
		return registry.Flatten(svcs), true
	case ctx.Err() != nil:
		return nil, false
	default:
		c.failed(name, OpFetch, err)
		log.Warn("cache: refresh failed; serving the last snapshot", "err", err)
		return nil, false
	}
}

func build(set registry.NodeSet) *Snapshot {
	s := &Snapshot{Services: set.Group(), Updated: time.Now()}
	s.Nodes = make([]Node, 0, len(set))
	for _, svc := range s.Services {
		for _, n := range svc.Nodes {
			s.Nodes = append(s.Nodes, Node{Node: n, Service: svc})
		}
	}
	return s
}
