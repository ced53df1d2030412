package etcd

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/beacon-go/beacon/registry"
)

// MaxRecordSize is the largest value, in bytes, that the registry writes or
// reads under its prefix. Larger values are rejected by Register (as invalid
// input) and skipped, with a log line, when read. etcd's own default request
// limit is 1.5 MiB.
const MaxRecordSize = 1 << 20

// nodeKey returns the etcd key of one node: <prefix><service>/<node id>.
func nodeKey(prefix, service, id string) string {
	return prefix + service + "/" + id
}

// encode returns the JSON record of a single-node service.
func encode(s *registry.Service) ([]byte, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("etcd: encode %s: %w", s.Name, err)
	}
	if len(b) > MaxRecordSize {
		return nil, &registry.ValidationError{Field: "service", Value: s.Name,
			Reason: fmt.Sprintf("the record of node %s is %d bytes of JSON, more than %d", s.Nodes[0].ID, len(b), MaxRecordSize)}
	}
	return b, nil
}

// decode parses the record stored at rel, the key relative to the registry
// prefix ("<service>/<node id>"). The record must be the JSON of a service
// with exactly one node, whose name and node ID match the key and which
// passes registry.Validate. Any other input, however malformed, returns an
// error matching registry.ErrMalformed; decode never panics and allocates
// at most in proportion to a value of MaxRecordSize.
func decode(rel string, value []byte) (*registry.Service, error) {
	service, id, ok := strings.Cut(rel, "/")
	if !ok || service == "" || id == "" || strings.Contains(id, "/") {
		return nil, fmt.Errorf("%w: key is not <service>/<node id>", registry.ErrMalformed)
	}
	if len(value) > MaxRecordSize {
		return nil, fmt.Errorf("%w: value of %d bytes, more than %d", registry.ErrMalformed, len(value), MaxRecordSize)
	}
	var s registry.Service
	if err := json.Unmarshal(value, &s); err != nil {
		return nil, fmt.Errorf("%w: %w", registry.ErrMalformed, err)
	}
	switch {
	case len(s.Nodes) != 1:
		return nil, fmt.Errorf("%w: %d nodes in the record, want 1", registry.ErrMalformed, len(s.Nodes))
	case s.Nodes[0] == nil:
		return nil, fmt.Errorf("%w: null node", registry.ErrMalformed)
	case s.Name != service:
		return nil, fmt.Errorf("%w: service name %q does not match the key", registry.ErrMalformed, trunc(s.Name))
	case s.Nodes[0].ID != id:
		return nil, fmt.Errorf("%w: node ID %q does not match the key", registry.ErrMalformed, trunc(s.Nodes[0].ID))
	}
	if err := registry.Validate(&s); err != nil {
		// %v: a bad record is ErrMalformed, not the caller's ErrInvalid.
		return nil, fmt.Errorf("%w: %v", registry.ErrMalformed, err)
	}
	return &s, nil
}

// trunc shortens s for log lines and errors.
func trunc(s string) string {
	const limit = 96
	if len(s) > limit {
		return s[:limit] + "..."
	}
	return s
}
