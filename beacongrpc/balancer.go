package beacongrpc

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/endpointsharding"
	"google.golang.org/grpc/balancer/pickfirst"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/serviceconfig"
	"google.golang.org/grpc/status"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/cache"
	"github.com/beacon-go/beacon/selector"
)

// Names of the balancers that RegisterBalancers registers, for the
// loadBalancingConfig of a service config.
const (
	// LeastLoaded: selector.LeastLoaded (power of two choices over requests
	// in flight x latency EWMA / weight) with ejection.
	LeastLoaded = "beacon_least_loaded"
	// RoundRobin: selector.RoundRobin (in proportion to weights) with
	// ejection.
	RoundRobin = "beacon_round_robin"
	// Random: selector.Random (in proportion to weights) with ejection.
	Random = "beacon_random"
)

var registerOnce sync.Once

// RegisterBalancers registers the LeastLoaded, RoundRobin and Random
// balancers with grpc-go (balancer.Register), so that a service config can
// name them:
//
//	grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"beacon_least_loaded":{}}]}`)
//
// grpc-go keeps balancers in a global table that it reads without a lock,
// so call RegisterBalancers once at program start (in main, or TestMain),
// before the first gRPC client is created. It is idempotent and safe for
// concurrent calls; nothing in this package registers anything by itself
// (no init function).
func RegisterBalancers() {
	registerOnce.Do(func() {
		balancer.Register(NewBalancerBuilder(LeastLoaded, selector.LeastLoaded()))
		balancer.Register(NewBalancerBuilder(RoundRobin, selector.RoundRobin()))
		balancer.Register(NewBalancerBuilder(Random, selector.Random()))
	})
}

// NewBalancerBuilder returns a grpc-go balancer.Builder named name that
// picks among a channel's ready connections with strategy. Options go to
// each balancer's selector.Set (selector.WithEjection, WithLogger); the
// strategy is set last. Register it yourself (balancer.Register, at program
// start) to use another strategy or other ejection times than
// RegisterBalancers' balancers have.
//
// Each client connection gets a balancer of its own: one connection per
// endpoint (grpc-go's pick_first per endpoint, as round_robin does), and a
// selector.Set over the ready ones. A pick takes the strategy's choice among
// the ready, non-ejected nodes, never blocks and allocates nothing; each
// RPC's end feeds the node's figures (latency, requests in flight) and its
// health through PickResult.Done: codes.Unavailable counts as a transport
// failure (ejection for a cool-off, then one trial request), Canceled and
// DeadlineExceeded (the caller gave up) as nothing learnt, and any other
// status, an application error, as an answer.
//
// The service config takes no parameters ({}).
func NewBalancerBuilder(name string, strategy selector.Strategy, opts ...selector.Option) balancer.Builder {
	return &balancerBuilder{name: name, opts: append(append([]selector.Option(nil), opts...), selector.WithStrategy(strategy))}
}

type balancerBuilder struct {
	name string
	opts []selector.Option
}

func (bb *balancerBuilder) Name() string { return bb.name }

type lbConfig struct {
	serviceconfig.LoadBalancingConfig `json:"-"`
}

func (bb *balancerBuilder) ParseConfig(js json.RawMessage) (serviceconfig.LoadBalancingConfig, error) {
	if s := strings.TrimSpace(string(js)); s != "" && s != "null" {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(js, &m); err != nil {
			return nil, fmt.Errorf("%s: config: %w", bb.name, err)
		}
		for k := range m {
			return nil, fmt.Errorf("%s: config: unknown field %q (the balancer takes none)", bb.name, k)
		}
	}
	return &lbConfig{}, nil
}

func (bb *balancerBuilder) Build(cc balancer.ClientConn, opts balancer.BuildOptions) balancer.Balancer {
	b := &beaconBalancer{ClientConn: cc, set: selector.NewSet(bb.opts...), synth: map[string]*registry.Node{}}
	b.child = endpointsharding.NewBalancer(b, opts, balancer.Get(pickfirst.Name).Build, endpointsharding.Options{})
	return b
}

// beaconBalancer shards the endpoints into pick_first children (through
// endpointsharding, which calls UpdateState here) and picks among the ready
// ones with a selector.Set.
type beaconBalancer struct {
	balancer.ClientConn // the channel; UpdateState is intercepted
	child               balancer.Balancer
	set                 *selector.Set

	mu    sync.Mutex                // serialises UpdateState (endpointsharding does too)
	synth map[string]*registry.Node // nodes made up for endpoints without a Beacon node, by ID
}

func (b *beaconBalancer) UpdateClientConnState(s balancer.ClientConnState) error {
	// The health listener lets pick_first children follow client-side
	// health checks when a service config enables them.
	return b.child.UpdateClientConnState(balancer.ClientConnState{ResolverState: pickfirst.EnableHealthListener(s.ResolverState)})
}

func (b *beaconBalancer) ResolverError(err error) { b.child.ResolverError(err) }

func (b *beaconBalancer) UpdateSubConnState(balancer.SubConn, balancer.SubConnState) {
	// Deprecated by grpc-go; subchannels report through their listeners.
}

func (b *beaconBalancer) ExitIdle() { b.child.ExitIdle() }

func (b *beaconBalancer) Close() { b.child.Close() }

// UpdateState receives endpointsharding's aggregate state and replaces its
// picker with one over the ready endpoints.
func (b *beaconBalancer) UpdateState(s balancer.State) {
	children := endpointsharding.ChildStatesFromPicker(s.Picker)
	ready := 0
	for _, c := range children {
		if c.State.ConnectivityState == connectivity.Ready {
			ready++
		}
	}
	if ready == 0 {
		// Connecting, idle or failing: endpointsharding's picker queues or
		// fails the RPCs as grpc-go's own balancers do.
		b.ClientConn.UpdateState(s)
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	nodes := make([]cache.Node, 0, ready)
	p := &picker{set: b.set, children: make(map[*registry.Node]balancer.Picker, ready)}
	known := make(map[string]bool, len(children))
	for _, c := range children {
		n := b.nodeOf(c.Endpoint)
		known[n.ID] = true
		if c.State.ConnectivityState != connectivity.Ready {
			continue
		}
		if _, dup := p.children[n.Node]; dup {
			continue
		}
		nodes = append(nodes, n)
		p.children[n.Node] = c.State.Picker
	}
	for id := range b.synth {
		if !known[id] {
			delete(b.synth, id)
		}
	}
	// The Set keeps the figures and ejections of endpoints that are not
	// ready for now, and forgets those the resolver removed.
	b.set.Update(nodes)
	b.set.Retain(func(id string) bool { return known[id] })
	b.ClientConn.UpdateState(balancer.State{ConnectivityState: connectivity.Ready, Picker: p})
}

// nodeOf returns the Beacon node of an endpoint, or one made up from its
// addresses when another resolver produced it.
func (b *beaconBalancer) nodeOf(ep resolver.Endpoint) cache.Node {
	if n, ok := EndpointNode(ep); ok {
		return n
	}
	addrs := make([]string, len(ep.Addresses))
	for i, a := range ep.Addresses {
		addrs[i] = a.Addr
	}
	id := strings.Join(addrs, ",")
	n := b.synth[id]
	if n == nil {
		first := ""
		if len(addrs) > 0 {
			first = addrs[0]
		}
		n = &registry.Node{ID: id, Address: first}
		b.synth[id] = n
	}
	return cache.Node{Node: n}
}

// picker picks among the ready endpoints of one balancer state.
type picker struct {
	set      *selector.Set
	children map[*registry.Node]balancer.Picker // the ready endpoints' pick_first pickers
}

func (p *picker) Pick(info balancer.PickInfo) (balancer.PickResult, error) {
	pk, err := p.set.Pick()
	if err != nil {
		return balancer.PickResult{}, balancer.ErrNoSubConnAvailable
	}
	child, ok := p.children[pk.Node]
	if !ok {
		// The Set already follows a newer state, whose picker grpc-go is
		// about to get: pick again with it.
		pk.Done(selector.Outcome{Skipped: true})
		return balancer.PickResult{}, balancer.ErrNoSubConnAvailable
	}
	res, err := child.Pick(info)
	if err != nil {
		pk.Done(selector.Outcome{Skipped: true})
		return res, err
	}
	c := getCall()
	c.report, c.inner, c.start = pk.Done, res.Done, time.Now()
	res.Done = c.done
	return res, nil
}

// call carries one RPC's pick to its end; calls are recycled, so a pick
// allocates nothing.
type call struct {
	done   func(balancer.DoneInfo) // c.finish, bound once
	report func(selector.Outcome)
	inner  func(balancer.DoneInfo)
	start  time.Time
}

var calls sync.Pool

func getCall() *call {
	if c, _ := calls.Get().(*call); c != nil {
		return c
	}
	c := &call{}
	c.done = c.finish
	return c
}

// finish reports the RPC's end to its node; grpc-go calls it once per pick.
func (c *call) finish(di balancer.DoneInfo) {
	report, inner, start := c.report, c.inner, c.start
	c.report, c.inner = nil, nil
	calls.Put(c)
	report(outcome(di, start))
	if inner != nil {
		inner(di)
	}
}

// outcome says what an RPC's end tells of its node: codes.Unavailable is a
// transport failure; a caller that gave up (Canceled, DeadlineExceeded), or
// a pick that was not used (nothing sent, no error), tells nothing; every
// other status is the node's answer.
func outcome(di balancer.DoneInfo, start time.Time) selector.Outcome {
	if di.Err == nil && !di.BytesSent && !di.BytesReceived {
		return selector.Outcome{Skipped: true}
	}
	end := time.Now()
	o := selector.Outcome{Latency: end.Sub(start), At: end}
	if di.Err == nil {
		return o
	}
	switch status.Code(di.Err) {
	case codes.Unavailable:
		o.Err = di.Err
	case codes.Canceled, codes.DeadlineExceeded:
		return selector.Outcome{Skipped: true}
	}
	return o
}
