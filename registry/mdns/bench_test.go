package mdns

import (
	"net"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func BenchmarkEncodeTXT(b *testing.B) {
	s := testService("greeter-1", "10.0.0.1:8080")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := encodeTXT(s); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeTXT(b *testing.B) {
	txt, _ := encodeTXT(testService("greeter-1", "10.0.0.1:8080"))
	b.SetBytes(int64(len(strings.Join(txt, ""))))
	b.ReportAllocs()
	for b.Loop() {
		rec, err := decodeTXT(txt)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := rec.service(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseAnswer: unpack and parse one responder's answer, what the
// socket reader does per packet.
func BenchmarkParseAnswer(b *testing.B) {
	txt, _ := encodeTXT(testService("greeter-1", "10.0.0.1:8080"))
	pkt, _ := response(instanceRRs("greeter", "greeter-1.greeter.micro.", 8080, net.IPv4(10, 0, 0, 1), txt, 120)).Pack()
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	for b.Loop() {
		var m dns.Msg
		if err := m.Unpack(pkt); err != nil {
			b.Fatal(err)
		}
		if p, bad := testNames.parse(&m); len(p.nodes) != 1 || len(bad) > 0 {
			b.Fatal("parse failed")
		}
	}
}

// BenchmarkDecodeBomb: what a zlib bomb costs before the cap stops it.
func BenchmarkDecodeBomb(b *testing.B) {
	txt := badTXTs(b)["zlib bomb"]
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeTXT(txt); err == nil {
			b.Fatal("bomb accepted")
		}
	}
}
