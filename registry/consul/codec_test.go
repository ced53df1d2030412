package consul

import (
	"bytes"
	"compress/flate"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/beacon-go/beacon/registry"
)

// testService returns a service with one node and the given metadata and
// number of endpoints.
func testService(svcMeta, nodeMeta map[string]string, endpoints int) *registry.Service {
	s := &registry.Service{
		Name:     "codec.test",
		Version:  "1.2.3",
		Metadata: svcMeta,
		Nodes:    []*registry.Node{{ID: "codec-node-1", Address: "127.0.0.1:8080", Metadata: nodeMeta}},
	}
	for i := range endpoints {
		s.Endpoints = append(s.Endpoints, &registry.Endpoint{
			Name:     fmt.Sprintf("Greeter.Method%d", i),
			Request:  &registry.Value{Name: "Req", Type: "Req", Values: []*registry.Value{{Name: "name", Type: "string"}, {Name: "n", Type: "int64"}}},
			Response: &registry.Value{Name: "Rsp", Type: "Rsp", Values: []*registry.Value{{Name: "msg", Type: "string"}}},
			Metadata: map[string]string{"stream": "false"},
		})
	}
	return s
}

func manyKeys(prefix string, n, valueLen int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("%s%d", prefix, i)] = strings.Repeat(string(rune('a'+i%26)), valueLen)
	}
	return m
}

func randomText(r *rand.Rand, n int) string {
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	for i := range b {
		b[i] = letters[r.IntN(len(letters))]
	}
	return string(b)
}

// entryFor builds the health entry consul would return for reg.
func entryFor(reg *api.AgentServiceRegistration) *entry {
	return &entry{
		Node:    &entryNode{Node: "agent-1", Address: "10.0.0.1"},
		Service: &entryService{ID: reg.ID, Service: reg.Name, Address: reg.Address, Port: reg.Port, Meta: reg.Meta, ModifyIndex: 7},
	}
}

// checkConsulLimits fails when meta would be refused by consul.
func checkConsulLimits(t *testing.T, meta map[string]string) {
	t.Helper()
	if len(meta) > consulMaxMetaKeys {
		t.Errorf("%d meta keys, consul allows %d", len(meta), consulMaxMetaKeys)
	}
	for k, v := range meta {
		if !plainKey("", k) || len(k) > consulMaxKeyLen || strings.HasPrefix(k, consulReservedPref) {
			t.Errorf("meta key %q would be refused by consul", k)
		}
		if len(v) > consulMaxValueLen {
			t.Errorf("meta value of %q is %d bytes, consul allows %d", k, len(v), consulMaxValueLen)
		}
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	incompressible := func(n, valueLen int) map[string]string {
		m := make(map[string]string, n)
		for range n {
			m[randomText(rng, 40)] = randomText(rng, valueLen)
		}
		return m
	}
	tests := []struct {
		name      string
		svc       *registry.Service
		wantPlain []string // keys expected verbatim in Meta
		wantBlob  bool
	}{
		{name: "plain", svc: testService(map[string]string{"team": "a"}, map[string]string{"zone": "z1"}, 0),
			wantPlain: []string{"beacon", "version", "s-team", "n-zone"}},
		{name: "no metadata no version", svc: func() *registry.Service {
			s := testService(nil, nil, 0)
			s.Version = ""
			return s
		}(), wantPlain: []string{"beacon"}},
		{name: "endpoints", svc: testService(nil, nil, 3), wantPlain: []string{"beacon", "version"}, wantBlob: true},
		{name: "keys consul refuses", svc: testService(
			map[string]string{"a.b": "dots", "grüß": "unicode", "with space": "x", "consul-x": "reserved prefix is fine behind s-", strings.Repeat("k", 127): "too long with prefix"},
			map[string]string{"host/name": "slash", "ünï": "x"}, 1), wantBlob: true},
		{name: "empty values", svc: testService(map[string]string{"e": ""}, map[string]string{"e": ""}, 0),
			wantPlain: []string{"s-e", "n-e"}},
		{name: "max metadata compressible", svc: testService(manyKeys("s", 64, 512), manyKeys("n", 64, 512), 20), wantBlob: true},
		{name: "many endpoints", svc: testService(nil, nil, 300), wantBlob: true},
		{name: "mixed overflow", svc: testService(incompressible(30, 20), manyKeys("n", 40, 8), 5), wantBlob: true},
	}
	var c codec
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := registry.Validate(tc.svc); err != nil {
				t.Fatalf("test service is not valid: %v", err)
			}
			n := tc.svc.Nodes[0]
			meta, err := c.encodeMeta(tc.svc, n)
			if err != nil {
				t.Fatal(err)
			}
			checkConsulLimits(t, meta)
			for _, k := range tc.wantPlain {
				if _, ok := meta[k]; !ok {
					t.Errorf("meta lacks plain key %q: %v", k, keys(meta))
				}
			}
			if _, blob := meta["b-0"]; blob != tc.wantBlob {
				t.Errorf("blob present = %v, want %v", blob, tc.wantBlob)
			}
			again, _ := c.encodeMeta(tc.svc, n)
			if fmt.Sprint(again) != fmt.Sprint(meta) {
				t.Error("encoding is not deterministic")
			}
			host, port, _ := splitAddr(n.Address)
			got, err := c.decodeEntry(tc.svc.Name, entryFor(&api.AgentServiceRegistration{ID: n.ID, Name: tc.svc.Name, Address: host, Port: port, Meta: meta}))
			if err != nil {
				t.Fatal(err)
			}
			want := &registry.Service{Name: tc.svc.Name, Version: tc.svc.Version, Metadata: tc.svc.Metadata, Endpoints: tc.svc.Endpoints, Nodes: []*registry.Node{n}}
			if !registry.SameNode(got, want) {
				t.Errorf("round trip changed the record:\n got %+v\nwant %+v", got, want)
			}
		})
	}
}

func keys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func TestEncodeTooLarge(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	big := func() map[string]string {
		m := make(map[string]string, 64)
		for range 64 {
			m[randomText(rng, 100)] = randomText(rng, 512)
		}
		return m
	}
	s := testService(big(), big(), 10)
	if err := registry.Validate(s); err != nil {
		t.Fatal(err)
	}
	var c codec
	_, err := c.encodeMeta(s, s.Nodes[0])
	var ve *registry.ValidationError
	if !errors.Is(err, registry.ErrInvalid) || !errors.As(err, &ve) {
		t.Fatalf("encode of an oversized record: err = %v, want a *registry.ValidationError", err)
	}
	t.Logf("refused: %v", err)
}

// deflated returns base64url(deflate(data)).
func deflated(data []byte) string {
	var buf bytes.Buffer
	zw, _ := flate.NewWriter(&buf, flate.BestCompression)
	zw.Write(data)
	zw.Close()
	return base64.RawURLEncoding.EncodeToString(buf.Bytes())
}

func chunked(enc string) map[string]string {
	m := map[string]string{"beacon": "1"}
	for i := 0; len(enc) > 0; i++ {
		n := min(len(enc), consulMaxValueLen)
		m["b-"+strconv.Itoa(i)] = enc[:n]
		enc = enc[n:]
	}
	return m
}

func TestDecodeEntryBadInput(t *testing.T) {
	bomb := deflated(make([]byte, maxBlobJSON+1024)) // inflates past the cap
	deep := strings.Repeat(`{"name":"v","values":[`, 50) + strings.Repeat(`]}`, 50)
	tests := []struct {
		name    string
		entry   *entry
		wantErr bool
		check   func(t *testing.T, s *registry.Service)
	}{
		{name: "nil entry", entry: nil, wantErr: true},
		{name: "nil service", entry: &entry{Node: &entryNode{Node: "n"}}, wantErr: true},
		{name: "port 0", entry: &entry{Service: &entryService{ID: "a", Service: "x", Address: "10.0.0.1"}}, wantErr: true},
		{name: "port too large", entry: &entry{Service: &entryService{ID: "a", Service: "x", Address: "10.0.0.1", Port: 70000}}, wantErr: true},
		{name: "negative port", entry: &entry{Service: &entryService{ID: "a", Service: "x", Address: "10.0.0.1", Port: -1}}, wantErr: true},
		{name: "no address anywhere", entry: &entry{Service: &entryService{ID: "a", Service: "x", Port: 80}}, wantErr: true},
		{name: "garbage address", entry: &entry{Service: &entryService{ID: "a", Service: "x", Address: "a b/c", Port: 80}}, wantErr: true},
		{name: "foreign, node address", entry: &entry{
			Node:    &entryNode{Node: "host1", Address: "10.0.0.9"},
			Service: &entryService{ID: "web", Service: "x", Port: 80},
		}, check: func(t *testing.T, s *registry.Service) {
			n := s.Nodes[0]
			if n.ID != "web@host1" || n.Address != "10.0.0.9:80" || s.Version != "" || len(s.Endpoints) != 0 {
				t.Errorf("foreign service decoded as %+v / %+v", s, n)
			}
		}},
		{name: "foreign, odd meta dropped", entry: &entry{
			Node:    &entryNode{Node: "host1", Address: "10.0.0.9"},
			Service: &entryService{ID: "web", Service: "x", Address: "::1", Port: 80, Meta: map[string]string{"bad": "a\x00b", "version": "9"}},
		}, check: func(t *testing.T, s *registry.Service) {
			if s.Nodes[0].Address != "[::1]:80" || s.Nodes[0].Metadata != nil || s.Version != "" {
				t.Errorf("got %+v", s.Nodes[0])
			}
		}},
		{name: "foreign, meta kept", entry: &entry{
			Service: &entryService{ID: "web", Service: "x", Address: "web.example", Port: 80, Meta: map[string]string{"version": "9"}},
		}, check: func(t *testing.T, s *registry.Service) {
			if s.Nodes[0].ID != "web" || s.Nodes[0].Metadata["version"] != "9" || s.Version != "" {
				t.Errorf("got %+v", s.Nodes[0])
			}
		}},
		{name: "foreign, unusable ID", entry: &entry{Service: &entryService{ID: "a b", Service: "x", Address: "10.0.0.1", Port: 80}}, wantErr: true},
		{name: "unknown beacon format read as foreign", entry: &entry{
			Service: &entryService{ID: "n1", Service: "x", Address: "10.0.0.1", Port: 80, Meta: map[string]string{"beacon": "2", "b-0": "zz"}},
		}, check: func(t *testing.T, s *registry.Service) {
			if s.Nodes[0].ID != "n1" || s.Version != "" {
				t.Errorf("got %+v", s.Nodes[0])
			}
		}},
		{name: "beacon, plain keys only", entry: &entry{
			Service: &entryService{ID: "n1", Service: "x", Address: "10.0.0.1", Port: 80, Meta: map[string]string{"beacon": "1", "version": "2", "s-a": "1", "n-b": "2", "other-tool": "ignored"}},
		}, check: func(t *testing.T, s *registry.Service) {
			if s.Version != "2" || s.Metadata["a"] != "1" || s.Nodes[0].Metadata["b"] != "2" || len(s.Nodes[0].Metadata) != 1 {
				t.Errorf("got %+v %+v", s, s.Nodes[0])
			}
		}},
		{name: "beacon, blob not base64", entry: beaconEntry(map[string]string{"b-0": "!!!"}), wantErr: true},
		{name: "beacon, blob not deflate", entry: beaconEntry(map[string]string{"b-0": base64.RawURLEncoding.EncodeToString([]byte("plain text"))}), wantErr: true},
		{name: "beacon, blob not JSON", entry: beaconEntry(chunked(deflated([]byte("not json")))), wantErr: true},
		{name: "beacon, blob wrong JSON types", entry: beaconEntry(chunked(deflated([]byte(`{"e":"x","s":[1]}`)))), wantErr: true},
		{name: "beacon, blob null", entry: beaconEntry(chunked(deflated([]byte(`null`)))), check: func(t *testing.T, s *registry.Service) {}},
		{name: "beacon, nil endpoint", entry: beaconEntry(chunked(deflated([]byte(`{"e":[null]}`)))), wantErr: true},
		{name: "beacon, value too deep", entry: beaconEntry(chunked(deflated([]byte(`{"e":[{"name":"a","request":` + deep + `}]}`)))), wantErr: true},
		{name: "beacon, inflate bomb", entry: beaconEntry(chunked(bomb)), wantErr: true},
		{name: "beacon, chunk missing", entry: beaconEntry(map[string]string{"b-0": "AAAA", "b-2": "AAAA"}), wantErr: true},
		{name: "beacon, chunk index not a number", entry: beaconEntry(map[string]string{"b-x": "AAAA"}), wantErr: true},
		{name: "beacon, chunk index padded", entry: beaconEntry(map[string]string{"b-00": "AAAA"}), wantErr: true},
		{name: "beacon, chunk index out of range", entry: beaconEntry(map[string]string{"b-99999999999999999999": "AAAA"}), wantErr: true},
		{name: "beacon, bad node ID", entry: &entry{
			Service: &entryService{ID: "a/b", Service: "x", Address: "10.0.0.1", Port: 80, Meta: map[string]string{"beacon": "1"}},
		}, wantErr: true},
		{name: "beacon, control char in metadata", entry: beaconEntry(map[string]string{"s-a": "x\x01y"}), wantErr: true},
		{name: "beacon, empty metadata key", entry: beaconEntry(map[string]string{"n-": "x"}), wantErr: true},
		{name: "beacon, version too long", entry: beaconEntry(map[string]string{"version": strings.Repeat("v", 100)}), wantErr: true},
	}
	var c codec
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := c.decodeEntry("x", tc.entry)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("decoded %+v, want an error", s)
				}
				if !errors.Is(err, registry.ErrMalformed) {
					t.Errorf("err = %v, want one matching registry.ErrMalformed", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(s.Nodes) != 1 {
				t.Fatalf("%d nodes", len(s.Nodes))
			}
			tc.check(t, s)
		})
	}
}

func beaconEntry(meta map[string]string) *entry {
	m := map[string]string{"beacon": "1"}
	for k, v := range meta {
		m[k] = v
	}
	return &entry{Service: &entryService{ID: "n1", Service: "x", Address: "10.0.0.1", Port: 80, Meta: m}}
}

func TestNextIndex(t *testing.T) {
	tests := []struct{ prev, got, want uint64 }{
		{0, 5, 5},
		{5, 5, 5},
		{5, 9, 9},
		{9, 5, 0}, // went backwards: reset
		{0, 0, 1}, // zero never blocks: wait on 1
		{7, 0, 0}, // backwards to zero: reset
	}
	for _, tc := range tests {
		if got := nextIndex(tc.prev, tc.got); got != tc.want {
			t.Errorf("nextIndex(%d, %d) = %d, want %d", tc.prev, tc.got, got, tc.want)
		}
	}
}

func TestCritical(t *testing.T) {
	tests := []struct {
		checks []entryCheck
		want   bool
	}{
		{nil, false},
		{[]entryCheck{{Status: api.HealthPassing}, {Status: api.HealthWarning}}, false},
		{[]entryCheck{{Status: api.HealthPassing}, {Status: api.HealthCritical}}, true},
		{[]entryCheck{{}, {Status: api.HealthCritical}}, true},
	}
	for i, tc := range tests {
		if got := critical(tc.checks); got != tc.want {
			t.Errorf("%d: critical = %v, want %v", i, got, tc.want)
		}
	}
}

// FuzzDecode feeds arbitrary Meta (and port) to the meta->Service decoder:
// it must never panic, and what it accepts must be a valid single-node
// service that survives encoding again.
func FuzzDecode(f *testing.F) {
	var c codec
	for _, s := range []*registry.Service{
		testService(map[string]string{"team": "a", "a.b": "c"}, map[string]string{"zone": "z"}, 2),
		testService(manyKeys("s", 64, 100), nil, 1),
		testService(nil, nil, 0),
	} {
		meta, err := c.encodeMeta(s, s.Nodes[0])
		if err != nil {
			f.Fatal(err)
		}
		js, _ := json.Marshal(meta)
		f.Add(js, 8080)
	}
	f.Add([]byte(`{"beacon":"1","b-0":"!!"}`), 80)
	f.Add([]byte(`{"beacon":"1","b-1":"AAAA"}`), 80)
	f.Add([]byte(`{"beacon":"1","s-":"","n-x":"\u0000"}`), 0)
	f.Add([]byte(`{"version":"1"}`), 65536)
	f.Add([]byte(`{"beacon":"1","b-0":"`+deflated([]byte(`{"e":[{"name":"a","request":{"values":[{"values":[]}]}}]}`))+`"}`), 1)
	f.Fuzz(func(t *testing.T, metaJSON []byte, port int) {
		var meta map[string]string
		if json.Unmarshal(metaJSON, &meta) != nil {
			return
		}
		e := &entry{
			Node:    &entryNode{Node: "host", Address: "10.0.0.1"},
			Service: &entryService{ID: "fuzz-node", Service: "fuzz", Port: port, Meta: meta},
		}
		s, err := c.decodeEntry("fuzz", e)
		if err != nil {
			if !errors.Is(err, registry.ErrMalformed) {
				t.Fatalf("error %v does not match ErrMalformed", err)
			}
			return
		}
		if len(s.Nodes) != 1 {
			t.Fatalf("%d nodes", len(s.Nodes))
		}
		if !isBeacon(meta) {
			return
		}
		if err := registry.Validate(s); err != nil {
			t.Fatalf("accepted an invalid record: %v", err)
		}
		again, err := c.encodeMeta(s, s.Nodes[0])
		if err != nil {
			return // valid, but too large for consul once re-encoded
		}
		e.Service.Meta = again
		back, err := c.decodeEntry("fuzz", e)
		if err != nil || !registry.SameNode(s, back) {
			t.Fatalf("re-encoded record does not round trip: %v\n%+v\n%+v", err, s, back)
		}
	})
}
