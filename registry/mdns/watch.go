package mdns

import (
	"context"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/beacon-go/beacon/registry"
)

// staleAnswerWindow: after a goodbye, answers to queries (unicast) about the
// node are ignored for this long. Such an answer left the responder before
// it stopped but arrived on the other socket after the goodbye; taking it
// would bring the node back. A new announcement (the node registered again)
// is taken at once.
const staleAnswerWindow = 250 * time.Millisecond

// Watch returns a watcher of one service (registry.WatchService) or of all
// services. It first reports the nodes this Registry's watch loop already
// knows as Create events (sorted by service and node ID), then every change.
// Watchers of the same service share one loop (one query per interval);
// a new loop starts with a query and delivers the answers once they stop
// arriving (the straggler wait after the last one, at most the lookup
// timeout). The watcher stops when ctx ends, on Stop, or on Close (Next then
// returns an error matching registry.ErrWatcherStopped). Watch itself does
// not block.
func (r *Registry) Watch(ctx context.Context, opts ...registry.WatchOption) (registry.Watcher, error) {
	o, err := registry.WatchArgs(ctx, opts...)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, registry.ErrClosed
	}
	l := r.loops[o.Service]
	if l == nil {
		l = r.newLoop(o.Service)
		r.loops[o.Service] = l
		r.wg.Add(1)
		go l.run()
	}
	sub := &subscription{}
	// onStop runs in another goroutine (or later): it takes r.mu, held
	// here, so it cannot miss the subscription added below.
	sub.q = registry.NewQueue(ctx, func() { r.unsubscribe(l, sub) })
	l.mu.Lock()
	l.pending = append(l.pending, sub)
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	return sub.q, nil
}

type subscription struct{ q *registry.Queue }

// unsubscribe is a queue's onStop: it forgets the subscription and stops the
// loop when it was the last one.
func (r *Registry) unsubscribe(l *watchLoop, sub *subscription) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l.mu.Lock()
	delete(l.subs, sub)
	l.pending = slices.DeleteFunc(l.pending, func(s *subscription) bool { return s == sub })
	empty := len(l.subs) == 0 && len(l.pending) == 0
	l.mu.Unlock()
	if empty && !r.closed && r.loops[l.service] == l {
		delete(r.loops, l.service)
		l.stopOnce.Do(func() { close(l.quit) })
	}
}

// watchLoop queries one service (or all) every interval, keeps the nodes
// heard, and turns what it hears into events for its subscribers.
type watchLoop struct {
	r        *Registry
	service  string // "" = all services
	in       chan *delivery
	wake     chan struct{}
	quit     chan struct{}
	exited   chan struct{}
	stopOnce sync.Once

	mu      sync.Mutex
	subs    map[*subscription]struct{}
	pending []*subscription

	// Owned by run.
	nodes   map[string]*nodeState // nodeKey -> state
	names   map[string]int        // all-services loop: name -> rounds since heard
	tombs   map[string]time.Time  // nodeKey -> when its goodbye arrived
	sentAt  time.Time             // start of the current round (its first query)
	retried bool                  // the current round's retry query was sent
}

type nodeState struct {
	svc    *registry.Service
	heard  time.Time
	ttl    time.Duration
	missed int
}

func (r *Registry) newLoop(service string) *watchLoop {
	return &watchLoop{
		r: r, service: service,
		in:     make(chan *delivery, 64),
		wake:   make(chan struct{}, 1),
		quit:   make(chan struct{}),
		exited: make(chan struct{}),
		subs:   map[*subscription]struct{}{},
		nodes:  map[string]*nodeState{},
		names:  map[string]int{},
		tombs:  map[string]time.Time{},
	}
}

func (l *watchLoop) wants(d *delivery) bool {
	if l.service == "" {
		return true
	}
	for _, o := range d.nodes {
		if o.service == l.service {
			return true
		}
	}
	return false
}

func (l *watchLoop) run() {
	defer l.r.wg.Done()
	defer close(l.exited)
	interval := l.r.opts.interval
	queryT := time.NewTimer(0)
	defer queryT.Stop()
	evalT := time.NewTimer(interval)
	evalT.Stop()
	defer evalT.Stop()
	// The first round is collected like a lookup (until answers stop for
	// the straggler wait, at most the lookup timeout) before any subscriber
	// is added, so that the initial state arrives as Create events sorted
	// by node, not in the order the answers happened to arrive.
	initial := true
	initT := time.NewTimer(l.r.opts.timeout)
	defer initT.Stop()
	quietT := time.NewTimer(l.r.opts.straggle)
	quietT.Stop()
	defer quietT.Stop()
	endInitial := func() {
		if initial {
			initial = false
			initT.Stop()
			quietT.Stop()
			l.addPending()
		}
	}
	for {
		select {
		case <-l.quit:
			return
		case <-l.r.done:
			return
		case <-l.wake:
			if !initial {
				l.addPending()
			}
		case d := <-l.in:
			l.handle(d)
			if initial {
				quietT.Reset(l.r.opts.straggle)
			}
		case <-initT.C:
			endInitial()
		case <-quietT.C:
			endInitial()
		case <-queryT.C:
			l.query(true)
			evalT.Reset(interval / 4)
			queryT.Reset(time.Duration(float64(interval) * (0.9 + 0.2*rand.Float64())))
		case <-evalT.C:
			if l.retry() {
				evalT.Reset(interval / 4)
				continue
			}
			l.evaluate(time.Now())
		}
	}
}

// query asks for the service, or for "_services" and every known name. A
// new round (not a retry) starts the clock for missed answers.
func (l *watchLoop) query(newRound bool) {
	if newRound {
		l.sentAt, l.retried = time.Now(), false
	}
	var qnames []string
	if l.service != "" {
		qnames = []string{l.r.names.service(l.service)}
	} else {
		qnames = append(qnames, l.r.names.servicesPTR())
		for _, n := range slices.Sorted(maps.Keys(l.names)) {
			qnames = append(qnames, l.r.names.service(n))
		}
	}
	l.send(qnames)
}

func (l *watchLoop) send(qnames []string) {
	msgs, err := packQueries(qnames)
	if err != nil {
		l.r.log.Warn("mdns: packing watch query", "err", err)
		return
	}
	l.r.lim.sent(len(msgs))
	for _, m := range msgs {
		if err := l.r.tr.sendQuery(m); err != nil {
			l.r.log.Warn("mdns: sending watch query", "err", err)
		}
	}
}

// handle applies a delivery: announcements and answers create or update
// nodes, goodbyes delete them.
func (l *watchLoop) handle(d *delivery) {
	var evs []*registry.Event
	for _, o := range d.nodes {
		if l.service != "" && o.service != l.service {
			continue
		}
		key := nodeKey(o.service, o.id)
		if o.goodbye {
			if st, ok := l.nodes[key]; ok {
				delete(l.nodes, key)
				evs = append(evs, &registry.Event{Type: registry.Delete, Service: st.svc, Timestamp: d.at})
			}
			l.tombs[key] = d.at
			continue
		}
		if t, ok := l.tombs[key]; ok {
			if d.unicast && d.at.Sub(t) < staleAnswerWindow {
				continue
			}
			delete(l.tombs, key)
		}
		if l.service == "" {
			l.names[o.service] = 0
		}
		st, ok := l.nodes[key]
		if !ok {
			st = &nodeState{svc: o.svc.Copy()}
			l.nodes[key] = st
			evs = append(evs, &registry.Event{Type: registry.Create, Service: st.svc, Timestamp: d.at})
		} else if !registry.SameNode(st.svc, o.svc) {
			st.svc = o.svc.Copy()
			evs = append(evs, &registry.Event{Type: registry.Update, Service: st.svc, Timestamp: d.at})
		}
		st.heard, st.ttl, st.missed = d.at, o.ttl, 0
	}
	if l.service == "" {
		var fresh []string
		for _, s := range d.services {
			if _, ok := l.names[s]; !ok {
				fresh = append(fresh, l.r.names.service(s))
			}
			l.names[s] = 0
		}
		if len(fresh) > 0 {
			l.send(fresh) // a new service: ask for its nodes now
		}
	}
	l.publish(evs)
}

// retry runs a quarter interval after each query. When some node has not
// answered, it queries once more (a lost packet must not drop a node) and
// returns true: evaluate follows another quarter interval later.
func (l *watchLoop) retry() bool {
	if l.retried {
		return false
	}
	for _, st := range l.nodes {
		if st.heard.Before(l.sentAt) {
			l.retried = true
			l.query(false)
			return true
		}
	}
	return false
}

// evaluate ends a round: nodes that answered neither query of the round
// missed it; a node that missed too many rounds in a row, or whose TTL ran
// out since it was last heard, is dropped.
func (l *watchLoop) evaluate(now time.Time) {
	var evs []*registry.Event
	var gone []string
	for _, key := range slices.Sorted(maps.Keys(l.nodes)) {
		st := l.nodes[key]
		if st.heard.Before(l.sentAt) {
			st.missed++
		}
		if st.missed >= l.r.opts.missed || st.ttl > 0 && now.Sub(st.heard) > st.ttl {
			l.r.log.Debug("mdns: node not heard, dropped", "service", st.svc.Name, "node", st.svc.Nodes[0].ID,
				"missed", st.missed, "last_heard", now.Sub(st.heard), "ttl", st.ttl)
			delete(l.nodes, key)
			gone = append(gone, key)
			evs = append(evs, &registry.Event{Type: registry.Delete, Service: st.svc, Timestamp: now})
		}
	}
	if len(gone) > 0 {
		l.r.forgetSeen(gone) // lookups need not wait for them
	}
	for key, t := range l.tombs {
		if now.Sub(t) > staleAnswerWindow {
			delete(l.tombs, key)
		}
	}
	if l.service == "" {
		live := map[string]bool{}
		for _, st := range l.nodes {
			live[st.svc.Name] = true
		}
		for name, n := range l.names {
			if n++; n > l.r.opts.missed && !live[name] {
				delete(l.names, name)
			} else {
				l.names[name] = n
			}
		}
	}
	l.publish(evs)
}

// addPending gives new subscribers the current state, then subscribes them.
func (l *watchLoop) addPending() {
	l.mu.Lock()
	subs := l.pending
	l.pending = nil
	l.mu.Unlock()
	if len(subs) == 0 {
		return
	}
	keys := slices.Sorted(maps.Keys(l.nodes))
	for _, sub := range subs {
		for _, k := range keys {
			st := l.nodes[k]
			sub.q.Push(&registry.Event{Type: registry.Create, Service: st.svc.Copy(), Timestamp: st.heard})
		}
	}
	l.mu.Lock()
	for _, sub := range subs {
		select {
		case <-sub.q.Done(): // stopped meanwhile
		default:
			l.subs[sub] = struct{}{}
		}
	}
	l.mu.Unlock()
}

// publish pushes events to every subscriber, each its own copy. Push never
// blocks; it is called without locks (a queue's onStop may run inside it).
func (l *watchLoop) publish(evs []*registry.Event) {
	if len(evs) == 0 {
		return
	}
	l.mu.Lock()
	subs := slices.Collect(maps.Keys(l.subs))
	l.mu.Unlock()
	for _, sub := range subs {
		for _, ev := range evs {
			sub.q.Push(&registry.Event{Type: ev.Type, Service: ev.Service.Copy(), Timestamp: ev.Timestamp})
		}
	}
}

// stopWatchers stops every subscriber's queue (Close).
func (l *watchLoop) stopWatchers() {
	l.mu.Lock()
	subs := slices.Collect(maps.Keys(l.subs))
	subs = append(subs, l.pending...)
	l.mu.Unlock()
	for _, sub := range subs {
		sub.q.Stop()
	}
}
