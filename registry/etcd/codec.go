package etcd

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"

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
	var d decoder
	return d.decode(rel, value)
}

// decodes counts records decoded (for tests and measurements).
var decodes atomic.Int64

// wireRecord is a record as stored, with the parts that the records of one
// service usually share left raw, so that a decoder decodes them once.
type wireRecord struct {
	Name      string      `json:"name"`
	Version   string      `json:"version"`
	Metadata  rawPart     `json:"metadata"`
	Endpoints rawPart     `json:"endpoints"`
	Nodes     []*wireNode `json:"nodes"`
}

type wireNode struct {
	ID       string  `json:"id"`
	Address  string  `json:"address"`
	Metadata rawPart `json:"metadata"`
}

// rawPart is a part of a record kept raw. It notes whether the record has
// the part twice (a JSON object with a key twice, which no encoder writes):
// encoding/json merges the two when it decodes a record in one go, so such
// records are decoded that way, to read the same whichever way.
type rawPart struct {
	raw json.RawMessage
	dup bool
}

func (p *rawPart) UnmarshalJSON(b []byte) error {
	p.dup = p.dup || p.raw != nil
	p.raw = append(p.raw[:0], b...)
	return nil
}

func (w *wireRecord) dup() bool {
	return w.Metadata.dup || w.Endpoints.dup || len(w.Nodes) == 1 && w.Nodes[0] != nil && w.Nodes[0].Metadata.dup
}

// decoder decodes records and shares, between the records it decodes, the
// parts they have alike: a record whose service metadata or endpoints are
// byte for byte those of the last record of the same service and version
// gets the same maps and slices, decoded once (records whose parts match
// when decoded share them too); node metadata byte for byte that of the
// last record is copied rather than decoded. Shared parts are read-only: a
// listing's records go to one caller (GetService, ListServices), where
// Group shares them among the nodes of a version anyway. A decoder
// remembers only the last service: listed keys come sorted, so a service's
// records are adjacent. The zero decoder shares; with whole set it decodes
// every record in one go and shares nothing (records handed to watchers,
// each of which may modify its own).
type decoder struct {
	whole       bool
	service     string
	parts       map[string]*common // by version
	nodeMetaRaw string
	nodeMeta    map[string]string
}

// common is what the records of one service and version have in common.
type common struct {
	version string
	metaRaw string
	meta    map[string]string
	epsRaw  string
	eps     []*registry.Endpoint
}

func (d *decoder) decode(rel string, value []byte) (*registry.Service, error) {
	decodes.Add(1)
	return d.decodeRecord(rel, value)
}

func (d *decoder) decodeRecord(rel string, value []byte) (*registry.Service, error) {
	service, id, ok := strings.Cut(rel, "/")
	if !ok || service == "" || id == "" || strings.Contains(id, "/") {
		return nil, fmt.Errorf("%w: key is not <service>/<node id>", registry.ErrMalformed)
	}
	if len(value) > MaxRecordSize {
		return nil, fmt.Errorf("%w: value of %d bytes, more than %d", registry.ErrMalformed, len(value), MaxRecordSize)
	}
	if d.whole || d.service != service {
		// The first record of a service: decoded in one go (the raw parts
		// would cost a second pass over them, for nothing to share yet).
		s, err := decodeWhole(service, id, value)
		if err != nil || d.whole {
			return s, err
		}
		d.service = service
		d.parts = map[string]*common{s.Version: {version: s.Version, meta: s.Metadata, eps: s.Endpoints}}
		d.nodeMetaRaw, d.nodeMeta = "", s.Nodes[0].Metadata
		return s, nil
	}
	var w wireRecord
	if err := json.Unmarshal(value, &w); err != nil {
		return nil, fmt.Errorf("%w: %w", registry.ErrMalformed, err)
	}
	if w.dup() {
		return decodeWhole(service, id, value)
	}
	switch {
	case len(w.Nodes) != 1:
		return nil, fmt.Errorf("%w: %d nodes in the record, want 1", registry.ErrMalformed, len(w.Nodes))
	case w.Nodes[0] == nil:
		return nil, fmt.Errorf("%w: null node", registry.ErrMalformed)
	case w.Name != service:
		return nil, fmt.Errorf("%w: service name %q does not match the key", registry.ErrMalformed, trunc(w.Name))
	case w.Nodes[0].ID != id:
		return nil, fmt.Errorf("%w: node ID %q does not match the key", registry.ErrMalformed, trunc(w.Nodes[0].ID))
	}
	p := d.parts[w.Version]
	if p == nil {
		p = &common{version: w.Version}
		d.parts[w.Version] = p
	}
	// Name and ID are the key's (equal, and held by the caller anyway).
	n := &registry.Node{ID: id, Address: w.Nodes[0].Address}
	s := &registry.Service{Name: service, Version: p.version, Nodes: []*registry.Node{n}}
	var err error
	if s.Metadata, err = shareMap(w.Metadata.raw, &p.metaRaw, &p.meta); err != nil {
		return nil, err
	}
	switch raw := w.Nodes[0].Metadata.raw; {
	case len(raw) > 0 && string(raw) == d.nodeMetaRaw:
		n.Metadata = maps.Clone(d.nodeMeta) // a copy: nodes do not share
	default:
		if err := unmarshalRaw(raw, &n.Metadata); err != nil {
			return nil, err
		}
		d.nodeMetaRaw, d.nodeMeta = string(raw), n.Metadata
	}
	switch {
	case len(w.Endpoints.raw) > 0 && string(w.Endpoints.raw) == p.epsRaw:
		s.Endpoints = p.eps
	default:
		if err := unmarshalRaw(w.Endpoints.raw, &s.Endpoints); err != nil {
			return nil, err
		}
		if p.epsRaw == "" && reflect.DeepEqual(s.Endpoints, p.eps) {
			s.Endpoints = p.eps // what the first record had, in these bytes
		} else {
			p.eps = s.Endpoints
		}
		p.epsRaw = string(w.Endpoints.raw)
	}
	if err := registry.Validate(s); err != nil {
		// %v: a bad record is ErrMalformed, not the caller's ErrInvalid.
		return nil, fmt.Errorf("%w: %v", registry.ErrMalformed, err)
	}
	return s, nil
}

// decodeWhole decodes and checks a record without sharing anything.
func decodeWhole(service, id string, value []byte) (*registry.Service, error) {
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
	s.Name, s.Nodes[0].ID = service, id // the key's strings: one copy fewer
	return &s, nil
}

// shareMap decodes raw, sharing *last when raw is the JSON *last came from
// (*lastRaw), or, when that is unknown, when the maps are equal; it makes
// the result the next one to share.
func shareMap(raw json.RawMessage, lastRaw *string, last *map[string]string) (map[string]string, error) {
	if len(raw) > 0 && string(raw) == *lastRaw {
		return *last, nil
	}
	var m map[string]string
	if err := unmarshalRaw(raw, &m); err != nil {
		return nil, err
	}
	if *lastRaw == "" && m != nil && *last != nil && maps.Equal(m, *last) {
		m = *last
	}
	*lastRaw, *last = string(raw), m
	return m, nil
}

// unmarshalRaw decodes a part of a record; absent parts leave v alone.
func unmarshalRaw(raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		return nil
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return fmt.Errorf("%w: %w", registry.ErrMalformed, err)
	}
	return nil
}

// trunc shortens s for log lines and errors.
func trunc(s string) string {
	const limit = 96
	if len(s) > limit {
		return s[:limit] + "..."
	}
	return s
}

// recordSum hashes what registry.SameNode compares of a single-node record,
// so that the same data written in other bytes (reformatted, keys in
// another order) hashes the same: name, version, metadata (keys sorted),
// endpoints and node. Empty and absent maps and lists hash alike.
func recordSum(s *registry.Service) uint64 {
	var h maphash.Hash
	h.SetSeed(seed)
	str := func(x string) {
		writeLen(&h, len(x))
		h.WriteString(x)
	}
	strMap := func(m map[string]string) {
		writeLen(&h, len(m))
		for _, k := range slices.Sorted(maps.Keys(m)) {
			str(k)
			str(m[k])
		}
	}
	var value func(v *registry.Value)
	value = func(v *registry.Value) {
		if v == nil {
			writeLen(&h, -1)
			return
		}
		str(v.Name)
		str(v.Type)
		writeLen(&h, len(v.Values))
		for _, c := range v.Values {
			value(c)
		}
	}
	str(s.Name)
	str(s.Version)
	strMap(s.Metadata)
	writeLen(&h, len(s.Endpoints))
	for _, e := range s.Endpoints {
		if e == nil {
			writeLen(&h, -1)
			continue
		}
		str(e.Name)
		value(e.Request)
		value(e.Response)
		strMap(e.Metadata)
	}
	writeLen(&h, len(s.Nodes))
	for _, n := range s.Nodes {
		if n == nil {
			writeLen(&h, -1)
			continue
		}
		str(n.ID)
		str(n.Address)
		strMap(n.Metadata)
	}
	return h.Sum64()
}

func writeLen(h *maphash.Hash, n int) {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(n))
	h.Write(b[:])
}
