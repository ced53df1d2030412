package consul

import (
	"context"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/beacon-go/beacon/registry"
)

// watchState holds the shared watch loops and their subscribers.
//
// Lock order: Registry.closeMu (read) before watchState.mu; pendMu is a
// leaf. Queue.Push is called with mu held; a queue's onStop (which may run
// inside Push) only takes pendMu and wakes the janitor, which removes the
// subscriber under mu.
type watchState struct {
	mu       sync.Mutex
	services map[string]*serviceWatch // one per watched name: its own blocking query, or fed
	all      map[*sub]struct{}        // watchers of every service
	catalog  *catalogWatch            // running while all is not empty or feed is running
	direct   int                      // services with a blocking query of their own
	feed     *feed                    // the shared watch of the fed services (feed.go); nil when none
	closed   bool

	pendMu  sync.Mutex
	pending []*sub        // stopped subscribers to remove
	wake    chan struct{} // cap 1: pending is not empty
}

func (w *watchState) init() {
	w.services = make(map[string]*serviceWatch)
	w.all = make(map[*sub]struct{})
	w.wake = make(chan struct{}, 1)
}

// sub is one Watcher.
type sub struct {
	q       *registry.Queue
	service string // "" for all services
}

// serviceWatch is the watch of one service, shared by its subscribers, by
// the watchers of all services, and by the catalog watch: either a blocking
// health query of its own (at most WithServiceQueries of them run) or, for
// the services beyond, fed: fetched again by the feed when it tells that
// the service changed (feed.go).
type serviceWatch struct {
	name   string
	cancel context.CancelFunc // direct only
	subs   map[*sub]struct{}
	held   bool             // the catalog watch lists the service
	ready  bool             // state holds a first answer
	state  registry.NodeSet // last answer

	fed     bool
	stopped bool                // fed: released; a fetch in flight is dropped
	nodes   map[string]struct{} // fed: consul nodes of its entries (critical ones too) in the last answer
	probe   bool                // fed: has entries whose changes the feed cannot pinpoint
	index   uint64              // fed: X-Consul-Index of the last answer
	cache   decodeCache         // fed: used by the one feed worker fetching it
}

// catalogWatch is the blocking query on the catalog's service names.
type catalogWatch struct {
	cancel context.CancelFunc
	names  []string            // valid names of the last answer; nil before the first
	tags   map[string][]string // the last answer, tags sorted (the feed's baseline)
}

// Watch implements registry.Registry. The watcher first receives one Create
// per visible node (as soon as the shared query has its first answer; Watch
// itself does not wait for consul), then the changes. It ends on Stop, when
// ctx is done or on Close; Next then returns registry.ErrWatcherStopped.
// While consul fails, the watcher keeps quiet and retries with backoff; it
// reports deletions only from successful answers. A reader that falls
// registry.MaxQueued events behind is stopped (registry.ErrOverflow).
func (r *Registry) Watch(ctx context.Context, opts ...registry.WatchOption) (registry.Watcher, error) {
	o, err := registry.WatchArgs(ctx, opts...)
	if err != nil {
		return nil, err
	}
	r.closeMu.RLock()
	defer r.closeMu.RUnlock()
	if r.closed {
		return nil, registry.ErrClosed
	}
	s := &sub{service: o.Service}
	s.q = registry.NewQueue(ctx, func() { r.unsubscribeLater(s) })
	w := &r.watch
	w.mu.Lock()
	defer w.mu.Unlock()
	if s.service != "" {
		sw := r.serviceWatchLocked(s.service)
		sw.subs[s] = struct{}{}
		if sw.ready {
			pushAll(s, registry.Diff(nil, sw.state, time.Now()))
		}
	} else {
		w.all[s] = struct{}{}
		r.startCatalogLocked()
		if len(w.all) == 1 && w.catalog.names != nil {
			// The catalog watch was running for the feed alone.
			r.syncCatalogLocked(w.catalog.names)
		}
		now := time.Now()
		for _, name := range slices.Sorted(maps.Keys(w.services)) {
			if sw := w.services[name]; sw.ready {
				pushAll(s, registry.Diff(nil, sw.state, now))
			}
		}
	}
	select {
	case <-s.q.Done(): // ctx ended while we subscribed
		r.removeSubLocked(s)
	default:
	}
	return s.q, nil
}

func pushAll(s *sub, evs []*registry.Event) {
	for _, ev := range evs {
		s.q.Push(copyEvent(ev))
	}
}

func copyEvent(ev *registry.Event) *registry.Event {
	return &registry.Event{Type: ev.Type, Service: ev.Service.Copy(), Timestamp: ev.Timestamp}
}

// startCatalogLocked starts the catalog watch if it is not running.
func (r *Registry) startCatalogLocked() {
	w := &r.watch
	if w.catalog != nil {
		return
	}
	cctx, cancel := context.WithCancel(r.ctx)
	w.catalog = &catalogWatch{cancel: cancel}
	r.wg.Add(1)
	go r.runCatalog(cctx, w.catalog)
}

// maybeStopCatalogLocked stops the catalog watch when neither watchers of
// all services nor the feed need it.
func (r *Registry) maybeStopCatalogLocked() {
	w := &r.watch
	if len(w.all) > 0 || w.feed != nil || w.catalog == nil {
		return
	}
	w.catalog.cancel()
	w.catalog = nil
}

// serviceWatchLocked returns the running watch of name, starting it if
// needed: with a blocking query of its own while fewer than
// WithServiceQueries run, fed otherwise.
func (r *Registry) serviceWatchLocked(name string) *serviceWatch {
	w := &r.watch
	if sw := w.services[name]; sw != nil {
		return sw
	}
	sw := &serviceWatch{name: name, subs: make(map[*sub]struct{})}
	w.services[name] = sw
	if w.direct < r.opts.maxServiceQueries() {
		w.direct++
		ctx, cancel := context.WithCancel(r.ctx)
		sw.cancel = cancel
		r.wg.Add(1)
		go r.runService(ctx, sw)
		return sw
	}
	sw.fed = true
	r.feedAddLocked(sw)
	return sw
}

// maybeStopLocked stops sw when nothing needs it any more.
func (r *Registry) maybeStopLocked(sw *serviceWatch) {
	if len(sw.subs) > 0 || sw.held {
		return
	}
	if r.watch.services[sw.name] == sw {
		delete(r.watch.services, sw.name)
	}
	if sw.fed {
		r.feedRemoveLocked(sw)
		return
	}
	sw.cancel()
	r.watch.direct--
}

// unsubscribeLater queues s for removal by the janitor. It is the queues'
// onStop, so it must not take watchState.mu (Push may be running under it).
func (r *Registry) unsubscribeLater(s *sub) {
	w := &r.watch
	w.pendMu.Lock()
	w.pending = append(w.pending, s)
	w.pendMu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// janitor removes stopped subscribers and stops the loops nobody needs.
func (r *Registry) janitor() {
	defer r.wg.Done()
	w := &r.watch
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-w.wake:
		}
		w.pendMu.Lock()
		subs := w.pending
		w.pending = nil
		w.pendMu.Unlock()
		w.mu.Lock()
		for _, s := range subs {
			r.removeSubLocked(s)
		}
		w.mu.Unlock()
	}
}

func (r *Registry) removeSubLocked(s *sub) {
	w := &r.watch
	if w.closed {
		return
	}
	if s.service != "" {
		if sw := w.services[s.service]; sw != nil {
			delete(sw.subs, s)
			r.maybeStopLocked(sw)
		}
		return
	}
	if _, ok := w.all[s]; !ok {
		return
	}
	delete(w.all, s)
	if len(w.all) > 0 {
		return
	}
	for _, sw := range w.services {
		if sw.held {
			sw.held = false
			r.maybeStopLocked(sw)
		}
	}
	r.maybeStopCatalogLocked()
}

// stopWatches stops every watcher and loop (Close).
func (r *Registry) stopWatches() {
	w := &r.watch
	w.mu.Lock()
	w.closed = true
	var subs []*sub
	for _, sw := range w.services {
		if sw.cancel != nil {
			sw.cancel()
		}
		sw.stopped = true
		for s := range sw.subs {
			subs = append(subs, s)
		}
	}
	for s := range w.all {
		subs = append(subs, s)
	}
	if w.catalog != nil {
		w.catalog.cancel()
	}
	if w.feed != nil {
		w.feed.cancel()
	}
	w.services, w.all, w.catalog, w.feed = nil, nil, nil, nil
	w.mu.Unlock()
	for _, s := range subs {
		s.q.Stop()
	}
}

// updateLocked stores a new answer of sw and sends the difference to its
// subscribers and to the watchers of all services.
func (r *Registry) updateLocked(sw *serviceWatch, set registry.NodeSet) {
	var prev registry.NodeSet
	if sw.ready {
		prev = sw.state
	}
	evs := registry.Diff(prev, set, time.Now())
	sw.state, sw.ready = set, true
	for _, ev := range evs {
		for s := range sw.subs {
			s.q.Push(copyEvent(ev))
		}
		for s := range r.watch.all {
			s.q.Push(copyEvent(ev))
		}
	}
}

// runService is the blocking health query loop of one service.
func (r *Registry) runService(ctx context.Context, sw *serviceWatch) {
	defer r.wg.Done()
	l := loop{r: r, what: "service " + sw.name}
	var index uint64
	var cache decodeCache
	for {
		start := time.Now()
		set, meta, err := r.fetch(ctx, sw.name, index, &cache)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			index = 0 // the agent may have been replaced: start afresh
			if !l.failed(ctx, err) {
				return
			}
			continue
		}
		l.succeeded()
		l.hidden(len(set) == 0 && r.hiddenByACL(meta, false))
		prev := index
		index = nextIndex(index, meta.LastIndex)
		w := &r.watch
		w.mu.Lock()
		if w.services[sw.name] != sw {
			w.mu.Unlock()
			return
		}
		r.updateLocked(sw, set)
		w.mu.Unlock()
		if !l.pace(ctx, prev, meta.LastIndex, time.Since(start)) {
			return
		}
	}
}

// runCatalog is the blocking query loop on the catalog's service names:
// while there are watchers of all services it keeps a serviceWatch running
// for every name, and it tells the feed which fed services changed.
func (r *Registry) runCatalog(ctx context.Context, cw *catalogWatch) {
	defer r.wg.Done()
	l := loop{r: r, what: "catalog"}
	var index uint64
	for {
		start := time.Now()
		c, ci := r.client()
		catalog, meta, err := c.Catalog().Services(r.queryOpts(ctx, index))
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			r.fail(ci, err)
			index = 0
			if !l.failed(ctx, err) {
				return
			}
			continue
		}
		l.succeeded()
		l.hidden(len(catalog) == 0 && r.hiddenByACL(meta, true))
		prev := index
		index = nextIndex(index, meta.LastIndex)
		names := r.validNames(catalog)
		for _, tags := range catalog {
			slices.Sort(tags)
		}
		w := &r.watch
		w.mu.Lock()
		if w.catalog != cw {
			w.mu.Unlock()
			return
		}
		cw.names, cw.tags = names, catalog
		if len(w.all) > 0 {
			r.syncCatalogLocked(names)
		}
		r.feedCatalogLocked(catalog, prev, meta.LastIndex)
		w.mu.Unlock()
		if !l.pace(ctx, prev, meta.LastIndex, time.Since(start)) {
			return
		}
	}
}

// syncCatalogLocked holds a serviceWatch for every listed name and releases
// the others. A service that left the catalog has no instances at all, so
// the nodes its watch still holds are reported deleted to the watchers of
// all services when nothing else keeps the watch.
func (r *Registry) syncCatalogLocked(names []string) {
	w := &r.watch
	want := make(map[string]struct{}, len(names))
	for _, name := range names {
		want[name] = struct{}{}
		r.serviceWatchLocked(name).held = true
	}
	now := time.Now()
	for name, sw := range w.services {
		if _, ok := want[name]; ok || !sw.held {
			continue
		}
		sw.held = false
		if len(sw.subs) == 0 {
			if sw.ready {
				for _, ev := range registry.Diff(sw.state, nil, now) {
					for s := range w.all {
						s.q.Push(copyEvent(ev))
					}
				}
			}
			r.maybeStopLocked(sw)
		}
	}
}

// nextIndex is the index for the next blocking query after an answer with
// index got, following consul's advice: reset to 0 when the index went
// backwards (the next query then answers at once), and never wait on 0
// after a first answer (it would not block).
func nextIndex(prev, got uint64) uint64 {
	switch {
	case got < prev:
		return 0
	case got == 0:
		return 1
	}
	return got
}

// loop holds the error and pacing state of one watch loop.
type loop struct {
	r         *Registry
	what      string
	backoff   int // consecutive failures or hasty answers
	failing   bool
	aclHidden bool // the last answer was empty because of ACLs
}

const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// failed logs err (Warn on the first failure, Error when consul refused
// the ACL token; Debug while it goes on) and waits the backoff. It returns
// false when ctx ended.
func (l *loop) failed(ctx context.Context, err error) bool {
	switch {
	case !l.failing && permissionStatus(err):
		l.r.log.Error("consul watch query failed: permission denied, retrying with backoff", "watch", l.what,
			"credentials", l.r.tokenDesc(), "err", err)
	case !l.failing:
		l.r.log.Warn("consul watch query failed, retrying with backoff", "watch", l.what, "err", err)
	default:
		l.r.log.Debug("consul watch query failed again", "watch", l.what, "err", err)
	}
	l.failing = true
	return l.sleep(ctx)
}

// hidden logs, at Error and once until it changes, that consul's ACLs hide
// every result of the query: the watch then reports nothing.
func (l *loop) hidden(h bool) {
	if h && !l.aclHidden {
		l.r.log.Error("consul watch: permission denied: consul's ACLs hide every result", "watch", l.what, "credentials", l.r.tokenDesc())
	}
	l.aclHidden = h
}

func (l *loop) succeeded() {
	if l.failing {
		l.r.log.Info("consul watch query recovered", "watch", l.what)
		l.failing = false
		l.backoff = 0
	}
}

// pace backs off after a blocking query that returned well before its wait
// time without the index moving (consul's "rate limit" advice); otherwise it
// resets the backoff. It returns false when ctx ended.
func (l *loop) pace(ctx context.Context, waited, got uint64, took time.Duration) bool {
	if waited != 0 && got == waited && took < l.r.opts.waitTime/2 {
		return l.sleep(ctx)
	}
	l.backoff = 0
	return true
}

func (l *loop) sleep(ctx context.Context) bool {
	d := min(minBackoff<<min(l.backoff, 10), maxBackoff)
	l.backoff++
	d = d/2 + rand.N(d/2+1) // jitter: [d/2, d]
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
