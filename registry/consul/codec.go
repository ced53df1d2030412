package consul

import (
	"bytes"
	"compress/flate"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/hashicorp/consul/api"

	"github.com/beacon-go/beacon/registry"
)

// Consul's limits on service metadata (structs.ValidateServiceMetadata).
const (
	consulMaxMetaKeys  = 64
	consulMaxKeyLen    = 128
	consulMaxValueLen  = 512
	consulReservedPref = "consul-"
)

// The metadata layout (see the package documentation).
const (
	metaMarker     = "beacon"  // present on every record Beacon writes
	formatVersion  = "1"       // value of metaMarker
	metaVersion    = "version" // the service version, verbatim
	svcMetaPrefix  = "s-"      // "s-<key>": one service metadata entry
	nodeMetaPrefix = "n-"      // "n-<key>": one node metadata entry
	blobPrefix     = "b-"      // "b-0", "b-1", ...: chunks of the blob
	fixedKeys      = 2         // metaMarker and metaVersion

	// maxBlobJSON caps the decompressed blob, on both sides: Register
	// refuses larger records, decoding stops reading there.
	maxBlobJSON = 4 << 20
)

// blob is what does not fit in plain metadata keys: the endpoints and the
// metadata entries whose keys consul would refuse (or that did not fit in
// the key budget). It travels as base64url(deflate(JSON)).
type blob struct {
	Service   map[string]string    `json:"s,omitempty"`
	Node      map[string]string    `json:"n,omitempty"`
	Endpoints []*registry.Endpoint `json:"e,omitempty"`
}

func (b *blob) empty() bool {
	return len(b.Service) == 0 && len(b.Node) == 0 && len(b.Endpoints) == 0
}

// plainKey reports whether a metadata key can be stored as prefix+key: the
// result must match consul's ^[A-Za-z0-9_-]+$ and fit in 128 bytes.
func plainKey(prefix, key string) bool {
	if key == "" || len(prefix)+len(key) > consulMaxKeyLen {
		return false
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// codec encodes and decodes records; it pools the (large) deflate writers
// and readers. The zero value is ready to use and it is safe for concurrent
// use.
type codec struct {
	writers  sync.Pool // *flate.Writer
	readers  sync.Pool // flate reader (io.ReadCloser and flate.Resetter)
	zwriters sync.Pool // *zlib.Writer (go-micro's tags)
}

// encodeMeta builds the consul service Meta for node n of s (already
// validated). It fails with a *registry.ValidationError when the record does
// not fit in consul's 64 keys of 512 bytes. The encoding is deterministic:
// the same service and node give equal maps.
func (c *codec) encodeMeta(s *registry.Service, n *registry.Node) (map[string]string, error) {
	meta := map[string]string{metaMarker: formatVersion}
	if s.Version != "" {
		meta[metaVersion] = s.Version
	}
	// First try: metadata with plain keys as readable "s-"/"n-" keys, the
	// rest in the blob.
	var over blob
	over.Endpoints = s.Endpoints
	for k, v := range s.Metadata {
		if plainKey(svcMetaPrefix, k) {
			meta[svcMetaPrefix+k] = v
		} else {
			if over.Service == nil {
				over.Service = make(map[string]string)
			}
			over.Service[k] = v
		}
	}
	for k, v := range n.Metadata {
		if plainKey(nodeMetaPrefix, k) {
			meta[nodeMetaPrefix+k] = v
		} else {
			if over.Node == nil {
				over.Node = make(map[string]string)
			}
			over.Node[k] = v
		}
	}
	chunks, err := c.encodeBlob(&over)
	if err != nil {
		return nil, err
	}
	if len(meta)+len(chunks) > consulMaxMetaKeys {
		// Second try: everything but the version in the blob, which
		// compresses the keys too.
		meta = map[string]string{metaMarker: formatVersion}
		if s.Version != "" {
			meta[metaVersion] = s.Version
		}
		all := blob{Service: s.Metadata, Node: n.Metadata, Endpoints: s.Endpoints}
		if chunks, err = c.encodeBlob(&all); err != nil {
			return nil, err
		}
		if len(meta)+len(chunks) > consulMaxMetaKeys {
			return nil, &registry.ValidationError{Field: "service", Value: s.Name,
				Reason: fmt.Sprintf("metadata and endpoints need %d encoded bytes, more than consul's service metadata holds (%d keys of %d bytes)",
					len(strings.Join(chunks, "")), consulMaxMetaKeys-fixedKeys, consulMaxValueLen)}
		}
	}
	for i, c := range chunks {
		meta[blobPrefix+strconv.Itoa(i)] = c
	}
	return meta, nil
}

// encodeBlob returns the blob as base64url(deflate(JSON)) cut into chunks of
// consulMaxValueLen bytes; none for an empty blob.
func (c *codec) encodeBlob(b *blob) ([]string, error) {
	if b.empty() {
		return nil, nil
	}
	js, err := json.Marshal(b)
	if err != nil {
		return nil, &registry.ValidationError{Field: "service", Reason: "cannot encode: " + err.Error()}
	}
	if len(js) > maxBlobJSON {
		return nil, &registry.ValidationError{Field: "service", Reason: fmt.Sprintf("encoded record of %d bytes, more than %d", len(js), maxBlobJSON)}
	}
	var buf bytes.Buffer
	zw, _ := c.writers.Get().(*flate.Writer)
	if zw == nil {
		var err error
		if zw, err = flate.NewWriter(&buf, flate.BestCompression); err != nil {
			return nil, err
		}
	} else {
		zw.Reset(&buf)
	}
	_, err = zw.Write(js)
	if err == nil {
		err = zw.Close()
	}
	c.writers.Put(zw)
	if err != nil {
		return nil, err
	}
	enc := base64.RawURLEncoding.EncodeToString(buf.Bytes())
	var chunks []string
	for len(enc) > consulMaxValueLen {
		chunks = append(chunks, enc[:consulMaxValueLen])
		enc = enc[consulMaxValueLen:]
	}
	return append(chunks, enc), nil
}

// record is the decoded form of a Beacon record's Meta.
type record struct {
	version   string
	svcMeta   map[string]string
	nodeMeta  map[string]string
	endpoints []*registry.Endpoint
}

// isBeacon reports whether meta was written by this format of Beacon.
func isBeacon(meta map[string]string) bool { return meta[metaMarker] == formatVersion }

// decodeMeta decodes a Beacon record's Meta. Keys outside the layout are
// ignored. Errors match registry.ErrMalformed.
func (c *codec) decodeMeta(meta map[string]string) (*record, error) {
	rec := &record{version: meta[metaVersion]}
	var chunks []string
	nchunks := 0
	for k, v := range meta {
		switch {
		case strings.HasPrefix(k, svcMetaPrefix):
			if rec.svcMeta == nil {
				rec.svcMeta = make(map[string]string)
			}
			rec.svcMeta[k[len(svcMetaPrefix):]] = v
		case strings.HasPrefix(k, nodeMetaPrefix):
			if rec.nodeMeta == nil {
				rec.nodeMeta = make(map[string]string)
			}
			rec.nodeMeta[k[len(nodeMetaPrefix):]] = v
		case strings.HasPrefix(k, blobPrefix):
			i, err := strconv.Atoi(k[len(blobPrefix):])
			if err != nil || i < 0 || i >= consulMaxMetaKeys || strconv.Itoa(i) != k[len(blobPrefix):] {
				return nil, fmt.Errorf("%w: consul meta key %q", registry.ErrMalformed, trunc(k))
			}
			if chunks == nil {
				chunks = make([]string, consulMaxMetaKeys)
			}
			chunks[i] = v
			nchunks = max(nchunks, i+1)
		}
	}
	if nchunks == 0 {
		return rec, nil
	}
	var enc strings.Builder
	for i, c := range chunks[:nchunks] {
		if c == "" {
			return nil, fmt.Errorf("%w: blob chunk %d of %d missing or empty", registry.ErrMalformed, i, nchunks)
		}
		enc.WriteString(c)
	}
	b, err := c.decodeBlob(enc.String())
	if err != nil {
		return nil, err
	}
	if len(b.Service) > 0 && rec.svcMeta == nil {
		rec.svcMeta = make(map[string]string, len(b.Service))
	}
	maps.Copy(rec.svcMeta, b.Service)
	if len(b.Node) > 0 && rec.nodeMeta == nil {
		rec.nodeMeta = make(map[string]string, len(b.Node))
	}
	maps.Copy(rec.nodeMeta, b.Node)
	rec.endpoints = b.Endpoints
	return rec, nil
}

func (c *codec) decodeBlob(enc string) (*blob, error) {
	z, err := base64.RawURLEncoding.DecodeString(enc)
	if err != nil {
		return nil, fmt.Errorf("%w: blob is not base64url: %w", registry.ErrMalformed, err)
	}
	zr, _ := c.readers.Get().(io.ReadCloser)
	if zr == nil {
		zr = flate.NewReader(bytes.NewReader(z))
	} else if err := zr.(flate.Resetter).Reset(bytes.NewReader(z), nil); err != nil {
		return nil, err
	}
	js, err := io.ReadAll(io.LimitReader(zr, maxBlobJSON+1))
	c.readers.Put(zr)
	if err != nil {
		return nil, fmt.Errorf("%w: blob does not inflate: %w", registry.ErrMalformed, err)
	}
	if len(js) > maxBlobJSON {
		return nil, fmt.Errorf("%w: blob inflates to more than %d bytes", registry.ErrMalformed, maxBlobJSON)
	}
	b := new(blob)
	if err := json.Unmarshal(js, b); err != nil {
		return nil, fmt.Errorf("%w: blob is not the expected JSON: %w", registry.ErrMalformed, err)
	}
	return b, nil
}

// entry is the part of one /v1/health/service answer entry that the
// registry reads; decoding into it skips the rest of consul's (large)
// entries.
type entry struct {
	Node    *entryNode
	Service *entryService
	Checks  []entryCheck
}

type entryNode struct {
	Node    string
	Address string
}

type entryService struct {
	ID          string
	Service     string
	Address     string
	Port        int
	Tags        []string
	Meta        map[string]string
	CreateIndex uint64
	ModifyIndex uint64
}

type entryCheck struct {
	CheckID   string
	ServiceID string // "" for a node check (serfHealth, maintenance)
	Status    string
}

// decodeEntry turns one health entry of service name into a single-node
// Service. Records written by Beacon (Meta "beacon") are decoded in full
// from their Meta; records written by go-micro (a "v-" tag that decodes)
// from their tags, with go-micro's node ID (the service ID) as it is; both
// must pass registry.Validate. Other services (registered by other tools)
// become a node with ID "<service ID>@<consul node>", the address and port,
// the service's Meta as node metadata when it is valid, and an empty
// version. Errors match registry.ErrMalformed.
func (c *codec) decodeEntry(name string, e *entry) (*registry.Service, error) {
	if e == nil || e.Service == nil {
		return nil, fmt.Errorf("%w: entry without a service", registry.ErrMalformed)
	}
	as := e.Service
	host := as.Address
	if host == "" && e.Node != nil {
		host = e.Node.Address
	}
	if host == "" {
		return nil, fmt.Errorf("%w: service %q has no address", registry.ErrMalformed, trunc(as.ID))
	}
	if as.Port < 1 || as.Port > 65535 {
		return nil, fmt.Errorf("%w: service %q has port %d", registry.ErrMalformed, trunc(as.ID), as.Port)
	}
	addr := net.JoinHostPort(host, strconv.Itoa(as.Port))
	if err := registry.ValidateAddress("address", addr); err != nil {
		return nil, fmt.Errorf("%w: service %q: %w", registry.ErrMalformed, trunc(as.ID), err)
	}
	if isBeacon(as.Meta) {
		rec, err := c.decodeMeta(as.Meta)
		if err != nil {
			return nil, fmt.Errorf("service %q: %w", trunc(as.ID), err)
		}
		s := &registry.Service{
			Name:      name,
			Version:   rec.version,
			Metadata:  rec.svcMeta,
			Endpoints: rec.endpoints,
			Nodes:     []*registry.Node{{ID: as.ID, Address: addr, Metadata: rec.nodeMeta}},
		}
		if err := registry.Validate(s); err != nil {
			return nil, fmt.Errorf("%w: service %q: %w", registry.ErrMalformed, trunc(as.ID), err)
		}
		return s, nil
	}
	if version, ok := goMicroVersion(as.Tags); ok {
		md, eps, err := decodeGoMicro(as.Tags)
		if err != nil {
			return nil, fmt.Errorf("service %q: %w", trunc(as.ID), err)
		}
		s := &registry.Service{
			Name:      name,
			Version:   version,
			Endpoints: eps,
			Nodes:     []*registry.Node{{ID: as.ID, Address: addr, Metadata: md}},
		}
		if err := registry.Validate(s); err != nil {
			return nil, fmt.Errorf("%w: go-micro service %q: %w", registry.ErrMalformed, trunc(as.ID), err)
		}
		return s, nil
	}
	id := as.ID
	if e.Node != nil && e.Node.Node != "" {
		id += "@" + e.Node.Node
	}
	if err := registry.ValidateNodeID("id", id); err != nil {
		return nil, fmt.Errorf("%w: service %q: %w", registry.ErrMalformed, trunc(as.ID), err)
	}
	n := &registry.Node{ID: id, Address: addr}
	if len(as.Meta) > 0 && registry.ValidateMetadata("meta", as.Meta) == nil {
		n.Metadata = maps.Clone(as.Meta)
	}
	return &registry.Service{Name: name, Nodes: []*registry.Node{n}}, nil
}

// critical reports whether any check of the entry (service or node check)
// is critical: such nodes are hidden until consul reaps them.
func critical(checks []entryCheck) bool {
	return slices.ContainsFunc(checks, func(c entryCheck) bool { return c.Status == api.HealthCritical })
}

// splitAddr turns a validated "host:port" into consul's Address and Port.
func splitAddr(addr string) (string, int, error) {
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, err
	}
	return host, port, nil
}

func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
