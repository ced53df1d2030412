package etcd

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/beacon-go/beacon/registry"
)

// goMicroRecord is a record as go-micro's etcd registry writes it (v3/v4:
// the JSON of registry.Service with one node).
const goMicroRecord = `{"name":"go.micro.srv.greeter","version":"latest","metadata":null,` +
	`"endpoints":[{"name":"Say.Hello","request":{"name":"Request","type":"Request","values":[{"name":"name","type":"string","values":null}]},` +
	`"response":{"name":"Response","type":"Response","values":[{"name":"msg","type":"string","values":null}]},"metadata":{}}],` +
	`"nodes":[{"id":"go.micro.srv.greeter-5f3e2b1c-9d4a-4b7e-8c6f-1a2b3c4d5e6f","address":"10.0.0.7:36211",` +
	`"metadata":{"broker":"http","protocol":"grpc","registry":"etcd","server":"grpc","transport":"grpc"}}]}`

const goMicroKey = "go.micro.srv.greeter/go.micro.srv.greeter-5f3e2b1c-9d4a-4b7e-8c6f-1a2b3c4d5e6f"

func validRecord(t testing.TB) []byte {
	b, err := encode(svc("greeter", "1.0.0", "greeter-1"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecode(t *testing.T) {
	valid := validRecord(t)
	two, _ := json.Marshal(svc("greeter", "1.0.0", "greeter-1", "greeter-2"))
	nested := `{"name":"greeter","endpoints":[{"name":"E","request":` + strings.Repeat(`{"name":"x","values":[`, 20) +
		strings.Repeat(`]}`, 20) + `}],"nodes":[{"id":"greeter-1","address":"127.0.0.1:1"}]}`
	cases := []struct {
		name  string
		key   string
		value string
		ok    bool
	}{
		{"valid", "greeter/greeter-1", string(valid), true},
		{"go-micro record", goMicroKey, goMicroRecord, true},
		{"not JSON", "greeter/greeter-1", "hello world", false},
		{"empty", "greeter/greeter-1", "", false},
		{"truncated", "greeter/greeter-1", string(valid[:len(valid)/2]), false},
		{"trailing garbage", "greeter/greeter-1", string(valid) + "x", false},
		{"JSON array", "greeter/greeter-1", "[1,2,3]", false},
		{"JSON string", "greeter/greeter-1", `"greeter"`, false},
		{"JSON null", "greeter/greeter-1", "null", false},
		{"empty object", "greeter/greeter-1", "{}", false},
		{"wrong field types", "greeter/greeter-1", `{"name":1,"nodes":"x"}`, false},
		{"no node", "greeter/greeter-1", `{"name":"greeter","nodes":[]}`, false},
		{"null node", "greeter/greeter-1", `{"name":"greeter","nodes":[null]}`, false},
		{"two nodes", "greeter/greeter-1", string(two), false},
		{"name mismatch", "other/greeter-1", string(valid), false},
		{"node id mismatch", "greeter/greeter-2", string(valid), false},
		{"key without node", "greeter", string(valid), false},
		{"key too deep", "greeter/greeter-1/x", string(valid), false},
		{"empty key parts", "/", string(valid), false},
		{"invalid address", "greeter/greeter-1", `{"name":"greeter","nodes":[{"id":"greeter-1","address":"nope"}]}`, false},
		{"invalid name", "a b/n", `{"name":"a b","nodes":[{"id":"n","address":"127.0.0.1:1"}]}`, false},
		{"too deeply nested", "greeter/greeter-1", nested, false},
		{"huge value", "greeter/greeter-1", `{"name":"greeter","metadata":{"x":"` + strings.Repeat("x", MaxRecordSize) + `"}}`, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := decode(tc.key, []byte(tc.value))
			if tc.ok {
				if err != nil {
					t.Fatalf("decode: %v", err)
				}
				if len(s.Nodes) != 1 {
					t.Fatalf("%d nodes", len(s.Nodes))
				}
				return
			}
			if !errors.Is(err, registry.ErrMalformed) {
				t.Fatalf("decode err = %v, want ErrMalformed", err)
			}
			if errors.Is(err, registry.ErrInvalid) {
				t.Fatalf("decode err = %v also matches ErrInvalid; a bad record is not the caller's invalid input", err)
			}
		})
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	s := svc("greeter", "1.0.0", "greeter-1")
	b, err := encode(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decode("greeter/greeter-1", b)
	if err != nil {
		t.Fatal(err)
	}
	if !registry.SameNode(s, got) {
		t.Fatalf("round trip changed the record: %+v", got)
	}
	// Plain JSON with go-micro's field names.
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"name", "version", "metadata", "endpoints", "nodes"} {
		if _, ok := m[k]; !ok {
			t.Errorf("record lacks field %q: %s", k, b)
		}
	}
}

func TestEncodeTooBig(t *testing.T) {
	s := svc("greeter", "1.0.0", "greeter-1")
	s.Endpoints = nil
	for i := range registry.MaxEndpoints {
		md := map[string]string{}
		for j := range 8 {
			md[strings.Repeat("k", 100)+string(rune('a'+j))] = strings.Repeat("v", 400)
		}
		s.Endpoints = append(s.Endpoints, &registry.Endpoint{Name: "E" + strings.Repeat("e", i%200), Metadata: md})
	}
	if err := registry.Validate(s); err != nil {
		t.Fatalf("test service is invalid: %v", err)
	}
	_, err := encode(s)
	var ve *registry.ValidationError
	if !errors.As(err, &ve) || !errors.Is(err, registry.ErrInvalid) {
		t.Fatalf("encode of a >1 MiB record: err = %v, want a ValidationError", err)
	}
}

// FuzzDecode: decode never panics, and whatever it accepts is a valid
// single-node record that matches its key and survives a round trip.
func FuzzDecode(f *testing.F) {
	valid := validRecord(f)
	f.Add("greeter/greeter-1", valid)
	f.Add(goMicroKey, []byte(goMicroRecord))
	f.Add("greeter/greeter-1", []byte("not json"))
	f.Add("greeter/greeter-1", []byte(`{"name":"greeter","nodes":[null]}`))
	f.Add("greeter/greeter-1", []byte(`{"name":"greeter","nodes":[{"id":"greeter-1"},{"id":"greeter-1"}]}`))
	f.Add("x/y", []byte(`{"name":"x","nodes":[{"id":"y","address":"h:1","metadata":{"":""}}]}`))
	f.Add("x", []byte(`[]`))
	f.Add("x/y/z", []byte(`null`))
	f.Add("greeter/greeter-1", []byte(`{"name":"greeter","endpoints":[{"name":"E","request":{"values":[{"values":[{"values":[]}]}]}}],"nodes":[{"id":"greeter-1","address":"127.0.0.1:1"}]}`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		s, err := decode(key, value)
		if err != nil {
			if !errors.Is(err, registry.ErrMalformed) {
				t.Fatalf("error %v does not match ErrMalformed", err)
			}
			return
		}
		if len(s.Nodes) != 1 || s.Nodes[0] == nil {
			t.Fatalf("accepted a record with %d nodes", len(s.Nodes))
		}
		if key != s.Name+"/"+s.Nodes[0].ID {
			t.Fatalf("accepted record %s/%s under key %q", s.Name, s.Nodes[0].ID, key)
		}
		if err := registry.Validate(s); err != nil {
			t.Fatalf("accepted an invalid record: %v", err)
		}
		b, err := encode(s)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		again, err := decode(key, b)
		if err != nil || !registry.SameNode(s, again) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// FuzzDecodeShared: a decoder that shares parts between records decodes
// each record exactly as a fresh one does (the same error or the same
// data), whatever it decoded before.
func FuzzDecodeShared(f *testing.F) {
	a := svc("greeter", "1.0.0", "a")
	b := svc("greeter", "1.0.0", "b")
	b.Nodes[0].Metadata = map[string]string{"i": "0"} // a's node metadata
	c := svc("greeter", "2.0.0", "a")
	c.Endpoints = nil
	va, _ := encode(a)
	vb, _ := encode(b)
	vc, _ := encode(c)
	f.Add(va, vb, vc)
	f.Add(va, va, vb)
	f.Add(vb, []byte(`{"name":"greeter","metadata":{"k":"v"},"nodes":[{"id":"b","address":"h:1","metadata":{"i":"0"}}]}`), va)
	f.Add(va, []byte(`{"name":"greeter","version":"1.0.0","metadata":{"k":"v"},"endpoints":null,"nodes":[{"id":"b","address":"h:1","metadata":null}]}`), vc)
	// Keys twice: encoding/json merges the objects.
	f.Add(va, []byte(`{"name":"greeter","metadata":{"a":"1"},"metadata":{"b":"2"},"nodes":[{"id":"b","address":"h:1","metadata":{"x":"1"},"metadata":{"y":"2"}}]}`), vb)
	f.Add(va, []byte(`{"name":"greeter","endpoints":[{"name":"E","metadata":{"m":"1"}}],"endpoints":[{"name":"F"}],"nodes":[{"id":"b","address":"h:1"}],"nodes":[{"address":"h:2"}]}`), vb)
	f.Fuzz(func(t *testing.T, v1, v2, v3 []byte) {
		for _, whole := range []bool{false, true} {
			d := &decoder{whole: whole}
			for i, v := range [][]byte{v1, v2, v3, v2} {
				key := "greeter/" + string(rune('a'+i%2))
				got, err := d.decode(key, v)
				want, werr := decode(key, v)
				if (err == nil) != (werr == nil) {
					t.Fatalf("record %d: shared decoder err %v, fresh decoder err %v", i, err, werr)
				}
				if err == nil && !registry.SameNode(got, want) {
					t.Fatalf("record %d: shared decoder gave %+v, fresh %+v", i, got, want)
				}
			}
		}
	})
}

// recordSum tells records apart as registry.SameNode does, whatever their
// bytes.
func TestRecordSum(t *testing.T) {
	base := func() *registry.Service { return scaleService(3, 1) }
	b := base()
	raw, _ := json.Marshal(b)
	var indented strings.Builder
	var v any
	_ = json.Unmarshal(raw, &v)
	enc := json.NewEncoder(&indented)
	enc.SetIndent("", "    ")
	_ = enc.Encode(v)
	again, err := decode(b.Name+"/"+b.Nodes[0].ID, []byte(indented.String()))
	if err != nil {
		t.Fatal(err)
	}
	if recordSum(b) != recordSum(again) {
		t.Error("the same record re-encoded hashes otherwise")
	}
	empty := base()
	empty.Endpoints[0].Metadata = map[string]string{}
	empty.Endpoints[1].Metadata = nil
	if recordSum(empty) != recordSum(func() *registry.Service { s := base(); s.Endpoints[0].Metadata = nil; return s }()) {
		t.Error("empty and absent metadata hash otherwise")
	}
	changes := map[string]func(*registry.Service){
		"version":             func(s *registry.Service) { s.Version = "9" },
		"service metadata":    func(s *registry.Service) { s.Metadata["team"] = "other" },
		"metadata key moved":  func(s *registry.Service) { s.Metadata = map[string]string{"team": "", "tier": "platformbackend"} },
		"endpoint name":       func(s *registry.Service) { s.Endpoints[1].Name = "Store.Del" },
		"endpoint dropped":    func(s *registry.Service) { s.Endpoints = s.Endpoints[:1] },
		"request field type":  func(s *registry.Service) { s.Endpoints[0].Request.Values[0].Type = "int64" },
		"request field added": func(s *registry.Service) { s.Endpoints[0].Request.Values = append(s.Endpoints[0].Request.Values, nil) },
		"response nil":        func(s *registry.Service) { s.Endpoints[1].Response = nil },
		"endpoint metadata":   func(s *registry.Service) { s.Endpoints[0].Metadata["idempotent"] = "false" },
		"address":             func(s *registry.Service) { s.Nodes[0].Address = "10.9.9.9:1" },
		"node metadata":       func(s *registry.Service) { s.Nodes[0].Metadata["zone"] = "b" },
		"strings run together": func(s *registry.Service) {
			s.Name, s.Version = s.Name+"1", s.Version[1:]
		},
	}
	for what, change := range changes {
		s := base()
		change(s)
		if registry.SameNode(b, s) {
			t.Fatalf("%s: SameNode says no change", what)
		}
		if recordSum(s) == recordSum(b) {
			t.Errorf("%s: same hash", what)
		}
	}
}

// A listing's decoder shares a version's metadata and endpoints between
// its nodes (as Group does), but each node keeps a map of its own, and
// another version's records share nothing with it.
func TestDecoderSharesWithinAVersion(t *testing.T) {
	var d decoder
	dec := func(version, id string) *registry.Service {
		s := scaleService(1, 0)
		s.Version = version
		s.Nodes = []*registry.Node{scaleNode(1, 0, 0)}
		s.Nodes[0].ID = id
		b, _ := encode(s)
		got, err := d.decode(s.Name+"/"+id, b)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	a, b, c, e := dec("1", "a"), dec("1", "b"), dec("2", "c"), dec("1", "e")
	if &b.Endpoints[0] != &e.Endpoints[0] || &a.Endpoints[0] != &b.Endpoints[0] {
		t.Error("nodes of one version do not share their endpoints")
	}
	if &c.Endpoints[0] == &b.Endpoints[0] {
		t.Error("two versions share their endpoints")
	}
	b.Nodes[0].Metadata["x"] = "y"
	if _, ok := e.Nodes[0].Metadata["x"]; ok {
		t.Error("two nodes share their node metadata")
	}
}
