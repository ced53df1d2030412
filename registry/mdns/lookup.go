package mdns

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/beacon-go/beacon/registry"
)

// collector gathers what arrives for one lookup.
type collector struct {
	services map[string]bool // service names whose nodes it wants
	list     bool            // wants service names from "_services" answers
	in       chan *delivery
	done     chan struct{} // closed when the lookup ends
}

func (c *collector) wants(d *delivery) bool {
	if c.list && len(d.services) > 0 {
		return true
	}
	for _, o := range d.nodes {
		if c.services[o.service] {
			return true
		}
	}
	return false
}

// lookup sends one query round asking for the given services (and for
// "_services" when list is set) and collects the answers. It returns when
// no answer came for the quiet period once every expected node (or name)
// answered, or for the straggler wait while some are missing or none were
// expected; or at the lookup timeout, or when ctx ends, or on Close. The
// expected ones are those this Registry heard within SeenTTL; those that do
// not answer are forgotten. It returns the nodes heard (keyed by nodeKey,
// private copies) and the service names.
func (r *Registry) lookup(ctx context.Context, services []string, list bool) (registry.NodeSet, map[string]bool, error) {
	c := &collector{services: map[string]bool{}, list: list, in: make(chan *delivery, 64), done: make(chan struct{})}
	var qnames []string
	if list {
		qnames = append(qnames, r.names.servicesPTR())
	}
	for _, s := range services {
		c.services[s] = true
		qnames = append(qnames, r.names.service(s))
	}
	msgs, err := packQueries(qnames)
	if err != nil {
		return nil, nil, fmt.Errorf("mdns: packing query: %w", err)
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil, nil, registry.ErrClosed
	}
	r.lookups[c] = struct{}{}
	expected := r.seen.expected(services, list, time.Now())
	r.mu.Unlock()
	missing := len(expected)
	defer func() {
		var gone []string
		for k, heard := range expected {
			if !heard {
				gone = append(gone, k)
			}
		}
		r.mu.Lock()
		delete(r.lookups, c)
		if !r.closed {
			r.seen.forget(gone)
		}
		r.mu.Unlock()
		close(c.done)
	}()
	r.lim.sent(len(msgs))
	for _, m := range msgs {
		if err := r.tr.sendQuery(m); err != nil {
			return nil, nil, fmt.Errorf("%w: mdns: sending query: %v", registry.ErrUnavailable, err)
		}
	}
	progress := false
	heard := func(k string) {
		if h, ok := expected[k]; ok && !h {
			expected[k] = true
			missing--
			progress = true
		}
	}
	set, names := registry.NodeSet{}, map[string]bool{}
	timeout := time.NewTimer(r.opts.timeout)
	defer timeout.Stop()
	quiet := time.NewTimer(r.opts.timeout)
	quiet.Stop()
	defer quiet.Stop()
	for {
		select {
		case d := <-c.in:
			progress = false
			for _, o := range d.nodes {
				if !c.services[o.service] {
					continue
				}
				k := nodeKey(o.service, o.id)
				heard(k)
				if o.goodbye {
					delete(set, k)
				} else {
					set[k] = o.svc.Copy()
				}
			}
			if list {
				for _, s := range d.services {
					heard(nameKey(s))
					names[s] = true
				}
			}
			// Answers to the query (unicast) move the end; announcements
			// (multicast) only when they bring a node expected: a host
			// multicasting records cannot keep a lookup going.
			if !d.unicast && !progress {
				continue
			}
			if missing == 0 && len(expected) > 0 {
				quiet.Reset(r.opts.quiet)
			} else {
				quiet.Reset(r.opts.straggle)
			}
		case <-quiet.C:
			return set, names, nil
		case <-timeout.C:
			return set, names, nil
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-r.done:
			return nil, nil, registry.ErrClosed
		}
	}
}

// GetService asks the network for the service's nodes and returns them
// grouped by version, nodes sorted by ID. It blocks for one lookup round:
// until answers stop arriving (a few ms on a LAN, see the package doc), at
// most the lookup timeout, which is what ErrNotFound costs. It returns
// ctx's error if ctx ends first, registry.ErrClosed after Close.
func (r *Registry) GetService(ctx context.Context, name string, _ ...registry.GetOption) ([]*registry.Service, error) {
	if err := registry.ValidateName(name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	set, _, err := r.lookup(ctx, []string{name}, false)
	if err != nil {
		return nil, err
	}
	if len(set) == 0 {
		return nil, registry.ErrNotFound
	}
	return set.Group(), nil
}

// ListServices asks the network which services exist ("_services"), then
// asks for all of them at once: two lookup rounds. It returns one Service
// per name and version, sorted, with the nodes heard (backends may fill
// them; this one does). Errors as for GetService.
func (r *Registry) ListServices(ctx context.Context, _ ...registry.ListOption) ([]*registry.Service, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	_, names, err := r.lookup(ctx, nil, true)
	if err != nil || len(names) == 0 {
		return nil, err
	}
	set, _, err := r.lookup(ctx, slices.Sorted(maps.Keys(names)), false)
	if err != nil {
		return nil, err
	}
	byName := map[string]registry.NodeSet{}
	for k, s := range set {
		if byName[s.Name] == nil {
			byName[s.Name] = registry.NodeSet{}
		}
		byName[s.Name][k] = s
	}
	var out []*registry.Service
	for _, name := range slices.Sorted(maps.Keys(byName)) {
		out = append(out, byName[name].Group()...)
	}
	slices.SortStableFunc(out, func(a, b *registry.Service) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// forgetSeen drops nodes from what lookups expect.
func (r *Registry) forgetSeen(keys []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.closed {
		r.seen.forget(keys)
	}
}
