package beacongrpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/attributes"
	"google.golang.org/grpc/resolver"

	"github.com/beacon-go/beacon/internal/backoff"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/cache"
	"github.com/beacon-go/beacon/selector"
)

// Scheme is the default URI scheme of the resolver: targets look like
// "beacon:///greeter".
const Scheme = "beacon"

// AnyProtocol as the protocol of a target ("?protocol=any") resolves the
// nodes of every protocol.
const AnyProtocol = "any"

// Option configures a Builder.
type Option func(*Builder)

// WithScheme sets the URI scheme the Builder answers to (default Scheme),
// e.g. to use two registries in one program. grpc-go wants it lower case.
func WithScheme(s string) Option { return func(b *Builder) { b.scheme = s } }

// WithLogger sets the logger (default slog.Default()); NewBuilder's cache
// logs there too.
func WithLogger(l *slog.Logger) Option { return func(b *Builder) { b.log = l } }

// WithCacheOptions passes options to the cache that NewBuilder creates (the
// refresh interval, the empty hold, ...). NewBuilderFromCache ignores them.
func WithCacheOptions(opts ...cache.Option) Option {
	return func(b *Builder) { b.cacheOpts = append(b.cacheOpts, opts...) }
}

// Builder is a grpc-go resolver.Builder that resolves "beacon:///<service>"
// targets through a Beacon registry cache. Pass it to each client with
// grpc.WithResolvers; it needs no global registration. One Builder serves
// any number of clients and targets, which share its cache (one watch per
// service). It is safe for concurrent use.
type Builder struct {
	cache     *cache.Cache
	owns      bool
	scheme    string
	log       *slog.Logger
	cacheOpts []cache.Option
}

var _ resolver.Builder = (*Builder)(nil)

// NewBuilder returns a Builder over r (any backend), with a cache of its
// own that Close closes. It does not close r.
func NewBuilder(r registry.Registry, opts ...Option) *Builder {
	b := newBuilder(opts)
	b.cache = cache.New(r, append([]cache.Option{cache.WithLogger(b.log)}, b.cacheOpts...)...)
	b.owns = true
	return b
}

// NewBuilderFromCache returns a Builder over an existing cache, such as the
// one a Beacon selector uses (selector.Cached.Cache), so that Beacon and
// gRPC clients of a program share their watches. Close does not close c.
func NewBuilderFromCache(c *cache.Cache, opts ...Option) *Builder {
	b := newBuilder(opts)
	b.cache = c
	return b
}

func newBuilder(opts []Option) *Builder {
	b := &Builder{scheme: Scheme, log: slog.Default()}
	for _, o := range opts {
		o(b)
	}
	return b
}

// Scheme implements resolver.Builder.
func (b *Builder) Scheme() string { return b.scheme }

// Cache returns the Builder's registry cache.
func (b *Builder) Cache() *cache.Cache { return b.cache }

// Close closes the cache that NewBuilder created (not one passed to
// NewBuilderFromCache). Its resolvers then stop following the registry and
// their clients keep the addresses they have; resolvers built afterwards
// report the error. Close the gRPC clients first.
func (b *Builder) Close() error {
	if b.owns {
		return b.cache.Close()
	}
	return nil
}

// Build implements resolver.Builder; grpc-go calls it. It checks the target
// and returns at once: the first lookup of the service runs in the
// background. See the package doc for the target's syntax.
func (b *Builder) Build(t resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	tg, err := ParseTarget(t)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &beaconResolver{b: b, cc: cc, t: tg, ctx: ctx, cancel: cancel, done: make(chan struct{}), now: make(chan struct{}, 1)}
	go r.run()
	return r, nil
}

// Target is a parsed "beacon:///<service>?<filters>" target.
type Target struct {
	// Service is the service name.
	Service string
	// Versions keeps nodes of these versions (empty: every version).
	Versions []string
	// Metadata keeps nodes whose metadata has, for every key, one of the
	// values listed.
	Metadata map[string][]string
	// Protocols keeps nodes whose registry.MetaProtocol is one of these;
	// nil: every node (AnyProtocol). Default: registry.ProtocolGRPC.
	Protocols []string
}

// ParseTarget parses a target's path and query (see the package doc). The
// authority must be empty; an unknown query key is an error, so that a
// misspelt filter does not silently match every node.
func ParseTarget(t resolver.Target) (Target, error) {
	u := t.URL
	if u.Host != "" {
		return Target{}, fmt.Errorf("beacongrpc: target %q: an authority is not supported (use %s:///<service>)", t.String(), u.Scheme)
	}
	tg := Target{Service: t.Endpoint(), Protocols: []string{registry.ProtocolGRPC}}
	if err := registry.ValidateName(tg.Service); err != nil {
		return Target{}, fmt.Errorf("beacongrpc: target %q: %w", t.String(), err)
	}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return Target{}, fmt.Errorf("beacongrpc: target %q: %w", t.String(), err)
	}
	anyProto := false
	for _, k := range slices.Sorted(maps.Keys(q)) {
		vs := q[k]
		switch {
		case k == "version":
			for _, v := range vs {
				tg.Versions = append(tg.Versions, strings.Split(v, ",")...)
			}
		case k == "protocol":
			tg.Protocols = []string{}
			for _, v := range vs {
				for _, p := range strings.Split(v, ",") {
					switch p {
					case "":
						return Target{}, fmt.Errorf("beacongrpc: target %q: empty protocol", t.String())
					case AnyProtocol:
						anyProto = true
					}
					tg.Protocols = append(tg.Protocols, p)
				}
			}
		case strings.HasPrefix(k, "md.") && len(k) > 3:
			if tg.Metadata == nil {
				tg.Metadata = map[string][]string{}
			}
			tg.Metadata[k[3:]] = vs
		default:
			return Target{}, fmt.Errorf("beacongrpc: target %q: unknown query key %q (want version, protocol or md.<key>)", t.String(), k)
		}
	}
	if anyProto {
		tg.Protocols = nil
	}
	return tg, nil
}

// Filter returns the target's filters as one selector filter.
func (t Target) Filter() selector.Filter {
	return func(svc *registry.Service, n *registry.Node) bool {
		if len(t.Versions) > 0 && !slices.Contains(t.Versions, svc.Version) {
			return false
		}
		if t.Protocols != nil && !slices.Contains(t.Protocols, n.Metadata[registry.MetaProtocol]) {
			return false
		}
		for k, vs := range t.Metadata {
			v, ok := n.Metadata[k]
			if !ok || !slices.Contains(vs, v) {
				return false
			}
		}
		return true
	}
}

// String describes the target's filters, for errors.
func (t Target) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%q", t.Service)
	if t.Protocols == nil {
		b.WriteString(" (any protocol")
	} else {
		b.WriteString(" (protocol " + strings.Join(t.Protocols, " or "))
	}
	if len(t.Versions) > 0 {
		b.WriteString(", version " + strings.Join(t.Versions, " or "))
	}
	keys := make([]string, 0, len(t.Metadata))
	for k := range t.Metadata {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		b.WriteString(", metadata " + k + "=" + strings.Join(t.Metadata[k], " or "))
	}
	b.WriteString(")")
	return b.String()
}

// nodeKey is the attributes key of the Beacon node behind an endpoint.
type nodeKey struct{}

// EndpointNode returns the Beacon node behind an endpoint that the resolver
// produced (resolver.Endpoint.Attributes): the registry node (ID, address,
// metadata) and the service version it belongs to, both read-only.
func EndpointNode(ep resolver.Endpoint) (cache.Node, bool) { return attrNode(ep.Attributes) }

// AddressNode is EndpointNode for the resolver's State.Addresses (the node
// is in the address's BalancerAttributes), for balancers that still read
// addresses.
func AddressNode(a resolver.Address) (cache.Node, bool) { return attrNode(a.BalancerAttributes) }

func attrNode(a *attributes.Attributes) (cache.Node, bool) {
	n, ok := a.Value(nodeKey{}).(cache.Node)
	return n, ok && n.Node != nil
}

// beaconResolver follows one target through a cache subscription.
type beaconResolver struct {
	b      *Builder
	cc     resolver.ClientConn
	t      Target
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // run returned
	now    chan struct{} // ResolveNow while the first lookup fails

	unsub func() // set by run before done is closed

	// Owned by the subscription's goroutine.
	filter selector.Filter
	last   []cache.Node // what was pushed
	pushed bool         // a state was pushed (else only errors)
}

// run subscribes to the service, retrying while the first lookup fails.
func (r *beaconResolver) run() {
	defer close(r.done)
	r.filter = r.t.Filter()
	bo := backoff.New(100*time.Millisecond, 10*time.Second)
	for {
		unsub, err := r.b.cache.Subscribe(r.ctx, r.t.Service, r.update)
		if err == nil {
			r.unsub = unsub
			return
		}
		if r.ctx.Err() != nil {
			return
		}
		// No state yet: the first lookup failed (the registry fails).
		r.cc.ReportError(fmt.Errorf("beacongrpc: resolve %s: %w", r.t, err))
		if errors.Is(err, cache.ErrClosed) {
			return
		}
		r.b.log.Warn("beacongrpc: resolve failed; retrying", "target", r.t.String(), "err", err, "retry_in", bo.Peek())
		t := time.NewTimer(bo.Next())
		select {
		case <-t.C:
		case <-r.now:
			t.Stop()
		case <-r.ctx.Done():
			t.Stop()
			return
		}
	}
}

// update pushes the nodes of a snapshot that pass the target's filters.
// The cache's snapshots never lose nodes to a registry failure, so an empty
// list here is news: the service has no such node any more (or has none
// yet).
func (r *beaconResolver) update(s *cache.Snapshot) {
	var nodes []cache.Node
	for _, n := range s.Nodes {
		if r.filter(n.Service, n.Node) {
			nodes = append(nodes, n)
		}
	}
	if r.pushed && slices.EqualFunc(nodes, r.last, sameNode) {
		return // nothing this target sees changed
	}
	if len(nodes) == 0 {
		if r.pushed {
			// The nodes left: drop their connections.
			r.cc.UpdateState(resolver.State{Endpoints: []resolver.Endpoint{}})
		}
		r.last = nil
		what := "not found"
		if len(s.Nodes) > 0 {
			what = "has no node that passes the filters"
		}
		r.cc.ReportError(fmt.Errorf("beacongrpc: service %s %s", r.t, what))
		return
	}
	st := resolver.State{Endpoints: make([]resolver.Endpoint, len(nodes)), Addresses: make([]resolver.Address, len(nodes))}
	for i, n := range nodes {
		a := attributes.New(nodeKey{}, n)
		st.Endpoints[i] = resolver.Endpoint{Addresses: []resolver.Address{{Addr: n.Address}}, Attributes: a}
		st.Addresses[i] = resolver.Address{Addr: n.Address, BalancerAttributes: a}
	}
	// An error means the balancer did not like the state (grpc asks
	// resolvers to resolve again): the watch brings the next one.
	_ = r.cc.UpdateState(st)
	r.last, r.pushed = nodes, true
}

// sameNode reports whether a and b are the same node with the same service
// data. Snapshots share unchanged nodes but group them into new Services.
func sameNode(a, b cache.Node) bool {
	if a.Node != b.Node || a.Service == b.Service {
		return a.Node == b.Node
	}
	return a.Service.Name == b.Service.Name && a.Service.Version == b.Service.Version &&
		maps.Equal(a.Service.Metadata, b.Service.Metadata) && slices.Equal(a.Service.Endpoints, b.Service.Endpoints)
}

// ResolveNow implements resolver.Resolver. The cache follows the registry
// by itself; while the first lookup fails, it retries at once.
func (r *beaconResolver) ResolveNow(resolver.ResolveNowOptions) {
	select {
	case r.now <- struct{}{}:
	default:
	}
}

// Close implements resolver.Resolver: it ends the subscription and waits for
// an update in progress.
func (r *beaconResolver) Close() {
	r.cancel()
	<-r.done
	if r.unsub != nil {
		r.unsub()
	}
}
