package consul

import (
	"context"
	"maps"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/beacon-go/beacon/registry"
)

// nodeState is what this Registry last registered for one node ID. Its mu
// serialises Register and Deregister of that node, so that the registration
// consul holds is the one recorded here.
type nodeState struct {
	mu     sync.Mutex
	refs   int                           // guarded by Registry.nodesMu
	reg    *api.AgentServiceRegistration // nil: not registered (or unknown)
	client int                           // index of the client reg went to
}

// acquire returns the locked state of node id; release it with release.
func (r *Registry) acquire(id string) *nodeState {
	r.nodesMu.Lock()
	ns := r.nodes[id]
	if ns == nil {
		ns = new(nodeState)
		r.nodes[id] = ns
	}
	ns.refs++
	r.nodesMu.Unlock()
	ns.mu.Lock()
	return ns
}

func (r *Registry) release(id string, ns *nodeState) {
	forget := ns.reg == nil
	ns.mu.Unlock()
	r.nodesMu.Lock()
	ns.refs--
	if ns.refs == 0 && forget {
		delete(r.nodes, id)
	}
	r.nodesMu.Unlock()
}

func checkID(nodeID string) string { return "beacon-ttl:" + nodeID }

// registration builds the agent service for node n of s.
func (r *Registry) registration(s *registry.Service, n *registry.Node, ttl time.Duration) (*api.AgentServiceRegistration, error) {
	meta, err := r.codec.encodeMeta(s, n)
	if err != nil {
		return nil, err
	}
	host, port, err := splitAddr(n.Address)
	if err != nil { // cannot happen after Validate
		return nil, &registry.ValidationError{Field: "node.address", Value: n.Address, Reason: err.Error()}
	}
	tags, err := r.codec.encodeTags(s, n, host, port, meta)
	if err != nil {
		return nil, err
	}
	reg := &api.AgentServiceRegistration{ID: n.ID, Name: s.Name, Address: host, Port: port, Tags: tags, Meta: meta}
	if ttl > 0 {
		reg.Checks = api.AgentServiceChecks{{
			CheckID:                        checkID(n.ID),
			Name:                           "Beacon TTL",
			Notes:                          "passed by every Beacon heartbeat",
			TTL:                            ttl.String(),
			Status:                         api.HealthPassing,
			DeregisterCriticalServiceAfter: max(r.opts.deregisterAfter, ttl).String(),
		}}
	}
	return reg, nil
}

// sameRegistration reports whether two registrations carry the same data.
func sameRegistration(a, b *api.AgentServiceRegistration) bool {
	if a.ID != b.ID || a.Name != b.Name || a.Address != b.Address || a.Port != b.Port ||
		!maps.Equal(a.Meta, b.Meta) || len(a.Checks) != len(b.Checks) {
		return false
	}
	for i := range a.Checks {
		x, y := a.Checks[i], b.Checks[i]
		if x.CheckID != y.CheckID || x.TTL != y.TTL || x.DeregisterCriticalServiceAfter != y.DeregisterCriticalServiceAfter {
			return false
		}
	}
	return true
}

// Register implements registry.Registry: each node of s becomes an agent
// service on the active agent (see the package documentation for the
// layout). A node already registered by this Registry with the same data
// and TTL is heartbeaten (its TTL check is passed); if the agent no longer
// knows it, it is registered again in the same call. Changed data is
// registered in full. The TTL (registry.RegisterTTL) may be any positive
// duration; 0 registers the node without a check.
//
// Invalid input, or a record too large for consul's metadata, is refused
// with a *registry.ValidationError before anything is written. Consul
// failures match registry.ErrUnavailable, or registry.ErrPermission when
// consul refused the ACL token or its permissions (401, 403); nodes before
// the failing one may have been written. Register blocks until consul has answered for every
// node or ctx is done.
func (r *Registry) Register(ctx context.Context, s *registry.Service, opts ...registry.RegisterOption) error {
	if err := registry.Validate(s); err != nil {
		return err
	}
	o := registry.ApplyRegister(opts...)
	if o.TTL < 0 {
		return &registry.ValidationError{Field: "ttl", Value: o.TTL.String(), Reason: "negative"}
	}
	regs := make([]*api.AgentServiceRegistration, len(s.Nodes))
	for i, n := range s.Nodes {
		reg, err := r.registration(s, n, o.TTL)
		if err != nil {
			return err
		}
		regs[i] = reg
	}
	ctx, done, err := r.begin(ctx)
	if err != nil {
		return err
	}
	defer done()
	for _, reg := range regs {
		if err := r.registerNode(ctx, reg); err != nil {
			return err
		}
	}
	return nil
}

func (r *Registry) registerNode(ctx context.Context, reg *api.AgentServiceRegistration) error {
	ns := r.acquire(reg.ID)
	defer r.release(reg.ID, ns)
	c, ci := r.client()
	if ns.reg != nil && ns.client == ci && len(reg.Checks) > 0 && sameRegistration(ns.reg, reg) {
		err := c.Agent().UpdateTTLOpts(checkID(reg.ID), "", api.HealthPassing, (&api.QueryOptions{}).WithContext(ctx))
		if err == nil {
			return nil
		}
		if statusCode(err) == 0 || statusCode(err) == http.StatusForbidden || statusCode(err) == http.StatusTooManyRequests {
			r.fail(ci, err)
			return r.wrap(ctx, "heartbeat "+reg.ID, err)
		}
		// The agent answered but no longer has the check: it restarted or
		// reaped the service. Register it again.
		r.log.Info("consul agent lost the node, registering it again", "service", reg.Name, "node", reg.ID, "err", err)
	}
	err := c.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx))
	if err != nil {
		ns.reg = nil
		r.fail(ci, err)
		return r.wrap(ctx, "register "+reg.ID, err)
	}
	ns.reg, ns.client = reg, ci
	return nil
}

// Deregister implements registry.Registry: it removes the agent services
// with the node IDs of s from the active agent, skipping IDs that the agent
// does not know or that belong to another service name. Consul failures
// match registry.ErrUnavailable (registry.ErrPermission for 401 and 403). It blocks until consul has answered or ctx
// is done.
func (r *Registry) Deregister(ctx context.Context, s *registry.Service, _ ...registry.DeregisterOption) error {
	if err := registry.ValidateDeregister(s); err != nil {
		return err
	}
	ctx, done, err := r.begin(ctx)
	if err != nil {
		return err
	}
	defer done()
	for _, n := range s.Nodes {
		if err := r.deregisterNode(ctx, s.Name, n.ID); err != nil {
			return err
		}
	}
	return nil
}

func (r *Registry) deregisterNode(ctx context.Context, name, id string) error {
	ns := r.acquire(id)
	defer r.release(id, ns)
	c, ci := r.client()
	q := (&api.QueryOptions{}).WithContext(ctx)
	svc, _, err := c.Agent().Service(id, q)
	switch {
	case statusCode(err) == http.StatusNotFound:
		ns.reg = nil
		return nil
	case err != nil:
		r.fail(ci, err)
		return r.wrap(ctx, "deregister "+id, err)
	case svc == nil:
		ns.reg = nil
		return nil
	case svc.Service != name:
		r.log.Debug("not deregistering a node of another service", "service", name, "node", id, "owner", svc.Service)
		return nil
	}
	if err := c.Agent().ServiceDeregisterOpts(id, q); err != nil && statusCode(err) != http.StatusNotFound {
		r.fail(ci, err)
		return r.wrap(ctx, "deregister "+id, err)
	}
	ns.reg = nil
	return nil
}
