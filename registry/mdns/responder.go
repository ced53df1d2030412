package mdns

import (
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/mdns"
	"github.com/miekg/dns"

	"github.com/beacon-go/beacon/registry"
)

// RecordTooLargeError says that a node's mDNS answer would exceed
// MaxRecordSize. It unwraps to a *registry.ValidationError, so it matches
// registry.ErrInvalid.
type RecordTooLargeError struct {
	Service string
	Node    string
	Size    int // packed answer, bytes
	Max     int
}

func (e *RecordTooLargeError) Error() string {
	return fmt.Sprintf("mdns: record of node %q of %q is %d bytes, more than %d (fewer endpoints or metadata)", e.Node, e.Service, e.Size, e.Max)
}

// Unwrap returns the equivalent validation error.
func (e *RecordTooLargeError) Unwrap() error {
	return &registry.ValidationError{Field: "service", Value: e.Service, Reason: fmt.Sprintf("mdns record of %d bytes, more than %d", e.Size, e.Max)}
}

// zone is the hashicorp/mdns Zone of one node: the node's records and
// go-micro's "_services" wildcard for its service, with the record TTL of
// the registration. Its data is swapped atomically when the registration
// changes, so the responder is never restarted.
type zone struct{ cur atomic.Pointer[zoneData] }

type zoneData struct {
	node, wild *mdns.MDNSService
	ttl        uint32 // seconds
}

// Records implements mdns.Zone. It is called by the responder's goroutine.
func (z *zone) Records(q dns.Question) []dns.RR { return z.cur.Load().records(q) }

func (d *zoneData) records(q dns.Question) []dns.RR {
	rrs := append(d.node.Records(q), d.wild.Records(q)...)
	for _, rr := range rrs {
		rr.Header().Ttl = d.ttl // fresh records on every call
	}
	return rrs
}

// recordTTL converts a register TTL to whole seconds, rounding up.
func recordTTL(ttl time.Duration) uint32 {
	if ttl <= 0 {
		ttl = DefaultRecordTTL
	}
	return uint32(min(math.Ceil(ttl.Seconds()), math.MaxInt32))
}

// localNode is a node registered by this Registry: its responder and its
// announcement state.
type localNode struct {
	svc     *registry.Service // one node, private copy
	ttl     time.Duration     // register TTL, 0: none
	expires time.Time         // zero: never
	zone    *zone
	server  *mdns.Server
	ann     []byte // packed announcement
	bye     []byte // packed goodbye
	annLeft int    // announcements still to send
	annNext time.Time
}

// prepared is a registration checked and encoded, before anything changes.
type prepared struct {
	key  string
	svc  *registry.Service
	ttl  time.Duration
	data *zoneData
	ann  []byte
	bye  []byte
}

// prepare validates what mdns adds to registry.Validate and encodes the
// records of one node.
func (r *Registry) prepare(field string, s *registry.Service, ttl time.Duration) (*prepared, error) {
	n := s.Nodes[0]
	if err := r.names.checkNode(field+".id", s.Name, n.ID); err != nil {
		return nil, err
	}
	txt, err := encodeTXT(s)
	if err != nil {
		return nil, err
	}
	host, portS, _ := net.SplitHostPort(n.Address) // validated
	port, _ := strconv.Atoi(portS)
	inst := r.names.instance(s.Name, n.ID)
	node, err := mdns.NewMDNSService(n.ID, s.Name, r.names.domain, inst, port, r.advertised(host), txt)
	if err != nil {
		return nil, &registry.ValidationError{Field: field, Value: n.ID, Reason: "mdns: " + err.Error()}
	}
	wild, err := mdns.NewMDNSService(s.Name, "_services", r.names.domain, r.names.wildcard(s.Name), 9999, []net.IP{net.IPv4zero}, nil)
	if err != nil {
		return nil, &registry.ValidationError{Field: "service.name", Value: s.Name, Reason: "mdns: " + err.Error()}
	}
	d := &zoneData{node: node, wild: wild, ttl: recordTTL(ttl)}

	// The biggest answer a responder gives: to one query asking for the
	// service and for "_services".
	svcQ := dns.Question{Name: r.names.service(s.Name), Qtype: dns.TypePTR, Qclass: dns.ClassINET}
	allQ := dns.Question{Name: r.names.servicesPTR(), Qtype: dns.TypePTR, Qclass: dns.ClassINET}
	full, err := response(append(d.records(svcQ), d.records(allQ)...)).Pack()
	if err != nil {
		return nil, &registry.ValidationError{Field: field, Value: n.ID, Reason: "mdns: cannot pack record: " + err.Error()}
	}
	if len(full) > MaxRecordSize {
		return nil, &RecordTooLargeError{Service: s.Name, Node: n.ID, Size: len(full), Max: MaxRecordSize}
	}
	if len(full) > PacketSize {
		r.log.Warn("mdns: record larger than one packet, it will be fragmented", "service", s.Name, "node", n.ID, "bytes", len(full), "packet", PacketSize)
	}

	// Announcement: the node's records plus the "_services" PTR, so that
	// watchers of all services learn the name at once.
	annRRs := append(d.records(svcQ), &dns.PTR{
		Hdr: dns.RR_Header{Name: r.names.servicesPTR(), Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: d.ttl},
		Ptr: r.names.wildcard(s.Name),
	})
	ann, err := response(annRRs).Pack()
	if err != nil {
		return nil, err
	}
	// Goodbye: PTR and SRV with TTL 0.
	var byeRRs []dns.RR
	for _, rr := range d.records(svcQ) {
		switch rr.(type) {
		case *dns.PTR, *dns.SRV:
			rr.Header().Ttl = 0
			byeRRs = append(byeRRs, rr)
		}
	}
	bye, err := response(byeRRs).Pack()
	if err != nil {
		return nil, err
	}
	return &prepared{key: nodeKey(s.Name, n.ID), svc: s, ttl: ttl, data: d, ann: ann, bye: bye}, nil
}

// advertised returns the IPs for a node's A/AAAA records.
func (r *Registry) advertised(host string) []net.IP {
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		return []net.IP{ip}
	}
	return r.hostIPs
}

// nodeKey identifies a node: its service's name and its ID.
func nodeKey(service, id string) string { return service + "\x00" + id }

func splitNodeKey(k string) (service, id string) {
	service, id, _ = strings.Cut(k, "\x00")
	return service, id
}

// nameKey identifies a service name heard in a "_services" answer.
func nameKey(name string) string { return "\x00" + name }

func cutNameKey(k string) (string, bool) { return strings.CutPrefix(k, "\x00") }
