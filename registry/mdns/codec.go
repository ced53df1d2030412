package mdns

import (
	"bytes"
	"compress/zlib"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/beacon-go/beacon/registry"
)

// txtChunk is the longest string in a TXT record.
const txtChunk = 255

// record is the JSON inside a TXT record: a registry.Service with one node,
// plus "service" for go-micro's decoder. go-micro's own records have
// "service" (spelt "Service"), version, endpoints and metadata (node
// metadata) and no "nodes".
type record struct {
	Name      string               `json:"name,omitempty"`
	Service   string               `json:"service,omitempty"`
	Version   string               `json:"version"`
	Metadata  map[string]string    `json:"metadata"`
	Endpoints []*registry.Endpoint `json:"endpoints"`
	Nodes     []*registry.Node     `json:"nodes,omitempty"`
}

// encodeTXT encodes a service with exactly one node into TXT strings.
func encodeTXT(s *registry.Service) ([]string, error) {
	if s == nil || len(s.Nodes) != 1 {
		return nil, errors.New("mdns: encode needs a service with one node")
	}
	b, err := json.Marshal(&record{
		Name: s.Name, Service: s.Name, Version: s.Version,
		Metadata: s.Metadata, Endpoints: s.Endpoints, Nodes: s.Nodes,
	})
	if err != nil {
		return nil, err
	}
	var z bytes.Buffer
	w, _ := zlib.NewWriterLevel(&z, zlib.BestCompression) // the level is valid
	if _, err := w.Write(b); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	h := hex.EncodeToString(z.Bytes())
	out := make([]string, 0, len(h)/txtChunk+1)
	for len(h) > txtChunk {
		out = append(out, h[:txtChunk])
		h = h[txtChunk:]
	}
	return append(out, h), nil
}

// decodeTXT decodes TXT strings into a record. It never allocates more than
// about MaxRecordSize + MaxDecodedSize bytes whatever the input. Errors
// match registry.ErrMalformed.
func decodeTXT(txt []string) (*record, error) {
	n := 0
	for _, s := range txt {
		n += len(s)
	}
	switch {
	case n == 0:
		return nil, fmt.Errorf("%w: empty TXT", registry.ErrMalformed)
	case n > MaxRecordSize:
		return nil, fmt.Errorf("%w: TXT of %d bytes, more than %d", registry.ErrMalformed, n, MaxRecordSize)
	}
	raw, err := hex.DecodeString(strings.Join(txt, ""))
	if err != nil {
		return nil, fmt.Errorf("%w: TXT is not hex: %v", registry.ErrMalformed, err)
	}
	zr, err := zlib.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, fmt.Errorf("%w: TXT is not zlib: %v", registry.ErrMalformed, err)
	}
	js, err := io.ReadAll(io.LimitReader(zr, MaxDecodedSize+1))
	if err != nil {
		return nil, fmt.Errorf("%w: TXT zlib: %v", registry.ErrMalformed, err)
	}
	if len(js) > MaxDecodedSize {
		return nil, fmt.Errorf("%w: TXT decompresses to more than %d bytes", registry.ErrMalformed, MaxDecodedSize)
	}
	var rec record
	if err := json.Unmarshal(js, &rec); err != nil {
		return nil, fmt.Errorf("%w: TXT JSON: %v", registry.ErrMalformed, err)
	}
	return &rec, nil
}

// service turns a decoded Beacon record into a one-node service. It checks
// that the record is one of ours (exactly one node) and valid.
func (rec *record) service() (*registry.Service, error) {
	if len(rec.Nodes) != 1 || rec.Nodes[0] == nil {
		return nil, fmt.Errorf("%w: record has %d nodes, want 1", registry.ErrMalformed, len(rec.Nodes))
	}
	name := rec.Name
	if name == "" {
		name = rec.Service
	}
	s := &registry.Service{Name: name, Version: rec.Version, Metadata: rec.Metadata, Endpoints: rec.Endpoints, Nodes: rec.Nodes}
	if err := registry.Validate(s); err != nil {
		return nil, fmt.Errorf("%w: %v", registry.ErrMalformed, err)
	}
	return s, nil
}

// goMicro reports whether the record is go-micro's (no nodes, a service).
func (rec *record) goMicro() bool { return len(rec.Nodes) == 0 && rec.Service != "" && rec.Name == "" }
