package consul

import (
	"bytes"
	"compress/zlib"
	"encoding/hex"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/beacon-go/beacon/registry"
)

// gmEncode is go-micro's encode (registry/consul/encoding.go of
// go-micro.dev/v5 v5.30.0): hex(zlib(data)) at zlib's default level.
func gmEncode(data []byte) string {
	var b bytes.Buffer
	w := zlib.NewWriter(&b)
	w.Write(data)
	w.Close()
	return hex.EncodeToString(b.Bytes())
}

// gmDecodeAll reads tags the way go-micro does (decodeVersion,
// decodeMetadata, decodeEndpoints, new encoding only).
func gmDecodeAll(t *testing.T, tags []string) (version string, md map[string]string, eps []*registry.Endpoint) {
	t.Helper()
	dec := func(s string) []byte {
		z, err := hex.DecodeString(s)
		if err != nil {
			t.Fatalf("tag is not hex: %v", err)
		}
		zr, err := zlib.NewReader(bytes.NewReader(z))
		if err != nil {
			t.Fatalf("tag is not zlib: %v", err)
		}
		var out bytes.Buffer
		out.ReadFrom(zr)
		return out.Bytes()
	}
	md = map[string]string{}
	for _, tag := range tags {
		if len(tag) < 2 || tag[1] != '-' {
			continue
		}
		switch tag[0] {
		case 'v':
			if version == "" {
				version = string(dec(tag[2:]))
			}
		case 't':
			var kv map[string]string
			if err := json.Unmarshal(dec(tag[2:]), &kv); err != nil {
				t.Fatal(err)
			}
			for k, v := range kv {
				md[k] = v
			}
		case 'e':
			var e *registry.Endpoint
			if err := json.Unmarshal(dec(tag[2:]), &e); err != nil {
				t.Fatal(err)
			}
			eps = append(eps, e)
		}
	}
	return version, md, eps
}

// TestGoMicroTags: what Beacon writes in tags is what go-micro's decoders
// read, and the registration still carries the Meta; the tags are
// deterministic and the revision tag changes with the record.
func TestGoMicroTags(t *testing.T) {
	r := &Registry{}
	s := testService(map[string]string{"team": "a"}, map[string]string{"zone": "z1", "protocol": "beacon", "a.b": "dots"}, 3)
	reg, err := r.registration(s, s.Nodes[0], 0)
	if err != nil {
		t.Fatal(err)
	}
	version, md, eps := gmDecodeAll(t, reg.Tags)
	if version != s.Version {
		t.Errorf("go-micro reads version %q, want %q", version, s.Version)
	}
	if !maps.Equal(md, s.Nodes[0].Metadata) {
		t.Errorf("go-micro reads metadata %v, want %v", md, s.Nodes[0].Metadata)
	}
	if js1, js2 := mustJSON(t, eps), mustJSON(t, s.Endpoints); js1 != js2 {
		t.Errorf("go-micro reads endpoints %s, want %s", js1, js2)
	}
	if !isBeacon(reg.Meta) {
		t.Error("the registration lost Beacon's Meta")
	}
	again, _ := r.registration(s, s.Nodes[0], 0)
	if !slices.Equal(reg.Tags, again.Tags) {
		t.Error("tags are not deterministic")
	}
	rev := func(tags []string) string {
		i := slices.IndexFunc(tags, func(t string) bool { return strings.HasPrefix(t, revTag) })
		if i < 0 {
			t.Fatal("no revision tag")
		}
		return tags[i]
	}
	s.Metadata["team"] = "b" // service metadata: in Meta only
	changed, _ := r.registration(s, s.Nodes[0], 0)
	if rev(changed.Tags) == rev(reg.Tags) {
		t.Error("the revision tag did not change with the service metadata")
	}
	s.Nodes[0].Address = "127.0.0.1:8081"
	moved, _ := r.registration(s, s.Nodes[0], 0)
	if rev(moved.Tags) == rev(changed.Tags) {
		t.Error("the revision tag did not change with the port")
	}
	// Beacon reads its own record from Meta, not from the tags.
	e := entryFor(reg)
	e.Service.Tags = reg.Tags
	got, err := (&codec{}).decodeEntry("codec.test", e)
	if err != nil {
		t.Fatal(err)
	}
	if got.Metadata["team"] != "a" || got.Nodes[0].ID != s.Nodes[0].ID {
		t.Errorf("Beacon record decoded as %+v", got)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	js, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(js)
}

// goMicroEntry is what go-micro v5.30.0's consul registry registers for a
// node: tags v-/t-/e-, the node metadata also as Meta, ID = node ID.
func goMicroEntry(id, version string, md map[string]string, eps []*registry.Endpoint) *entry {
	var tags []string
	for k, v := range md {
		js, _ := json.Marshal(map[string]string{k: v})
		tags = append(tags, "t-"+gmEncode(js))
	}
	for _, e := range eps {
		js, _ := json.Marshal(e)
		tags = append(tags, "e-"+gmEncode(js))
	}
	tags = append(tags, "v-"+gmEncode([]byte(version)))
	return &entry{
		Node:    &entryNode{Node: "agent-1", Address: "10.0.0.1"},
		Service: &entryService{ID: id, Service: "greeter", Address: "10.0.0.7", Port: 9090, Tags: tags, Meta: md},
	}
}

func TestDecodeGoMicro(t *testing.T) {
	var c codec
	eps := []*registry.Endpoint{{Name: "Greeter.Hello", Request: &registry.Value{Name: "Req", Type: "Req"}, Metadata: map[string]string{"stream": "false"}}}
	md := map[string]string{"protocol": "mucp", "server": "mucp", "registry": "consul"}
	s, err := c.decodeEntry("greeter", goMicroEntry("greeter-1b2c", "1.0.0", md, eps))
	if err != nil {
		t.Fatal(err)
	}
	n := s.Nodes[0]
	if n.ID != "greeter-1b2c" || n.Address != "10.0.0.7:9090" || s.Version != "1.0.0" || !maps.Equal(n.Metadata, md) ||
		len(s.Endpoints) != 1 || s.Endpoints[0].Name != "Greeter.Hello" || s.Endpoints[0].Metadata["stream"] != "false" {
		t.Errorf("go-micro record decoded as %+v / %+v", s, n)
	}
	// An empty version is a go-micro record all the same.
	if s, err := c.decodeEntry("greeter", goMicroEntry("g2", "", nil, nil)); err != nil || s.Nodes[0].ID != "g2" || s.Version != "" {
		t.Errorf("empty version: %+v, %v", s, err)
	}
	// Tags that only look like go-micro's: another tool's record.
	other := &entry{Node: &entryNode{Node: "h", Address: "10.0.0.1"}, Service: &entryService{ID: "web", Service: "greeter", Port: 80, Tags: []string{"v-1.2", "t-x", "e-y"}}}
	if s, err := c.decodeEntry("greeter", other); err != nil || s.Nodes[0].ID != "web@h" || s.Version != "" {
		t.Errorf("look-alike tags: %+v, %v", s, err)
	}
	// A go-micro record with a broken metadata or endpoint tag is skipped.
	for _, bad := range []string{"t-zz", "t-" + gmEncode([]byte("not json")), "e-" + gmEncode([]byte("null")), "e-00"} {
		e := goMicroEntry("g3", "1", nil, nil)
		e.Service.Tags = append(e.Service.Tags, bad)
		if _, err := c.decodeEntry("greeter", e); !errors.Is(err, registry.ErrMalformed) {
			t.Errorf("tag %q: err = %v, want ErrMalformed", bad, err)
		}
	}
	// Metadata Beacon does not accept: skipped as a whole.
	if _, err := c.decodeEntry("greeter", goMicroEntry("g4", "1", map[string]string{"k": "a\x00b"}, nil)); !errors.Is(err, registry.ErrMalformed) {
		t.Errorf("bad metadata: err = %v", err)
	}
}

// TestOwner: which of several entries with one node ID is the node.
func TestOwner(t *testing.T) {
	const id = "greeter-1"
	beaconMeta := map[string]string{metaMarker: formatVersion}
	mk := func(node string, create uint64, meta map[string]string, checks ...entryCheck) candidate {
		e := &entry{Node: &entryNode{Node: node}, Service: &entryService{ID: id, Service: "greeter", Port: 1, Meta: meta, CreateIndex: create}, Checks: checks}
		return candidate{e: e}
	}
	serf := func(status string) entryCheck { return entryCheck{CheckID: serfHealth, Status: status} }
	ttl := func(status string) entryCheck { return entryCheck{CheckID: checkID(id), ServiceID: id, Status: status} }
	other := func(status string) entryCheck {
		return entryCheck{CheckID: "service:" + id, ServiceID: id, Status: status}
	}
	const P, C = api.HealthPassing, api.HealthCritical
	tests := []struct {
		name    string
		members map[string]bool
		cands   []candidate
		want    string // node of the chosen entry
		visible bool
	}{
		{"later bare copy on another node", nil, []candidate{mk("a", 10, beaconMeta, serf(P), ttl(P)), mk("evil", 20, beaconMeta)}, "a", true},
		{"earlier bare copy on another node", nil, []candidate{mk("evil", 5, beaconMeta), mk("a", 10, beaconMeta, serf(P), ttl(P))}, "a", true},
		{"real node crashed, bare copy passing", nil, []candidate{mk("a", 10, beaconMeta, serf(P), ttl(C)), mk("evil", 20, beaconMeta)}, "a", false},
		{"forged TTL check, no agent", nil, []candidate{mk("a", 10, beaconMeta, serf(P), ttl(C)), mk("evil", 20, beaconMeta, ttl(P))}, "a", false},
		{"forged serfHealth, members known", map[string]bool{"a": true}, []candidate{mk("a", 10, beaconMeta, serf(P), ttl(C)), mk("evil", 20, beaconMeta, serf(P), ttl(P))}, "a", false},
		{"forged serfHealth, members unknown: first registered", nil, []candidate{mk("a", 10, beaconMeta, serf(P), ttl(P)), mk("evil", 20, beaconMeta, serf(P), ttl(P))}, "a", true},
		{"wrong check name on a Beacon record", nil, []candidate{mk("a", 10, beaconMeta, serf(P), ttl(P)), mk("evil", 5, beaconMeta, serf(P), other(P))}, "a", true},
		{"moved to another agent, old copy failing", map[string]bool{"a": true, "b": true}, []candidate{mk("a", 10, beaconMeta, serf(P), ttl(C)), mk("b", 30, beaconMeta, serf(P), ttl(P))}, "b", true},
		{"moved, both passing: first registered", map[string]bool{"a": true, "b": true}, []candidate{mk("b", 30, beaconMeta, serf(P), ttl(P)), mk("a", 10, beaconMeta, serf(P), ttl(P))}, "a", true},
		{"TTL 0 node and a copy: first registered", nil, []candidate{mk("evil", 20, beaconMeta), mk("a", 10, beaconMeta)}, "a", true},
		{"go-micro node: its own check counts", nil, []candidate{mk("evil", 5, nil), mk("a", 10, nil, serf(P), other(P))}, "a", true},
		{"same CreateIndex: node name", nil, []candidate{mk("b", 10, nil), mk("a", 10, nil)}, "a", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := owner(tc.cands, tc.members)
			if nodeName(got.e) != tc.want {
				t.Errorf("chose the entry on %s, want %s", nodeName(got.e), tc.want)
			}
			if visible := !critical(got.e.Checks); visible != tc.visible {
				t.Errorf("visible = %v, want %v", visible, tc.visible)
			}
		})
	}
}
