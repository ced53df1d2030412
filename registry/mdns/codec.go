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
//
// "metadata" is the node's metadata, because that is how go-micro reads it;
// the service's metadata is in "service_metadata", which is always present
// in records written since. Records of older Beacon versions have no
// "service_metadata" and the service's metadata in "metadata".
type record struct {
	Name            string               `json:"name,omitempty"`
	Service         string               `json:"service,omitempty"`
	Version         string               `json:"version"`
	Metadata        map[string]string    `json:"metadata"`
	ServiceMetadata *map[string]string   `json:"service_metadata,omitempty"`
	Endpoints       []*registry.Endpoint `json:"endpoints"`
	Nodes           []*registry.Node     `json:"nodes,omitempty"`
}

// payload is a node's record as it travels: the zlib bytes (what a
// signature covers) and their hex, cut into TXT strings.
type payload struct {
	raw    []byte
	chunks []string
}

// encodeTXT encodes a service with exactly one node into TXT strings.
func encodeTXT(s *registry.Service) ([]string, error) {
	p, err := encodePayload(s)
	if err != nil {
		return nil, err
	}
	return p.chunks, nil
}

// encodePayload encodes a service with exactly one node.
func encodePayload(s *registry.Service) (*payload, error) {
	if s == nil || len(s.Nodes) != 1 {
		return nil, errors.New("mdns: encode needs a service with one node")
	}
	smd := s.Metadata
	if smd == nil {
		smd = map[string]string{} // present, so that readers know the format
	}
	b, err := json.Marshal(&record{
		Name: s.Name, Service: s.Name, Version: s.Version,
		Metadata: s.Nodes[0].Metadata, ServiceMetadata: &smd, Endpoints: s.Endpoints, Nodes: s.Nodes,
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
	return &payload{raw: z.Bytes(), chunks: chunkHex(hex.EncodeToString(z.Bytes()))}, nil
}

// chunkHex cuts h into TXT strings of at most txtChunk bytes.
func chunkHex(h string) []string {
	out := make([]string, 0, len(h)/txtChunk+1)
	for len(h) > txtChunk {
		out = append(out, h[:txtChunk])
		h = h[txtChunk:]
	}
	return append(out, h)
}

// decodeTXT decodes TXT strings into a record. It never allocates more than
// about MaxRecordSize + MaxDecodedSize bytes whatever the input. Errors
// match registry.ErrMalformed.
func decodeTXT(txt []string) (*record, error) {
	rec, _, _, err := decodeSigned(txt)
	return rec, err
}

// decodeSigned decodes TXT strings into a record and returns the zlib
// bytes and the signature block that follows them, if any (see sign.go: a
// signature travels as one more hex string after the record's, which
// readers that do not know it, go-micro's among them, never look at: zlib
// ends where the record ends). Bytes after the zlib stream that are not a
// signature block are an error.
func decodeSigned(txt []string) (rec *record, raw, sig []byte, err error) {
	n := 0
	for _, s := range txt {
		n += len(s)
	}
	switch {
	case n == 0:
		return nil, nil, nil, fmt.Errorf("%w: empty TXT", registry.ErrMalformed)
	case n > MaxRecordSize:
		return nil, nil, nil, fmt.Errorf("%w: TXT of %d bytes, more than %d", registry.ErrMalformed, n, MaxRecordSize)
	}
	all, err := hex.DecodeString(strings.Join(txt, ""))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: TXT is not hex: %v", registry.ErrMalformed, err)
	}
	br := bytes.NewReader(all) // an io.ByteReader: flate reads no further than its stream
	zr, err := zlib.NewReader(br)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: TXT is not zlib: %v", registry.ErrMalformed, err)
	}
	js, err := io.ReadAll(io.LimitReader(zr, MaxDecodedSize+1))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("%w: TXT zlib: %v", registry.ErrMalformed, err)
	}
	if len(js) > MaxDecodedSize {
		return nil, nil, nil, fmt.Errorf("%w: TXT decompresses to more than %d bytes", registry.ErrMalformed, MaxDecodedSize)
	}
	if rest := br.Len(); rest > 0 {
		raw, sig = all[:len(all)-rest], all[len(all)-rest:]
		if !isSigBlock(sig) {
			return nil, nil, nil, fmt.Errorf("%w: %d bytes after the TXT's zlib stream that are not a signature", registry.ErrMalformed, rest)
		}
	} else {
		raw = all
	}
	var r record
	if err := json.Unmarshal(js, &r); err != nil {
		return nil, nil, nil, fmt.Errorf("%w: TXT JSON: %v", registry.ErrMalformed, err)
	}
	return &r, raw, sig, nil
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
	md := rec.Metadata // records of Beacon before service_metadata
	if rec.ServiceMetadata != nil {
		md = *rec.ServiceMetadata
		if len(md) == 0 {
			md = nil
		}
	}
	s := &registry.Service{Name: name, Version: rec.Version, Metadata: md, Endpoints: rec.Endpoints, Nodes: rec.Nodes}
	if err := registry.Validate(s); err != nil {
		return nil, fmt.Errorf("%w: %v", registry.ErrMalformed, err)
	}
	return s, nil
}

// goMicro reports whether the record is go-micro's (no nodes, a service).
func (rec *record) goMicro() bool { return len(rec.Nodes) == 0 && rec.Service != "" && rec.Name == "" }
