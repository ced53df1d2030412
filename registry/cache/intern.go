package cache

import (
	"maps"
	"reflect"

	"github.com/beacon-go/beacon/registry"
)

// internMax is how many distinct values of each part an interner keeps.
const internMax = 8

// interner makes the nodes of one entry share what they have alike: the
// service metadata, endpoints and node metadata of the last few distinct
// values seen. Nodes arrive with copies of their own (each watch event
// carries a deep copy, and a backend may decode every record apart), so
// without it a service's N nodes would hold N copies of its endpoints.
// Snapshots are read-only, which makes sharing safe. Its cost is that of
// the nodes it is given (a few comparisons each), not of the service.
type interner struct {
	svcMeta  []map[string]string
	eps      [][]*registry.Endpoint
	nodeMeta []map[string]string
}

// all interns every node of set.
func (in *interner) all(set registry.NodeSet) {
	for id, s := range set {
		set[id] = in.node(s)
	}
}

// one interns the node id of set, if there.
func (in *interner) one(set registry.NodeSet, id string) {
	if s, ok := set[id]; ok {
		set[id] = in.node(s)
	}
}

// node returns s, or a copy of it that shares parts with nodes seen
// before. s itself is never modified: it may be the registry's.
func (in *interner) node(s *registry.Service) *registry.Service {
	if len(s.Nodes) != 1 || s.Nodes[0] == nil {
		return s
	}
	meta, metaShared := internMap(&in.svcMeta, s.Metadata)
	eps, epsShared := internEndpoints(&in.eps, s.Endpoints)
	n := s.Nodes[0]
	nmeta, nmetaShared := internMap(&in.nodeMeta, n.Metadata)
	if !metaShared && !epsShared && !nmetaShared {
		return s
	}
	c := *s
	c.Metadata, c.Endpoints = meta, eps
	if nmetaShared {
		nn := *n
		nn.Metadata = nmeta
		c.Nodes = []*registry.Node{&nn}
	}
	return &c
}

// internMap returns a map of pool equal to m, and whether it is another
// map than m; else it adds m to pool.
func internMap(pool *[]map[string]string, m map[string]string) (map[string]string, bool) {
	if len(m) == 0 {
		return m, false
	}
	for _, p := range *pool {
		if sameMap(p, m) {
			return m, false
		}
		if maps.Equal(p, m) {
			return p, true
		}
	}
	*pool = keep(*pool, m)
	return m, false
}

func internEndpoints(pool *[][]*registry.Endpoint, e []*registry.Endpoint) ([]*registry.Endpoint, bool) {
	if len(e) == 0 {
		return e, false
	}
	for _, p := range *pool {
		if len(p) == len(e) && &p[0] == &e[0] {
			return e, false
		}
		if reflect.DeepEqual(p, e) {
			return p, true
		}
	}
	*pool = keep(*pool, e)
	return e, false
}

func sameMap(a, b map[string]string) bool {
	return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}

// keep adds v to pool, dropping the oldest value past internMax.
func keep[T any](pool []T, v T) []T {
	if len(pool) >= internMax {
		copy(pool, pool[1:])
		pool = pool[:len(pool)-1]
	}
	return append(pool, v)
}
