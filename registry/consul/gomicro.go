package consul

import (
	"bytes"
	"compress/zlib"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/beacon-go/beacon/registry"
)

// go-micro's consul layout (go-micro.dev/v5/registry/consul, encoding.go):
// the service version, the node metadata and the endpoints travel only in
// the service's tags, each hex(zlib(...)); go-micro reads nothing else but
// the address, port and service ID (its node ID). Beacon writes these tags
// next to its Meta so that go-micro sees Beacon's nodes whole, and reads
// them from records without Beacon's Meta.
const (
	gmVersionTag  = "v-" // "v-" + hex(zlib(version)); written even for ""
	gmMetaTag     = "t-" // "t-" + hex(zlib(JSON {key: value})), one per node metadata entry
	gmEndpointTag = "e-" // "e-" + hex(zlib(JSON endpoint)), one per endpoint

	// revTag is Beacon's own tag: a hash of the whole record (node ID,
	// address, Meta), unique per node. Any change to a Beacon node changes
	// the tags consul's catalog lists for the service, which is how the
	// shared watch (feed.go) tells which service changed.
	revTag = "beacon-rev-"
)

// encodeTags returns the tags of node n of s: go-micro's (node metadata
// sorted by key, endpoints in order, version) and Beacon's revision tag over
// host, port and meta (the record's Meta). The result is deterministic.
func (c *codec) encodeTags(s *registry.Service, n *registry.Node, host string, port int, meta map[string]string) ([]string, error) {
	tags := make([]string, 0, len(n.Metadata)+len(s.Endpoints)+2)
	for _, k := range slices.Sorted(maps.Keys(n.Metadata)) {
		js, err := json.Marshal(map[string]string{k: n.Metadata[k]})
		if err != nil {
			return nil, &registry.ValidationError{Field: "node.metadata", Value: k, Reason: "cannot encode: " + err.Error()}
		}
		tags = append(tags, gmMetaTag+c.zhex(js))
	}
	for _, e := range s.Endpoints {
		js, err := json.Marshal(e)
		if err != nil {
			return nil, &registry.ValidationError{Field: "service.endpoints", Value: e.Name, Reason: "cannot encode: " + err.Error()}
		}
		tags = append(tags, gmEndpointTag+c.zhex(js))
	}
	tags = append(tags, gmVersionTag+c.zhex([]byte(s.Version)))
	return append(tags, revTag+recordRev(n.ID, host, port, meta)), nil
}

// recordRev hashes what a Beacon node's registration carries (FNV-64a, 16
// hex digits).
func recordRev(id, host string, port int, meta map[string]string) string {
	h := fnv.New64a()
	for _, part := range []string{id, host, strconv.Itoa(port)} {
		io.WriteString(h, part)
		h.Write([]byte{0})
	}
	for _, k := range slices.Sorted(maps.Keys(meta)) {
		io.WriteString(h, k)
		h.Write([]byte{0})
		io.WriteString(h, meta[k])
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// zhex is go-micro's encode: hex(zlib(data)).
func (c *codec) zhex(data []byte) string {
	var buf bytes.Buffer
	zw, _ := c.zwriters.Get().(*zlib.Writer)
	if zw == nil {
		zw, _ = zlib.NewWriterLevel(&buf, zlib.BestCompression)
	} else {
		zw.Reset(&buf)
	}
	zw.Write(data) // writes to a bytes.Buffer do not fail
	zw.Close()
	c.zwriters.Put(zw)
	return hex.EncodeToString(buf.Bytes())
}

// unzhex is go-micro's decode, bounded by maxBlobJSON.
func unzhex(s string) ([]byte, error) {
	z, err := hex.DecodeString(s)
	if err != nil {
		return nil, err
	}
	zr, err := zlib.NewReader(bytes.NewReader(z))
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	data, err := io.ReadAll(io.LimitReader(zr, maxBlobJSON+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxBlobJSON {
		return nil, fmt.Errorf("inflates to more than %d bytes", maxBlobJSON)
	}
	return data, nil
}

// goMicroVersion returns the version of a go-micro record: the first tag
// "v-<hex(zlib)>" that decodes. ok is false when there is none, so the
// record is not go-micro's (a tag such as "v-1.2" of another tool does not
// decode).
func goMicroVersion(tags []string) (version string, ok bool) {
	for _, tag := range tags {
		if !strings.HasPrefix(tag, gmVersionTag) {
			continue
		}
		if v, err := unzhex(tag[len(gmVersionTag):]); err == nil {
			return string(v), true
		}
	}
	return "", false
}

// decodeGoMicro reads a go-micro record's node metadata and endpoints from
// its tags (the version is goMicroVersion's). Errors match
// registry.ErrMalformed; go-micro itself would skip what does not decode,
// Beacon skips the record with a warning rather than show half of it.
func decodeGoMicro(tags []string) (md map[string]string, eps []*registry.Endpoint, err error) {
	for _, tag := range tags {
		switch {
		case strings.HasPrefix(tag, gmMetaTag):
			js, err := unzhex(tag[len(gmMetaTag):])
			if err != nil {
				return nil, nil, fmt.Errorf("%w: go-micro metadata tag: %w", registry.ErrMalformed, err)
			}
			var kv map[string]string
			if err := json.Unmarshal(js, &kv); err != nil {
				return nil, nil, fmt.Errorf("%w: go-micro metadata tag: %w", registry.ErrMalformed, err)
			}
			if md == nil {
				md = make(map[string]string, len(kv))
			}
			maps.Copy(md, kv)
		case strings.HasPrefix(tag, gmEndpointTag):
			js, err := unzhex(tag[len(gmEndpointTag):])
			if err != nil {
				return nil, nil, fmt.Errorf("%w: go-micro endpoint tag: %w", registry.ErrMalformed, err)
			}
			var e *registry.Endpoint
			if err := json.Unmarshal(js, &e); err != nil || e == nil {
				return nil, nil, fmt.Errorf("%w: go-micro endpoint tag: not an endpoint", registry.ErrMalformed)
			}
			eps = append(eps, e)
		}
	}
	return md, eps, nil
}
