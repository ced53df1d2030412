package consul

import (
	"context"
	"encoding/json"
	"hash/fnv"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// # Watching many services: the feed
//
// A blocking query holds an HTTP connection while it waits, and a consul
// agent refuses more than http_max_conns_per_client (default 200)
// connections from one client address. So a Registry runs blocking queries
// of single services (/v1/health/service/<name>) for at most
// WithServiceQueries services (DefaultServiceQueries); the watches of
// further services are fed: they share two blocking queries, whatever
// their number:
//
//   - /v1/health/state/any, every check of the datacenter: a service whose
//     checks changed (one added, removed, changing status or data, which
//     includes the tags consul copies into the check) is fetched again, and
//     so is every fed service with an entry on a consul node whose node
//     checks (serfHealth, maintenance) changed;
//   - /v1/catalog/services (the catalog watch that watchers of all
//     services use too), every service name with its tags: a service whose
//     tags changed, that appeared or that left is fetched again. Beacon's
//     "beacon-rev-<hash>" tag, unique per node and changing with any change
//     of the node's record, makes every registration, change and
//     deregistration of a Beacon node show here, with or without a check.
//
// What neither shows is a change of another tool's record that moves no
// check and no tag (its Meta, address or port; a check-less instance
// added without new tags). Fed services that hold such records are probed
// when the catalog moves (/v1/health/service/<name>?filter=Service.ID == ""
// answers nothing but the service's X-Consul-Index) and fetched when their
// index moved; every fed service is probed so at least once per wait time
// (WithWaitTime), which bounds how late any change is seen. A fed service
// is fetched at most once at a time by one of feedWorkers workers; the
// answers are applied like those of a blocking query of its own (the same
// events, the same rules for failures: nothing is reported deleted after a
// failure, and both feeds resynchronise every fed service after an error or
// an index that went backwards).
//
// Connections: WithServiceQueries, plus the catalog watch, the checks watch
// and feedWorkers, plus calls in flight.

// DefaultServiceQueries is how many services a Registry watches with a
// blocking query of their own when WithServiceQueries is not given: enough
// for most programs, and three such programs on one host stay within
// consul's default http_max_conns_per_client (200).
const DefaultServiceQueries = 64

// feedWorkers is how many fetches of fed services run at once.
const feedWorkers = 4

// WithServiceQueries sets how many services the Registry watches with a
// blocking query of their own (one connection each); the watches of
// further services share the feed (see the package documentation). 0 feeds
// every watch. Default DefaultServiceQueries; negative values count as 0.
func WithServiceQueries(n int) Option {
	return func(o *options) { n := max(n, 0); o.serviceQueries = &n }
}

func (o *options) maxServiceQueries() int {
	if o.serviceQueries == nil {
		return DefaultServiceQueries
	}
	return *o.serviceQueries
}

// feed is the shared watch of the fed services. Guarded by watchState.mu.
type feed struct {
	cancel   context.CancelFunc
	services map[string]*serviceWatch // the fed services
	dirty    map[string]bool          // to fetch (true) or to probe (false)
	inflight map[string]bool          // being fetched or probed by a worker
	wake     chan struct{}            // cap 1: dirty may hold work

	catalogPrimed bool
	catalogTags   map[string][]string // the last catalog answer, tags sorted
	checksPrimed  bool
	svcFP         map[string]uint64 // service name -> fingerprint of its checks
	nodeFP        map[string]uint64 // consul node -> fingerprint of its node checks
	probedAll     time.Time         // when every fed service was last marked for a probe
	failing       bool              // a worker's last fetch failed (logged once for all)
}

func (f *feed) primed() bool { return f.catalogPrimed && f.checksPrimed }

// markLocked marks a fed service for a fetch (or, if fetch is false, a
// probe, unless a fetch is already due).
func (f *feed) markLocked(name string, fetch bool) {
	if _, ok := f.services[name]; !ok {
		return
	}
	f.dirty[name] = f.dirty[name] || fetch
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

func (f *feed) markAllLocked(fetch bool) {
	for name := range f.services {
		f.markLocked(name, fetch)
	}
}

// takeLocked hands a dirty service that no worker has to a worker.
func (f *feed) takeLocked() (sw *serviceWatch, fetch, ok bool) {
	for name, fetch := range f.dirty {
		if f.inflight[name] {
			continue
		}
		delete(f.dirty, name)
		if sw = f.services[name]; sw == nil {
			continue
		}
		f.inflight[name] = true
		return sw, fetch, true
	}
	return nil, false, false
}

// feedAddLocked feeds sw, starting the feed if it is not running.
func (r *Registry) feedAddLocked(sw *serviceWatch) {
	w := &r.watch
	f := w.feed
	if f == nil {
		ctx, cancel := context.WithCancel(r.ctx)
		f = &feed{
			cancel:   cancel,
			services: make(map[string]*serviceWatch),
			dirty:    make(map[string]bool),
			inflight: make(map[string]bool),
			wake:     make(chan struct{}, 1),
		}
		w.feed = f
		r.wg.Add(1 + feedWorkers)
		go r.runChecks(ctx, f)
		for range feedWorkers {
			go r.runFeedWorker(ctx, f)
		}
		r.startCatalogLocked()
		if w.catalog.tags != nil {
			// The catalog watch runs already: its last answer is the
			// baseline (the fetches that follow are later still).
			f.catalogTags, f.catalogPrimed = w.catalog.tags, true
		}
	}
	f.services[sw.name] = sw
	if f.primed() {
		f.markLocked(sw.name, true)
	} // else: fetched once both feeds have a first answer
}

// feedRemoveLocked stops feeding sw, and stops the feed when it was the last.
func (r *Registry) feedRemoveLocked(sw *serviceWatch) {
	w := &r.watch
	sw.stopped = true
	f := w.feed
	if f == nil || f.services[sw.name] != sw {
		return
	}
	delete(f.services, sw.name)
	delete(f.dirty, sw.name)
	if len(f.services) > 0 {
		return
	}
	f.cancel()
	w.feed = nil
	r.maybeStopCatalogLocked()
}

// feedCatalogLocked takes an answer of the catalog watch (tags sorted):
// prev is the index the query waited on (0: a first answer, or one after an
// error), got the answer's.
func (r *Registry) feedCatalogLocked(catalog map[string][]string, prev, got uint64) {
	f := r.watch.feed
	if f == nil {
		return
	}
	if prev == 0 || !f.catalogPrimed {
		f.catalogTags, f.catalogPrimed = catalog, true
		if f.primed() {
			f.markAllLocked(true) // a new baseline: anything may have changed before it
		}
		return
	}
	if got == prev {
		return
	}
	for name, sw := range f.services {
		old, had := f.catalogTags[name]
		cur, has := catalog[name]
		switch {
		case had != has || !slices.Equal(old, cur):
			f.markLocked(name, true)
		case sw.probe:
			f.markLocked(name, false)
		}
	}
	f.catalogTags = catalog
}

// feedCheck is the part of a /v1/health/state/any entry the feed reads.
type feedCheck struct {
	Node        string
	CheckID     string
	ServiceID   string
	ServiceName string
	Status      string
	ModifyIndex uint64
}

// fingerprints sums a hash of every check per service name and, for node
// checks, per consul node (a sum does not depend on the order).
func fingerprints(checks []feedCheck) (svc, node map[string]uint64) {
	svc, node = make(map[string]uint64), make(map[string]uint64)
	h := fnv.New64a()
	for _, c := range checks {
		h.Reset()
		for _, s := range []string{c.Node, c.CheckID, c.ServiceID, c.Status, strconv.FormatUint(c.ModifyIndex, 10)} {
			io.WriteString(h, s)
			h.Write([]byte{0})
		}
		sum := h.Sum64() | 1 // never 0: a check always counts
		if c.ServiceID == "" {
			node[c.Node] += sum
		} else {
			svc[c.ServiceName] += sum
		}
	}
	return svc, node
}

// runChecks is the blocking query loop on every check of the datacenter.
func (r *Registry) runChecks(ctx context.Context, f *feed) {
	defer r.wg.Done()
	l := loop{r: r, what: "checks (feed)"}
	var index uint64
	for {
		start := time.Now()
		c, ci := r.client()
		var checks []feedCheck
		meta, err := c.Raw().Query("/v1/health/state/any", &checks, r.queryOpts(ctx, index))
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
		prev := index
		index = nextIndex(index, meta.LastIndex)
		svcFP, nodeFP := fingerprints(checks)
		w := &r.watch
		w.mu.Lock()
		if w.feed != f {
			w.mu.Unlock()
			return
		}
		r.feedChecksLocked(f, svcFP, nodeFP, prev == 0)
		w.mu.Unlock()
		if !l.pace(ctx, prev, meta.LastIndex, time.Since(start)) {
			return
		}
	}
}

// feedChecksLocked takes an answer of the checks watch (fresh: a first
// answer, or one after an error).
func (r *Registry) feedChecksLocked(f *feed, svcFP, nodeFP map[string]uint64, fresh bool) {
	if fresh || !f.checksPrimed {
		f.svcFP, f.nodeFP, f.checksPrimed = svcFP, nodeFP, true
		if f.primed() {
			f.markAllLocked(true)
		}
		f.probedAll = time.Now()
		return
	}
	for name := range f.services {
		if svcFP[name] != f.svcFP[name] {
			f.markLocked(name, true)
		}
	}
	var nodes []string
	for node, fp := range nodeFP {
		if f.nodeFP[node] != fp {
			nodes = append(nodes, node)
		}
	}
	for node := range f.nodeFP {
		if _, ok := nodeFP[node]; !ok {
			nodes = append(nodes, node)
		}
	}
	if len(nodes) > 0 {
		for name, sw := range f.services {
			for _, node := range nodes {
				if _, ok := sw.nodes[node]; ok {
					f.markLocked(name, true)
					break
				}
			}
		}
	}
	f.svcFP, f.nodeFP = svcFP, nodeFP
	if time.Since(f.probedAll) >= r.opts.waitTime {
		f.markAllLocked(false)
		f.probedAll = time.Now()
	}
}

// runFeedWorker fetches (or probes) dirty fed services, one at a time.
// Failures back off per worker and are logged once for all workers.
func (r *Registry) runFeedWorker(ctx context.Context, f *feed) {
	defer r.wg.Done()
	l := loop{r: r, what: "fed services"}
	w := &r.watch
	for {
		w.mu.Lock()
		sw, fetch, ok := f.takeLocked()
		w.mu.Unlock()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-f.wake:
				continue
			}
		}
		err := r.refreshFed(ctx, f, sw, fetch)
		if ctx.Err() != nil {
			return
		}
		w.mu.Lock()
		delete(f.inflight, sw.name)
		if err != nil && !sw.stopped {
			f.markLocked(sw.name, fetch)
		}
		if len(f.dirty) > 0 {
			select {
			case f.wake <- struct{}{}:
			default:
			}
		}
		first, recovered := err != nil && !f.failing, err == nil && f.failing
		f.failing = err != nil
		w.mu.Unlock()
		l.failing = !first // loop.failed logs at Warn only when not failing yet
		switch {
		case err != nil:
			if !l.failed(ctx, err) {
				return
			}
		case recovered:
			r.log.Info("consul watch query recovered", "watch", l.what)
			l.backoff = 0
		default:
			l.backoff = 0
		}
	}
}

// refreshFed fetches sw and applies the answer; with fetch false it first
// probes the service's index and fetches only when it moved.
func (r *Registry) refreshFed(ctx context.Context, f *feed, sw *serviceWatch, fetch bool) error {
	w := &r.watch
	if !fetch {
		index, err := r.probeIndex(ctx, sw.name)
		if err != nil {
			return err
		}
		w.mu.Lock()
		same := sw.ready && index == sw.index
		w.mu.Unlock()
		if same {
			return nil
		}
	}
	set, entries, meta, err := r.fetchEntries(ctx, sw.name, 0, &sw.cache)
	if err != nil {
		return err
	}
	nodes, probe := feedInfo(sw.name, entries)
	w.mu.Lock()
	defer w.mu.Unlock()
	if sw.stopped || w.feed != f {
		return nil
	}
	sw.nodes, sw.probe, sw.index = nodes, probe, meta.LastIndex
	r.updateLocked(sw, set)
	return nil
}

// probeIndex returns service name's X-Consul-Index with an answer of no
// entries.
func (r *Registry) probeIndex(ctx context.Context, name string) (uint64, error) {
	c, ci := r.client()
	q := r.queryOpts(ctx, 0)
	q.Filter = `Service.ID == ""` // never true: consul's IDs are not empty
	var none []json.RawMessage
	meta, err := c.Raw().Query("/v1/health/service/"+name, &none, q)
	if err != nil {
		r.fail(ci, err)
		return 0, err
	}
	return meta.LastIndex, nil
}

// feedInfo returns the consul nodes of the entries of service name and
// whether any of them is a record whose changes the feed cannot pinpoint:
// neither a Beacon record with its revision tag nor a go-micro record with
// a check (see above).
func feedInfo(name string, entries []*entry) (nodes map[string]struct{}, probe bool) {
	nodes = make(map[string]struct{}, 1)
	for _, e := range entries {
		if e == nil || e.Service == nil || e.Service.Service != name || consulServer(e) {
			continue
		}
		nodes[nodeName(e)] = struct{}{}
		if !pinpointed(e) {
			probe = true
		}
	}
	return nodes, probe
}

func pinpointed(e *entry) bool {
	tags := e.Service.Tags
	if slices.ContainsFunc(tags, func(t string) bool { return strings.HasPrefix(t, revTag) }) {
		return true
	}
	id := e.Service.ID
	return slices.ContainsFunc(tags, func(t string) bool { return strings.HasPrefix(t, gmVersionTag) }) &&
		slices.ContainsFunc(e.Checks, func(c entryCheck) bool { return c.ServiceID == id })
}
