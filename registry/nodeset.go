package registry

import (
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"
)

// NodeSet maps node IDs to a single-node Service holding that node and its
// service's name, version, metadata and endpoints. It is the flat form in
// which backends and caches keep state and compute differences.
type NodeSet map[string]*Service

// Flatten turns services (as GetService returns them) into a NodeSet. The
// services are not copied; the single-node Services share their fields.
func Flatten(services []*Service) NodeSet {
	set := make(NodeSet)
	for _, s := range services {
		if s == nil {
			continue
		}
		for _, n := range s.Nodes {
			if n == nil {
				continue
			}
			set[n.ID] = &Service{Name: s.Name, Version: s.Version, Metadata: s.Metadata, Endpoints: s.Endpoints, Nodes: []*Node{n}}
		}
	}
	return set
}

// Group turns a NodeSet back into one Service per version (sorted by
// version, nodes sorted by ID), the shape GetService returns. The Services
// are new; nodes, metadata and endpoints are shared with the set.
func (set NodeSet) Group() []*Service {
	byVersion := make(map[string]*Service)
	for _, s := range set {
		g, ok := byVersion[s.Version]
		if !ok {
			g = &Service{Name: s.Name, Version: s.Version, Metadata: s.Metadata, Endpoints: s.Endpoints}
			byVersion[s.Version] = g
		}
		g.Nodes = append(g.Nodes, s.Nodes...)
	}
	out := make([]*Service, 0, len(byVersion))
	for _, v := range slices.Sorted(maps.Keys(byVersion)) {
		g := byVersion[v]
		slices.SortFunc(g.Nodes, func(a, b *Node) int { return strings.Compare(a.ID, b.ID) })
		out = append(out, g)
	}
	return out
}

// GroupCopy is Group with every Service a deep copy: what a backend hands
// out from state it keeps (callers may modify what they get).
func (set NodeSet) GroupCopy() []*Service {
	out := set.Group()
	for i, s := range out {
		out[i] = s.Copy()
	}
	return out
}

// Diff returns the events that turn prev into next: Create for nodes only in
// next, Delete for nodes only in prev, Update for nodes whose data changed.
// Events are ordered by node ID.
func Diff(prev, next NodeSet, now time.Time) []*Event {
	var evs []*Event
	for _, id := range slices.Sorted(maps.Keys(next)) {
		n := next[id]
		p, ok := prev[id]
		switch {
		case !ok:
			evs = append(evs, &Event{Type: Create, Service: n, Timestamp: now})
		case !SameNode(p, n):
			evs = append(evs, &Event{Type: Update, Service: n, Timestamp: now})
		}
	}
	for _, id := range slices.Sorted(maps.Keys(prev)) {
		if _, ok := next[id]; !ok {
			evs = append(evs, &Event{Type: Delete, Service: prev[id], Timestamp: now})
		}
	}
	return evs
}

// SameNode reports whether two single-node services carry the same data.
func SameNode(a, b *Service) bool {
	if a.Name != b.Name || a.Version != b.Version || len(a.Nodes) != len(b.Nodes) {
		return false
	}
	for i := range a.Nodes {
		x, y := a.Nodes[i], b.Nodes[i]
		if x.ID != y.ID || x.Address != y.Address || !maps.Equal(x.Metadata, y.Metadata) {
			return false
		}
	}
	return maps.Equal(a.Metadata, b.Metadata) && reflect.DeepEqual(normEndpoints(a.Endpoints), normEndpoints(b.Endpoints))
}

func normEndpoints(e []*Endpoint) []*Endpoint {
	if len(e) == 0 {
		return nil
	}
	return e
}

// Apply changes set by one event: Create and Update store the event's node,
// Delete removes it. It returns whether set changed.
func (set NodeSet) Apply(ev *Event) bool {
	if ev == nil || ev.Service == nil {
		return false
	}
	changed := false
	for _, n := range ev.Service.Nodes {
		if n == nil {
			continue
		}
		switch ev.Type {
		case Create, Update:
			one := &Service{Name: ev.Service.Name, Version: ev.Service.Version, Metadata: ev.Service.Metadata, Endpoints: ev.Service.Endpoints, Nodes: []*Node{n}}
			if p, ok := set[n.ID]; !ok || !SameNode(p, one) {
				set[n.ID] = one
				changed = true
			}
		case Delete:
			if _, ok := set[n.ID]; ok {
				delete(set, n.ID)
				changed = true
			}
		}
	}
	return changed
}
