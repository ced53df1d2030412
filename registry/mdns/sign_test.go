package mdns

import (
	"bytes"
	"compress/zlib"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func TestSignVerify(t *testing.T) {
	now := time.Now()
	s := newSigner([]byte("0123456789abcdef"), "micro.", time.Second)
	pl, err := encodePayload(testService("n1", "10.0.0.1:8080"))
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, err, want error) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Errorf("%s: verify = %v, want %v", name, err, want)
		}
	}
	sigOf := func(h string) []byte {
		b, err := hex.DecodeString(h)
		if err != nil || !isSigBlock(b) {
			t.Fatalf("signature string %q", h)
		}
		return b
	}
	a := sigOf(s.sign(now, false, 30, pl.raw))
	check("fresh", s.verify(now, false, 30, pl.raw, a), nil)
	check("again", s.verify(now, false, 30, pl.raw, a), errReplay)
	b := sigOf(s.sign(now, false, 30, pl.raw)) // same content, same instant: a new timestamp
	if bytes.Equal(a, b) {
		t.Fatal("two signatures of the same record are equal")
	}
	check("as goodbye", s.verify(now, true, 30, pl.raw, b), errBadSignature)
	check("other TTL", s.verify(now, false, 0, pl.raw, b), errBadSignature)
	tampered := bytes.Clone(pl.raw)
	tampered[len(tampered)/2] ^= 1
	check("tampered", s.verify(now, false, 30, tampered, b), errBadSignature)
	check("unsigned", s.verify(now, false, 30, pl.raw, nil), errUnsigned)
	other := newSigner([]byte("fedcba9876543210"), "micro.", time.Second)
	check("other key", other.verify(now, false, 30, pl.raw, b), errBadSignature)
	otherDomain := newSigner([]byte("0123456789abcdef"), "beacon.", time.Second)
	check("other domain", otherDomain.verify(now, false, 30, pl.raw, b), errBadSignature)
	check("too late", s.verify(now.Add(2*time.Second), false, 30, pl.raw, b), errStale)
	check("from the future", s.verify(now.Add(-2*time.Second), false, 30, pl.raw, b), errStale)
	check("in time", s.verify(now.Add(900*time.Millisecond), false, 30, pl.raw, b), nil)

	// The replay set never forgets a signature inside its window: full, it
	// refuses new ones; entries past their window make room.
	s.mu.Lock()
	for i := range MaxReplaySet {
		var k [16]byte
		k[0], k[1], k[2] = byte(i), byte(i>>8), 0xee
		s.seen[k] = now.Add(time.Second).UnixMicro()
	}
	s.mu.Unlock()
	c := sigOf(s.sign(now, false, 30, pl.raw))
	check("set full", s.verify(now, false, 30, pl.raw, c), errReplayFull)
	check("set full, later", s.verify(now.Add(1500*time.Millisecond), false, 30, pl.raw, sigOf(s.sign(now.Add(1500*time.Millisecond), false, 30, pl.raw))), nil)
}

// TestSignedTXTReadByOthers: a signature is one more TXT string that
// readers without signatures (go-micro, older Beacon) never look at.
func TestSignedTXTReadByOthers(t *testing.T) {
	r := &Registry{names: testNames, sig: newSigner([]byte("0123456789abcdef"), "micro.", time.Second)}
	svc := testService("n1", "10.0.0.1:8080")
	pl, err := encodePayload(svc)
	if err != nil {
		t.Fatal(err)
	}
	txt := r.txt(&nodeRecords{pl: pl}, time.Now(), 30)
	if len(txt) != len(pl.chunks)+1 || len(txt[len(txt)-1]) != 2*sigLen {
		t.Fatalf("signed TXT %q", txt)
	}
	// go-micro's decode: hex of all strings, zlib, JSON.
	b, err := hex.DecodeString(strings.Join(txt, ""))
	if err != nil {
		t.Fatal(err)
	}
	zr, err := zlib.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if js, err := io.ReadAll(zr); err != nil || !strings.Contains(string(js), `"service":"greeter"`) {
		t.Fatalf("go-micro's decode of a signed TXT: %s, %v", js, err)
	}
	rec, raw, sig, err := decodeSigned(txt)
	if err != nil || !bytes.Equal(raw, pl.raw) || !isSigBlock(sig) {
		t.Fatalf("decodeSigned = %v, raw ok %v, sig %x", err, bytes.Equal(raw, pl.raw), sig)
	}
	if got, err := rec.service(); err != nil || got.Nodes[0].ID != "n1" {
		t.Fatalf("service() = %v, %v", got, err)
	}
	// Bytes after the zlib stream that are not a signature are refused.
	bad := append(append([]string(nil), pl.chunks...), "abcd")
	if _, _, _, err := decodeSigned(bad); err == nil {
		t.Error("trailing bytes that are not a signature were accepted")
	}
	// A signed goodbye parses with its signature.
	d := &nodeRecords{service: "greeter", svcName: "greeter.micro.", inst: "n1.greeter.micro.", port: 8080, ips: []net.IP{net.IPv4(10, 0, 0, 1)}, pl: pl, ttl: 30}
	p, badRecs := testNames.parse(roundTrip(t, r.goodbye(d, time.Now()).Answer))
	if len(badRecs) > 0 || len(p.nodes) != 1 || !p.nodes[0].goodbye || p.nodes[0].sig == nil || p.nodes[0].txtTTL != 0 {
		t.Fatalf("signed goodbye parsed as %+v, bad %v", p, badRecs)
	}
	if err := r.sig.verify(time.Now(), true, 0, p.nodes[0].raw, p.nodes[0].sig); err != nil {
		t.Errorf("signed goodbye does not verify: %v", err)
	}
}

// TestParseGoMicroGoodbye: go-micro says goodbye with SRV, A and TXT at TTL
// 0, without a PTR: the service comes from the TXT.
func TestParseGoMicroGoodbye(t *testing.T) {
	txt := goMicroTXT(t, "go.micro.srv.greeter", "latest", map[string]string{"broker": "http"})
	inst := "go.micro.srv.greeter-4f1e.go.micro.srv.greeter.micro."
	rrs := instanceRRs("go.micro.srv.greeter", inst, 41234, net.IPv4(10, 0, 0, 7), txt, 0)[1:] // no PTR
	p, bad := testNames.parse(roundTrip(t, rrs))
	if len(bad) > 0 || len(p.nodes) != 1 {
		t.Fatalf("parse: %+v, bad %v", p, bad)
	}
	if o := p.nodes[0]; !o.goodbye || o.service != "go.micro.srv.greeter" || o.id != "go.micro.srv.greeter-4f1e" {
		t.Errorf("go-micro goodbye read as %+v", o)
	}
	// Our goodbye without its PTR, likewise.
	ours, _ := encodeTXT(testService("n1", "10.0.0.1:8080"))
	p, bad = testNames.parse(roundTrip(t, instanceRRs("greeter", "n1.greeter.micro.", 8080, net.IPv4(10, 0, 0, 1), ours, 0)[1:]))
	if len(bad) > 0 || len(p.nodes) != 1 || !p.nodes[0].goodbye || p.nodes[0].id != "n1" || p.nodes[0].service != "greeter" {
		t.Fatalf("our goodbye without PTR: %+v, bad %v", p, bad)
	}
	// A TXT that names another node than the instance is refused.
	p, bad = testNames.parse(roundTrip(t, instanceRRs("greeter", "n2.greeter.micro.", 8080, net.IPv4(10, 0, 0, 1), ours, 0)[1:]))
	if len(bad) != 1 || len(p.nodes) != 0 {
		t.Errorf("goodbye under the wrong instance: %+v, bad %v", p, bad)
	}
}

// TestAnswersRepeatTheQuestion: every answer carries the question and ID
// of its query, one node per message, the instance's TXT last.
func TestAnswersRepeatTheQuestion(t *testing.T) {
	r := &Registry{names: testNames, nodes: map[string]*localNode{}}
	for _, id := range []string{"a", "b"} {
		pl, _ := encodePayload(testService(id, "10.0.0.1:8080"))
		r.nodes[nodeKey("greeter", id)] = &localNode{rec: &nodeRecords{service: "greeter", svcName: "greeter.micro.", inst: id + ".greeter.micro.",
			wild: "greeter._services.micro.", port: 8080, ips: []net.IP{net.IPv4(10, 0, 0, 1)}, pl: pl, ttl: 30}}
	}
	q := new(dns.Msg)
	q.SetQuestion("Greeter.micro.", dns.TypePTR) // names are case-insensitive
	q.Question = append(q.Question, dns.Question{Name: "_services.micro.", Qtype: dns.TypePTR, Qclass: dns.ClassINET},
		dns.Question{Name: "a.greeter.micro.", Qtype: dns.TypePTR, Qclass: dns.ClassINET},
		dns.Question{Name: "_services._dns-sd._udp.micro.", Qtype: dns.TypePTR, Qclass: dns.ClassINET})
	msgs := r.answersLocked(q, time.Now())
	var perQ [4]int
	for _, m := range msgs {
		if m.Id != q.Id || len(m.Question) != 1 {
			t.Fatalf("answer without its query's ID and question: %v", m)
		}
		for i, x := range q.Question {
			if m.Question[0] == x {
				perQ[i]++
			}
		}
		last := m.Answer[len(m.Answer)-1]
		if _, ok := last.(*dns.TXT); !ok && m.Question[0].Name != "_services._dns-sd._udp.micro." {
			t.Errorf("answer to %s ends with %v, want the TXT", m.Question[0].Name, last)
		}
	}
	if perQ != [4]int{2, 1, 1, 1} {
		t.Errorf("answers per question %v, want 2 (one per node), 1 (one per service), 1 (the instance), 1", perQ)
	}
}
