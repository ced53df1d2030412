package selector

import (
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/cache"
)

// Set picks nodes from a list that its owner keeps, with everything the
// selector does per node but the registry: a strategy, each node's load,
// latency EWMA and weight, ejection after transport failures with one trial
// request after the cool-off, and each pick's Done. It is for load balancers
// that own the node list, such as a gRPC balancer choosing among its ready
// connections (package beacongrpc), and reads no registry and no protocol
// metadata: the owner decides which nodes may be picked.
//
// A Set is safe for concurrent use. Pick never blocks, and allocates nothing
// unless the list changed since the last pick (the first pick after an
// Update builds the new view once).
type Set struct {
	s  *Cached
	st *state
}

// NewSet returns an empty Set. Of the options, WithStrategy (default
// LeastLoaded), WithEjection, WithLogger and WithClock apply; the others
// concern a registry and are ignored.
func NewSet(opts ...Option) *Set {
	o := options{strategy: LeastLoaded(), ejectBase: DefaultEjectBase, ejectMax: DefaultEjectMax, log: slog.Default(), now: time.Now}
	for _, f := range opts {
		f(&o)
	}
	o.anyProto = true
	s := &Cached{o: o}
	st := &state{stats: map[string]*NodeStats{}, keep: true}
	st.own.Store(&cache.Snapshot{Updated: o.now()})
	st.counter.Store(rand.Uint64N(1 << 16))
	return &Set{s: s, st: st}
}

// Update replaces the nodes that Pick chooses among (nodes is not kept: the
// Set copies it; the nodes themselves are read-only). Nodes are told apart
// by ID. A node keeps its figures and its ejection across updates, also
// while it is left out of the list (a connection down for a while), until
// Retain forgets it; a node listed again with other data (address,
// metadata) starts afresh, as when it registers again.
func (t *Set) Update(nodes []cache.Node) {
	snap := &cache.Snapshot{Nodes: append([]cache.Node(nil), nodes...), Updated: t.s.o.now()}
	seen := map[*registry.Service]bool{}
	for _, n := range nodes {
		if n.Service != nil && !seen[n.Service] {
			seen[n.Service] = true
			snap.Services = append(snap.Services, n.Service)
		}
	}
	t.st.own.Store(snap)
}

// Retain forgets the figures of the nodes that are not in the current list
// and for which keep returns false (nodes gone for good).
func (t *Set) Retain(keep func(id string) bool) {
	listed := map[string]bool{}
	for _, n := range t.st.own.Load().Nodes {
		listed[n.ID] = true
	}
	t.st.mu.Lock()
	defer t.st.mu.Unlock()
	for id := range t.st.stats {
		if !listed[id] && !keep(id) {
			delete(t.st.stats, id)
		}
	}
}

// Pick chooses the node of one attempt among the listed nodes that are not
// ejected (all of them when every one is), or hands out an ejected node's
// trial request once its cool-off is over (Pick.Probe). The caller must
// report the attempt through the Pick's Done, exactly once. It returns
// ErrNoneAvailable when the list is empty.
func (t *Set) Pick() (Pick, error) { return t.s.pick(t.st, t.s.o.strategy, nil) }

// Stats returns the figures of the node with the given ID, nil when the Set
// has none (yet: they are made by the first pick after the node is listed).
func (t *Set) Stats(id string) *NodeStats {
	t.st.mu.Lock()
	defer t.st.mu.Unlock()
	return t.st.stats[id]
}

// Ejected reports whether the node with the given ID is ejected or its
// trial request is under way.
func (t *Set) Ejected(id string) bool {
	t.st.mu.Lock()
	defer t.st.mu.Unlock()
	ns := t.st.stats[id]
	return ns != nil && (!ns.until.IsZero() || ns.probing)
}

// String names the Set's strategy.
func (t *Set) String() string { return "set/" + t.s.o.strategy.String() }
