package consul

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"github.com/hashicorp/consul/api"
	"golang.org/x/sync/errgroup"

	"github.com/beacon-go/beacon/registry"
)

// listParallelism bounds the health queries ListServices runs at once.
const listParallelism = 8

func (r *Registry) queryOpts(ctx context.Context, index uint64) *api.QueryOptions {
	q := &api.QueryOptions{AllowStale: r.opts.stale, WaitIndex: index}
	if index > 0 {
		q.WaitTime = r.opts.waitTime
	}
	return q.WithContext(ctx)
}

// fetch reads the visible nodes of service name; with index > 0 it is a
// blocking query that returns when the answer may have changed after index.
// cache, if not nil, carries decoded records from one answer to the next.
func (r *Registry) fetch(ctx context.Context, name string, index uint64, cache *decodeCache) (registry.NodeSet, *api.QueryMeta, error) {
	set, _, meta, err := r.fetchEntries(ctx, name, index, cache)
	return set, meta, err
}

// fetchEntries is fetch that also returns consul's entries.
func (r *Registry) fetchEntries(ctx context.Context, name string, index uint64, cache *decodeCache) (registry.NodeSet, []*entry, *api.QueryMeta, error) {
	c, ci := r.client()
	var entries []*entry
	meta, err := c.Raw().Query("/v1/health/service/"+name, &entries, r.queryOpts(ctx, index))
	if err != nil {
		r.fail(ci, err)
		return nil, nil, nil, err
	}
	return r.nodeSet(ctx, name, entries, cache), entries, meta, nil
}

// nodeSet decodes a health answer for service name: unreadable entries are
// skipped (logged once), consul's own "consul" service is left out, entries
// sharing a node ID are settled as owner.go says, and nodes with a critical
// check are hidden. With a cache, entries whose record did not change since
// the previous answer are not decoded again.
func (r *Registry) nodeSet(ctx context.Context, name string, entries []*entry, cache *decodeCache) registry.NodeSet {
	var next map[cacheKey]*cached
	if cache != nil {
		next = make(map[cacheKey]*cached, len(entries))
	}
	byID := make(map[string]candidate, len(entries))
	var dups map[string][]candidate // node ID -> all its entries, when more than one
	for _, e := range entries {
		if e == nil || e.Service == nil {
			r.warnMalformed(name, e, registry.ErrMalformed)
			continue
		}
		if e.Service.Service != name || consulServer(e) {
			continue
		}
		var s *registry.Service
		var err error
		if cache != nil {
			s, err = cache.decode(&r.codec, name, e, next)
		} else {
			s, err = r.codec.decodeEntry(name, e)
		}
		if err != nil {
			r.warnMalformed(name, e, err)
			continue
		}
		c := candidate{e: e, svc: s}
		id := s.Nodes[0].ID
		prev, dup := byID[id]
		if !dup {
			byID[id] = c
			continue
		}
		if dups == nil {
			dups = make(map[string][]candidate)
		}
		if dups[id] == nil {
			dups[id] = []candidate{prev}
		}
		dups[id] = append(dups[id], c)
	}
	if cache != nil {
		cache.m = next
	}
	var members map[string]bool
	if len(dups) > 0 {
		members = r.liveMembers(ctx)
	}
	set := make(registry.NodeSet, len(byID))
	for id, c := range byID {
		if d := dups[id]; d != nil {
			c = owner(d, members)
		}
		if !critical(c.e.Checks) {
			set[id] = c.svc
		}
	}
	return set
}

// decodeCache remembers the decoded record of every entry of the last
// answer of one service. It is used by one goroutine at a time.
type decodeCache struct {
	m map[cacheKey]*cached
}

type cacheKey struct{ serviceID, node string }

type cached struct {
	address, nodeAddress string
	port                 int
	tags                 []string
	meta                 map[string]string
	svc                  *registry.Service // nil when err != nil
	err                  error
}

// decode returns the decoded entry, from the cache when the entry's
// address, port and Meta are those decoded last time; it records the result
// in next. The returned Service is shared between answers: callers do not
// modify it.
func (c *decodeCache) decode(cd *codec, name string, e *entry, next map[cacheKey]*cached) (*registry.Service, error) {
	key := cacheKey{serviceID: e.Service.ID}
	nodeAddr := ""
	if e.Node != nil {
		key.node, nodeAddr = e.Node.Node, e.Node.Address
	}
	if old := c.m[key]; old != nil && old.address == e.Service.Address && old.port == e.Service.Port &&
		old.nodeAddress == nodeAddr && maps.Equal(old.meta, e.Service.Meta) && slices.Equal(old.tags, e.Service.Tags) {
		next[key] = old
		return old.svc, old.err
	}
	s, err := cd.decodeEntry(name, e)
	next[key] = &cached{address: e.Service.Address, nodeAddress: nodeAddr, port: e.Service.Port, tags: e.Service.Tags, meta: e.Service.Meta, svc: s, err: err}
	return s, err
}

// GetService implements registry.Registry: one health query (stale if
// WithStale), nodes with a critical check left out. It returns
// registry.ErrNotFound when no node is visible, an error matching
// registry.ErrPermission when consul refused the ACL token (401, 403) or
// said that its ACLs hid every node, registry.ErrUnavailable when consul
// fails otherwise. The result is the caller's.
func (r *Registry) GetService(ctx context.Context, name string, _ ...registry.GetOption) ([]*registry.Service, error) {
	if err := registry.ValidateName(name); err != nil {
		return nil, err
	}
	ctx, done, err := r.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	set, meta, err := r.fetch(ctx, name, 0, nil)
	if err != nil {
		return nil, r.wrap(ctx, "get "+name, err)
	}
	if len(set) == 0 {
		switch {
		case r.hiddenByACL(meta, false):
			return nil, r.errHidden("get " + name)
		case r.anonymous: // consul does not say whether it hid anything
			return nil, fmt.Errorf("%w (consul: %s; it may hide the service)", registry.ErrNotFound, r.tokenDesc())
		}
		return nil, registry.ErrNotFound
	}
	return set.Group(), nil
}

// ListServices implements registry.Registry: the catalog's service names,
// then one health query per name (at most 8 at a time). Each entry carries
// its visible nodes and endpoints; services without visible nodes, and
// names that registry.ValidateName refuses, are left out. Consul failures
// match registry.ErrUnavailable; a refused ACL token (401, 403), or a
// catalog whose every service consul's ACLs hid (it always lists its own
// "consul" service, so an empty one is hidden), registry.ErrPermission.
func (r *Registry) ListServices(ctx context.Context, _ ...registry.ListOption) ([]*registry.Service, error) {
	ctx, done, err := r.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	c, ci := r.client()
	catalog, meta, err := c.Catalog().Services(r.queryOpts(ctx, 0))
	if err != nil {
		r.fail(ci, err)
		return nil, r.wrap(ctx, "list", err)
	}
	if len(catalog) == 0 && r.hiddenByACL(meta, true) {
		return nil, r.errHidden("list")
	}
	names := r.validNames(catalog)
	groups := make([][]*registry.Service, len(names))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(listParallelism)
	for i, name := range names {
		g.Go(func() error {
			set, _, err := r.fetch(gctx, name, 0, nil)
			if err != nil {
				return err
			}
			groups[i] = set.Group()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, r.wrap(ctx, "list", err)
	}
	var out []*registry.Service
	for _, gr := range groups {
		out = append(out, gr...)
	}
	return out, nil
}

// validNames returns the catalog's service names that registry.ValidateName
// accepts, sorted.
func (r *Registry) validNames(catalog map[string][]string) []string {
	names := make([]string, 0, len(catalog))
	for name := range catalog {
		if err := registry.ValidateName(name); err != nil {
			r.warnName(name, err)
			continue
		}
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

func (r *Registry) warnName(name string, err error) {
	if r.firstWarning("name/" + name) {
		r.log.Warn("skipping consul service with a name Beacon cannot use", "service", trunc(name), "err", err)
	}
}
