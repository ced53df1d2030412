package static

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/beacon-go/beacon/registry"
)

// Defaults.
const (
	// DefaultDebounce is how long a file must stay unchanged after a change
	// before it is read again: editors and tools write in several steps.
	DefaultDebounce = 50 * time.Millisecond
	// DefaultPollInterval is how often the file is checked when file
	// system notifications are not available.
	DefaultPollInterval = 2 * time.Second
)

// Option configures New.
type Option func(*options)

type options struct {
	services []*registry.Service
	inline   *string
	path     string
	format   Format
	log      *slog.Logger
	debounce time.Duration
	poll     time.Duration
	noNotify bool
	sources  int
}

// WithServices serves these services (copied).
func WithServices(services ...*registry.Service) Option {
	return func(o *options) {
		o.services = services
		o.sources++
	}
}

// WithInline serves the services of an inline list (see ParseInline).
func WithInline(spec string) Option {
	return func(o *options) {
		o.inline = &spec
		o.sources++
	}
}

// WithFile serves the services of a file (see File), reloaded when it
// changes. format FormatAuto picks JSON or YAML by the file's extension.
func WithFile(path string, format Format) Option {
	return func(o *options) {
		o.path, o.format = path, format
		o.sources++
	}
}

// WithAddress interprets a registry address as the cmd flag
// --registry_address does: "file:<path>", or a path ending in ".json",
// ".yaml" or ".yml", is a file (WithFile); anything else is an inline list
// (WithInline).
func WithAddress(addr string) Option {
	addr = strings.TrimSpace(addr)
	if p, ok := strings.CutPrefix(addr, "file:"); ok {
		return WithFile(p, FormatAuto)
	}
	switch strings.ToLower(addr[strings.LastIndexByte(addr, '.')+1:]) {
	case "json", "yaml", "yml":
		if !strings.Contains(addr, "=") {
			return WithFile(addr, FormatAuto)
		}
	}
	return WithInline(addr)
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithDebounce sets how long a changed file must stay quiet before it is
// read (default DefaultDebounce).
func WithDebounce(d time.Duration) Option { return func(o *options) { o.debounce = d } }

// WithPolling checks the file's size, modification time and identity every
// interval instead of using file system notifications (fsnotify). Without
// this option, polling is only the fallback when notifications cannot be set
// up (it is logged).
func WithPolling(interval time.Duration) Option {
	return func(o *options) { o.poll, o.noNotify = interval, true }
}

type watcher struct {
	q       *registry.Queue
	service string
}

// Registry serves a fixed set of services. It is read-only: Register and
// Deregister fail with an error matching registry.ErrReadOnly. It is safe
// for concurrent use.
type Registry struct {
	log    *slog.Logger
	source string // "inline", "services" or the file path

	mu       sync.Mutex
	state    map[string]registry.NodeSet // service name -> nodes
	closed   bool
	watchers sync.Map // *watcher -> struct{}; a sync.Map because a queue's onStop may run inside Push

	file *fileSource // nil unless WithFile
}

var _ registry.Registry = (*Registry)(nil)

// New returns a static registry. Exactly one source is required: WithFile,
// WithInline (or WithAddress) or WithServices. A source that does not parse
// is an error matching registry.ErrInvalid (a *ParseError). A file is read
// once here (it must exist and parse) and then watched until Close: each
// change that parses replaces the services and watchers receive the
// difference as Create, Update and Delete events; a change that does not
// parse, or a removed file, is logged and the last good content stays.
func New(opts ...Option) (*Registry, error) {
	o := options{log: slog.Default(), debounce: DefaultDebounce, poll: DefaultPollInterval}
	for _, f := range opts {
		f(&o)
	}
	if o.sources != 1 {
		return nil, fmt.Errorf("%w: static registry: want exactly one source (a file, an inline list or services), got %d", registry.ErrInvalid, o.sources)
	}
	if o.poll <= 0 {
		o.poll = DefaultPollInterval
	}
	r := &Registry{log: o.log.With("registry", "static"), state: map[string]registry.NodeSet{}}
	var services []*registry.Service
	switch {
	case o.inline != nil:
		ss, err := ParseInline(*o.inline)
		if err != nil {
			return nil, err
		}
		r.source, services = "inline", ss
	case o.path != "":
		r.source = o.path
		fs, ss, err := openFile(r, o)
		if err != nil {
			return nil, err
		}
		r.file, services = fs, ss
	default:
		r.source = "services"
		var cp []*registry.Service
		for _, s := range o.services {
			cp = append(cp, s.Copy())
		}
		if err := check(cp, "services", func(i int) string { return fmt.Sprintf("service %d", i) }); err != nil {
			return nil, err
		}
		services = cp
	}
	r.state = index(services)
	if r.file != nil {
		r.file.start()
	}
	return r, nil
}

func index(services []*registry.Service) map[string]registry.NodeSet {
	state := map[string]registry.NodeSet{}
	for _, s := range services {
		set := state[s.Name]
		if set == nil {
			set = registry.NodeSet{}
			state[s.Name] = set
		}
		maps.Copy(set, registry.Flatten([]*registry.Service{s}))
	}
	return state
}

func (r *Registry) String() string { return "static" }

// Source returns where the services come from: "inline", "services" or the
// file's path.
func (r *Registry) Source() string { return r.source }

// Register fails: the registry is read-only. The error matches
// registry.ErrReadOnly (registry.ErrClosed after Close).
func (r *Registry) Register(ctx context.Context, s *registry.Service, _ ...registry.RegisterOption) error {
	return r.refuse("Register", s)
}

// Deregister fails: the registry is read-only. The error matches
// registry.ErrReadOnly (registry.ErrClosed after Close).
func (r *Registry) Deregister(ctx context.Context, s *registry.Service, _ ...registry.DeregisterOption) error {
	return r.refuse("Deregister", s)
}

func (r *Registry) refuse(op string, s *registry.Service) error {
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return registry.ErrClosed
	}
	name := ""
	if s != nil {
		name = fmt.Sprintf(" of %q", s.Name)
	}
	return fmt.Errorf("%w: static registry: %s%s refused: its nodes come from %s", registry.ErrReadOnly, op, name, r.source)
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
	set := r.state[name]
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
	for _, name := range slices.Sorted(maps.Keys(r.state)) {
		out = append(out, r.state[name].GroupCopy()...)
	}
	return out, nil
}

// Watch implements registry.Registry: one Create per node now served, then
// the difference made by every reload of the file.
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
	now := time.Now()
	names := []string{o.Service}
	if o.Service == "" {
		names = slices.Sorted(maps.Keys(r.state))
	}
	for _, name := range names {
		for _, ev := range registry.Diff(nil, r.state[name], now) {
			w.q.Push(copyEvent(ev))
		}
	}
	r.watchers.Store(w, struct{}{})
	return w.q, nil
}

// Reload reads the file again now, as a change notification would. It
// returns why the content was refused (the last good content stays), or nil.
// Without a file it does nothing.
func (r *Registry) Reload() error {
	if r.file == nil {
		return nil
	}
	return r.file.reload(true)
}

// Close stops watching the file and stops every watcher. Close is
// idempotent.
func (r *Registry) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	r.mu.Unlock()
	if r.file != nil {
		r.file.close()
	}
	r.watchers.Range(func(k, _ any) bool {
		k.(*watcher).q.Stop()
		return true
	})
	return nil
}

// replace swaps in new content and publishes the difference. It returns
// the number of events.
func (r *Registry) replace(services []*registry.Service) int {
	next := index(services)
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0
	}
	n := 0
	names := slices.Sorted(maps.Keys(r.state))
	for _, name := range slices.Sorted(maps.Keys(next)) {
		if _, ok := r.state[name]; !ok {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		evs := registry.Diff(r.state[name], next[name], now)
		n += len(evs)
		for _, ev := range evs {
			r.watchers.Range(func(k, _ any) bool {
				if w := k.(*watcher); w.service == "" || w.service == name {
					w.q.Push(copyEvent(ev))
				}
				return true
			})
		}
	}
	r.state = next
	return n
}

func copyEvent(ev *registry.Event) *registry.Event {
	return &registry.Event{Type: ev.Type, Service: ev.Service.Copy(), Timestamp: ev.Timestamp}
}
