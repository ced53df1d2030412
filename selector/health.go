package selector

import (
	"math"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/cache"
)

// MetaWeight is the node metadata key of a node's weight: a whole number
// from 1 to MaxWeight (default 1; other values count as 1). RoundRobin,
// Random and LeastLoaded give a node a share of calls in proportion to it.
const MetaWeight = "weight"

// MaxWeight is the largest weight a node may have.
const MaxWeight = 1000

// Outcome is what an attempt reports to the node it picked.
type Outcome struct {
	// Latency is the time from the pick to the answer, or to the failure.
	Latency time.Duration
	// Err is nil when the node answered (a handler's error is an answer),
	// else the transport failure (refused, reset, timeout).
	Err error
	// Skipped: the pick was not used (no request was sent); only the
	// in-flight count is given back.
	Skipped bool
	// ProbeFailed: the node was picked as a probe and did not answer a
	// liveness check, so no request was sent; it stays ejected, without a
	// longer cool-off.
	ProbeFailed bool
	// At is when the attempt ended (zero: now). A caller that has the time
	// already saves the selector reading the clock.
	At time.Time
}

// Pick is the node chosen for one attempt. Done, when not nil, must be
// called exactly once with the attempt's outcome; it feeds load balancing
// and ejection, and never blocks.
type Pick struct {
	Node *registry.Node
	// Service is the version of the service the node belongs to, as the
	// registry published it (read-only): its endpoints and their metadata.
	Service *registry.Service
	Done    func(Outcome)
	// Probe: the node was ejected and this attempt is its one trial after
	// the cool-off. A caller that can check liveness cheaply first (a ping)
	// should, and report ProbeFailed when that fails.
	Probe bool
}

// NodeStats are what the selector knows of a node's recent calls. The
// methods are safe for concurrent use.
type NodeStats struct {
	inflight atomic.Int64
	ewma     atomic.Int64 // latency EWMA in ns; 0 until an answer
	stamp    atomic.Int64 // when ewma was last updated, Unix ns
	fresh    atomic.Bool  // an exploration call is out: the next answer replaces ewma
	weight   atomic.Int32 // set when the view is built

	// Guarded by the service state's mu.
	node     *registry.Node
	failures int       // incidents in a row; 0 when healthy
	until    time.Time // end of the cool-off; zero when not ejected
	ejected  time.Time // when the current cool-off began
	probing  bool      // its one trial request is under way
	foreign  bool      // speaks a protocol the caller does not
	cleared  time.Time // when it last became healthy after an ejection
	notified bool      // its ejection was reported to the OnEject functions
	bad      atomic.Bool
	done     func(Outcome)
}

// InFlight returns the requests picked for the node and not done yet.
func (n *NodeStats) InFlight() int64 { return n.inflight.Load() }

// Latency returns the node's latency EWMA (0 before its first answer).
func (n *NodeStats) Latency() time.Duration { return time.Duration(n.ewma.Load()) }

// Weight returns the node's weight (see MetaWeight).
func (n *NodeStats) Weight() int { return int(n.weight.Load()) }

// observe folds a latency sample into the EWMA.
func (n *NodeStats) observe(lat time.Duration, now int64) {
	sample := max(int64(lat), int64(minLatency))
	prev := n.ewma.Load()
	last := n.stamp.Swap(now)
	if prev == 0 || last == 0 || n.fresh.Swap(false) {
		// The first answer, or the answer to an exploration call (LeastLoaded):
		// a new measurement of a node that got no calls for a while. Folded in
		// by the time since the exploration was picked, it would hardly count.
		n.ewma.Store(sample)
		return
	}
	x := float64(max(now-last, 0)) / float64(LatencyDecay)
	w := 1 - x + x*x/2 // exp(-x) for the usual x (answers far more often than LatencyDecay)
	if x > 0.1 {
		w = math.Exp(-x)
	}
	n.ewma.Store(int64(float64(prev)*w + float64(sample)*(1-w)))
}

func weightOf(n *registry.Node) int {
	if w, err := strconv.Atoi(n.Metadata[MetaWeight]); err == nil && w >= 1 && w <= MaxWeight {
		return w
	}
	return 1
}

// view is the selector's picture of one service: the snapshot's nodes with
// their stats, and which of them may be picked. It is immutable; a new one
// is published when the snapshot or an ejection changes.
type view struct {
	snap  *cache.Snapshot
	nodes []cache.Node
	stats []*NodeStats
	avail []int32 // nodes not ejected; nil: every node
	cum   []int64 // cumulative weights over avail (or every node); nil: all weigh 1
	wake  int64   // Unix ns of the earliest cool-off end (0: none ejected)
}

func (v *view) candidates(counter *atomic.Uint64, clock func() time.Time) Candidates {
	return Candidates{nodes: v.nodes, stats: v.stats, idx: v.avail, cum: v.cum, counter: counter, clock: clock}
}

// viewOf returns the current view of st for snap, building it when the
// snapshot changed. It does not allocate when it has not.
func (s *Cached) viewOf(st *state, snap *cache.Snapshot) *view {
	if v := st.view.Load(); v != nil && v.snap == snap {
		return v
	}
	st.mu.Lock()
	v, back := s.buildLocked(st, snap)
	st.mu.Unlock()
	s.notify(st.name, false, back...)
	return v
}

// buildLocked builds and publishes the view of st for snap unless it is
// current; st.mu is held. back are the nodes whose reported ejection ended
// (they registered again with new data, or left).
func (s *Cached) buildLocked(st *state, snap *cache.Snapshot) (cur *view, back []*registry.Node) {
	if v := st.view.Load(); v != nil && v.snap == snap {
		return v, nil
	}
	v := &view{snap: snap, nodes: snap.Nodes, stats: make([]*NodeStats, len(snap.Nodes))}
	live := make(map[string]bool, len(snap.Nodes))
	for i, n := range snap.Nodes {
		ns := st.stats[n.ID]
		switch {
		case ns == nil:
			ns = s.newStats(st)
			st.stats[n.ID] = ns
		case ns.node != nil && ns.node != n.Node && !sameNode(ns.node, n.Node):
			// Registered again with new data (restarted): a new start.
			if ns.heal(time.Time{}) {
				back = append(back, ns.node)
			}
		}
		ns.node = n.Node
		ns.weight.Store(int32(weightOf(n.Node)))
		ns.foreign = false
		if p := n.Metadata[registry.MetaProtocol]; p != "" && !s.o.anyProto && !slices.Contains(s.o.protocols, p) {
			ns.foreign = true
		}
		v.stats[i] = ns
		live[n.ID] = true
	}
	for id, ns := range st.stats {
		if !live[id] && !st.keep {
			if ns.notified {
				ns.notified = false
				back = append(back, ns.node)
			}
			delete(st.stats, id)
		}
	}
	s.publishLocked(st, v)
	return st.view.Load(), back
}

// publishLocked stores a view like base (same nodes) with availability and
// weights as of now; st.mu is held.
func (s *Cached) publishLocked(st *state, base *view) {
	v := &view{snap: base.snap, nodes: base.nodes, stats: base.stats}
	s.availLocked(v)
	st.view.Store(v)
}

// availLocked sets which nodes of v may be picked (avail), the earliest
// end of a cool-off (wake) and the weights; the state's mu is held.
func (s *Cached) availLocked(v *view) {
	v.avail, v.wake = nil, 0
	ejected := 0
	for _, ns := range v.stats {
		if ns.until.IsZero() && !ns.probing && !ns.foreign {
			continue
		}
		ejected++
		if !ns.probing && !ns.until.IsZero() && (v.wake == 0 || ns.until.UnixNano() < v.wake) {
			v.wake = max(ns.until.UnixNano(), 1)
		}
	}
	if ejected > 0 && ejected < len(v.stats) {
		v.avail = make([]int32, 0, len(v.stats)-ejected)
		for i, ns := range v.stats {
			if ns.until.IsZero() && !ns.probing && !ns.foreign {
				v.avail = append(v.avail, int32(i))
			}
		}
	} // every node ejected: all remain candidates, better a try than nothing
	v.cum = weights(v)
}

func weights(v *view) []int64 {
	n := len(v.stats)
	if v.avail != nil {
		n = len(v.avail)
	}
	same := true
	for k := range n {
		i := k
		if v.avail != nil {
			i = int(v.avail[k])
		}
		if v.stats[i].Weight() != 1 {
			same = false
			break
		}
	}
	if same {
		return nil
	}
	cum := make([]int64, n)
	var total int64
	for k := range n {
		i := k
		if v.avail != nil {
			i = int(v.avail[k])
		}
		total += int64(v.stats[i].Weight())
		cum[k] = total
	}
	return cum
}

func sameNode(a, b *registry.Node) bool {
	if a.ID != b.ID || a.Address != b.Address || len(a.Metadata) != len(b.Metadata) {
		return false
	}
	for k, v := range a.Metadata {
		if b.Metadata[k] != v {
			return false
		}
	}
	return true
}

func (s *Cached) newStats(st *state) *NodeStats {
	ns := &NodeStats{}
	ns.weight.Store(1)
	ns.done = func(o Outcome) { s.report(st, ns, o, true) }
	return ns
}

// heal clears the node's ejection and, when it was ejected, its latency
// (the failures' penalties say nothing of the node now); st.mu is held. It
// reports whether the node's ejection had been reported to the OnEject
// functions (so its end is to be).
func (ns *NodeStats) heal(now time.Time) (notified bool) {
	if !ns.until.IsZero() || ns.probing || ns.failures > 0 {
		ns.cleared = now
		ns.ewma.Store(0)
		ns.stamp.Store(0)
		ns.fresh.Store(false)
	}
	ns.failures, ns.until, ns.probing = 0, time.Time{}, false
	ns.bad.Store(false)
	notified, ns.notified = ns.notified, false
	return notified
}

// report applies an attempt's outcome to the node's stats and health.
func (s *Cached) report(st *state, ns *NodeStats, o Outcome, picked bool) {
	if picked {
		ns.inflight.Add(-1)
	}
	now := o.At
	if now.IsZero() {
		now = s.o.now()
	}
	if o.Skipped {
		if ns.bad.Load() {
			st.mu.Lock()
			if ns.probing { // the trial did not happen: another pick may try
				ns.probing = false
				s.republishLocked(st)
			}
			st.mu.Unlock()
		}
		return
	}
	if !o.ProbeFailed {
		lat := o.Latency
		if o.Err != nil {
			lat = max(lat, FailurePenalty)
		}
		ns.observe(lat, now.UnixNano())
	}
	if o.Err == nil && !o.ProbeFailed {
		if ns.bad.Load() {
			st.mu.Lock()
			picked := now.Add(-o.Latency)
			back := false
			node := ns.node
			// An answer to a request sent before the node was ejected does
			// not prove it recovered; the trial's answer, or a later one, does.
			if ns.probing || ns.until.IsZero() || !picked.Before(ns.ejected) {
				was := !ns.until.IsZero() || ns.probing
				back = ns.heal(now)
				if was {
					// Back from an ejection: its latency starts afresh from
					// this answer, not from the failures' penalties.
					ns.ewma.Store(max(int64(o.Latency), int64(minLatency)))
					s.republishLocked(st)
				}
			}
			st.mu.Unlock()
			if back {
				s.notify(st.name, false, node)
			}
		}
		return
	}
	st.mu.Lock()
	node, ejected := s.failLocked(st, ns, o, now)
	st.mu.Unlock()
	if ejected {
		s.notify(st.name, true, node)
	}
}

// failLocked applies a failed outcome to the node's health; st.mu is held.
// ejected tells that the node was ejected and its ejection is to be
// reported (it was not already).
func (s *Cached) failLocked(st *state, ns *NodeStats, o Outcome, now time.Time) (node *registry.Node, ejected bool) {
	switch {
	case o.ProbeFailed:
		// Not alive yet: another base cool-off, the incident unchanged.
		ns.probing = false
		ns.until, ns.ejected = now.Add(s.o.ejectBase), now
	case ns.probing:
		// The trial failed: a repeated incident.
		ns.probing = false
		ns.failures++
		ns.until, ns.ejected = now.Add(s.coolOff(ns.failures)), now
	case !ns.until.IsZero():
		return nil, false // ejected already: calls that were in flight together count once
	case !ns.cleared.IsZero() && now.Add(-o.Latency).Before(ns.cleared):
		return nil, false // picked before the node recovered: part of the old incident
	default:
		ns.failures++
		ns.until, ns.ejected = now.Add(s.coolOff(ns.failures)), now
	}
	ns.bad.Store(true)
	s.o.log.Debug("selector: node ejected", "node", ns.node.ID, "until", ns.until, "incidents", ns.failures, "err", o.Err)
	s.republishLocked(st)
	if ns.notified {
		return nil, false
	}
	ns.notified = true
	return ns.node, true
}

func (s *Cached) coolOff(incidents int) time.Duration {
	d := s.o.ejectBase << min(incidents-1, 30)
	if d <= 0 || d > s.o.ejectMax {
		d = s.o.ejectMax
	}
	return d
}

// republishLocked publishes the current view again with new availability;
// st.mu is held.
func (s *Cached) republishLocked(st *state) {
	if v := st.view.Load(); v != nil {
		s.publishLocked(st, v)
	}
}

// probe hands out the trial request of one node whose cool-off is over, if
// any; st.mu is taken.
func (s *Cached) probe(st *state, now time.Time) (Pick, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	v := st.view.Load()
	for i, ns := range v.stats {
		if ns.probing || ns.until.IsZero() || now.Before(ns.until) {
			continue
		}
		ns.probing = true
		ns.until = time.Time{}
		s.publishLocked(st, v)
		ns.inflight.Add(1)
		return Pick{Node: v.nodes[i].Node, Service: v.nodes[i].Service, Done: ns.done, Probe: true}, true
	}
	// Nothing to probe (another caller took it): refresh the wake time.
	s.publishLocked(st, v)
	return Pick{}, false
}
