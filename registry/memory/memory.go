// Package memory is an in-process Registry: for tests, for single-process
// programs, and as the reference implementation of the registry contract.
//
// It honours register TTLs: a node not registered again within its TTL is
// removed and watchers receive a Delete event. One goroutine per Registry
// expires nodes; Close stops it.
package memory

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/beacon-go/beacon/registry"
)

// Option configures a Registry.
type Option func(*Registry)

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(r *Registry) { r.log = l } }

// WithClock replaces time.Now, for tests of TTL expiry.
func WithClock(now func() time.Time) Option { return func(r *Registry) { r.now = now } }

type record struct {
	svc     *registry.Service // one node
	expires time.Time         // zero: never
}

type watcher struct {
	q       *registry.Queue
	service string
}

// Registry is an in-memory registry. It is safe for concurrent use.
type Registry struct {
	log *slog.Logger
	now func() time.Time

	mu       sync.Mutex
	services map[string]map[string]*record // name -> node ID -> record
	watchers sync.Map                      // *watcher -> struct{}; a sync.Map because a queue's onStop may run inside Push
	closed   bool

	wake chan struct{}
	stop chan struct{}
	done chan struct{}
}

var _ registry.Registry = (*Registry)(nil)

// New returns a running memory registry. Close it to stop its expiry
// goroutine.
func New(opts ...Option) *Registry {
	r := &Registry{
		log:      slog.Default(),
		now:      time.Now,
		services: make(map[string]map[string]*record),
		wake:     make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	for _, o := range opts {
		o(r)
	}
	go r.expireLoop()
	return r
}

func (r *Registry) String() string { return "memory" }

// Register implements registry.Registry.
func (r *Registry) Register(ctx context.Context, s *registry.Service, opts ...registry.RegisterOption) error {
	if err := registry.Validate(s); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	o := registry.ApplyRegister(opts...)
	s = s.Copy()
	now := r.now()
	var expires time.Time
	if o.TTL > 0 {
		expires = now.Add(o.TTL)
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return registry.ErrClosed
	}
	nodes := r.services[s.Name]
	if nodes == nil {
		nodes = make(map[string]*record)
		r.services[s.Name] = nodes
	}
	var evs []*registry.Event
	for _, n := range s.Nodes {
		one := &registry.Service{Name: s.Name, Version: s.Version, Metadata: s.Metadata, Endpoints: s.Endpoints, Nodes: []*registry.Node{n}}
		old, ok := nodes[n.ID]
		switch {
		case !ok:
			evs = append(evs, &registry.Event{Type: registry.Create, Service: one, Timestamp: now})
		case !registry.SameNode(old.svc, one):
			evs = append(evs, &registry.Event{Type: registry.Update, Service: one, Timestamp: now})
		}
		nodes[n.ID] = &record{svc: one, expires: expires}
	}
	r.publishLocked(evs)
	r.mu.Unlock()
	if o.TTL > 0 {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// Deregister implements registry.Registry.
func (r *Registry) Deregister(ctx context.Context, s *registry.Service, _ ...registry.DeregisterOption) error {
	if err := registry.ValidateDeregister(s); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return registry.ErrClosed
	}
	var evs []*registry.Event
	for _, n := range s.Nodes {
		if rec, ok := r.services[s.Name][n.ID]; ok {
			delete(r.services[s.Name], n.ID)
			evs = append(evs, &registry.Event{Type: registry.Delete, Service: rec.svc, Timestamp: now})
		}
	}
	if len(r.services[s.Name]) == 0 {
		delete(r.services, s.Name)
	}
	r.publishLocked(evs)
	return nil
}

// GetService implements registry.Registry. The result is a deep copy.
func (r *Registry) GetService(ctx context.Context, name string, _ ...registry.GetOption) ([]*registry.Service, error) {
	if err := registry.ValidateName(name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, registry.ErrClosed
	}
	set := r.setLocked(name)
	if len(set) == 0 {
		return nil, registry.ErrNotFound
	}
	return set.GroupCopy(), nil
}

// ListServices implements registry.Registry. Each entry carries its nodes.
func (r *Registry) ListServices(ctx context.Context, _ ...registry.ListOption) ([]*registry.Service, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, registry.ErrClosed
	}
	var out []*registry.Service
	for _, name := range slices.Sorted(maps.Keys(r.services)) {
		out = append(out, r.setLocked(name).GroupCopy()...)
	}
	return out, nil
}

// Watch implements registry.Registry.
func (r *Registry) Watch(ctx context.Context, opts ...registry.WatchOption) (registry.Watcher, error) {
	o, err := registry.WatchArgs(ctx, opts...)
	if err != nil {
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
	now := r.now()
	names := []string{o.Service}
	if o.Service == "" {
		names = slices.Sorted(maps.Keys(r.services))
	}
	for _, name := range names {
		for _, ev := range registry.Diff(nil, r.setLocked(name), now) {
			w.q.Push(ev)
		}
	}
	r.watchers.Store(w, struct{}{})
	return w.q, nil
}

// Close stops the expiry goroutine and every watcher. Registered nodes are
// dropped.
func (r *Registry) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	r.watchers.Range(func(k, _ any) bool {
		k.(*watcher).q.Stop()
		return true
	})
	close(r.stop)
	<-r.done
	return nil
}

func (r *Registry) setLocked(name string) registry.NodeSet {
	set := make(registry.NodeSet, len(r.services[name]))
	for id, rec := range r.services[name] {
		set[id] = rec.svc
	}
	return set
}

// publishLocked hands events to matching watchers; Queue.Push never blocks.
// Events are deep-copied per watcher so that readers cannot alias state.
func (r *Registry) publishLocked(evs []*registry.Event) {
	for _, ev := range evs {
		r.watchers.Range(func(k, _ any) bool {
			if w := k.(*watcher); w.service == "" || w.service == ev.Service.Name {
				w.q.Push(&registry.Event{Type: ev.Type, Service: ev.Service.Copy(), Timestamp: ev.Timestamp})
			}
			return true
		})
	}
}

func (r *Registry) expireLoop() {
	defer close(r.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := r.expire()
		wait := time.Hour
		if !next.IsZero() {
			wait = max(next.Sub(r.now()), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-r.stop:
			return
		case <-r.wake:
		case <-timer.C:
		}
	}
}

// expire removes expired nodes and returns the earliest remaining expiry.
func (r *Registry) expire() time.Time {
	now := r.now()
	var next time.Time
	r.mu.Lock()
	defer r.mu.Unlock()
	var evs []*registry.Event
	for name, nodes := range r.services {
		for id, rec := range nodes {
			if rec.expires.IsZero() {
				continue
			}
			if !rec.expires.After(now) {
				delete(nodes, id)
				r.log.Debug("registry node expired", "registry", "memory", "service", name, "node", id)
				evs = append(evs, &registry.Event{Type: registry.Delete, Service: rec.svc, Timestamp: now})
				continue
			}
			if next.IsZero() || rec.expires.Before(next) {
				next = rec.expires
			}
		}
		if len(nodes) == 0 {
			delete(r.services, name)
		}
	}
	slices.SortFunc(evs, func(a, b *registry.Event) int { return strings.Compare(a.Service.Nodes[0].ID, b.Service.Nodes[0].ID) })
	r.publishLocked(evs)
	return next
}
