package consul

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/beacon-go/beacon/registry"
)

// # Several catalog entries with one node ID
//
// Consul keeps service IDs unique per consul node only, and anyone with
// catalog write can add an entry on another (possibly made-up) consul node
// through /v1/catalog/register. When entries of one service name share a
// node ID, one of them is the node, chosen in this order:
//
//  1. owned: registered through a live agent with its own check: the
//     entry's consul node is a live member of the agent's LAN pool
//     (/v1/agent/members; with WithDatacenter, where the members of that
//     datacenter cannot be listed, a node with a serfHealth check counts)
//     and the entry carries its registration's check (for Beacon records
//     the "beacon-ttl:<id>" TTL check, for others any check of the
//     service instance);
//  2. then not critical;
//  3. then registered first (lowest CreateIndex), then the consul node name.
//
// The chosen entry is shown when it is not critical, and nothing is shown
// otherwise: a duplicate never stands in for the node, not even while the
// node's own check is failing. So an entry copied onto another consul node,
// with or without forged checks, never displaces a Beacon node that
// heartbeats through its agent, and a node that moves to another agent is
// served by the new copy as soon as the old one's check fails. Limits: once
// consul reaps the real node's entry (DeregisterCriticalServiceAfter after
// its check failed) a duplicate is all that is left and is shown; a forgery
// on a real member node (one with an agent) is owned too, and then the
// first registered wins. ACLs (node and service write) are what keeps
// others from writing such entries at all.

// candidate is one decoded entry.
type candidate struct {
	e   *entry
	svc *registry.Service
}

// owner returns the entry that is the node among cands (all with one node
// ID); members is the set of live LAN members, nil when unknown.
func owner(cands []candidate, members map[string]bool) candidate {
	return slices.MinFunc(cands, func(a, b candidate) int {
		if c := cmp.Compare(ownerRank(b, members), ownerRank(a, members)); c != 0 {
			return c
		}
		if c := cmp.Compare(a.e.Service.CreateIndex, b.e.Service.CreateIndex); c != 0 {
			return c
		}
		return cmp.Compare(nodeName(a.e), nodeName(b.e))
	})
}

// ownerRank is 2 for an owned entry (see above), plus 1 when it is not
// critical.
func ownerRank(c candidate, members map[string]bool) int {
	rank := 0
	if owned(c.e, members) {
		rank = 2
	}
	if !critical(c.e.Checks) {
		rank++
	}
	return rank
}

func owned(e *entry, members map[string]bool) bool {
	agent := false
	if members != nil {
		agent = members[nodeName(e)]
	} else {
		agent = slices.ContainsFunc(e.Checks, func(c entryCheck) bool { return c.CheckID == serfHealth && c.ServiceID == "" })
	}
	if !agent {
		return false
	}
	id := e.Service.ID
	beacon := isBeacon(e.Service.Meta)
	return slices.ContainsFunc(e.Checks, func(c entryCheck) bool {
		return c.ServiceID == id && (!beacon || c.CheckID == checkID(id))
	})
}

// serfHealth is the check consul's leader keeps on every agent's node.
const serfHealth = "serfHealth"

func nodeName(e *entry) string {
	if e.Node == nil {
		return ""
	}
	return e.Node.Node
}

// consulServer reports whether e is the "consul" service that consul's
// servers register for themselves (ID and name "consul", the server RPC
// port): not an application's node, so never listed.
func consulServer(e *entry) bool {
	return e.Service.ID == "consul" && e.Service.Service == "consul"
}

// membersCache remembers the agent's live LAN members for a while; it is
// read only when a service has entries sharing a node ID.
type membersCache struct {
	mu  sync.Mutex
	at  time.Time
	set map[string]bool // nil: unknown
}

// membersTTL is how long a members answer is used.
const membersTTL = 5 * time.Second

// liveMembers returns the names of the agent's live LAN members, or nil
// when they cannot be known (WithDatacenter, or the agent did not answer).
func (r *Registry) liveMembers(ctx context.Context) map[string]bool {
	if r.opts.datacenter != "" {
		return nil
	}
	m := &r.members
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.set != nil && time.Since(m.at) < membersTTL {
		return m.set
	}
	c, _ := r.client()
	var members []struct {
		Name   string
		Status int
	}
	if _, err := c.Raw().Query("/v1/agent/members", &members, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		r.log.Debug("consul agent members unavailable, judging duplicate node IDs by serfHealth checks", "err", err)
		return nil
	}
	set := make(map[string]bool, len(members))
	for _, mb := range members {
		if mb.Status == memberAlive {
			set[mb.Name] = true
		}
	}
	m.set, m.at = set, time.Now()
	return set
}

// memberAlive is serf's StatusAlive.
const memberAlive = 1
