package selector

import (
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/cache"
)

// Filter decides whether a node of a service version may serve a call. svc is
// the version group the node belongs to; both are read-only.
type Filter func(svc *registry.Service, node *registry.Node) bool

// FilterVersion keeps nodes of the given versions.
func FilterVersion(versions ...string) Filter {
	return func(svc *registry.Service, _ *registry.Node) bool {
		for _, v := range versions {
			if svc.Version == v {
				return true
			}
		}
		return false
	}
}

// FilterMetadata keeps nodes whose metadata has key set to value.
func FilterMetadata(key, value string) Filter {
	return func(_ *registry.Service, n *registry.Node) bool {
		v, ok := n.Metadata[key]
		return ok && v == value
	}
}

// FilterEndpoint keeps nodes whose service version advertises the endpoint.
func FilterEndpoint(name string) Filter {
	return func(svc *registry.Service, _ *registry.Node) bool {
		for _, e := range svc.Endpoints {
			if e.Name == name {
				return true
			}
		}
		return false
	}
}

func filterNodes(snap *cache.Snapshot, filters []Filter) []cache.Node {
	var out []cache.Node
outer:
	for _, n := range snap.Nodes {
		for _, f := range filters {
			if !f(n.Service, n.Node) {
				continue outer
			}
		}
		out = append(out, n)
	}
	return out
}
