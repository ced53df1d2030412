package static

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/beacon-go/beacon/registry"
)

// ParseError says what is wrong with an inline list or a file, and where. It
// matches registry.ErrInvalid with errors.Is; when a registry check failed,
// errors.As also finds the *registry.ValidationError.
type ParseError struct {
	Source string // "inline" or the file's path
	Where  string // e.g. `entry 2 "orders=..."` or `services[0].nodes[1]`; empty for the whole input
	Reason string
	Err    error // the underlying error, if any
}

func (e *ParseError) Error() string {
	var b strings.Builder
	b.WriteString("static registry: ")
	b.WriteString(e.Source)
	if e.Where != "" {
		b.WriteString(": ")
		b.WriteString(e.Where)
	}
	b.WriteString(": ")
	b.WriteString(e.Reason)
	return b.String()
}

// Unwrap returns the underlying error.
func (e *ParseError) Unwrap() error { return e.Err }

// Is reports whether target is registry.ErrInvalid.
func (e *ParseError) Is(target error) bool { return target == registry.ErrInvalid }

// File is the content of a static registry file, in JSON or YAML:
//
//	{"services": [{"name": "greeter", "version": "1.0.0",
//	  "metadata": {"team": "a"},
//	  "endpoints": [{"name": "Greeter.Hello"}],
//	  "nodes": [{"id": "g1", "address": "127.0.0.1:8001", "metadata": {"zone": "a"}},
//	            {"address": "127.0.0.1:8002"}]}]}
//
// The fields of a service are those of registry.Service (and of its JSON
// form). A node without an id gets NodeID(service, address). A name may
// appear once per version; node IDs are unique within a name.
type File struct {
	Services []*registry.Service `json:"services"`
}

// NodeID is the ID given to a node listed without one: the service name and
// the address joined by "-", without the brackets of an IPv6 address
// ("greeter-127.0.0.1:8001", "greeter-::1:8001"). It depends on the
// address, not on the node's position, so adding or removing an address
// changes only that node.
func NodeID(service, address string) string {
	return service + "-" + strings.NewReplacer("[", "", "]", "").Replace(address)
}

// ParseInline parses the inline form:
//
//	name[@version]=host:port[,host:port...][;name[@version]=...]
//
// e.g. "greeter=127.0.0.1:8001,127.0.0.1:8002;orders@2.0.0=127.0.0.1:9000".
// Whitespace around names, versions and addresses is ignored, and so are
// empty entries (a trailing ';'). Node IDs are NodeID(name, address). Every
// service is checked with registry.Validate; the error is a *ParseError
// naming the entry.
func ParseInline(spec string) ([]*registry.Service, error) {
	var out []*registry.Service
	var wheres []string
	for i, raw := range strings.Split(spec, ";") {
		entry := strings.TrimSpace(raw)
		if entry == "" {
			continue
		}
		where := fmt.Sprintf("entry %d %q", i+1, trunc(entry))
		fail := func(reason string, err error) ([]*registry.Service, error) {
			return nil, &ParseError{Source: "inline", Where: where, Reason: reason, Err: err}
		}
		head, addrs, ok := strings.Cut(entry, "=")
		if !ok {
			return fail(`want name=host:port[,host:port...] (no "=")`, nil)
		}
		name, version, _ := strings.Cut(head, "@")
		name, version = strings.TrimSpace(name), strings.TrimSpace(version)
		if name == "" {
			return fail("empty service name before '='", nil)
		}
		s := &registry.Service{Name: name, Version: version}
		for a := range strings.SplitSeq(addrs, ",") {
			a = strings.TrimSpace(a)
			if a == "" {
				return fail("empty address (two commas in a row, or none after '=')", nil)
			}
			if err := registry.ValidateAddress(fmt.Sprintf("node[%d].address", len(s.Nodes)), a); err != nil {
				return fail(strings.TrimPrefix(err.Error(), "registry: "), err)
			}
			s.Nodes = append(s.Nodes, &registry.Node{ID: NodeID(name, a), Address: a})
		}
		out = append(out, s)
		wheres = append(wheres, where)
	}
	if len(out) == 0 {
		return nil, &ParseError{Source: "inline", Reason: "no services (want name=host:port[,host:port...][;...])"}
	}
	if err := check(out, "inline", func(i int) string { return wheres[i] }); err != nil {
		return nil, err
	}
	return out, nil
}

// Format is the syntax of a file.
type Format int

const (
	// FormatAuto: by the file name: ".json" is JSON, anything else YAML
	// (which also reads JSON).
	FormatAuto Format = iota
	FormatJSON
	FormatYAML
)

// ParseFile parses the content of a file (see File). Unknown fields are
// errors (a typo must not silently drop a setting), and so are an empty
// file and one without a "services" key (what a half-written file looks
// like); `"services": []` is a file that serves nothing. source names the
// file in errors.
func ParseFile(data []byte, format Format, source string) ([]*registry.Service, error) {
	if format == FormatAuto {
		format = FormatYAML
		if strings.EqualFold(filepath.Ext(source), ".json") {
			format = FormatJSON
		}
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, &ParseError{Source: source, Reason: "empty file"}
	}
	var f File
	var err error
	switch format {
	case FormatJSON:
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err = dec.Decode(&f); err == nil && dec.More() {
			err = errors.New("more than one JSON value")
		}
	default:
		// YAML 1.2: "no", "n" and "on" stay strings. The keys are the
		// lower-cased field names, the same as the JSON ones; duplicate keys
		// are errors.
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err = dec.Decode(&f); err == nil {
			var extra any
			if dec.Decode(&extra) != io.EOF {
				err = errors.New("more than one YAML document")
			}
		}
	}
	if err != nil {
		return nil, &ParseError{Source: source, Reason: "cannot decode: " + err.Error(), Err: err}
	}
	if f.Services == nil {
		// Missing or null; an explicit empty list ("services": []) is a
		// file that serves nothing.
		return nil, &ParseError{Source: source, Reason: `no "services" list (want {"services": [{"name": ..., "nodes": [...]}]}; "services": [] for none)`}
	}
	for i, s := range f.Services {
		if s == nil {
			return nil, &ParseError{Source: source, Where: fmt.Sprintf("services[%d]", i), Reason: "null"}
		}
		for j, n := range s.Nodes {
			if n == nil || n.ID != "" {
				continue
			}
			field := fmt.Sprintf("services[%d] (%q)", i, trunc(s.Name))
			if err := registry.ValidateAddress(fmt.Sprintf("node[%d].address", j), n.Address); err != nil {
				return nil, &ParseError{Source: source, Where: field, Reason: strings.TrimPrefix(err.Error(), "registry: "), Err: err}
			}
			n.ID = NodeID(s.Name, n.Address)
		}
	}
	if err := check(f.Services, source, func(i int) string {
		return fmt.Sprintf("services[%d] (%q)", i, trunc(f.Services[i].Name))
	}); err != nil {
		return nil, err
	}
	return f.Services, nil
}

// check validates each service and the rules across them: a name once per
// version, node IDs unique within a name.
func check(ss []*registry.Service, source string, where func(i int) string) error {
	type key struct{ name, version string }
	versions := map[key]bool{}
	ids := map[string]map[string]string{} // name -> node ID -> version
	for i, s := range ss {
		if err := registry.Validate(s); err != nil {
			reason := err.Error()
			var ve *registry.ValidationError
			if errors.As(err, &ve) {
				reason = strings.TrimPrefix(reason, "registry: ")
			}
			return &ParseError{Source: source, Where: where(i), Reason: reason, Err: err}
		}
		k := key{s.Name, s.Version}
		if versions[k] {
			return &ParseError{Source: source, Where: where(i), Reason: fmt.Sprintf("service %q version %q listed twice (list its nodes once)", s.Name, s.Version)}
		}
		versions[k] = true
		if ids[s.Name] == nil {
			ids[s.Name] = map[string]string{}
		}
		for _, n := range s.Nodes {
			if v, dup := ids[s.Name][n.ID]; dup {
				return &ParseError{Source: source, Where: where(i), Reason: fmt.Sprintf("node %q listed twice (also in version %q)", n.ID, v)}
			}
			ids[s.Name][n.ID] = s.Version
		}
	}
	return nil
}

func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
