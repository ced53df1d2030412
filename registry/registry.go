// Package registry defines Beacon's service registry contract: the Registry
// interface that every backend (memory, mdns, etcd, consul) implements, the
// Service/Node/Endpoint data model, watch events, sentinel errors and input
// validation.
//
// The data model and its JSON form follow go-micro's, so records written by
// Beacon and by go-micro services can be read by each other.
package registry

import (
	"context"
	"time"
)

// Registry is a service registry backend.
//
// All methods are safe for concurrent use. Every method that talks to a
// backend takes a context and returns when it is done; a method never blocks
// past its context's deadline. After Close, methods return ErrClosed.
type Registry interface {
	// Register adds or refreshes the nodes of s. Registering the same node
	// again (same service name and node ID) is a heartbeat: it extends the
	// TTL and, when the data changed, replaces it and emits an Update event.
	// With a TTL option the nodes disappear when not registered again within
	// the TTL. The service is validated first (see Validate); invalid input is
	// rejected with an error matching ErrInvalid and nothing is written.
	Register(ctx context.Context, s *Service, opts ...RegisterOption) error
	// Deregister removes the nodes of s (only Name and the node IDs are
	// read). Deregistering a node that is not registered is not an error.
	Deregister(ctx context.Context, s *Service, opts ...DeregisterOption) error
	// GetService returns the service's nodes grouped by version: one Service
	// per version, nodes sorted by ID. It returns ErrNotFound when the service
	// has no nodes.
	GetService(ctx context.Context, name string, opts ...GetOption) ([]*Service, error)
	// ListServices returns every registered service, one entry per name and
	// version, without nodes or endpoints guaranteed (backends may fill
	// them). The result is sorted by name then version.
	ListServices(ctx context.Context, opts ...ListOption) ([]*Service, error)
	// Watch returns a Watcher that first reports the current state (one
	// Create event per existing node), then every change. The watcher ends
	// when Stop is called, when ctx is done, or when the registry is closed.
	Watch(ctx context.Context, opts ...WatchOption) (Watcher, error)
	// Close releases the registry's resources and stops its watchers. It does
	// not deregister nodes (a server deregisters its own on stop). Close is
	// idempotent.
	Close() error
	// String returns the backend's name, e.g. "mdns".
	String() string
}

// Service is a named, versioned service and its nodes.
type Service struct {
	Name      string            `json:"name"`
	Version   string            `json:"version"`
	Metadata  map[string]string `json:"metadata"`
	Endpoints []*Endpoint       `json:"endpoints"`
	Nodes     []*Node           `json:"nodes"`
}

// Node is one instance of a service.
type Node struct {
	ID       string            `json:"id"`
	Address  string            `json:"address"`
	Metadata map[string]string `json:"metadata"`
}

// MetaProtocol is the node metadata key naming the protocol a node speaks
// (go-micro's key): Beacon servers publish ProtocolBeacon; go-micro nodes
// publish "grpc" or "mucp". Beacon's client skips nodes that speak another.
const MetaProtocol = "protocol"

// ProtocolBeacon is the MetaProtocol value of Beacon's wire.
const ProtocolBeacon = "beacon"

// ProtocolGRPC is the MetaProtocol value of gRPC servers (go-micro's value
// too); package beacongrpc resolves only nodes that publish it by default.
const ProtocolGRPC = "grpc"

// MetaIdempotent is the endpoint metadata key by which a server publishes
// that an endpoint may safely run more than once (value "true"): clients then
// retry it on another node after failures after which it may have run.
const MetaIdempotent = "idempotent"

// Endpoint describes one callable method of a service, e.g. "Greeter.Hello".
type Endpoint struct {
	Name     string            `json:"name"`
	Request  *Value            `json:"request"`
	Response *Value            `json:"response"`
	Metadata map[string]string `json:"metadata"`
}

// Value describes the shape of a request or response type.
type Value struct {
	Name   string   `json:"name"`
	Type   string   `json:"type"`
	Values []*Value `json:"values"`
}

// EventType says what happened to a node.
type EventType int

const (
	// Create: a node appeared.
	Create EventType = iota + 1
	// Update: a known node's data (version, metadata, endpoints, address) changed.
	Update
	// Delete: a node left (deregistered, expired, or judged dead).
	Delete
)

func (t EventType) String() string {
	switch t {
	case Create:
		return "create"
	case Update:
		return "update"
	case Delete:
		return "delete"
	}
	return "unknown"
}

// Event is one change seen by a Watcher. Service always holds exactly one
// node: the one that changed. For Delete, only Service.Name and the node's ID
// are guaranteed.
type Event struct {
	Type      EventType
	Service   *Service
	Timestamp time.Time
}

// Watcher delivers registry events in order.
type Watcher interface {
	// Next blocks until the next event and returns it. After Stop, after the
	// watch's context is done, or after the registry is closed, it returns
	// an error matching ErrWatcherStopped. Next is meant for one goroutine.
	Next() (*Event, error)
	// Stop ends the watch and releases its resources; it is idempotent and
	// safe to call from any goroutine, also while Next is blocked.
	Stop()
}

// Copy returns a deep copy of s.
func (s *Service) Copy() *Service {
	if s == nil {
		return nil
	}
	c := &Service{Name: s.Name, Version: s.Version, Metadata: copyMap(s.Metadata)}
	if s.Endpoints != nil {
		c.Endpoints = make([]*Endpoint, len(s.Endpoints))
		for i, e := range s.Endpoints {
			c.Endpoints[i] = e.Copy()
		}
	}
	if s.Nodes != nil {
		c.Nodes = make([]*Node, len(s.Nodes))
		for i, n := range s.Nodes {
			c.Nodes[i] = n.Copy()
		}
	}
	return c
}

// Copy returns a deep copy of n.
func (n *Node) Copy() *Node {
	if n == nil {
		return nil
	}
	return &Node{ID: n.ID, Address: n.Address, Metadata: copyMap(n.Metadata)}
}

// Copy returns a deep copy of e.
func (e *Endpoint) Copy() *Endpoint {
	if e == nil {
		return nil
	}
	return &Endpoint{Name: e.Name, Request: e.Request.Copy(), Response: e.Response.Copy(), Metadata: copyMap(e.Metadata)}
}

// Copy returns a deep copy of v.
func (v *Value) Copy() *Value {
	if v == nil {
		return nil
	}
	c := &Value{Name: v.Name, Type: v.Type}
	if v.Values != nil {
		c.Values = make([]*Value, len(v.Values))
		for i, x := range v.Values {
			c.Values[i] = x.Copy()
		}
	}
	return c
}

func copyMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}
