package mdns

import (
	"fmt"
	"strings"

	"github.com/miekg/dns"

	"github.com/beacon-go/beacon/registry"
)

// names builds and parses the DNS names of one domain. All names are fully
// qualified ("x.micro.").
type names struct {
	domain string // "micro." (no leading dot)
}

func (n names) service(name string) string     { return name + "." + n.domain }
func (n names) instance(svc, id string) string { return id + "." + svc + "." + n.domain }
func (n names) servicesPTR() string            { return "_services." + n.domain }
func (n names) wildcard(svc string) string     { return svc + "._services." + n.domain }
func (n names) enum() string                   { return "_services._dns-sd._udp." + n.domain }

// checkNode says whether a service name and node ID make a valid instance
// name: each dot-separated part 1 to 63 bytes, 255 bytes in all. The error
// is a *registry.ValidationError.
func (n names) checkNode(field, svc, id string) error {
	inst := n.instance(svc, id)
	if strings.HasPrefix(id, ".") || strings.HasSuffix(id, ".") || strings.Contains(id, "..") {
		return &registry.ValidationError{Field: field, Value: id, Reason: "mdns: node ID has an empty DNS label"}
	}
	if _, ok := dns.IsDomainName(inst); !ok {
		return &registry.ValidationError{Field: field, Value: id, Reason: fmt.Sprintf("mdns: instance name %q is not a valid DNS name (parts of at most 63 bytes, 255 in all)", inst)}
	}
	return nil
}

// underDomain returns s without ".<domain>" when s is a name in the domain.
// The comparison of the domain is case-insensitive, as in DNS.
func (n names) underDomain(s string) (string, bool) {
	if len(s) <= len(n.domain)+1 {
		return "", false
	}
	cut := len(s) - len(n.domain)
	if s[cut-1] != '.' || !strings.EqualFold(s[cut:], n.domain) {
		return "", false
	}
	return s[:cut-1], true
}

// unescape turns a name as miekg/dns prints it (\X and \DDD escapes) back
// into its bytes; label boundaries become '.'. It fails on a dangling or
// out-of-range escape.
func unescape(s string) (string, bool) {
	if !strings.Contains(s, `\`) {
		return s, true
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		if i+1 >= len(s) {
			return "", false
		}
		if i+3 < len(s) && isDigit(s[i+1]) && isDigit(s[i+2]) && isDigit(s[i+3]) {
			v := int(s[i+1]-'0')*100 + int(s[i+2]-'0')*10 + int(s[i+3]-'0')
			if v > 255 {
				return "", false
			}
			b.WriteByte(byte(v))
			i += 3
			continue
		}
		b.WriteByte(s[i+1])
		i++
	}
	return b.String(), true
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// hasSuffixFold is strings.HasSuffix ignoring ASCII case.
func hasSuffixFold(s, suffix string) bool {
	return len(s) >= len(suffix) && strings.EqualFold(s[len(s)-len(suffix):], suffix)
}
