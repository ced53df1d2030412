package static

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/beacon-go/beacon/registry"
)

func ids(ss []*registry.Service) []string {
	var out []string
	for _, s := range ss {
		for _, n := range s.Nodes {
			out = append(out, s.Name+"@"+s.Version+"/"+n.ID+"="+n.Address)
		}
	}
	return out
}

func TestParseInline(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"greeter=127.0.0.1:8001", []string{"greeter@/greeter-127.0.0.1:8001=127.0.0.1:8001"}},
		{"greeter=127.0.0.1:8001,127.0.0.1:8002;orders=127.0.0.1:9000", []string{
			"greeter@/greeter-127.0.0.1:8001=127.0.0.1:8001",
			"greeter@/greeter-127.0.0.1:8002=127.0.0.1:8002",
			"orders@/orders-127.0.0.1:9000=127.0.0.1:9000"}},
		{" greeter @ 1.0.0 = 127.0.0.1:8001 , 127.0.0.1:8002 ; ", []string{
			"greeter@1.0.0/greeter-127.0.0.1:8001=127.0.0.1:8001",
			"greeter@1.0.0/greeter-127.0.0.1:8002=127.0.0.1:8002"}},
		{"g@1=127.0.0.1:1;g@2=127.0.0.1:2", []string{"g@1/g-127.0.0.1:1=127.0.0.1:1", "g@2/g-127.0.0.1:2=127.0.0.1:2"}},
		{"v6=[::1]:8080", []string{"v6@/v6-::1:8080=[::1]:8080"}},
		{"go.micro.srv.x=db.internal:5432", []string{"go.micro.srv.x@/go.micro.srv.x-db.internal:5432=db.internal:5432"}},
	}
	for _, tc := range tests {
		got, err := ParseInline(tc.in)
		if err != nil {
			t.Errorf("ParseInline(%q): %v", tc.in, err)
			continue
		}
		if g := ids(got); !slices.Equal(g, tc.want) {
			t.Errorf("ParseInline(%q) = %v, want %v", tc.in, g, tc.want)
		}
	}
}

func TestParseInlineErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "inline: no services"},
		{" ; ;", "inline: no services"},
		{"greeter", `entry 1 "greeter": want name=host:port`},
		{"=127.0.0.1:1", "entry 1 \"=127.0.0.1:1\": empty service name"},
		{"greeter=", "empty address"},
		{"greeter=127.0.0.1:1,,127.0.0.1:2", "empty address"},
		{"a=127.0.0.1:1;greeter=127.0.0.1", `entry 2 "greeter=127.0.0.1": invalid node[0].address "127.0.0.1": not host:port`},
		{"greeter=127.0.0.1:99999", "port must be 1-65535"},
		{"bad name=127.0.0.1:1", `invalid service.name "bad name"`},
		{"g=127.0.0.1:1;g=127.0.0.1:2", `entry 2 "g=127.0.0.1:2": service "g" version "" listed twice`},
		{"g=127.0.0.1:1,127.0.0.1:1", "duplicate node ID"},
		{"g@1=127.0.0.1:1;g@2=127.0.0.1:1", `node "g-127.0.0.1:1" listed twice (also in version "1")`},
	}
	for _, tc := range tests {
		_, err := ParseInline(tc.in)
		var pe *ParseError
		if !errors.Is(err, registry.ErrInvalid) || !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseInline(%q) err = %v, want a *ParseError matching ErrInvalid containing %q", tc.in, err, tc.want)
		}
	}
	// A registry check's own error stays reachable.
	_, err := ParseInline("greeter=127.0.0.1")
	var ve *registry.ValidationError
	if !errors.As(err, &ve) || ve.Field != "node[0].address" {
		t.Errorf("err = %v, want a *registry.ValidationError for node[0].address inside", err)
	}
}

const goodYAML = `
# two versions of greeter, one node without an id
services:
  - name: greeter
    version: 1.0.0
    metadata: {team: a}
    endpoints:
      - name: Greeter.Hello
        metadata: {idempotent: "true"}
        request: {name: HelloReq, type: HelloReq, values: [{name: name, type: string}]}
    nodes:
      - id: g1
        address: 127.0.0.1:8001
        metadata: {zone: a}
      - address: 127.0.0.1:8002
  - name: greeter
    version: 2.0.0
    nodes:
      - {id: g3, address: "[::1]:8003"}
`

const goodJSON = `{"services": [
  {"name": "orders", "nodes": [{"id": "o1", "address": "127.0.0.1:9000", "metadata": {"protocol": "beacon"}}]}
]}`

func TestParseFile(t *testing.T) {
	ss, err := ParseFile([]byte(goodYAML), FormatAuto, "/etc/services.yaml")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"greeter@1.0.0/g1=127.0.0.1:8001", "greeter@1.0.0/greeter-127.0.0.1:8002=127.0.0.1:8002", "greeter@2.0.0/g3=[::1]:8003"}
	if g := ids(ss); !slices.Equal(g, want) {
		t.Fatalf("got %v, want %v", g, want)
	}
	e := ss[0].Endpoints
	if ss[0].Metadata["team"] != "a" || ss[0].Nodes[0].Metadata["zone"] != "a" || len(e) != 1 || e[0].Name != "Greeter.Hello" ||
		e[0].Metadata[registry.MetaIdempotent] != "true" || e[0].Request.Values[0].Name != "name" {
		t.Errorf("fields lost: %+v %+v", ss[0], e)
	}
	ss, err = ParseFile([]byte(goodJSON), FormatAuto, "services.json")
	if err != nil || len(ss) != 1 || ss[0].Nodes[0].Metadata[registry.MetaProtocol] != "beacon" {
		t.Fatalf("json: %v %v", ids(ss), err)
	}
	// YAML reads JSON too.
	if _, err := ParseFile([]byte(goodJSON), FormatYAML, "x"); err != nil {
		t.Errorf("JSON as YAML: %v", err)
	}
	ss, err = ParseFile([]byte(`{"services": []}`), FormatJSON, "empty.json")
	if err != nil || len(ss) != 0 {
		t.Errorf("explicit empty list: %v %v", ss, err)
	}
}

func TestParseFileErrors(t *testing.T) {
	tests := []struct {
		name, data string
		format     Format
		want       string
	}{
		{"empty", "  \n", FormatAuto, "f.yaml: empty file"},
		{"no services key", "{}", FormatJSON, `no "services" list`},
		{"null services", "services: null", FormatYAML, `no "services" list`},
		{"unknown field json", `{"services":[{"name":"a","nodes":[{"adress":"127.0.0.1:1"}]}]}`, FormatJSON, `unknown field "adress"`},
		{"unknown field yaml", "services:\n- name: a\n  nodes:\n  - adress: 127.0.0.1:1\n", FormatYAML, "line 4: field adress not found"},
		{"duplicate key yaml", "services:\n- name: a\n  name: b\n", FormatYAML, `mapping key "name" already defined`},
		{"bad yaml", "services: [\n", FormatYAML, "cannot decode"},
		{"bad json", `{"services": [}`, FormatJSON, "cannot decode"},
		{"trailing json", `{"services": []} {}`, FormatJSON, "more than one JSON value"},
		{"null service", "services: [null]", FormatYAML, "services[0]: null"},
		{"no nodes", "services: [{name: a}]", FormatYAML, `services[0] ("a"): invalid service.nodes: no nodes`},
		{"bad address", "services: [{name: a, nodes: [{address: 'x y:1'}]}]", FormatYAML, `invalid node[0].address "x y:1"`},
		{"no address", "services: [{name: a, nodes: [{id: n1}]}]", FormatYAML, "invalid node[0].address: empty"},
		{"same version twice", "services: [{name: a, nodes: [{address: '127.0.0.1:1'}]}, {name: a, nodes: [{address: '127.0.0.1:2'}]}]", FormatYAML, "listed twice"},
		{"node id twice", "services: [{name: a, version: '1', nodes: [{id: n, address: '127.0.0.1:1'}]}, {name: a, version: '2', nodes: [{id: n, address: '127.0.0.1:2'}]}]", FormatYAML, `node "n" listed twice`},
	}
	for _, tc := range tests {
		_, err := ParseFile([]byte(tc.data), tc.format, "f.yaml")
		var pe *ParseError
		if !errors.Is(err, registry.ErrInvalid) || !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want a *ParseError containing %q", tc.name, err, tc.want)
		}
	}
}

func TestWithAddress(t *testing.T) {
	tests := []struct{ addr, path string }{
		{"file:/etc/beacon/services", "/etc/beacon/services"},
		{"file:rel.txt", "rel.txt"},
		{"/etc/beacon/services.yaml", "/etc/beacon/services.yaml"},
		{"services.JSON", "services.JSON"},
		{"x.yml", "x.yml"},
		{"greeter=127.0.0.1:8001", ""},
		{"greeter=a.json:80", ""},
	}
	for _, tc := range tests {
		var o options
		WithAddress(tc.addr)(&o)
		if o.path != tc.path || (tc.path == "") != (o.inline != nil) {
			t.Errorf("WithAddress(%q): path %q inline %v, want path %q", tc.addr, o.path, o.inline != nil, tc.path)
		}
	}
}

// YAML 1.2: scalars that YAML 1.1 would turn into booleans or numbers keep
// their text in string fields.
func TestParseFileYAMLScalars(t *testing.T) {
	ss, err := ParseFile([]byte("services:\n- name: a\n  version: 1.10\n  metadata: {no: n, on: yes}\n  nodes: [{id: n, address: '127.0.0.1:1'}]\n"), FormatYAML, "f.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := ss[0]
	if s.Version != "1.10" || s.Nodes[0].ID != "n" || s.Metadata["no"] != "n" || s.Metadata["on"] != "yes" {
		t.Errorf("got version %q id %q metadata %v", s.Version, s.Nodes[0].ID, s.Metadata)
	}
	if _, err := ParseFile([]byte("services: []\n---\nservices: []\n"), FormatYAML, "f.yaml"); err == nil || !strings.Contains(err.Error(), "more than one YAML document") {
		t.Errorf("two documents: %v", err)
	}
}
