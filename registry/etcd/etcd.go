package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/beacon-go/beacon/registry"
)

// MinTTL is etcd's smallest lease TTL. Register rounds smaller TTLs up to it
// (and any TTL up to whole seconds) instead of failing.
const MinTTL = 2 * time.Second

// reconnectMax is the longest wait between two attempts to reconnect to an
// etcd endpoint.
const reconnectMax = 500 * time.Millisecond

// Registry is a registry.Registry backed by etcd. Create it with New and
// release it with Close. It is safe for concurrent use.
type Registry struct {
	cli    *clientv3.Client
	prefix string
	gozero []goZeroKey // WithGoZero
	reqTO  time.Duration
	log    *slog.Logger
	probe  func() error // dials the endpoints after a timeout: the causes found, or nil

	cliCancel context.CancelFunc // ends the client's context (Close)

	ctx    context.Context // canceled by Close; parent of keepers and watches
	cancel context.CancelFunc
	wg     sync.WaitGroup // keepers and watch loops

	mu     sync.Mutex
	closed bool
	nodes  map[string]*node // etcd key -> registration made through this Registry

	badOnce sync.Once
	bad     *registry.BadRecords // records found malformed (see list.go)
}

var _ registry.Registry = (*Registry)(nil)

// New connects to etcd and checks, within the dial timeout (and ctx), that
// it answers a linearizable read of the prefix (which also checks the
// credentials). If it does not, New closes the client and returns an error
// wrapping registry.ErrPermission when etcd refused the credentials or the
// read (a wrong password, no user, a user without a role on the prefix),
// else registry.ErrUnavailable. Invalid TLS files fail New with an error
// that wraps neither. ctx bounds only New itself, not the Registry's
// lifetime.
//
// Meanwhile New dials every endpoint itself (TCP, TLS handshake): when all
// of them fail in a way that no wait can mend (connection refused, a DNS
// failure, a TLS failure: an untrusted certificate, a client certificate
// refused, TLS against plain text or the reverse), New returns at once with
// that cause instead of waiting out the dial timeout; after a timeout the
// error names what the dial found.
func New(ctx context.Context, opts ...Option) (*Registry, error) {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if len(o.addrs) == 0 {
		o.addrs = []string{DefaultAddr}
	}
	if err := checkGoZero(o.gozero, o.prefix); err != nil {
		return nil, err
	}
	tlsCfg, err := o.tlsConfig()
	if err != nil {
		return nil, err
	}
	cfg := clientv3.Config{
		Endpoints:            o.addrs,
		DialTimeout:          o.dialTimeout,
		DialKeepAliveTime:    10 * time.Second, // etcd refuses pings more often than every 5 s
		DialKeepAliveTimeout: 3 * time.Second,
		TLS:                  tlsCfg,
		Username:             o.username,
		Password:             o.password,
		Logger:               newZapLogger(o.log),
		DialOptions: []grpc.DialOption{
			// Reconnect quickly after an etcd restart: gRPC's default
			// backoff grows to 2 minutes.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: reconnectMax},
				MinConnectTimeout: o.dialTimeout,
			}),
		},
	}
	addrs := strings.Join(o.addrs, ",")
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("etcd: connect to %s: %w", addrs, err)
	}
	cli, cliCancel, err := connect(ctx, cfg, o, tlsCfg)
	if err != nil {
		return nil, fmt.Errorf("etcd: connect to %s: %w", addrs, err)
	}
	r := &Registry{
		cli:       cli,
		cliCancel: cliCancel,
		prefix:    o.prefix,
		gozero:    o.gozero,
		reqTO:     o.requestTimeout,
		log:       o.log,
		nodes:     make(map[string]*node),
	}
	r.probe = func() error {
		pctx, cancel := context.WithTimeout(context.Background(), min(r.reqTO, failProbeTimeout))
		defer cancel()
		return causes(probeEndpoints(pctx, o.addrs, tlsCfg))
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	return r, nil
}

func (o *options) tlsConfig() (*tls.Config, error) {
	if o.tls != nil {
		return o.tls, nil
	}
	if o.tlsFiles == nil {
		return nil, nil
	}
	f := o.tlsFiles
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.ca != "" {
		pem, err := os.ReadFile(f.ca)
		if err != nil {
			return nil, fmt.Errorf("etcd: TLS CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd: TLS CA %s: no PEM certificate found", f.ca)
		}
		cfg.RootCAs = pool
	}
	if f.cert != "" || f.key != "" {
		cert, err := tls.LoadX509KeyPair(f.cert, f.key)
		if err != nil {
			return nil, fmt.Errorf("etcd: TLS client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// String returns "etcd".
func (r *Registry) String() string { return "etcd" }

// Register writes one key per node (see the package doc) and, with a TTL,
// keeps each node's lease alive until the node is not registered again
// within the TTL. Registering a node again is a heartbeat: one round trip,
// no new lease, a re-put only when the data changed. The TTL is rounded up
// to whole seconds and to at least MinTTL; zero stores the node without a
// lease; a negative TTL is invalid.
//
// A heartbeat extends the node's TTL even when etcd cannot be reached (the
// error wraps registry.ErrUnavailable): the Registry keeps trying to restore
// the record in the background until the TTL runs out. Register returns
// when ctx is done at the latest; each node's etcd requests are bounded by
// the request timeout. Nodes are written one after the other; the error
// joins the nodes' errors.
func (r *Registry) Register(ctx context.Context, s *registry.Service, opts ...registry.RegisterOption) error {
	if err := registry.Validate(s); err != nil {
		return err
	}
	o := registry.ApplyRegister(opts...)
	if o.TTL < 0 {
		return &registry.ValidationError{Field: "ttl", Value: o.TTL.String(), Reason: "negative"}
	}
	ttl := leaseTTL(o.TTL)
	vals := make([][]byte, len(s.Nodes))
	for i, n := range s.Nodes {
		one := &registry.Service{Name: s.Name, Version: s.Version, Metadata: s.Metadata, Endpoints: s.Endpoints, Nodes: []*registry.Node{n}}
		v, err := encode(one)
		if err != nil {
			return err
		}
		vals[i] = v
	}
	// Every node's heartbeat counts before any waits for etcd.
	nodes := make([]*node, len(s.Nodes))
	for i, n := range s.Nodes {
		var err error
		if nodes[i], err = r.heartbeat(nodeKey(r.prefix, s.Name, n.ID), ttl); err != nil {
			return err
		}
	}
	var errs []error
	for i, n := range nodes {
		if err := r.registerNode(ctx, n, vals[i], ttl); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// leaseTTL converts a register TTL to etcd lease seconds: 0 for no lease,
// else rounded up to whole seconds and to at least MinTTL.
func leaseTTL(d time.Duration) int64 {
	if d <= 0 {
		return 0
	}
	d = max(d, MinTTL)
	secs := (d + time.Second - 1) / time.Second
	return int64(min(secs, math.MaxInt32))
}

// Deregister deletes the nodes' keys and revokes their leases. Deregistering
// a node that is not registered is not an error. The Registry stops keeping
// the nodes alive even if etcd cannot be reached (then the error wraps
// registry.ErrUnavailable and the keys disappear when their leases expire).
func (r *Registry) Deregister(ctx context.Context, s *registry.Service, _ ...registry.DeregisterOption) error {
	if err := registry.ValidateDeregister(s); err != nil {
		return err
	}
	if r.isClosed() {
		return registry.ErrClosed
	}
	var errs []error
	for _, n := range s.Nodes {
		if err := r.deregisterNode(ctx, nodeKey(r.prefix, s.Name, n.ID)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// GetService reads the service's keys (one linearizable range read, and one
// more at the same revision per go-zero key of the service: WithGoZero) and
// returns its nodes grouped by version; malformed records are skipped with
// a log line. It returns registry.ErrNotFound when no valid node is left.
func (r *Registry) GetService(ctx context.Context, name string, _ ...registry.GetOption) ([]*registry.Service, error) {
	if err := registry.ValidateName(name); err != nil {
		return nil, err
	}
	if r.isClosed() {
		return nil, registry.ErrClosed
	}
	set, _, err := r.listSet(ctx, r.spans(name))
	if err != nil {
		return nil, r.fail(ctx, "get service "+name, err)
	}
	if len(set) == 0 {
		return nil, registry.ErrNotFound
	}
	return set.Group(), nil
}

// ListServices reads the whole prefix and the go-zero keys (WithGoZero),
// in pages of one consistent snapshot, and returns one entry per service
// name and version, with its nodes, sorted by name then version. Malformed
// records are skipped with a log line.
func (r *Registry) ListServices(ctx context.Context, _ ...registry.ListOption) ([]*registry.Service, error) {
	if r.isClosed() {
		return nil, registry.ErrClosed
	}
	set, _, err := r.listSet(ctx, r.spans(""))
	if err != nil {
		return nil, r.fail(ctx, "list services", err)
	}
	byName := make(map[string]registry.NodeSet)
	for key, s := range set {
		ns := byName[s.Name]
		if ns == nil {
			ns = make(registry.NodeSet)
			byName[s.Name] = ns
		}
		ns[key] = s
	}
	names := make([]string, 0, len(byName))
	for name := range byName {
		names = append(names, name)
	}
	slices.Sort(names)
	out := make([]*registry.Service, 0, len(names))
	for _, name := range names {
		out = append(out, byName[name].Group()...)
	}
	return out, nil
}

// Close stops keeping nodes alive (it does not deregister them: their keys
// disappear when their leases expire), stops every watcher (Next returns
// registry.ErrWatcherStopped) and closes the etcd client. It waits for the
// Registry's goroutines to end. Close is idempotent; afterwards the other
// methods return registry.ErrClosed.
func (r *Registry) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
	defer r.cliCancel()
	if err := r.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("etcd: close client: %w", err)
	}
	return nil
}

func (r *Registry) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

// reqCtx bounds one request by the request timeout.
func (r *Registry) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.reqTO)
}

// fail wraps an etcd error: registry.ErrClosed after Close, the bare context
// error when the caller canceled, registry.ErrPermission when etcd refused
// the credentials or the operation, registry.ErrUnavailable otherwise. A
// timeout is followed by what a short direct dial of the endpoints finds
// (e.g. "connection refused"), since etcd's client hides dial errors.
func (r *Registry) fail(ctx context.Context, op string, err error) error {
	switch {
	case r.isClosed():
		return fmt.Errorf("etcd: %s: %w", op, registry.ErrClosed)
	case errors.Is(ctx.Err(), context.Canceled):
		return fmt.Errorf("etcd: %s: %w", op, ctx.Err())
	case isPermission(err):
		return fmt.Errorf("etcd: %s: %w: %w", op, registry.ErrPermission, err)
	case isTimeout(err) && r.probe != nil:
		if c := r.probe(); c != nil {
			return fmt.Errorf("etcd: %s: %w: %w (%w)", op, registry.ErrUnavailable, err, c)
		}
	}
	return fmt.Errorf("etcd: %s: %w: %w", op, registry.ErrUnavailable, err)
}

// listSet lists the spans at one revision and decodes them into a NodeSet
// keyed by etcd key, skipping malformed records. It returns that revision.
func (r *Registry) listSet(ctx context.Context, spans []span) (registry.NodeSet, int64, error) {
	var set registry.NodeSet
	rev, err := r.listRecords(ctx, spans, &decoder{}, func() { set = make(registry.NodeSet) },
		func(key string, _ *mvccpb.KeyValue, s *registry.Service) { set[key] = s })
	return set, rev, err
}

// listRecords lists the spans at one revision, which it returns, and calls
// each with every valid record (by etcd key), decoded by dec (Beacon's
// records) or as a go-zero key's, span by span in key order; malformed
// records are skipped (see BadRecords). start is called before the first
// record of each attempt: a compaction between pages or spans makes the
// listing start over. Each request is bounded by the request timeout, the
// listing by ctx.
func (r *Registry) listRecords(ctx context.Context, spans []span, dec *decoder, start func(),
	each func(key string, kv *mvccpb.KeyValue, s *registry.Service)) (int64, error) {
	bad := r.badRecords()
	defer bad.Flush()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		start()
		d := *dec // a fresh copy per attempt
		var (
			rev int64
			err error
		)
		for _, sp := range spans {
			anyBad := bad.Any(sp.prefix)
			rev, err = r.scan(ctx, sp.prefix, rev, func(kv *mvccpb.KeyValue) {
				if anyBad && bad.Known(string(kv.Key), uint64(kv.ModRevision), 0) {
					return
				}
				s, err := r.decodeIn(sp, &d, kv.Key, kv.Value)
				if err != nil {
					r.malformed(kv.Key, kv.ModRevision, kv.Value, err)
					return
				}
				if anyBad {
					bad.Forget(string(kv.Key))
				}
				each(string(kv.Key), kv, s)
			})
			if err != nil {
				break
			}
		}
		if err == nil {
			return rev, nil
		}
		lastErr = err
		if !errors.Is(err, rpctypes.ErrCompacted) {
			break // a compaction between pages or spans is worth a fresh start; nothing else is
		}
	}
	return 0, lastErr
}
