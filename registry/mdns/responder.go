package mdns

import (
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"time"

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

// recordTTL converts a register TTL to whole seconds, rounding up.
func recordTTL(ttl time.Duration) uint32 {
	if ttl <= 0 {
		ttl = DefaultRecordTTL
	}
	return uint32(min(math.Ceil(ttl.Seconds()), math.MaxInt32))
}

// nodeRecords is what a local node publishes, immutable: the names, the
// SRV port, the IPs and the TXT payload. Records are built from it when they
// are sent, because a signature is made for every message.
type nodeRecords struct {
	service string // the service's name
	svcName string // "<service>.<domain>"
	inst    string // "<id>.<service>.<domain>"
	wild    string // "<service>._services.<domain>"
	port    uint16
	ips     []net.IP
	pl      *payload
	ttl     uint32 // record TTL, seconds
}

func hdr(name string, typ uint16, ttl uint32) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: typ, Class: dns.ClassINET, Ttl: ttl}
}

// rrs returns the node's records with the given TTL and TXT strings, in
// the order go-micro's reader needs: it builds its entry from the last
// record of a message, so the instance's TXT comes last.
func (d *nodeRecords) rrs(ttl uint32, txt []string) []dns.RR {
	out := []dns.RR{
		&dns.PTR{Hdr: hdr(d.svcName, dns.TypePTR, ttl), Ptr: d.inst},
		&dns.SRV{Hdr: hdr(d.inst, dns.TypeSRV, ttl), Priority: 10, Weight: 1, Port: d.port, Target: d.inst},
	}
	out = append(out, d.addrRRs(ttl)...)
	return append(out, &dns.TXT{Hdr: hdr(d.inst, dns.TypeTXT, ttl), Txt: txt})
}

// instanceRRs are the records of a question about the instance itself:
// SRV, A/AAAA, TXT.
func (d *nodeRecords) instanceRRs(ttl uint32, txt []string) []dns.RR {
	return d.rrs(ttl, txt)[1:]
}

func (d *nodeRecords) addrRRs(ttl uint32) []dns.RR {
	var out []dns.RR
	for _, ip := range d.ips {
		if ip4 := ip.To4(); ip4 != nil {
			out = append(out, &dns.A{Hdr: hdr(d.inst, dns.TypeA, ttl), A: ip4})
		} else {
			out = append(out, &dns.AAAA{Hdr: hdr(d.inst, dns.TypeAAAA, ttl), AAAA: ip})
		}
	}
	return out
}

// wildRRs are go-micro's "_services" entry for the service: PTR, SRV to
// port 9999, A 0.0.0.0 and an empty TXT (go-micro's ListServices wants all
// four).
func (d *nodeRecords) wildRRs(n names) []dns.RR {
	return []dns.RR{
		&dns.PTR{Hdr: hdr(n.servicesPTR(), dns.TypePTR, d.ttl), Ptr: d.wild},
		&dns.SRV{Hdr: hdr(d.wild, dns.TypeSRV, d.ttl), Priority: 10, Weight: 1, Port: 9999, Target: d.wild},
		&dns.A{Hdr: hdr(d.wild, dns.TypeA, d.ttl), A: net.IPv4zero.To4()},
		&dns.TXT{Hdr: hdr(d.wild, dns.TypeTXT, d.ttl)},
	}
}

// localNode is a node registered by this Registry.
type localNode struct {
	svc     *registry.Service // one node, private copy
	ttl     time.Duration     // register TTL, 0: none
	expires time.Time         // zero: never
	rec     *nodeRecords
	annLeft int // announcements still to send
	annNext time.Time
}

// prepared is a registration checked and encoded, before anything changes.
type prepared struct {
	key string
	svc *registry.Service
	ttl time.Duration
	rec *nodeRecords
}

// prepare validates what mdns adds to registry.Validate and encodes the
// records of one node.
func (r *Registry) prepare(field string, s *registry.Service, ttl time.Duration) (*prepared, error) {
	n := s.Nodes[0]
	if err := r.names.checkNode(field+".id", s.Name, n.ID); err != nil {
		return nil, err
	}
	pl, err := encodePayload(s)
	if err != nil {
		return nil, err
	}
	host, portS, _ := net.SplitHostPort(n.Address) // validated
	port, _ := strconv.Atoi(portS)
	if port <= 0 || port > math.MaxUint16 {
		return nil, &registry.ValidationError{Field: field + ".address", Value: n.Address, Reason: "mdns: port must be 1 to 65535"}
	}
	rec := &nodeRecords{
		service: s.Name, svcName: r.names.service(s.Name), inst: r.names.instance(s.Name, n.ID),
		wild: r.names.wildcard(s.Name), port: uint16(port), ips: r.advertised(host), pl: pl, ttl: recordTTL(ttl),
	}
	// The biggest message sent for the node: its announcement.
	full, err := r.announcement(rec, time.Now()).Pack()
	if err != nil {
		return nil, &registry.ValidationError{Field: field, Value: n.ID, Reason: "mdns: cannot pack record: " + err.Error()}
	}
	if len(full) > MaxRecordSize {
		return nil, &RecordTooLargeError{Service: s.Name, Node: n.ID, Size: len(full), Max: MaxRecordSize}
	}
	if len(full) > PacketSize {
		r.log.Warn("mdns: record larger than one packet, it will be fragmented", "service", s.Name, "node", n.ID, "bytes", len(full), "packet", PacketSize)
	}
	return &prepared{key: nodeKey(s.Name, n.ID), svc: s, ttl: ttl, rec: rec}, nil
}

// txt returns the TXT strings of a record sent now with TTL ttl: the
// payload, and its signature when the Registry has a key.
func (r *Registry) txt(d *nodeRecords, now time.Time, ttl uint32) []string {
	if r.sig == nil {
		return d.pl.chunks
	}
	out := make([]string, len(d.pl.chunks), len(d.pl.chunks)+1)
	copy(out, d.pl.chunks)
	return append(out, r.sig.sign(now, ttl == 0, ttl, d.pl.raw))
}

// announcement is the unsolicited response for a node: go-micro's
// "_services" PTR first (watchers of all services learn the name), then the
// node's records, TXT last (see nodeRecords.rrs).
func (r *Registry) announcement(d *nodeRecords, now time.Time) *dns.Msg {
	rrs := []dns.RR{&dns.PTR{Hdr: hdr(r.names.servicesPTR(), dns.TypePTR, d.ttl), Ptr: d.wild}}
	return response(append(rrs, d.rrs(d.ttl, r.txt(d, now, d.ttl))...))
}

// goodbye is the node's records with TTL 0, the TXT included: Beacon reads
// it as a goodbye from the PTR or the TXT, go-micro's watcher needs the
// complete entry (SRV, address, TXT) to report a delete, and a signature
// covers the TXT.
func (r *Registry) goodbye(d *nodeRecords, now time.Time) *dns.Msg {
	return response(d.rrs(0, r.txt(d, now, 0)))
}

func (r *Registry) sendMsg(m *dns.Msg, what string) {
	b, err := m.Pack()
	if err != nil {
		r.log.Warn("mdns: packing "+what, "err", err)
		return
	}
	r.send(b, what)
}

// answers returns the messages that answer query q: one per question and
// local node (go-micro's reader takes one node per message), each with its
// question. Called with r.mu held.
func (r *Registry) answersLocked(q *dns.Msg, now time.Time) []*dns.Msg {
	var out []*dns.Msg
	reply := func(question dns.Question, rrs []dns.RR) {
		m := response(rrs)
		m.Id = q.Id
		m.Question = []dns.Question{question}
		out = append(out, m)
	}
	qs := q.Question
	if len(qs) > maxQuestions {
		qs = qs[:maxQuestions]
	}
	for _, question := range qs {
		if c := question.Qclass &^ (1 << 15); c != dns.ClassINET && c != dns.ClassANY {
			continue
		}
		name, ok := unescape(question.Name)
		if !ok {
			continue
		}
		isPTR := question.Qtype == dns.TypePTR || question.Qtype == dns.TypeANY
		switch {
		case strings.EqualFold(name, r.names.servicesPTR()):
			if !isPTR {
				continue
			}
			done := map[string]bool{}
			for _, ln := range r.nodes {
				if !done[ln.rec.service] {
					done[ln.rec.service] = true
					reply(question, ln.rec.wildRRs(r.names))
				}
			}
		case strings.EqualFold(name, r.names.enum()):
			if !isPTR {
				continue
			}
			var rrs []dns.RR
			done := map[string]bool{}
			for _, ln := range r.nodes {
				if !done[ln.rec.service] {
					done[ln.rec.service] = true
					rrs = append(rrs, &dns.PTR{Hdr: hdr(question.Name, dns.TypePTR, ln.rec.ttl), Ptr: ln.rec.svcName})
				}
			}
			if len(rrs) > 0 {
				rrs = append(rrs, &dns.PTR{Hdr: hdr(question.Name, dns.TypePTR, rrs[0].Header().Ttl), Ptr: r.names.servicesPTR()})
				reply(question, rrs)
			}
		default:
			for _, ln := range r.nodes {
				d := ln.rec
				switch {
				case isPTR && strings.EqualFold(name, d.svcName):
					reply(question, d.rrs(d.ttl, r.txt(d, now, d.ttl)))
				case strings.EqualFold(name, d.inst):
					// Any type: go-micro's reader asks for an instance
					// with the type of the first record it saw of it.
					reply(question, d.instanceRRs(d.ttl, r.txt(d, now, d.ttl)))
				}
			}
		}
	}
	return out
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
