package selector

import (
	"math/rand/v2"
	"sort"
	"sync/atomic"
	"time"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/cache"
)

// Strategy chooses the node of one attempt among the candidates: the nodes
// of the service that pass the filters and are not ejected. Pick returns an
// index from 0 to c.Len()-1 (c.Len() is at least 1). It must not block or
// allocate, and must be safe for concurrent use.
type Strategy interface {
	Pick(c Candidates) int
	String() string
}

// Candidates are the nodes a Strategy chooses among, with what the selector
// knows of each. It is a read-only view, valid during one Pick.
type Candidates struct {
	nodes   []cache.Node
	stats   []*NodeStats
	idx     []int32 // candidate k is nodes[idx[k]]; nil: every node
	cum     []int64 // cumulative weights of the candidates; nil: all weigh 1
	counter *atomic.Uint64
	clock   func() time.Time
}

// Now returns the selector's time (time.Now unless WithClock).
func (c Candidates) Now() time.Time { return c.clock() }

// Len returns the number of candidates.
func (c Candidates) Len() int {
	if c.idx != nil {
		return len(c.idx)
	}
	return len(c.nodes)
}

func (c Candidates) at(k int) int {
	if c.idx != nil {
		return int(c.idx[k])
	}
	return k
}

// Node returns candidate k.
func (c Candidates) Node(k int) *registry.Node { return c.nodes[c.at(k)].Node }

// Stats returns the load and latency figures of candidate k.
func (c Candidates) Stats(k int) *NodeStats { return c.stats[c.at(k)] }

// Weighted reports whether the candidates' weights differ (see
// MetaWeight); TotalWeight and ByWeight then spread picks by weight.
func (c Candidates) Weighted() bool { return c.cum != nil }

// TotalWeight returns the sum of the candidates' weights.
func (c Candidates) TotalWeight() int64 {
	if c.cum == nil {
		return int64(c.Len())
	}
	return c.cum[len(c.cum)-1]
}

// ByWeight returns the candidate whose share of the total weight holds w
// (0 <= w < TotalWeight).
func (c Candidates) ByWeight(w int64) int {
	if c.cum == nil {
		return int(w)
	}
	return sort.Search(len(c.cum), func(i int) bool { return c.cum[i] > w })
}

// Counter is per-service state owned by the selector that survives changes
// of the node list (a round-robin position).
func (c Candidates) Counter() *atomic.Uint64 { return c.counter }

type roundRobin struct{}

func (roundRobin) Pick(c Candidates) int {
	return c.ByWeight(int64((c.counter.Add(1) - 1) % uint64(c.TotalWeight())))
}
func (roundRobin) String() string { return "roundrobin" }

type random struct{}

func (random) Pick(c Candidates) int { return c.ByWeight(rand.Int64N(c.TotalWeight())) }
func (random) String() string        { return "random" }

type leastLoaded struct{}

// Pick draws two candidates at random and keeps the one with the lower
// (in-flight + 1) x latency / weight, where latency is the EWMA, or the time
// since the node's last answer when that is longer and requests are in
// flight (so a node that hangs is avoided at once, not when its requests
// time out). When either has no latency yet,
// in-flight / weight decides, so a new node is not flooded before its first
// answer. A node with nothing in flight whose latency is older than
// exploreAfter gets the call (one caller at a time), and its answer replaces
// the latency EWMA, so that a node that was slow and recovered is seen again.
func (leastLoaded) Pick(c Candidates) int {
	n := c.Len()
	if n == 1 {
		return 0
	}
	a := rand.IntN(n)
	b := rand.IntN(n - 1)
	if b >= a {
		b++
	}
	sa, sb := c.Stats(a), c.Stats(b)
	now := c.Now().UnixNano()
	if sa.explore(now) {
		return a
	}
	if sb.explore(now) {
		return b
	}
	la, lb := sa.latency(now), sb.latency(now)
	if la <= 0 || lb <= 0 {
		la, lb = 1, 1
	}
	if float64(sb.inflight.Load()+1)*float64(lb)/float64(sb.weight.Load()) < float64(sa.inflight.Load()+1)*float64(la)/float64(sa.weight.Load()) {
		return b
	}
	return a
}

// latency is the node's latency EWMA, or, when it has k requests in flight
// and has been silent for longer than EWMA / k (it answers about that
// often), k times the silence: a node that stopped answering looks slower
// with every moment, before any request times out. 0: no answer yet.
func (n *NodeStats) latency(now int64) int64 {
	l := n.ewma.Load()
	if l <= 0 {
		return 0
	}
	if k := n.inflight.Load(); k > 0 {
		// With k requests in flight a node answers about every l/k; a
		// silence of s counts as a latency of k x s.
		if last := n.stamp.Load(); last > 0 && (now-last)*k > l {
			return (now - last) * k
		}
	}
	return l
}

// explore claims a call for a node that has nothing in flight and whose
// latency has not been updated for exploreAfter; its answer replaces the
// latency EWMA (observe).
func (n *NodeStats) explore(now int64) bool {
	last := n.stamp.Load()
	if last != 0 && now-last > int64(exploreAfter) && n.inflight.Load() == 0 && n.stamp.CompareAndSwap(last, now) {
		n.fresh.Store(true)
		return true
	}
	return false
}

func (leastLoaded) String() string { return "leastloaded" }

// RoundRobin cycles through the nodes of a service across calls, in
// proportion to their weights.
func RoundRobin() Strategy { return roundRobin{} }

// Random picks a node at random, in proportion to the weights.
func Random() Strategy { return random{} }

// LeastLoaded is power of two choices over (requests in flight + 1) x the
// node's latency EWMA, divided by its weight: of two nodes drawn at random,
// the one expected to answer sooner gets the call. A node with requests
// stuck in flight (hung) stops receiving new ones after a few picks; a slow
// node gets a share in proportion to its speed. Latency counts transport
// failures as FailurePenalty.
func LeastLoaded() Strategy { return leastLoaded{} }

// Strategies is the table of strategy names used by flags.
func Strategies() map[string]func() Strategy {
	return map[string]func() Strategy{"roundrobin": RoundRobin, "random": Random, "leastloaded": LeastLoaded}
}

// Latency EWMA settings.
const (
	// LatencyDecay is the time constant of the latency EWMA: a sample's
	// weight falls to 1/e after this long.
	LatencyDecay = 10 * time.Second
	// FailurePenalty is the latency a transport failure counts as.
	FailurePenalty = time.Second
	minLatency     = time.Microsecond
	exploreAfter   = time.Second
)
