package registry

import (
	"fmt"
	"net"
	"strconv"
	"unicode/utf8"
)

// Limits enforced by Validate. Backends may enforce tighter ones of their own
// (mdns keeps a record within one packet, for example) and say so.
const (
	MaxNameLen          = 128 // service name, bytes
	MaxLabelLen         = 63  // one dot-separated part of a service name
	MaxVersionLen       = 64
	MaxNodeIDLen        = 128
	MaxMetadataKeys     = 64
	MaxMetadataKeyLen   = 128
	MaxMetadataValueLen = 512
	MaxEndpoints        = 512
	MaxEndpointNameLen  = 256
	MaxValueDepth       = 8
)

// ValidateName checks a service name: 1 to MaxNameLen bytes of ASCII letters,
// digits, '-', '_' and '.', made of dot-separated parts of 1 to MaxLabelLen
// bytes that start with a letter or digit. "greeter" and "go.micro.srv.greeter"
// are valid; "", ".x", "a..b", "a b" and "grüß" are not.
func ValidateName(name string) error {
	if name == "" {
		return &ValidationError{Field: "service.name", Reason: "empty"}
	}
	if len(name) > MaxNameLen {
		return &ValidationError{Field: "service.name", Value: trunc(name), Reason: fmt.Sprintf("longer than %d bytes", MaxNameLen)}
	}
	label := 0
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '.':
			if label == 0 {
				return &ValidationError{Field: "service.name", Value: trunc(name), Reason: "empty part between dots"}
			}
			label = 0
			continue
		case isAlnum(c):
		case c == '-' || c == '_':
			if label == 0 {
				return &ValidationError{Field: "service.name", Value: trunc(name), Reason: "each part must start with a letter or digit"}
			}
		default:
			return &ValidationError{Field: "service.name", Value: trunc(name), Reason: fmt.Sprintf("character %q not allowed (letters, digits, '-', '_', '.')", rune(c))}
		}
		label++
		if label > MaxLabelLen {
			return &ValidationError{Field: "service.name", Value: trunc(name), Reason: fmt.Sprintf("a dot-separated part is longer than %d bytes", MaxLabelLen)}
		}
	}
	if label == 0 {
		return &ValidationError{Field: "service.name", Value: trunc(name), Reason: "ends with a dot"}
	}
	return nil
}

// ValidateNodeID checks a node ID: 1 to MaxNodeIDLen bytes of ASCII letters,
// digits, '-', '_', '.', ':' and '@'.
func ValidateNodeID(field, id string) error {
	if id == "" {
		return &ValidationError{Field: field, Reason: "empty"}
	}
	if len(id) > MaxNodeIDLen {
		return &ValidationError{Field: field, Value: trunc(id), Reason: fmt.Sprintf("longer than %d bytes", MaxNodeIDLen)}
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !isAlnum(c) && c != '-' && c != '_' && c != '.' && c != ':' && c != '@' {
			return &ValidationError{Field: field, Value: trunc(id), Reason: fmt.Sprintf("character %q not allowed (letters, digits, '-', '_', '.', ':', '@')", rune(c))}
		}
	}
	return nil
}

// ValidateAddress checks a node address: "host:port" with a non-empty host
// (IP or DNS name) and a port from 1 to 65535.
func ValidateAddress(field, addr string) error {
	if addr == "" {
		return &ValidationError{Field: field, Reason: "empty"}
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return &ValidationError{Field: field, Value: trunc(addr), Reason: "not host:port"}
	}
	if host == "" {
		return &ValidationError{Field: field, Value: trunc(addr), Reason: "empty host"}
	}
	if net.ParseIP(host) == nil && !validHostname(host) {
		return &ValidationError{Field: field, Value: trunc(addr), Reason: "host is neither an IP address nor a DNS name"}
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return &ValidationError{Field: field, Value: trunc(addr), Reason: "port must be 1-65535"}
	}
	return nil
}

// ValidateMetadata checks a metadata map against the Max* limits: keys are
// non-empty, keys and values are valid UTF-8 without control characters.
func ValidateMetadata(field string, md map[string]string) error {
	if len(md) > MaxMetadataKeys {
		return &ValidationError{Field: field, Reason: fmt.Sprintf("%d keys, more than %d", len(md), MaxMetadataKeys)}
	}
	for k, v := range md {
		switch {
		case k == "":
			return &ValidationError{Field: field, Reason: "empty key"}
		case len(k) > MaxMetadataKeyLen:
			return &ValidationError{Field: field, Value: trunc(k), Reason: fmt.Sprintf("key longer than %d bytes", MaxMetadataKeyLen)}
		case len(v) > MaxMetadataValueLen:
			return &ValidationError{Field: field + "[" + trunc(k) + "]", Reason: fmt.Sprintf("value of %d bytes, more than %d", len(v), MaxMetadataValueLen)}
		case !cleanText(k):
			return &ValidationError{Field: field, Value: trunc(k), Reason: "key is not printable UTF-8"}
		case !cleanText(v):
			return &ValidationError{Field: field + "[" + trunc(k) + "]", Reason: "value is not printable UTF-8"}
		}
	}
	return nil
}

// Validate checks a service for Register: its name, version, metadata,
// endpoints and at least one node, each with a valid ID, address and
// metadata, and no node ID twice. The error matches ErrInvalid and is a
// *ValidationError naming the field.
func Validate(s *Service) error {
	if s == nil {
		return &ValidationError{Field: "service", Reason: "nil"}
	}
	if err := ValidateName(s.Name); err != nil {
		return err
	}
	if len(s.Version) > MaxVersionLen || !cleanText(s.Version) {
		return &ValidationError{Field: "service.version", Value: trunc(s.Version), Reason: fmt.Sprintf("must be printable UTF-8 of at most %d bytes", MaxVersionLen)}
	}
	if err := ValidateMetadata("service.metadata", s.Metadata); err != nil {
		return err
	}
	if len(s.Endpoints) > MaxEndpoints {
		return &ValidationError{Field: "service.endpoints", Reason: fmt.Sprintf("%d endpoints, more than %d", len(s.Endpoints), MaxEndpoints)}
	}
	for i, e := range s.Endpoints {
		f := fmt.Sprintf("endpoint[%d]", i)
		if e == nil {
			return &ValidationError{Field: f, Reason: "nil"}
		}
		if e.Name == "" || len(e.Name) > MaxEndpointNameLen || !cleanText(e.Name) {
			return &ValidationError{Field: f + ".name", Value: trunc(e.Name), Reason: fmt.Sprintf("must be printable UTF-8 of 1 to %d bytes", MaxEndpointNameLen)}
		}
		if err := ValidateMetadata(f+".metadata", e.Metadata); err != nil {
			return err
		}
		if valueDepth(e.Request) > MaxValueDepth || valueDepth(e.Response) > MaxValueDepth {
			return &ValidationError{Field: f, Reason: fmt.Sprintf("request or response nested deeper than %d", MaxValueDepth)}
		}
	}
	if len(s.Nodes) == 0 {
		return &ValidationError{Field: "service.nodes", Reason: "no nodes"}
	}
	seen := make(map[string]struct{}, len(s.Nodes))
	for i, n := range s.Nodes {
		f := fmt.Sprintf("node[%d]", i)
		if n == nil {
			return &ValidationError{Field: f, Reason: "nil"}
		}
		if err := ValidateNodeID(f+".id", n.ID); err != nil {
			return err
		}
		if _, dup := seen[n.ID]; dup {
			return &ValidationError{Field: f + ".id", Value: n.ID, Reason: "duplicate node ID"}
		}
		seen[n.ID] = struct{}{}
		if err := ValidateAddress(f+".address", n.Address); err != nil {
			return err
		}
		if err := ValidateMetadata(f+".metadata", n.Metadata); err != nil {
			return err
		}
	}
	return nil
}

// ValidateDeregister checks what Deregister reads: the name and node IDs.
func ValidateDeregister(s *Service) error {
	if s == nil {
		return &ValidationError{Field: "service", Reason: "nil"}
	}
	if err := ValidateName(s.Name); err != nil {
		return err
	}
	if len(s.Nodes) == 0 {
		return &ValidationError{Field: "service.nodes", Reason: "no nodes"}
	}
	for i, n := range s.Nodes {
		if n == nil {
			return &ValidationError{Field: fmt.Sprintf("node[%d]", i), Reason: "nil"}
		}
		if err := ValidateNodeID(fmt.Sprintf("node[%d].id", i), n.ID); err != nil {
			return err
		}
	}
	return nil
}

func valueDepth(v *Value) int {
	if v == nil {
		return 0
	}
	d := 0
	for _, c := range v.Values {
		d = max(d, valueDepth(c))
		if d > MaxValueDepth {
			break
		}
	}
	return d + 1
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	label := 0
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
			continue
		case isAlnum(c), c == '-', c == '_':
		default:
			return false
		}
		label++
		if label > 63 {
			return false
		}
	}
	return true
}

func cleanText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
