package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/klog/v2"

	"github.com/beacon-go/beacon/registry"
)

// Labels and annotations. Beacon-managed objects carry LabelManagedBy (on
// EndpointSlices) and LabelAppManagedBy (on EndpointSlices and Leases), both
// ManagedBy; the annotations hold the data.
const (
	// ManagedBy is the value of the managed-by labels of Beacon's objects.
	ManagedBy = "beacon"
	// LabelManagedBy is Kubernetes' label naming an EndpointSlice's owner;
	// the EndpointSlice controller leaves slices of other managers alone.
	LabelManagedBy = discoveryv1.LabelManagedBy
	// LabelAppManagedBy marks Beacon's Leases (and slices) for list/watch.
	LabelAppManagedBy = "app.kubernetes.io/managed-by"
	// LabelService carries the service name on Beacon's objects when it is
	// a valid label value (at most 63 characters), for kubectl -l.
	LabelService = "beacon-go.github.io/service"

	// AnnotationService is the service name on Beacon's slices and Leases.
	AnnotationService = "beacon-go.github.io/service"
	// AnnotationNode is the node's record on a Beacon slice: the JSON of a
	// registry.Service with exactly one node (the layout of Beacon's and
	// go-micro's etcd records).
	AnnotationNode = "beacon-go.github.io/node"
	// AnnotationLease names the Lease that is a Beacon slice's TTL; a slice
	// without it was registered without a TTL.
	AnnotationLease = "beacon-go.github.io/lease"

	// AnnotationVersion on a Kubernetes Service sets its version (else
	// LabelVersion).
	AnnotationVersion = "beacon-go.github.io/version"
	// LabelVersion on a Kubernetes Service is its version unless
	// AnnotationVersion is set.
	LabelVersion = "app.kubernetes.io/version"
	// AnnotationPort on a Kubernetes Service names the port of its
	// EndpointSlices that Beacon calls.
	AnnotationPort = "beacon-go.github.io/port"
	// MetadataPrefix: annotations "meta.beacon-go.github.io/<key>: <value>"
	// on a Kubernetes Service become its service metadata <key>: <value>.
	MetadataPrefix = "meta.beacon-go.github.io/"

	// Node metadata of nodes discovered from ordinary Services.
	MetaZone = "zone"     // the endpoint's zone
	MetaNode = "k8s.node" // the endpoint's Kubernetes node name
	MetaPod  = "k8s.pod"  // the pod behind the endpoint
)

const indexService = "beacon-service"

type watcher struct {
	q       *registry.Queue
	service string
}

// decoded caches a Beacon slice's decoded record by resource version.
type decoded struct {
	rv  string
	svc *registry.Service // nil: malformed
	err error
}

// garbage is a Beacon slice whose Lease expired (or vanished) long enough
// ago to be deleted.
type garbage struct {
	at                   time.Time
	slice, lease         string
	sliceUID, leaseUID   types.UID
	sliceRV, leaseRV     string
	hasLease             bool
	service, node, cause string
}

// Registry discovers services in one Kubernetes namespace and registers
// Beacon servers there. It is safe for concurrent use. See the package
// documentation.
type Registry struct {
	o          options
	log        *slog.Logger
	ns         string
	api        *api
	httpc      *http.Client
	closeConns func()

	startMu   sync.Mutex
	started   bool
	cancel    context.CancelFunc // stops the informers and waits for them
	slices    cache.SharedIndexInformer
	services  cache.SharedIndexInformer
	leases    cache.SharedIndexInformer
	synced    []func() bool
	loopDone  chan struct{}
	stop      chan struct{} // closed by Close
	bg        context.Context
	bgCancel  context.CancelFunc // cancels bg: ends collections on Close
	wake      chan struct{}
	closeOnce sync.Once

	mu       sync.Mutex
	closed   bool
	ready    bool                           // the caches synced once
	state    map[string]registry.NodeSet    // service -> visible nodes
	expiry   map[string]time.Time           // service -> earliest Lease expiry of a visible node
	garbage  map[string]map[string]*garbage // service -> slice name -> garbage
	tried    map[types.UID]string           // slice UID -> resource version collection was tried at
	records  map[types.UID]decoded          // Beacon slice records
	warned   map[string]string              // log-once keys
	watchers sync.Map                       // *watcher -> struct{}
}

var _ registry.Registry = (*Registry)(nil)

// New returns a registry for the namespace and cluster found as loadConfig
// describes. It talks to the API server only when first used: reads start
// informers (list, then watch; no polling) and wait for their caches.
func New(opts ...Option) (*Registry, error) {
	o := options{log: slog.Default(), now: time.Now, collectAfter: DefaultCollectExpiredAfter}
	for _, f := range opts {
		f(&o)
	}
	if err := errors.Join(o.errs...); err != nil {
		return nil, err
	}
	cfg, ns, source, err := loadConfig(&o)
	if err != nil {
		return nil, err
	}
	closeConns := prepare(cfg)
	log := o.log.With("registry", "kubernetes", "namespace", ns)
	if cfg.WarningHandler == nil && cfg.WarningHandlerWithContext == nil {
		cfg.WarningHandlerWithContext = warnings{log}
	}
	httpc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes registry: %w", err)
	}
	a, err := newAPI(cfg, httpc, ns)
	if err != nil {
		return nil, fmt.Errorf("kubernetes registry: %w", err)
	}
	r := &Registry{
		o:          o,
		log:        log,
		ns:         ns,
		api:        a,
		httpc:      httpc,
		closeConns: closeConns,
		stop:       make(chan struct{}),
		wake:       make(chan struct{}, 1),
		state:      map[string]registry.NodeSet{},
		expiry:     map[string]time.Time{},
		garbage:    map[string]map[string]*garbage{},
		tried:      map[types.UID]string{},
		records:    map[types.UID]decoded{},
		warned:     map[string]string{},
	}
	r.bg, r.bgCancel = context.WithCancel(context.Background())
	r.log.Debug("kubernetes registry: configured", "config", source, "server", cfg.Host)
	return r, nil
}

func (r *Registry) String() string { return "kubernetes" }

// Namespace returns the namespace the registry reads and writes.
func (r *Registry) Namespace() string { return r.ns }

// start starts the informers once and waits, within ctx, until their
// caches hold the namespace's objects and every handler has seen them.
func (r *Registry) start(ctx context.Context) error {
	synced, err := r.startOnce()
	if err != nil {
		return err
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		all := true
		for _, s := range synced {
			all = all && s()
		}
		if all {
			r.mu.Lock()
			if !r.ready && !r.closed {
				// Once, with warnings on: everything in the caches now.
				r.ready = true
				now := r.o.now()
				for _, name := range r.slices.GetIndexer().ListIndexFuncValues(indexService) {
					r.recomputeLocked(name, now)
				}
			}
			r.mu.Unlock()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: kubernetes registry: the API server's objects did not arrive in time (%v); see the log for why", registry.ErrUnavailable, ctx.Err())
		case <-r.stop:
			return registry.ErrClosed
		case <-tick.C:
		}
	}
}

func (r *Registry) startOnce() ([]func() bool, error) {
	r.startMu.Lock()
	defer r.startMu.Unlock()
	if r.isClosed() {
		return nil, registry.ErrClosed
	}
	if !r.started {
		if err := r.startInformers(); err != nil {
			return nil, err
		}
		r.started = true
	}
	return r.synced, nil
}

func (r *Registry) startInformers() error {
	ctx, cancel := context.WithCancel(context.Background())
	ctx = klog.NewContext(ctx, logr.FromSlogHandler(r.log.Handler()))
	r.slices = r.api.informer(resEndpointSlices, nil, cache.Indexers{indexService: func(obj any) ([]string, error) {
		if s := sliceService(obj); s != "" {
			return []string{s}, nil
		}
		return nil, nil
	}})
	r.services = r.api.informer(resServices, nil, nil)
	// Leases: Beacon's only.
	r.leases = r.api.informer(resLeases, func(lo *metav1.ListOptions) { lo.LabelSelector = LabelAppManagedBy + "=" + ManagedBy }, nil)
	for _, inf := range []cache.SharedIndexInformer{r.slices, r.services, r.leases} {
		_ = inf.SetWatchErrorHandlerWithContext(func(_ context.Context, rf *cache.Reflector, err error) {
			r.log.Warn("kubernetes registry: watch failed; retrying", "reflector", rf.Name(), "err", err)
		})
	}
	handlers := []struct {
		inf  cache.SharedIndexInformer
		name func(any) string
	}{
		{r.slices, sliceService},
		{r.services, func(obj any) string {
			if s, ok := obj.(*corev1.Service); ok {
				return s.Name
			}
			return ""
		}},
		{r.leases, func(obj any) string {
			if l, ok := obj.(*coordinationv1.Lease); ok {
				return l.Annotations[AnnotationService]
			}
			return ""
		}},
	}
	r.synced = nil
	for _, h := range handlers {
		reg, err := h.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(obj any) { r.touch(h.name(obj)) },
			UpdateFunc: func(old, obj any) {
				if a, b := h.name(old), h.name(obj); a != b {
					r.touch(a, b)
				} else {
					r.touch(b)
				}
			},
			DeleteFunc: func(obj any) {
				if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
					obj = d.Obj
				}
				if s, ok := obj.(*discoveryv1.EndpointSlice); ok {
					r.forget(s.UID)
				}
				r.touch(h.name(obj))
			},
		})
		if err != nil {
			cancel()
			return fmt.Errorf("kubernetes registry: %w", err)
		}
		r.synced = append(r.synced, h.inf.HasSynced, reg.HasSynced)
	}
	var wg sync.WaitGroup
	for _, inf := range []cache.SharedIndexInformer{r.slices, r.services, r.leases} {
		wg.Go(func() { inf.RunWithContext(ctx) })
	}
	r.cancel = func() {
		cancel()
		wg.Wait()
	}
	r.loopDone = make(chan struct{})
	go r.expireLoop()
	return nil
}

// sliceService is the service an EndpointSlice belongs to: the annotation
// of a Beacon slice, the kubernetes.io/service-name label of others.
func sliceService(obj any) string {
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return ""
	}
	if s.Labels[LabelManagedBy] == ManagedBy {
		return s.Annotations[AnnotationService]
	}
	return s.Labels[discoveryv1.LabelServiceName]
}

func (r *Registry) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

func (r *Registry) forget(uid types.UID) {
	r.mu.Lock()
	delete(r.records, uid)
	delete(r.tried, uid)
	r.mu.Unlock()
}

// touch recomputes the named services from the informers' caches and
// publishes the difference.
func (r *Registry) touch(names ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	now := r.o.now()
	for _, n := range names {
		if n != "" {
			r.recomputeLocked(n, now)
		}
	}
}

// recomputeLocked rebuilds one service's visible nodes and publishes the
// events that turn the old set into the new one.
func (r *Registry) recomputeLocked(name string, now time.Time) {
	objs, _ := r.slices.GetIndexer().ByIndex(indexService, name)
	slices.SortFunc(objs, func(a, b any) int {
		return strings.Compare(a.(*discoveryv1.EndpointSlice).Name, b.(*discoveryv1.EndpointSlice).Name)
	})
	var svc *corev1.Service
	if obj, ok, _ := r.services.GetIndexer().GetByKey(r.ns + "/" + name); ok {
		svc, _ = obj.(*corev1.Service)
	}
	next := registry.NodeSet{}
	var earliest time.Time
	garb := map[string]*garbage{}
	for _, obj := range objs {
		s := obj.(*discoveryv1.EndpointSlice)
		if s.Labels[LabelManagedBy] != ManagedBy {
			r.ordinaryNodes(name, svc, s, next)
			continue
		}
		one := r.recordLocked(s)
		if one == nil || one.Name != name {
			continue
		}
		if ln := s.Annotations[AnnotationLease]; ln != "" {
			exp, l := r.leaseExpiry(ln)
			if !now.Before(exp) {
				r.noteGarbage(garb, name, s, l, one.Nodes[0].ID, exp, now)
				continue
			}
			if earliest.IsZero() || exp.Before(earliest) {
				earliest = exp
			}
		}
		next[one.Nodes[0].ID] = one
	}
	evs := registry.Diff(r.state[name], next, now)
	for _, ev := range evs {
		r.watchers.Range(func(k, _ any) bool {
			if w := k.(*watcher); w.service == "" || w.service == name {
				w.q.Push(&registry.Event{Type: ev.Type, Service: ev.Service.Copy(), Timestamp: ev.Timestamp})
			}
			return true
		})
	}
	if len(next) == 0 {
		delete(r.state, name)
	} else {
		r.state[name] = next
	}
	old := r.expiry[name]
	if earliest.IsZero() {
		delete(r.expiry, name)
	} else {
		r.expiry[name] = earliest
	}
	if len(garb) == 0 {
		delete(r.garbage, name)
	} else {
		r.garbage[name] = garb
	}
	if !earliest.IsZero() && (old.IsZero() || earliest.Before(old)) || len(garb) > 0 {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

// leaseExpiry returns when the named Lease expires (its renew time plus
// its duration) and the Lease; a missing or incomplete Lease has expired.
func (r *Registry) leaseExpiry(name string) (time.Time, *coordinationv1.Lease) {
	obj, ok, _ := r.leases.GetIndexer().GetByKey(r.ns + "/" + name)
	if !ok {
		return time.Time{}, nil
	}
	l, _ := obj.(*coordinationv1.Lease)
	if l == nil || l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return time.Time{}, l
	}
	return l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second), l
}

// warnLocked logs msg once per key until the message for key changes. It
// is quiet until the caches first synced: while they fill, a slice may be
// seen before its Service (start recomputes everything once they are full).
func (r *Registry) warnLocked(key, msg string, args ...any) {
	text := msg + fmt.Sprint(args...)
	if !r.ready || r.warned[key] == text {
		return
	}
	r.warned[key] = text
	r.log.Warn(msg, args...)
}

// GetService implements registry.Registry. It reads the informers' caches;
// the first call waits, within ctx, for them to fill.
func (r *Registry) GetService(ctx context.Context, name string, _ ...registry.GetOption) ([]*registry.Service, error) {
	if err := registry.ValidateName(name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := r.start(ctx); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, registry.ErrClosed
	}
	set := r.state[name]
	if len(set) == 0 {
		return nil, registry.ErrNotFound
	}
	return set.GroupCopy(), nil
}

// ListServices implements registry.Registry: every service with at least
// one visible node, with its nodes.
func (r *Registry) ListServices(ctx context.Context, _ ...registry.ListOption) ([]*registry.Service, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := r.start(ctx); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, registry.ErrClosed
	}
	var out []*registry.Service
	for _, name := range slices.Sorted(maps.Keys(r.state)) {
		out = append(out, r.state[name].GroupCopy()...)
	}
	return out, nil
}

// Watch implements registry.Registry. Events come from the informers: a
// changed EndpointSlice, Service or Lease, and a Lease that expires.
func (r *Registry) Watch(ctx context.Context, opts ...registry.WatchOption) (registry.Watcher, error) {
	o, err := registry.WatchArgs(ctx, opts...)
	if err != nil {
		return nil, err
	}
	if err := r.start(ctx); err != nil {
		return nil, err
	}
	w := &watcher{service: o.Service}
	w.q = registry.NewQueue(ctx, func() { r.watchers.Delete(w) })
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		w.q.StopWith(registry.ErrWatcherStopped)
		return nil, registry.ErrClosed
	}
	now := r.o.now()
	names := []string{o.Service}
	if o.Service == "" {
		names = slices.Sorted(maps.Keys(r.state))
	}
	for _, name := range names {
		for _, ev := range registry.Diff(nil, r.state[name], now) {
			w.q.Push(&registry.Event{Type: ev.Type, Service: ev.Service.Copy(), Timestamp: ev.Timestamp})
		}
	}
	r.watchers.Store(w, struct{}{})
	return w.q, nil
}

// Close stops the informers and every watcher and closes the registry's
// connections. It does not deregister nodes. Close is idempotent.
func (r *Registry) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	r.closeOnce.Do(func() { close(r.stop) })
	r.bgCancel()
	r.watchers.Range(func(k, _ any) bool {
		k.(*watcher).q.Stop()
		return true
	})
	r.startMu.Lock()
	if r.started {
		r.cancel()
		<-r.loopDone
	}
	r.startMu.Unlock()
	r.httpc.CloseIdleConnections()
	r.closeConns() // nothing of this registry uses them any more
	return nil
}

// warnings logs the API server's warnings (deprecations) with the
// registry's logger instead of client-go's klog.
type warnings struct{ log *slog.Logger }

func (w warnings) HandleWarningHeaderWithContext(_ context.Context, code int, agent, text string) {
	if code == 299 && text != "" {
		w.log.Warn("kubernetes registry: API server warning", "warning", text)
	}
}
