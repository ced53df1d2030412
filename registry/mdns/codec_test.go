package mdns

import (
	"bytes"
	"compress/zlib"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/beacon-go/beacon/registry"
)

func testService(id, addr string) *registry.Service {
	return &registry.Service{
		Name:     "greeter",
		Version:  "1.2.0",
		Metadata: map[string]string{"team": "a"},
		Endpoints: []*registry.Endpoint{{
			Name:     "Greeter.Hello",
			Request:  &registry.Value{Name: "HelloReq", Type: "HelloReq", Values: []*registry.Value{{Name: "name", Type: "string"}}},
			Response: &registry.Value{Name: "HelloRsp", Type: "HelloRsp"},
			Metadata: map[string]string{"stream": "false"},
		}},
		Nodes: []*registry.Node{{ID: id, Address: addr, Metadata: map[string]string{"zone": "z1"}}},
	}
}

// chunk hex-encodes and cuts b like encodeTXT does.
func chunk(b []byte) []string {
	h := hex.EncodeToString(b)
	var out []string
	for len(h) > txtChunk {
		out = append(out, h[:txtChunk])
		h = h[txtChunk:]
	}
	return append(out, h)
}

func zlibBytes(t testing.TB, b []byte) []byte {
	var z bytes.Buffer
	w, _ := zlib.NewWriterLevel(&z, zlib.BestCompression)
	w.Write(b)
	w.Close()
	return z.Bytes()
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	s := testService("greeter-1", "10.0.0.1:8080")
	// Big enough to need several chunks.
	for i := range 40 {
		s.Metadata[strings.Repeat("k", 10)+string(rune('a'+i%26))+string(rune('a'+i/26))] = strings.Repeat("v", i*7)
	}
	txt, err := encodeTXT(s)
	if err != nil {
		t.Fatal(err)
	}
	if len(txt) < 2 {
		t.Fatalf("want several chunks, got %d", len(txt))
	}
	for i, c := range txt {
		if len(c) > txtChunk || len(c) == 0 {
			t.Errorf("chunk %d has %d bytes", i, len(c))
		}
	}
	rec, err := decodeTXT(txt)
	if err != nil {
		t.Fatal(err)
	}
	if rec.goMicro() || rec.Service != "greeter" {
		t.Errorf("record not ours or without go-micro's service key: %+v", rec)
	}
	got, err := rec.service()
	if err != nil {
		t.Fatal(err)
	}
	if !registry.SameNode(got, s) || !reflect.DeepEqual(got.Endpoints, s.Endpoints) {
		t.Errorf("round trip changed the service:\n got %+v\nwant %+v", got, s)
	}
}

// goMicroTXT encodes a record the way go-micro does (no JSON tags, default
// compression, node metadata in Metadata).
func goMicroTXT(t testing.TB, service, version string, md map[string]string) []string {
	type mdnsTxt struct {
		Service   string
		Version   string
		Endpoints []*registry.Endpoint
		Metadata  map[string]string
	}
	b, err := json.Marshal(&mdnsTxt{Service: service, Version: version, Metadata: md,
		Endpoints: []*registry.Endpoint{{Name: "Say.Hello"}}})
	if err != nil {
		t.Fatal(err)
	}
	var z bytes.Buffer
	w := zlib.NewWriter(&z)
	w.Write(b)
	w.Close()
	return chunk(z.Bytes())
}

// instanceRRs returns the records a responder sends for one instance.
func instanceRRs(svc, inst string, port uint16, ip net.IP, txt []string, ttl uint32) []dns.RR {
	hdr := func(name string, t uint16) dns.RR_Header {
		return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
	}
	return []dns.RR{
		&dns.PTR{Hdr: hdr(svc+".micro.", dns.TypePTR), Ptr: inst},
		&dns.SRV{Hdr: hdr(inst, dns.TypeSRV), Priority: 10, Weight: 1, Port: port, Target: inst},
		&dns.A{Hdr: hdr(inst, dns.TypeA), A: ip},
		&dns.TXT{Hdr: hdr(inst, dns.TypeTXT), Txt: txt},
	}
}

var testNames = names{domain: "micro."}

// roundTrip packs and unpacks a message as it would travel.
func roundTrip(t testing.TB, rrs []dns.RR) *dns.Msg {
	t.Helper()
	b, err := response(rrs).Pack()
	if err != nil {
		t.Fatal(err)
	}
	var m dns.Msg
	if err := m.Unpack(b); err != nil {
		t.Fatal(err)
	}
	return &m
}

func TestParseGoMicroRecord(t *testing.T) {
	txt := goMicroTXT(t, "go.micro.srv.greeter", "latest", map[string]string{"broker": "http"})
	rrs := instanceRRs("go.micro.srv.greeter", "go.micro.srv.greeter-4f1e.go.micro.srv.greeter.micro.", 41234, net.IPv4(10, 0, 0, 7), txt, 120)
	p, bad := testNames.parse(roundTrip(t, rrs))
	if len(bad) > 0 || len(p.nodes) != 1 {
		t.Fatalf("parse: %d nodes, bad %v", len(p.nodes), bad)
	}
	o := p.nodes[0]
	n := o.svc.Nodes[0]
	if o.service != "go.micro.srv.greeter" || o.id != "go.micro.srv.greeter-4f1e" || n.ID != o.id ||
		n.Address != "10.0.0.7:41234" || n.Metadata["broker"] != "http" || o.svc.Version != "latest" || o.ttl != 120*time.Second {
		t.Errorf("go-micro record read as %+v node %+v", o, n)
	}
}

func TestParseOurRecordAndGoodbye(t *testing.T) {
	s := testService("n@host:1.x", "10.0.0.1:8080") // '@' is escaped by miekg/dns, '.' splits labels
	txt, err := encodeTXT(s)
	if err != nil {
		t.Fatal(err)
	}
	inst := testNames.instance("greeter", "n@host:1.x")
	rrs := append(instanceRRs("greeter", inst, 8080, net.IPv4(10, 0, 0, 1), txt, 30),
		&dns.PTR{Hdr: dns.RR_Header{Name: "_services.micro.", Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: 30}, Ptr: "greeter._services.micro."})
	p, bad := testNames.parse(roundTrip(t, rrs))
	if len(bad) > 0 || len(p.nodes) != 1 || len(p.services) != 1 || p.services[0] != "greeter" {
		t.Fatalf("parse: %+v, bad %v", p, bad)
	}
	if o := p.nodes[0]; o.goodbye || o.id != "n@host:1.x" || !registry.SameNode(o.svc, s) || o.ttl != 30*time.Second {
		t.Errorf("observation %+v", o)
	}
	// The same records with TTL 0 are a goodbye.
	rrs = instanceRRs("greeter", inst, 8080, net.IPv4(10, 0, 0, 1), txt, 0)[:2] // PTR and SRV
	p, bad = testNames.parse(roundTrip(t, rrs))
	if len(bad) > 0 || len(p.nodes) != 1 || !p.nodes[0].goodbye || p.nodes[0].id != "n@host:1.x" || p.nodes[0].service != "greeter" {
		t.Fatalf("goodbye parsed as %+v, bad %v", p, bad)
	}
}

func TestParseIgnoresOthers(t *testing.T) {
	hdr := func(name string, typ uint16) dns.RR_Header {
		return dns.RR_Header{Name: name, Rrtype: typ, Class: dns.ClassINET, Ttl: 120}
	}
	rrs := []dns.RR{
		// Another domain (a printer on the LAN).
		&dns.PTR{Hdr: hdr("_ipp._tcp.local.", dns.TypePTR), Ptr: "printer._ipp._tcp.local."},
		&dns.TXT{Hdr: hdr("printer._ipp._tcp.local.", dns.TypeTXT), Txt: []string{"rp=ipp"}},
		// go-micro's wildcard and DNS-SD enumeration in our domain.
		&dns.PTR{Hdr: hdr("_services._dns-sd._udp.micro.", dns.TypePTR), Ptr: "_services.micro."},
		&dns.SRV{Hdr: hdr("greeter._services.micro.", dns.TypeSRV), Port: 9999, Target: "greeter._services.micro."},
		&dns.TXT{Hdr: hdr("greeter._services.micro.", dns.TypeTXT)},
		&dns.A{Hdr: hdr("greeter._services.micro.", dns.TypeA), A: net.IPv4zero},
	}
	p, bad := testNames.parse(roundTrip(t, rrs))
	if len(bad) > 0 || len(p.nodes) > 0 || len(p.services) > 0 {
		t.Errorf("parse of unrelated records: %+v, bad %v", p, bad)
	}
}

// badTXTs are TXT contents a broken or hostile responder might send, each
// with the error it must produce.
func badTXTs(t testing.TB) map[string][]string {
	bomb := zlibBytes(t, make([]byte, 1<<20)) // 1 MiB of zeros in ~1 KiB
	valid, _ := encodeTXT(testService("n1", "10.0.0.1:1"))
	noAddr := testService("n1", "10.0.0.1:1")
	noAddr.Nodes[0].Address = ""
	js, _ := json.Marshal(noAddr)
	twoNodes := testService("n1", "10.0.0.1:1")
	twoNodes.Nodes = append(twoNodes.Nodes, &registry.Node{ID: "n2", Address: "10.0.0.2:1"})
	js2, _ := json.Marshal(twoNodes)
	return map[string][]string{
		"empty":          {},
		"bad hex":        {"zz" + valid[0][2:]},
		"odd hex":        {valid[0][:len(valid[0])-1]},
		"not zlib":       chunk([]byte("plain text, no zlib header")),
		"truncated zlib": {strings.Join(valid, "")[:40]},
		"zlib bomb":      chunk(bomb),
		"huge TXT":       chunk(bytes.Repeat([]byte{0xab}, MaxRecordSize)),
		"bad JSON":       chunk(zlibBytes(t, []byte(`{"name": "greeter", "nodes": [`))),
		"JSON not obj":   chunk(zlibBytes(t, []byte(`[1,2,3]`))),
		"missing fields": chunk(zlibBytes(t, js)),
		"two nodes":      chunk(zlibBytes(t, js2)),
		"no nodes":       chunk(zlibBytes(t, []byte(`{"name":"greeter","version":"1"}`))),
	}
}

func TestDecodeBad(t *testing.T) {
	if rec, err := decodeTXT(badTXTs(t)["zlib bomb"]); err == nil || !strings.Contains(err.Error(), "decompresses to more than") {
		t.Fatalf("zlib bomb: %v, %v; want the decompression cap to stop it", rec, err)
	}
	for name, txt := range badTXTs(t) {
		t.Run(name, func(t *testing.T) {
			rec, err := decodeTXT(txt)
			if err == nil {
				_, err = rec.service()
			}
			if !errors.Is(err, registry.ErrMalformed) {
				t.Errorf("err = %v, want ErrMalformed", err)
			}
		})
	}
}

func TestParseBadRecords(t *testing.T) {
	good, _ := encodeTXT(testService("n1", "10.0.0.1:8080"))
	cases := map[string][]dns.RR{
		// The record of n1 of greeter published as n2.
		"instance mismatch": instanceRRs("greeter", "n2.greeter.micro.", 8080, net.IPv4(10, 0, 0, 1), good, 120),
		// ... or under another service.
		"service mismatch": instanceRRs("other", "n1.other.micro.", 8080, net.IPv4(10, 0, 0, 1), good, 120),
		// A PTR pointing outside its service.
		"PTR outside": {&dns.PTR{Hdr: dns.RR_Header{Name: "greeter.micro.", Rrtype: dns.TypePTR, Class: dns.ClassINET, Ttl: 120}, Ptr: "n1.evil.micro."}},
		// A go-micro record without an address.
		"go-micro no A": instanceRRs("svc", "x.svc.micro.", 1, net.IPv4(1, 2, 3, 4), goMicroTXT(t, "svc", "1", nil), 120)[:2:2],
	}
	cases["go-micro no A"] = append(cases["go-micro no A"], instanceRRs("svc", "x.svc.micro.", 1, nil, goMicroTXT(t, "svc", "1", nil), 120)[3])
	for name, txt := range badTXTs(t) {
		if len(txt) == 0 {
			continue // an empty TXT cannot be told from no TXT
		}
		cases[name] = instanceRRs("greeter", "n1.greeter.micro.", 8080, net.IPv4(10, 0, 0, 1), txt, 120)
	}
	for name, rrs := range cases {
		t.Run(name, func(t *testing.T) {
			b, err := response(rrs).Pack()
			if err != nil {
				t.Skipf("cannot even pack: %v", err)
			}
			var m dns.Msg
			if err := m.Unpack(b); err != nil {
				t.Fatal(err)
			}
			p, bad := testNames.parse(&m)
			if len(p.nodes) != 0 {
				t.Errorf("bad records produced nodes: %+v", p.nodes)
			}
			if len(bad) == 0 {
				t.Errorf("no error reported")
			}
		})
	}
}

func TestUnescape(t *testing.T) {
	cases := []struct {
		in, want string
		ok       bool
	}{
		{"plain.name.", "plain.name.", true},
		{`n\@host.svc.`, "n@host.svc.", true},
		{`a\.b.`, "a.b.", true},
		{`\000x\255`, "\x00x\xff", true},
		{`\256`, "", false},
		{`dangling\`, "", false},
	}
	for _, c := range cases {
		got, ok := unescape(c.in)
		if ok != c.ok || got != c.want {
			t.Errorf("unescape(%q) = %q, %v; want %q, %v", c.in, got, ok, c.want, c.ok)
		}
	}
}

func TestCheckNode(t *testing.T) {
	long := strings.Repeat("x", 64)
	for _, id := range []string{".a", "a.", "a..b", long, strings.Repeat("abcdefgh.", 30)} {
		err := testNames.checkNode("node[0].id", "greeter", id)
		var ve *registry.ValidationError
		if !errors.As(err, &ve) || !errors.Is(err, registry.ErrInvalid) {
			t.Errorf("checkNode(%q) = %v, want a ValidationError", id, err)
		}
	}
	for _, id := range []string{"a", "greeter-1", "a.b", "n@h:1", strings.Repeat("x", 63)} {
		if err := testNames.checkNode("node[0].id", "greeter", id); err != nil {
			t.Errorf("checkNode(%q) = %v", id, err)
		}
	}
}

// FuzzDecode feeds arbitrary bytes to the TXT decoder, cut in chunks as
// they would arrive. It must never panic, and whatever it accepts must be a
// valid one-node service.
func FuzzDecode(f *testing.F) {
	valid, _ := encodeTXT(testService("n1", "10.0.0.1:8080"))
	f.Add([]byte(strings.Join(valid, "")))
	f.Add([]byte(strings.Join(goMicroTXT(f, "svc", "1", map[string]string{"a": "b"}), "")))
	for _, txt := range badTXTs(f) {
		f.Add([]byte(strings.Join(txt, "")))
	}
	f.Add([]byte{})
	f.Add([]byte("78da"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var txt []string
		for len(b) > 0 {
			k := min(len(b), txtChunk)
			txt = append(txt, string(b[:k]))
			b = b[k:]
		}
		rec, err := decodeTXT(txt)
		if err != nil {
			if !errors.Is(err, registry.ErrMalformed) {
				t.Fatalf("error not ErrMalformed: %v", err)
			}
			return
		}
		if s, err := rec.service(); err == nil {
			if len(s.Nodes) != 1 || registry.Validate(s) != nil {
				t.Fatalf("accepted an invalid service: %+v", s)
			}
		}
	})
}

// FuzzParse feeds arbitrary packets to the message parser.
func FuzzParse(f *testing.F) {
	txt, _ := encodeTXT(testService("n1", "10.0.0.1:8080"))
	for _, rrs := range [][]dns.RR{
		instanceRRs("greeter", "n1.greeter.micro.", 8080, net.IPv4(10, 0, 0, 1), txt, 120),
		instanceRRs("greeter", "n1.greeter.micro.", 8080, net.IPv4(10, 0, 0, 1), txt, 0),
		instanceRRs("svc", "x.svc.micro.", 1, net.IPv4(1, 2, 3, 4), goMicroTXT(f, "svc", "1", nil), 120),
	} {
		b, _ := response(rrs).Pack()
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m dns.Msg
		if m.Unpack(b) != nil {
			return
		}
		p, _ := testNames.parse(&m)
		for _, o := range p.nodes {
			if !o.goodbye && (o.svc == nil || registry.Validate(o.svc) != nil || o.svc.Nodes[0].ID != o.id || o.svc.Name != o.service) {
				t.Fatalf("inconsistent observation %+v", o)
			}
		}
	})
}

// TestMetadataLayout: "metadata" holds the node's metadata, which is what
// go-micro reads; the service's travels in "service_metadata". Records of
// older Beacon versions (service metadata in "metadata", no
// "service_metadata") still read right.
func TestMetadataLayout(t *testing.T) {
	s := testService("n1", "10.0.0.1:8080")
	txt, err := encodeTXT(s)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := hex.DecodeString(strings.Join(txt, ""))
	zr, _ := zlib.NewReader(bytes.NewReader(b))
	js, _ := io.ReadAll(zr)
	var gm struct{ Metadata map[string]string } // go-micro's mdnsTxt
	if err := json.Unmarshal(js, &gm); err != nil || !reflect.DeepEqual(gm.Metadata, s.Nodes[0].Metadata) {
		t.Errorf("go-micro reads metadata %v, want the node's %v", gm.Metadata, s.Nodes[0].Metadata)
	}
	rec, _ := decodeTXT(txt)
	got, err := rec.service()
	if err != nil || !reflect.DeepEqual(got.Metadata, s.Metadata) || !reflect.DeepEqual(got.Nodes[0].Metadata, s.Nodes[0].Metadata) {
		t.Errorf("read back service metadata %v, node metadata %v (%v)", got.Metadata, got.Nodes[0].Metadata, err)
	}
	// An older Beacon record.
	old, _ := json.Marshal(map[string]any{"name": s.Name, "service": s.Name, "version": s.Version,
		"metadata": s.Metadata, "endpoints": s.Endpoints, "nodes": s.Nodes})
	rec, err = decodeTXT(chunk(zlibBytes(t, old)))
	if err != nil {
		t.Fatal(err)
	}
	if got, err = rec.service(); err != nil || !reflect.DeepEqual(got.Metadata, s.Metadata) || !reflect.DeepEqual(got.Nodes[0].Metadata, s.Nodes[0].Metadata) {
		t.Errorf("older record read as service metadata %v, node metadata %v (%v)", got.Metadata, got.Nodes[0].Metadata, err)
	}
}
