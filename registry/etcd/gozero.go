package etcd

import (
	"fmt"
	"strings"

	"github.com/beacon-go/beacon/registry"
)

// MetaGoZeroKey is the node metadata key holding the etcd key under which a
// go-zero publisher announced the node (e.g. "greeter.rpc/7587890123456789"),
// on nodes read through WithGoZero.
const MetaGoZeroKey = "gozero_key"

// maxGoZeroValue bounds the value of a go-zero key: an address "host:port".
const maxGoZeroValue = 1024

// goZeroKey maps the etcd key of a go-zero service (zrpc's Etcd.Key) to the
// Beacon service name it is read as.
type goZeroKey struct {
	name string // Beacon service name
	key  string // go-zero key; its publishers write <key>/<id>
}

// WithGoZero makes the Registry read, besides its own layout, the services
// that go-zero's etcd publisher (github.com/zeromicro/go-zero/core/discov,
// used by zrpc servers configured with Etcd{Hosts, Key}) announces under the
// given keys, so that, e.g., a grpc-go client reaches a zrpc server through
// beacongrpc's "beacon:///greeter.rpc".
//
// Each element is a go-zero key, read as the Beacon service of the same name
// ("greeter.rpc"), or "name=key" to give the service another name
// ("greeter=/apps/greeter.rpc"); an element may itself be a comma-separated
// list. The names must be valid Beacon service names; the keys must not lie
// under one another nor overlap the registry's prefix. New fails otherwise,
// with an error matching registry.ErrInvalid.
//
// go-zero's publisher puts one key per server, "<key>/<id>" (id: the decimal
// ID of the server's lease, or zrpc's Etcd.ID when set), holding the server's
// address "ip:port" as plain text, attached to a lease of
// discov.TimeToLive (10 s) that it keeps alive and revokes on stop. Every
// such key is one node of the service: ID <id>, the value as its address,
// metadata protocol=grpc (registry.ProtocolGRPC) and MetaGoZeroKey; no
// version, no endpoints. GetService, ListServices and Watch include these
// nodes next to the service's Beacon records of the same name, if any
// (the watch reports them coming and going with their keys: a stopped server
// revokes its lease at once; a crashed one is gone when the lease expires).
// Keys under "<key>/" that are not <id> (a valid node ID) holding a valid
// address are skipped with a Warn log line, like malformed records.
//
// The go-zero layout is read-only: Register and Deregister write and delete
// only Beacon's own records, never go-zero keys.
func WithGoZero(keys ...string) Option {
	return func(o *options) {
		for _, k := range keys {
			for _, part := range strings.Split(k, ",") {
				if part = strings.TrimSpace(part); part == "" {
					continue
				}
				name, key, ok := strings.Cut(part, "=")
				if !ok {
					name, key = part, part
				}
				o.gozero = append(o.gozero, goZeroKey{name: strings.TrimSpace(name), key: strings.TrimSpace(key)})
			}
		}
	}
}

// checkGoZero validates the go-zero keys against each other and prefix.
func checkGoZero(keys []goZeroKey, prefix string) error {
	for i, g := range keys {
		if err := registry.ValidateName(g.name); err != nil {
			return fmt.Errorf("etcd: go-zero key %q: %w", g.key, err)
		}
		p := g.key + "/"
		if g.key == "" || strings.HasSuffix(g.key, "/") {
			return &registry.ValidationError{Field: "gozero.key", Value: trunc(g.key), Reason: "empty or ends with '/'"}
		}
		if strings.HasPrefix(p, prefix) || strings.HasPrefix(prefix, p) {
			return &registry.ValidationError{Field: "gozero.key", Value: trunc(g.key), Reason: fmt.Sprintf("overlaps the registry prefix %q", prefix)}
		}
		for _, h := range keys[:i] {
			q := h.key + "/"
			if strings.HasPrefix(p, q) || strings.HasPrefix(q, p) {
				return &registry.ValidationError{Field: "gozero.key", Value: trunc(g.key), Reason: fmt.Sprintf("overlaps go-zero key %q", h.key)}
			}
		}
	}
	return nil
}

// decodeGoZero reads the value that a go-zero publisher put at key (under
// "<g.key>/") as a node of the service g.name.
func decodeGoZero(g goZeroKey, key string, value []byte) (*registry.Service, error) {
	id := key[len(g.key)+1:]
	if err := registry.ValidateNodeID("id", id); err != nil {
		return nil, fmt.Errorf("%w: go-zero key is not <key>/<id>: %v", registry.ErrMalformed, err)
	}
	if len(value) > maxGoZeroValue {
		return nil, fmt.Errorf("%w: go-zero value of %d bytes, not an address", registry.ErrMalformed, len(value))
	}
	addr := string(value)
	if err := registry.ValidateAddress("address", addr); err != nil {
		return nil, fmt.Errorf("%w: go-zero value: %v", registry.ErrMalformed, err)
	}
	s := &registry.Service{Name: g.name, Nodes: []*registry.Node{{ID: id, Address: addr,
		Metadata: map[string]string{registry.MetaProtocol: registry.ProtocolGRPC, MetaGoZeroKey: key}}}}
	if err := registry.Validate(s); err != nil {
		return nil, fmt.Errorf("%w: %v", registry.ErrMalformed, err)
	}
	return s, nil
}

// span is one key range the Registry reads: Beacon's records under its
// prefix (all, or one service's), or a go-zero key's publishers.
type span struct {
	prefix string
	gz     *goZeroKey // nil: Beacon's records
}

// spans returns what to read for one service, or for all ("").
func (r *Registry) spans(service string) []span {
	beacon := r.prefix
	if service != "" {
		beacon += service + "/"
	}
	out := []span{{prefix: beacon}}
	for i, g := range r.gozero {
		if service == "" || g.name == service {
			out = append(out, span{prefix: g.key + "/", gz: &r.gozero[i]})
		}
	}
	return out
}

// decodeIn decodes the record at etcd key of span sp: a Beacon record with
// d (nil: decoded whole, by decode), or a go-zero publisher's value.
func (r *Registry) decodeIn(sp span, d *decoder, key, value []byte) (*registry.Service, error) {
	if sp.gz != nil {
		return decodeGoZero(*sp.gz, string(key), value)
	}
	rel := string(key[len(r.prefix):])
	if d == nil {
		return decode(rel, value)
	}
	return d.decode(rel, value)
}
