package mdns_test

import (
	"bytes"
	"compress/zlib"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"

	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/mdns"
)

// What go-micro v5.30.0's mdns registry does with packets, copied from
// go-micro.dev/v5/internal/util/mdns/client.go (Apache 2.0) and
// go-micro.dev/v5/registry/mdns_registry.go, so that these tests check
// Beacon's packets against go-micro's reading of them without importing
// go-micro (interop/gomicro runs the real go-micro).

type gmEntry struct {
	Name       string
	Host       string
	AddrV4     net.IP
	AddrV6     net.IP
	Port       int
	InfoFields []string
	TTL        int
	hasTXT     bool
}

func (s *gmEntry) complete() bool {
	return (len(s.AddrV4) > 0 || len(s.AddrV6) > 0) && s.Port != 0 && s.hasTXT
}

func gmEnsure(m map[string]*gmEntry, name string) *gmEntry {
	if e, ok := m[name]; ok {
		return e
	}
	e := &gmEntry{Name: name}
	m[name] = e
	return e
}

// gmMessageToEntry is go-micro's messageToEntry: the entry of the LAST
// record of the message, filled from all of them.
func gmMessageToEntry(m *dns.Msg, inprogress map[string]*gmEntry) *gmEntry {
	var inp *gmEntry
	for _, answer := range append(m.Answer, m.Extra...) {
		switch rr := answer.(type) {
		case *dns.PTR:
			inp = gmEnsure(inprogress, rr.Ptr)
			if inp.complete() {
				continue
			}
		case *dns.SRV:
			if rr.Target != rr.Hdr.Name {
				inprogress[rr.Target] = gmEnsure(inprogress, rr.Hdr.Name)
			}
			inp = gmEnsure(inprogress, rr.Hdr.Name)
			if inp.complete() {
				continue
			}
			inp.Host, inp.Port = rr.Target, int(rr.Port)
		case *dns.TXT:
			inp = gmEnsure(inprogress, rr.Hdr.Name)
			if inp.complete() {
				continue
			}
			inp.InfoFields, inp.hasTXT = rr.Txt, true
		case *dns.A:
			inp = gmEnsure(inprogress, rr.Hdr.Name)
			if inp.complete() {
				continue
			}
			inp.AddrV4 = rr.A
		case *dns.AAAA:
			inp = gmEnsure(inprogress, rr.Hdr.Name)
			if inp.complete() {
				continue
			}
			inp.AddrV6 = rr.AAAA
		}
		if inp != nil {
			inp.TTL = int(answer.Header().Ttl)
		}
	}
	return inp
}

// gmTxt is go-micro's mdnsTxt, decoded the way go-micro decodes it.
type gmTxt struct {
	Metadata  map[string]string
	Service   string
	Version   string
	Endpoints []*registry.Endpoint
}

func gmDecode(t *testing.T, fields []string) *gmTxt {
	t.Helper()
	b, err := hex.DecodeString(strings.Join(fields, ""))
	if err != nil {
		t.Fatalf("go-micro cannot hex-decode the TXT: %v", err)
	}
	zr, err := zlib.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("go-micro cannot read the zlib: %v", err)
	}
	js, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("go-micro cannot read the zlib: %v", err)
	}
	var txt *gmTxt
	if err := json.Unmarshal(js, &txt); err != nil {
		t.Fatalf("go-micro cannot decode the JSON: %v", err)
	}
	return txt
}

// gmQuery sends a query the way go-micro's client does (a PTR question for
// "<service>.micro.", from an ephemeral port) and returns the entries go-micro
// would take from the replies within d: only replies whose first question
// is the one asked, one entry per message (its last record's).
func gmQuery(t *testing.T, service string, d time.Duration) []*gmEntry {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	q := new(dns.Msg)
	q.SetQuestion(service+".micro.", dns.TypePTR)
	q.RecursionDesired = false
	b, err := q.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteToUDP(b, &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: 5353}); err != nil {
		t.Fatal(err)
	}
	var out []*gmEntry
	inprogress := map[string]*gmEntry{}
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(d))
	for {
		n, err := c.Read(buf)
		if err != nil {
			return out
		}
		var m dns.Msg
		if m.Unpack(buf[:n]) != nil {
			continue
		}
		e := gmMessageToEntry(&m, inprogress)
		if e == nil || len(m.Question) == 0 || m.Question[0].Name != q.Question[0].Name {
			continue // go-micro: "discard anything which we've not asked for"
		}
		if e.complete() {
			out = append(out, e)
		}
	}
}

// listener hears what is multicast in the test's namespace.
type listener struct {
	c *net.UDPConn
}

func listen(t *testing.T) *listener {
	t.Helper()
	c, err := net.ListenMulticastUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: 5353})
	if err != nil {
		t.Fatal(err)
	}
	if err := ipv4.NewPacketConn(c).SetMulticastLoopback(true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &listener{c: c}
}

// next returns the next response multicast that mentions inst.
func (l *listener) next(t *testing.T, inst string, d time.Duration) *dns.Msg {
	t.Helper()
	buf := make([]byte, 65536)
	l.c.SetReadDeadline(time.Now().Add(d))
	for {
		n, err := l.c.Read(buf)
		if err != nil {
			t.Fatalf("no response about %s within %v: %v", inst, d, err)
		}
		var m dns.Msg
		if m.Unpack(buf[:n]) != nil || !m.Response {
			continue
		}
		for _, rr := range append(m.Answer, m.Extra...) {
			if rr.Header().Name == inst {
				return &m
			}
		}
	}
}

// TestGoMicroReadsAnswers: go-micro's GetService takes an answer only when
// it repeats the question asked, and builds its node from the last record.
func TestGoMicroReadsAnswers(t *testing.T) {
	r := newRegistry(t)
	defer r.Close()
	s := service("wire", "wire-1", "127.0.0.1:9300")
	s.Metadata = map[string]string{"svc": "level"}
	if err := r.Register(ctxT(t), s); err != nil {
		t.Fatal(err)
	}
	got := gmQuery(t, "wire", 300*time.Millisecond)
	if len(got) != 1 {
		t.Fatalf("go-micro's client takes %d entries from the answers, want 1", len(got))
	}
	e := got[0]
	txt := gmDecode(t, e.InfoFields)
	if e.Name != "wire-1.wire.micro." || e.AddrV4.String() != "127.0.0.1" || e.Port != 9300 || e.TTL == 0 ||
		txt.Service != "wire" || txt.Version != "1.0.0" {
		t.Errorf("go-micro reads %+v %+v", e, txt)
	}
	if len(txt.Metadata) != 1 || txt.Metadata["zone"] != "a" {
		t.Errorf("go-micro reads node metadata %v, want the node's {zone: a}", txt.Metadata)
	}
}

// TestGoMicroReadsAnnouncementAndGoodbye: go-micro's watcher builds its
// event from the last record of each multicast message: an announcement
// must end with the node's complete records (a create), a goodbye must be
// the complete records with TTL 0 (a delete).
func TestGoMicroReadsAnnouncementAndGoodbye(t *testing.T) {
	l := listen(t)
	r := newRegistry(t)
	defer r.Close()
	s := service("wire2", "wire2-1", "127.0.0.1:9301")
	if err := r.Register(ctxT(t), s); err != nil {
		t.Fatal(err)
	}
	const inst = "wire2-1.wire2.micro."
	inprogress := map[string]*gmEntry{}
	e := gmMessageToEntry(l.next(t, inst, 3*time.Second), inprogress)
	if e == nil || e.Name != inst || !e.complete() || e.TTL == 0 {
		t.Fatalf("go-micro's watcher reads the announcement as %+v, want a complete entry for %s", e, inst)
	}
	if txt := gmDecode(t, e.InfoFields); txt.Service != "wire2" || txt.Metadata["zone"] != "a" {
		t.Errorf("announcement's TXT reads %+v", txt)
	}
	if err := r.Deregister(ctxT(t), s); err != nil {
		t.Fatal(err)
	}
	var bye *dns.Msg
	for bye == nil { // skip the second announcement if it comes first
		m := l.next(t, inst, 3*time.Second)
		if m.Answer[len(m.Answer)-1].Header().Ttl == 0 {
			bye = m
		}
	}
	e = gmMessageToEntry(bye, map[string]*gmEntry{})
	if e == nil || e.Name != inst || !e.complete() || e.TTL != 0 {
		t.Fatalf("go-micro's watcher reads the goodbye as %+v, want a complete entry with TTL 0 (a delete)", e)
	}
	if txt := gmDecode(t, e.InfoFields); txt.Service != "wire2" || txt.Version == "" {
		t.Errorf("goodbye's TXT reads %+v (go-micro skips entries without service and version)", txt)
	}
}

// TestGoMicroGoodbyeIsSeen: go-micro's goodbye (its responder's Shutdown)
// is SRV, A and TXT with TTL 0, without a PTR: a Delete at once, not after
// missed query rounds.
func TestGoMicroGoodbyeIsSeen(t *testing.T) {
	r := newRegistry(t, mdns.WithQueryInterval(5*time.Second)) // a missed round cannot explain a prompt delete
	defer r.Close()
	ev := watchNodes(t, r, "gm.svc")
	txt := gmTXT(t, "gm.svc", "latest", map[string]string{"zone": "b"})
	rrs := func(ttl uint32) []dns.RR {
		inst := "gm.svc-1.gm.svc.micro."
		return []dns.RR{
			&dns.SRV{Hdr: dns.RR_Header{Name: inst, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: ttl}, Priority: 10, Weight: 1, Port: 41000, Target: "gm-host."},
			&dns.A{Hdr: dns.RR_Header{Name: "gm-host.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl}, A: net.IPv4(127, 0, 0, 1)},
			&dns.TXT{Hdr: dns.RR_Header{Name: inst, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: ttl}, Txt: txt},
		}
	}
	l := listen(t)
	send := func(rrs []dns.RR) {
		b := packResponse(t, nil, rrs...)
		if _, err := l.c.WriteToUDP(b, &net.UDPAddr{IP: net.IPv4(224, 0, 0, 251), Port: 5353}); err != nil {
			t.Fatal(err)
		}
	}
	send(rrs(120)) // go-micro's announcement
	registrytestEventually(t, func() error {
		if a, ok := ev.get("gm.svc-1"); !ok || a != "127.0.0.1:41000" {
			return errorf("go-micro node not seen (%q)", a)
		}
		return nil
	})
	start := time.Now()
	send(rrs(0)) // go-micro's goodbye
	registrytestEventually(t, func() error {
		if _, ok := ev.get("gm.svc-1"); ok {
			return errorf("go-micro node still there %v after its goodbye", time.Since(start))
		}
		return nil
	})
	if d := time.Since(start); d > time.Second {
		t.Errorf("go-micro's goodbye took %v to count", d)
	}
}

// gmTXT encodes a TXT the way go-micro does.
func gmTXT(t *testing.T, service, version string, md map[string]string) []string {
	js, err := json.Marshal(&gmTxt{Service: service, Version: version, Metadata: md, Endpoints: []*registry.Endpoint{{Name: "Say.Hello"}}})
	if err != nil {
		t.Fatal(err)
	}
	var z bytes.Buffer
	w := zlib.NewWriter(&z)
	w.Write(js)
	w.Close()
	h := hex.EncodeToString(z.Bytes())
	var out []string
	for len(h) > 255 {
		out, h = append(out, h[:255]), h[255:]
	}
	return append(out, h)
}
