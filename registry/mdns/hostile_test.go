package mdns_test

import (
	"bytes"
	"compress/zlib"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"

	"github.com/beacon-go/beacon/internal/netns"
	"github.com/beacon-go/beacon/registry"
)

// hostile is a rogue host of a lab: a socket on port 5353 of its namespace,
// joined to 224.0.0.251, from which it multicasts forged records and answers
// queries.
type hostile struct {
	t    *testing.T
	ip   net.IP
	c    *net.UDPConn
	wg   sync.WaitGroup
	stop chan struct{}

	mu      sync.Mutex
	answer  func(q *dns.Msg) [][]byte // answers to a query, sent to its source
	heard   [][]byte                  // responses heard (for replays)
	queries atomic.Int64
}

func startHostile(t *testing.T, lab *netns.Lab, host int) *hostile {
	t.Helper()
	h := &hostile{t: t, ip: lab.IP(host), stop: make(chan struct{})}
	err := lab.Do(host, func() error {
		ifi, err := net.InterfaceByName(netns.LabIface)
		if err != nil {
			return err
		}
		c, err := net.ListenMulticastUDP("udp4", ifi, &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: 5353})
		if err != nil {
			return err
		}
		p := ipv4.NewPacketConn(c)
		if err := p.SetMulticastInterface(ifi); err != nil {
			return err
		}
		h.c = c
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	h.wg.Add(1)
	go h.read()
	t.Cleanup(h.close)
	return h
}

func (h *hostile) close() {
	select {
	case <-h.stop:
		return
	default:
	}
	close(h.stop)
	h.c.Close()
	h.wg.Wait()
}

func (h *hostile) read() {
	defer h.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := h.c.ReadFromUDP(buf)
		if err != nil {
			return
		}
		var m dns.Msg
		if m.Unpack(buf[:n]) != nil {
			continue
		}
		if m.Response {
			if !from.IP.Equal(h.ip) {
				h.mu.Lock()
				h.heard = append(h.heard, bytes.Clone(buf[:n]))
				h.mu.Unlock()
			}
			continue
		}
		h.queries.Add(1)
		h.mu.Lock()
		answer := h.answer
		h.mu.Unlock()
		if answer != nil {
			for _, b := range answer(&m) {
				h.c.WriteToUDP(b, from)
			}
		}
	}
}

func (h *hostile) setAnswer(f func(q *dns.Msg) [][]byte) {
	h.mu.Lock()
	h.answer = f
	h.mu.Unlock()
}

// multicast sends b to 224.0.0.251:5353.
func (h *hostile) multicast(b []byte) {
	h.c.WriteToUDP(b, &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: 5353})
}

// every runs f every d until the test ends or stop is called.
func (h *hostile) every(d time.Duration, f func()) (stop func()) {
	done := make(chan struct{})
	var once sync.Once
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		t := time.NewTicker(d)
		defer t.Stop()
		for {
			f()
			select {
			case <-t.C:
			case <-done:
				return
			case <-h.stop:
				return
			}
		}
	}()
	return func() { once.Do(func() { close(done) }) }
}

// forgedTXT encodes a one-node Beacon record.
func forgedTXT(t testing.TB, s *registry.Service) []string {
	js, err := json.Marshal(map[string]any{
		"name": s.Name, "service": s.Name, "version": s.Version, "metadata": s.Nodes[0].Metadata,
		"service_metadata": s.Metadata, "endpoints": s.Endpoints, "nodes": s.Nodes,
	})
	if err != nil {
		t.Fatal(err)
	}
	var z bytes.Buffer
	w := zlib.NewWriter(&z)
	w.Write(js)
	w.Close()
	hx := hex.EncodeToString(z.Bytes())
	var out []string
	for len(hx) > 255 {
		out, hx = append(out, hx[:255]), hx[255:]
	}
	return append(out, hx)
}

// forgedRecords returns a node's records as Beacon publishes them: PTR,
// SRV, A, TXT (TXT last, the order go-micro's reader needs), with ttl.
func forgedRecords(t testing.TB, s *registry.Service, ttl uint32) []dns.RR {
	n := s.Nodes[0]
	inst := n.ID + "." + s.Name + ".micro."
	host, portS, _ := net.SplitHostPort(n.Address)
	port, _ := strconv.Atoi(portS)
	hdr := func(name string, typ uint16) dns.RR_Header {
		return dns.RR_Header{Name: name, Rrtype: typ, Class: dns.ClassINET, Ttl: ttl}
	}
	return []dns.RR{
		&dns.PTR{Hdr: hdr(s.Name+".micro.", dns.TypePTR), Ptr: inst},
		&dns.SRV{Hdr: hdr(inst, dns.TypeSRV), Priority: 10, Weight: 1, Port: uint16(port), Target: inst},
		&dns.A{Hdr: hdr(inst, dns.TypeA), A: net.ParseIP(host)},
		&dns.TXT{Hdr: hdr(inst, dns.TypeTXT), Txt: forgedTXT(t, s)},
	}
}

func packResponse(t testing.TB, q []dns.Question, rrs ...dns.RR) []byte {
	m := &dns.Msg{MsgHdr: dns.MsgHdr{Response: true, Authoritative: true}, Question: q, Answer: rrs}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// asks reports whether q asks about the service's nodes.
func asks(q *dns.Msg, service string) bool {
	for _, x := range q.Question {
		if x.Name == service+".micro." {
			return true
		}
	}
	return false
}

func fmtShare(n, of int) string {
	return fmt.Sprintf("%d/%d (%.0f%%)", n, of, 100*float64(n)/float64(max(of, 1)))
}

// watchState keeps the nodes a watcher reports: ID -> address.
type watchState struct {
	mu      sync.Mutex
	nodes   map[string]string
	deletes map[string]int
	events  int
}

func watchNodes(t *testing.T, r registry.Registry, service string) *watchState {
	ws := &watchState{nodes: map[string]string{}, deletes: map[string]int{}}
	w, err := r.Watch(ctxT(t), registry.WatchService(service))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ev, err := w.Next()
			if err != nil {
				return
			}
			n := ev.Service.Nodes[0]
			ws.mu.Lock()
			ws.events++
			if ev.Type == registry.Delete {
				delete(ws.nodes, n.ID)
				ws.deletes[n.ID]++
			} else {
				ws.nodes[n.ID] = n.Address
			}
			ws.mu.Unlock()
		}
	}()
	t.Cleanup(func() { w.Stop(); <-done })
	return ws
}

func (ws *watchState) get(id string) (string, bool) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	a, ok := ws.nodes[id]
	return a, ok
}

// outcome of an attack: how often the watch state and lookups showed the
// real node at its real address (and only real nodes).
type outcome struct {
	samples, samplesOK, samplesHave int // exactly the real nodes; the real nodes and maybe others
	lookups, lookupsOK, lookupsHave int
	lookupTime                      []time.Duration
	most                            int // most nodes in a lookup
}

func (o outcome) String() string {
	s := fmt.Sprintf("watch state right %s (with the real nodes %s), lookups right %s (with the real nodes %s, at most %d nodes)",
		fmtShare(o.samplesOK, o.samples), fmtShare(o.samplesHave, o.samples),
		fmtShare(o.lookupsOK, o.lookups), fmtShare(o.lookupsHave, o.lookups), o.most)
	if len(o.lookupTime) > 0 {
		s += fmt.Sprintf(", lookup p50 %v p99 %v", percentile(o.lookupTime, .5), percentile(o.lookupTime, .99))
	}
	return s
}

// measure samples ws every 10 ms and looks the service up in a loop for d.
// want maps the real node IDs to their addresses.
func measure(t *testing.T, r registry.Registry, ws *watchState, service string, want map[string]string, d time.Duration) outcome {
	var o outcome
	end := time.Now().Add(d)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for time.Now().Before(end) {
			ws.mu.Lock()
			have := true
			for id, a := range want {
				have = have && ws.nodes[id] == a
			}
			ok := have && len(ws.nodes) == len(want)
			ws.mu.Unlock()
			o.samples++
			if ok {
				o.samplesOK++
			}
			if have {
				o.samplesHave++
			}
			time.Sleep(10 * time.Millisecond) // the sampling period
		}
	}()
	for time.Now().Before(end) {
		start := time.Now()
		got, err := r.GetService(ctxT(t), service)
		o.lookupTime = append(o.lookupTime, time.Since(start))
		o.lookups++
		found := map[string]string{}
		all := 0
		for _, s := range got {
			for _, n := range s.Nodes {
				found[n.ID] = n.Address
				all++
			}
		}
		have := err == nil
		for id, a := range want {
			have = have && found[id] == a
		}
		o.most = max(o.most, all)
		if have {
			o.lookupsHave++
			if all == len(want) {
				o.lookupsOK++
			}
		}
		time.Sleep(5 * time.Millisecond) // a caller's pace, not a busy loop
	}
	wg.Wait()
	return o
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
