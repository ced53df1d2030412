package mdns

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/beacon-go/beacon/registry"
)

// maxRecords caps how many resource records of one message are looked at.
const maxRecords = 512

// observation is what one message says about one node.
type observation struct {
	service string
	id      string
	goodbye bool
	ttl     time.Duration     // record TTL; 0 for goodbyes
	svc     *registry.Service // one node; nil for goodbyes
	txtTTL  uint32            // the TXT record's TTL, which a signature covers
	raw     []byte            // the TXT's zlib bytes, which a signature covers
	sig     []byte            // the TXT's signature block; nil: unsigned
}

// parsed is what one message says: nodes, and service names from
// "_services" PTR records.
type parsed struct {
	nodes    []observation
	services []string
}

// badRecord is a record that was skipped, for the log.
type badRecord struct {
	instance string
	err      error
}

// parse extracts observations from a response. Records outside the domain
// are ignored silently; records inside it that cannot be used are returned
// as bad.
func (n names) parse(m *dns.Msg) (parsed, []badRecord) {
	var (
		out    parsed
		bad    []badRecord
		ptrSvc = map[string]string{} // instance -> service (escaped forms)
		ptrTTL = map[string]uint32{}
		srvs   = map[string]*dns.SRV{}
		txts   = map[string]*dns.TXT{}
		ips    = map[string][]net.IP{}
		order  []string // instances in order of first sight
	)
	seen := func(inst string) {
		if _, ok := ptrSvc[inst]; ok {
			return
		}
		if _, ok := srvs[inst]; ok {
			return
		}
		if _, ok := txts[inst]; ok {
			return
		}
		order = append(order, inst)
	}
	wild := n.servicesPTR()
	rrs := append(m.Answer[:len(m.Answer):len(m.Answer)], m.Extra...)
	if len(rrs) > maxRecords {
		bad = append(bad, badRecord{err: fmt.Errorf("%w: %d records in one message, looking at %d", registry.ErrMalformed, len(rrs), maxRecords)})
		rrs = rrs[:maxRecords]
	}
	for _, rr := range rrs {
		h := rr.Header()
		if h.Class&0x7fff != dns.ClassINET {
			continue
		}
		switch rr := rr.(type) {
		case *dns.PTR:
			if strings.EqualFold(h.Name, wild) {
				svc, ok := n.underDomain(rr.Ptr)
				if !ok || h.Ttl == 0 {
					continue
				}
				svc, ok = strings.CutSuffix(svc, "._services")
				if name, uok := unescape(svc); ok && uok && registry.ValidateName(name) == nil {
					out.services = append(out.services, name)
				}
				continue
			}
			svc, ok := n.underDomain(h.Name)
			if !ok || strings.HasPrefix(svc, "_") {
				continue // DNS-SD enumeration, other service types
			}
			if !hasSuffixFold(rr.Ptr, "."+h.Name) {
				bad = append(bad, badRecord{instance: rr.Ptr, err: fmt.Errorf("%w: PTR %s points outside the service", registry.ErrMalformed, h.Name)})
				continue
			}
			seen(rr.Ptr)
			ptrSvc[rr.Ptr] = svc
			ptrTTL[rr.Ptr] = h.Ttl
		case *dns.SRV:
			if _, ok := n.underDomain(h.Name); ok {
				seen(h.Name)
				srvs[h.Name] = rr
			}
		case *dns.TXT:
			if _, ok := n.underDomain(h.Name); ok {
				seen(h.Name)
				txts[h.Name] = rr
			}
		case *dns.A:
			ips[h.Name] = append(ips[h.Name], rr.A)
		case *dns.AAAA:
			ips[h.Name] = append(ips[h.Name], rr.AAAA)
		}
	}
	for _, inst := range order {
		rest, _ := n.underDomain(inst)
		if strings.Contains(rest, "._services") || strings.HasPrefix(rest, "_") {
			continue // go-micro's wildcard entries, DNS-SD names
		}
		obs, err := n.observe(inst, ptrSvc, ptrTTL, srvs, txts, ips)
		if err != nil {
			bad = append(bad, badRecord{instance: inst, err: err})
			continue
		}
		if obs != nil {
			out.nodes = append(out.nodes, *obs)
		}
	}
	return out, bad
}

// observe builds the observation of one instance, or nil when the message
// says too little about it (e.g. an SRV alone).
func (n names) observe(inst string, ptrSvc map[string]string, ptrTTL map[string]uint32,
	srvs map[string]*dns.SRV, txts map[string]*dns.TXT, ips map[string][]net.IP) (*observation, error) {
	rawInst, ok := unescape(inst)
	if !ok {
		return nil, fmt.Errorf("%w: bad escape in %q", registry.ErrMalformed, inst)
	}
	svcEsc, hasPTR := ptrSvc[inst]
	var svcFromPTR string
	if hasPTR {
		if svcFromPTR, ok = unescape(svcEsc); !ok {
			return nil, fmt.Errorf("%w: bad escape in %q", registry.ErrMalformed, svcEsc)
		}
	}
	txt, srv := txts[inst], srvs[inst]
	goodbye := hasPTR && ptrTTL[inst] == 0 ||
		txt != nil && txt.Hdr.Ttl == 0 ||
		txt == nil && srv != nil && srv.Hdr.Ttl == 0
	if goodbye {
		return n.goodbye(rawInst, svcFromPTR, hasPTR, txt)
	}
	if txt == nil {
		return nil, nil // a PTR or SRV alone: the TXT comes in another message
	}
	rec, raw, sig, err := decodeSigned(txt.Txt)
	if err != nil {
		return nil, err
	}
	var s *registry.Service
	if rec.goMicro() {
		if s, err = n.goMicroService(rawInst, rec, srv, ips); err != nil {
			return nil, err
		}
	} else {
		if s, err = rec.service(); err != nil {
			return nil, err
		}
		if want := s.Nodes[0].ID + "." + s.Name + "." + n.domain; !strings.EqualFold(rawInst, want) {
			return nil, fmt.Errorf("%w: record of node %q of %q published under instance %q", registry.ErrMalformed, s.Nodes[0].ID, s.Name, rawInst)
		}
	}
	if hasPTR && svcFromPTR != s.Name {
		return nil, fmt.Errorf("%w: record of service %q listed under service %q", registry.ErrMalformed, s.Name, svcFromPTR)
	}
	return &observation{service: s.Name, id: s.Nodes[0].ID, ttl: time.Duration(txt.Hdr.Ttl) * time.Second, svc: s,
		txtTTL: txt.Hdr.Ttl, raw: raw, sig: sig}, nil
}

// goodbye builds the observation of a goodbye. The service comes from the
// PTR or, without one (go-micro's goodbye is SRV, A and TXT), from the TXT;
// when both are there they must agree. Beacon's goodbyes carry the TXT,
// whose signature (with a key) makes the goodbye count.
func (n names) goodbye(rawInst, svcFromPTR string, hasPTR bool, txt *dns.TXT) (*observation, error) {
	o := &observation{service: svcFromPTR, goodbye: true}
	if txt != nil {
		rec, raw, sig, err := decodeSigned(txt.Txt)
		switch {
		case err != nil && !hasPTR:
			return nil, err
		case err == nil:
			var name, id string
			if rec.goMicro() {
				name = rec.Service
			} else if s, err := rec.service(); err == nil {
				name, id = s.Name, s.Nodes[0].ID
				o.svc = s
			} else if !hasPTR {
				return nil, err
			}
			if hasPTR && name != "" && name != svcFromPTR {
				return nil, fmt.Errorf("%w: goodbye of service %q listed under service %q", registry.ErrMalformed, name, svcFromPTR)
			}
			if o.service == "" {
				o.service = name
			}
			if id != "" && !strings.EqualFold(rawInst, id+"."+name+"."+n.domain) {
				return nil, fmt.Errorf("%w: goodbye of node %q of %q published under instance %q", registry.ErrMalformed, id, name, rawInst)
			}
			o.txtTTL, o.raw, o.sig = txt.Hdr.Ttl, raw, sig
		}
	}
	if o.service == "" {
		return nil, nil // cannot split instance into service and ID
	}
	id, ok := n.idFrom(rawInst, o.service)
	if !ok {
		return nil, fmt.Errorf("%w: goodbye for %q does not match service %q", registry.ErrMalformed, rawInst, o.service)
	}
	o.id = id
	return o, nil
}

// idFrom cuts "<id>.<svc>.<domain>" into the ID.
func (n names) idFrom(rawInst, svc string) (string, bool) {
	suffix := "." + svc + "." + n.domain
	if len(rawInst) <= len(suffix) || !strings.EqualFold(rawInst[len(rawInst)-len(suffix):], suffix) {
		return "", false
	}
	return rawInst[:len(rawInst)-len(suffix)], true
}

// goMicroService builds a service from a go-micro record: the ID from the
// instance name, the address from SRV and A/AAAA.
func (n names) goMicroService(rawInst string, rec *record, srv *dns.SRV, ips map[string][]net.IP) (*registry.Service, error) {
	id, ok := n.idFrom(rawInst, rec.Service)
	if !ok {
		return nil, fmt.Errorf("%w: go-micro record of %q published under instance %q", registry.ErrMalformed, rec.Service, rawInst)
	}
	if srv == nil {
		return nil, fmt.Errorf("%w: go-micro record without SRV", registry.ErrMalformed)
	}
	var ip net.IP
	for _, a := range ips[srv.Target] {
		if ip == nil || ip.To4() == nil && a.To4() != nil { // prefer IPv4, as go-micro does
			ip = a
		}
	}
	if ip == nil {
		return nil, fmt.Errorf("%w: go-micro record without an address for %s", registry.ErrMalformed, srv.Target)
	}
	s := &registry.Service{
		Name: rec.Service, Version: rec.Version, Endpoints: rec.Endpoints,
		Nodes: []*registry.Node{{ID: id, Address: net.JoinHostPort(ip.String(), strconv.Itoa(int(srv.Port))), Metadata: rec.Metadata}},
	}
	if err := registry.Validate(s); err != nil {
		return nil, fmt.Errorf("%w: %v", registry.ErrMalformed, err)
	}
	return s, nil
}

// query builds a query message asking for the PTR records of the given
// names, one question each.
func query(qnames ...string) *dns.Msg {
	m := new(dns.Msg)
	for _, q := range qnames {
		m.Question = append(m.Question, dns.Question{Name: q, Qtype: dns.TypePTR, Qclass: dns.ClassINET})
	}
	return m
}

// maxQuestions keeps a query within one packet.
const maxQuestions = 32

// packQueries packs questions for qnames into messages of at most
// maxQuestions questions.
func packQueries(qnames []string) ([][]byte, error) {
	var out [][]byte
	for len(qnames) > 0 {
		k := min(len(qnames), maxQuestions)
		b, err := query(qnames[:k]...).Pack()
		if err != nil {
			return nil, err
		}
		out = append(out, b)
		qnames = qnames[k:]
	}
	return out, nil
}

// response wraps records into an unsolicited response.
func response(rrs []dns.RR) *dns.Msg {
	m := new(dns.Msg)
	m.Response = true
	m.Authoritative = true
	m.Compress = true
	m.Answer = rrs
	return m
}
