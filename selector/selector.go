// Package selector picks the node that serves each call.
//
// The default selector reads services from a registry cache (see
// registry/cache): the first Select of a service fetches it and starts a
// watch; every later Select reads an immutable snapshot without a lock, a
// registry round trip or an allocation. When the registry fails, the last
// known nodes keep serving.
//
// A service whose nodes all deregistered is not found (ErrNotFound) as soon
// as the cache hears that its last node left. News of no nodes that may
// come from a registry that restarted empty is held for the cache's empty
// hold instead (see registry/cache; set it with WithCacheOptions and
// cache.WithEmptyHold).
//
// The cache drops a service nobody selected for two refresh intervals and
// stops its watch. The next Select of it finds its cache entry dropped (one
// atomic load) and looks the service up again, blocking like a first
// lookup (bounded by ctx); if the registry fails then, the last known nodes
// keep serving (see cache.Renew). The service's ejections and round-robin
// position survive this. So a service called rarely always reflects the
// registry, and one not called costs no watch.
//
// A strategy (RoundRobin, Random or LeastLoaded) picks among the nodes that
// are not ejected, in proportion to their weights (node metadata
// MetaWeight). Round-robin state lives per service in the selector, so it
// rotates across calls (go-micro's per-call round robin never did).
// LeastLoaded is power of two choices over in-flight requests and a latency
// EWMA, fed by each pick's Done callback (like grpc-go's PickResult.Done).
//
// Ejection: a transport failure ejects the node for a cool-off (DefaultEjectBase).
// Failures of calls that were in flight together are one incident and count
// once; after the cool-off the node gets one trial request (a probe), not a
// flood: its success brings the node back, its failure is a repeated
// incident and doubles the cool-off (up to DefaultEjectMax). A node that
// registers again with new data starts afresh. The nodes left share the
// ejected node's calls evenly. When every node is ejected, Next still
// returns nodes rather than none. Picking never blocks and, without select
// options, never allocates. OnEject reports ejections and their ends (package
// otelbeacon counts them).
package selector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/cache"
)

// Defaults.
const (
	DefaultEjectBase = time.Second
	DefaultEjectMax  = 30 * time.Second
)

var (
	// ErrNotFound: the registry does not know the service.
	ErrNotFound = registry.ErrNotFound
	// ErrNoneAvailable: the service is known but no node passes the filters.
	ErrNoneAvailable = errors.New("selector: no node available")
	// ErrClosed: the selector was closed.
	ErrClosed = errors.New("selector: closed")
)

// Next returns the node of one attempt of a call; the caller reports the
// attempt's outcome through the Pick's Done. Each call may return a
// different node. It never blocks and is safe for concurrent use.
type Next func() (Pick, error)

// Selector chooses nodes for calls. Implementations are safe for concurrent
// use.
type Selector interface {
	// Select returns a Next for the service. It blocks only on the first
	// lookup of a service (a registry fetch bounded by ctx). It returns
	// ErrNotFound for a service without nodes and ErrNoneAvailable when
	// filters leave none.
	Select(ctx context.Context, service string, opts ...SelectOption) (Next, error)
	// Mark records the outcome of a call to node that was not reported
	// through a Pick's Done: nil for success, the transport error for a
	// failure.
	Mark(service string, node *registry.Node, err error)
	// Reset forgets the failures recorded for the service's nodes.
	Reset(service string)
	// Close stops the selector's watches. Select then fails with ErrClosed.
	Close() error
	// String names the selector and its strategy.
	String() string
}

// Option configures a selector.
type Option func(*options)

type options struct {
	strategy  Strategy
	cache     *cache.Cache
	cacheOpts []cache.Option
	ejectBase time.Duration
	ejectMax  time.Duration
	protocols []string
	anyProto  bool // a Set: the owner chose its nodes
	log       *slog.Logger
	now       func() time.Time
	onEject   []func(service string, node *registry.Node, ejected bool)
}

// WithStrategy sets the default strategy (default LeastLoaded: see the
// README for why, measured).
func WithStrategy(s Strategy) Option { return func(o *options) { o.strategy = s } }

// WithCache makes the selector use an existing cache (which it does not
// close) instead of creating its own.
func WithCache(c *cache.Cache) Option { return func(o *options) { o.cache = c } }

// WithCacheOptions passes options to the cache the selector creates (not
// to one given with WithCache), e.g. cache.OnEvent and cache.OnError to
// hear registry events and failures.
func WithCacheOptions(opts ...cache.Option) Option {
	return func(o *options) { o.cacheOpts = append(o.cacheOpts, opts...) }
}

// WithEjection sets the cool-off of a failed node: base after the first
// failure, doubling per consecutive failure up to max.
func WithEjection(base, max time.Duration) Option {
	return func(o *options) { o.ejectBase, o.ejectMax = base, max }
}

// WithProtocols sets the protocols the caller speaks (node metadata
// registry.MetaProtocol; default registry.ProtocolBeacon). Nodes that
// publish another are never picked while others are available; a node
// without the key is taken to speak any.
func WithProtocols(names ...string) Option { return func(o *options) { o.protocols = names } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// OnEject adds f, called when a node of service is ejected (ejected true)
// and when it no longer is (false): it answered again (its trial request
// or a later call succeeded), Reset forgot its failures, it registered
// again with new data, or it left the registry. It reports transitions: an
// ejection is reported once however many incidents it lasts (a failed trial
// request lengthens the cool-off without a new report), and each true is
// followed by one false for the node once it is back or gone, so a count of
// ejected nodes kept with +1 and -1 stays right (a selector closed with
// nodes ejected never reports them back).
//
// f runs outside the selector's locks, in the goroutine of the call that
// reported the outcome (through Pick.Done or Mark), of Reset, or of the
// Select that saw a new snapshot; it must be safe for concurrent use and
// must not block: it delays that call. Reports for one node may, in rare
// races, arrive out of order. Picking never calls f, so Select and Next
// cost nothing more with it. Package otelbeacon counts ejections with it.
func OnEject(f func(service string, node *registry.Node, ejected bool)) Option {
	return func(o *options) {
		if f != nil {
			o.onEject = append(o.onEject, f)
		}
	}
}

// WithClock replaces time.Now for ejection timing (tests).
func WithClock(now func() time.Time) Option { return func(o *options) { o.now = now } }

// SelectOptions are the settings of one Select call.
type SelectOptions struct {
	Filters  []Filter
	Strategy Strategy
}

// SelectOption configures one Select call.
type SelectOption func(*SelectOptions)

// WithFilter adds filters; a node must pass all of them.
func WithFilter(f ...Filter) SelectOption {
	return func(o *SelectOptions) { o.Filters = append(o.Filters, f...) }
}

// WithSelectStrategy overrides the strategy for one Select.
func WithSelectStrategy(s Strategy) SelectOption { return func(o *SelectOptions) { o.Strategy = s } }

// state is the selector's per-service state. It outlives the cache entries
// of its service: entry is replaced when the cache drops it.
type state struct {
	name    string
	entry   atomic.Pointer[cache.Entry]    // nil in a Set
	own     atomic.Pointer[cache.Snapshot] // a Set's nodes
	keep    bool                           // a Set: stats outlive absences until Retain
	view    atomic.Pointer[view]
	counter atomic.Uint64
	mu      sync.Mutex
	stats   map[string]*NodeStats // by node ID
	next    Next                  // prebuilt for the default strategy, so Select does not allocate
}

// Cached is the default selector, backed by a registry cache.
type Cached struct {
	o         options
	cache     *cache.Cache
	ownsCache bool
	states    atomic.Pointer[map[string]*state] // copy on write
	mu        sync.Mutex
	closed    atomic.Bool
}

var _ Selector = (*Cached)(nil)

// New returns the default selector over r.
func New(r registry.Registry, opts ...Option) *Cached {
	o := options{protocols: []string{registry.ProtocolBeacon}, strategy: LeastLoaded(), ejectBase: DefaultEjectBase, ejectMax: DefaultEjectMax, log: slog.Default(), now: time.Now}
	for _, f := range opts {
		f(&o)
	}
	s := &Cached{o: o, cache: o.cache}
	if s.cache == nil {
		s.cache = cache.New(r, append([]cache.Option{cache.WithLogger(o.log)}, o.cacheOpts...)...)
		s.ownsCache = true
	}
	m := map[string]*state{}
	s.states.Store(&m)
	return s
}

func (s *Cached) String() string { return "cache/" + s.o.strategy.String() }

// Cache returns the selector's registry cache.
func (s *Cached) Cache() *cache.Cache { return s.cache }

// Select implements Selector. Without options it does not allocate.
func (s *Cached) Select(ctx context.Context, service string, opts ...SelectOption) (Next, error) {
	st, ok := (*s.states.Load())[service]
	if !ok {
		var err error
		if st, err = s.add(ctx, service); err != nil {
			return nil, err
		}
	}
	e := st.entry.Load()
	snap, live := e.Load()
	if !live {
		var err error
		if snap, err = s.renew(ctx, st, e); err != nil {
			return nil, err
		}
	}
	if len(snap.Nodes) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, service)
	}
	if len(opts) == 0 {
		return st.next, nil
	}
	var so SelectOptions
	for _, f := range opts {
		f(&so)
	}
	strategy := so.Strategy
	if strategy == nil {
		strategy = s.o.strategy
	}
	if len(so.Filters) == 0 {
		return func() (Pick, error) { return s.pick(st, strategy, nil) }, nil
	}
	v := s.filtered(st, s.viewOf(st, snap), so.Filters)
	if len(v.nodes) == 0 {
		return nil, fmt.Errorf("%w: %s: no node passes the filters", ErrNoneAvailable, service)
	}
	return func() (Pick, error) { return s.pick(st, strategy, v) }, nil
}

// filtered returns a view of the nodes of v that pass the filters, with
// their availability as of now.
func (s *Cached) filtered(st *state, v *view, filters []Filter) *view {
	f := &view{snap: v.snap}
outer:
	for i, n := range v.nodes {
		for _, keep := range filters {
			if !keep(n.Service, n.Node) {
				continue outer
			}
		}
		f.nodes = append(f.nodes, n)
		f.stats = append(f.stats, v.stats[i])
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	cur := &view{}
	*cur = *f
	s.availLocked(cur)
	return cur
}

func (s *Cached) add(ctx context.Context, service string) (*state, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	e, err := s.cache.Entry(ctx, service)
	if err != nil {
		if errors.Is(err, cache.ErrClosed) {
			return nil, ErrClosed
		}
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	old := *s.states.Load()
	if st, ok := old[service]; ok {
		return st, nil
	}
	st := &state{name: service, stats: map[string]*NodeStats{}}
	st.entry.Store(e)
	st.counter.Store(rand.Uint64N(1 << 16)) // clients do not all start on the same node
	strategy := s.o.strategy
	st.next = func() (Pick, error) { return s.pick(st, strategy, nil) }
	m := make(map[string]*state, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	m[service] = st
	s.states.Store(&m)
	return st, nil
}

// snapshot returns the nodes st picks from: its cache entry's, or a Set's.
func (st *state) snapshot() *cache.Snapshot {
	if e := st.entry.Load(); e != nil {
		return e.Snapshot()
	}
	return st.own.Load()
}

// renew replaces old, the dropped cache entry of st, with a live one and
// returns its snapshot.
func (s *Cached) renew(ctx context.Context, st *state, old *cache.Entry) (*cache.Snapshot, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	e, err := s.cache.Renew(ctx, old)
	if err != nil {
		if errors.Is(err, cache.ErrClosed) {
			return nil, ErrClosed
		}
		return nil, err
	}
	st.entry.CompareAndSwap(old, e) // a concurrent renew may have won
	return st.entry.Load().Snapshot(), nil
}

// pick chooses a node from v (nil: the service's current view), handing
// out a probe first when a cool-off has ended.
func (s *Cached) pick(st *state, strategy Strategy, v *view) (Pick, error) {
	all := v == nil // a filtered view takes no probe: the node may not pass
	if all {
		v = s.viewOf(st, st.snapshot())
	}
	if len(v.nodes) == 0 {
		return Pick{}, ErrNoneAvailable
	}
	if w := v.wake; all && w != 0 {
		if now := s.o.now(); now.UnixNano() >= w {
			if p, ok := s.probe(st, now); ok {
				return p, nil
			}
		}
	}
	c := v.candidates(&st.counter, s.o.now)
	i := c.at(strategy.Pick(c))
	ns := v.stats[i]
	ns.inflight.Add(1)
	return Pick{Node: v.nodes[i].Node, Service: v.nodes[i].Service, Done: ns.done}, nil
}

// Mark implements Selector.
func (s *Cached) Mark(service string, node *registry.Node, err error) {
	st, ok := (*s.states.Load())[service]
	if !ok || node == nil {
		return
	}
	s.viewOf(st, st.snapshot()) // the node's stats exist once a view does
	st.mu.Lock()
	ns := st.stats[node.ID]
	st.mu.Unlock()
	if ns != nil {
		s.report(st, ns, Outcome{Err: err}, false)
	}
}

// Reset implements Selector.
func (s *Cached) Reset(service string) {
	st, ok := (*s.states.Load())[service]
	if !ok {
		return
	}
	var back []*registry.Node
	st.mu.Lock()
	for _, ns := range st.stats {
		if ns.heal(time.Time{}) {
			back = append(back, ns.node)
		}
	}
	s.republishLocked(st)
	st.mu.Unlock()
	s.notify(st.name, false, back...)
}

// notify calls the OnEject functions for nodes, outside the state's lock.
func (s *Cached) notify(service string, ejected bool, nodes ...*registry.Node) {
	for _, n := range nodes {
		for _, f := range s.o.onEject {
			f(service, n, ejected)
		}
	}
}

// Close implements Selector. It closes the cache the selector created.
func (s *Cached) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	if s.ownsCache {
		return s.cache.Close()
	}
	return nil
}
