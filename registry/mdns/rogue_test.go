package mdns

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/ipv4"

	"github.com/beacon-go/beacon/internal/netns"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrytest"
)

// recorder is a slog.Handler that keeps records, for asserting on logs.
type recorder struct {
	mu   sync.Mutex
	recs []string
}

func (h *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *recorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *recorder) WithGroup(string) slog.Handler            { return h }
func (h *recorder) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.Key + "=" + a.Value.String())
		return true
	})
	h.mu.Lock()
	h.recs = append(h.recs, b.String())
	h.mu.Unlock()
	return nil
}

func (h *recorder) lines(prefix string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, r := range h.recs {
		if strings.HasPrefix(r, prefix) {
			out = append(out, r)
		}
	}
	return out
}

// rogue is a responder written with miekg/dns that answers queries for its
// service with broken records and multicasts them unsolicited too.
type rogue struct {
	t    *testing.T
	c    *net.UDPConn
	msgs [][]byte // one response per bad instance (and the good one)
	junk [][]byte // packets that are not DNS at all
	wg   sync.WaitGroup
}

func startRogue(t *testing.T, service string) *rogue {
	c, err := net.ListenMulticastUDP("udp4", nil, &net.UDPAddr{IP: net.ParseIP(group4), Port: mdnsPort})
	if err != nil {
		t.Fatal(err)
	}
	if err := ipv4.NewPacketConn(c).SetMulticastLoopback(true); err != nil {
		t.Fatal(err)
	}
	c.SetReadBuffer(4 << 20) // it hears its own floods too
	ro := &rogue{t: t, c: c}
	inst := func(id string) string { return id + "." + service + ".micro." }
	svcOf := func(id, addr string) *registry.Service {
		s := testService(id, addr)
		s.Name = service
		return s
	}
	add := func(rrs []dns.RR) {
		b, err := response(rrs).Pack()
		if err != nil {
			t.Fatal(err)
		}
		ro.msgs = append(ro.msgs, b)
	}
	good, _ := encodeTXT(svcOf("good", "10.0.0.1:8080"))
	add(instanceRRs(service, inst("good"), 8080, net.IPv4(10, 0, 0, 1), good, 120))
	i := 0
	for _, txt := range badTXTs(t) {
		if len(txt) == 0 {
			continue
		}
		i++
		add(instanceRRs(service, inst("bad"+string(rune('a'+i))), 8080, net.IPv4(10, 0, 0, 1), txt, 120))
	}
	// The good record under another instance name, and under another service.
	add(instanceRRs(service, inst("impostor"), 8080, net.IPv4(10, 0, 0, 1), good, 120))
	other, _ := encodeTXT(testService("x", "10.0.0.1:1")) // service "greeter"
	add(instanceRRs(service, inst("x"), 8080, net.IPv4(10, 0, 0, 1), other, 120))
	// Hundreds of records in one message.
	var many []dns.RR
	for range 2 * maxRecords {
		many = append(many, &dns.A{Hdr: dns.RR_Header{Name: inst("many"), Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 1}, A: net.IPv4(1, 2, 3, 4)})
	}
	add(many)
	// A TXT of 40 KB (the largest UDP packet is 64 KB).
	var huge []string
	for range 160 {
		huge = append(huge, strings.Repeat("f", 255))
	}
	add(instanceRRs(service, inst("huge"), 8080, net.IPv4(10, 0, 0, 1), huge, 120))
	ro.junk = [][]byte{[]byte("GET / HTTP/1.1\r\n\r\n"), {0xff, 0xff, 0xff}, make([]byte, 12)}

	ro.wg.Add(1)
	go ro.serve(service + ".micro.")
	t.Cleanup(func() {
		c.Close()
		ro.wg.Wait()
	})
	return ro
}

// serve answers queries for qname with every message, by unicast like
// hashicorp/mdns does.
func (ro *rogue) serve(qname string) {
	defer ro.wg.Done()
	buf := make([]byte, 65536)
	for {
		n, from, err := ro.c.ReadFromUDP(buf)
		if err != nil {
			return
		}
		var m dns.Msg
		if m.Unpack(buf[:n]) != nil || m.Response {
			continue
		}
		for _, q := range m.Question {
			if q.Name == qname {
				for _, b := range append(ro.junk, ro.msgs...) {
					ro.c.WriteToUDP(b, from)
				}
			}
		}
	}
}

// announce multicasts every message unsolicited.
func (ro *rogue) announce() {
	g := &net.UDPAddr{IP: net.ParseIP(group4), Port: mdnsPort}
	for _, b := range append(ro.junk, ro.msgs...) {
		if _, err := ro.c.WriteToUDP(b, g); err != nil {
			ro.t.Error(err)
		}
	}
}

func TestRogueResponder(t *testing.T) {
	netns.Require(t)
	rec := &recorder{}
	r, err := New(context.Background(), WithLogger(slog.New(rec)))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	r.warn.burst = 1000 // see every warning here; the limit has its own test
	const service = "rogue"
	ro := startRogue(t, service)

	// A second registry with the default limit: a flood is cut short.
	limited := &recorder{}
	r2, err := New(context.Background(), WithLogger(slog.New(limited)))
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()

	w, err := r.Watch(context.Background(), registry.WatchService(service))
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan *registry.Event, 100)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(events)
		for {
			ev, err := w.Next()
			if err != nil {
				return
			}
			events <- ev
		}
	}()
	defer func() { w.Stop(); wg.Wait() }()

	// UDP may drop packets on a loaded machine (the rogue floods): poll.
	onlyGood := func() error {
		got, err := r.GetService(context.Background(), service)
		if err != nil {
			return err
		}
		if len(got) != 1 || len(got[0].Nodes) != 1 || got[0].Nodes[0].ID != "good" {
			return fmt.Errorf("GetService = %+v, want only the good node", got)
		}
		return nil
	}
	ro.announce()
	registrytest.Eventually(t, 5*time.Second, onlyGood)
	select {
	case ev := <-events:
		if ev.Type != registry.Create || ev.Service.Nodes[0].ID != "good" {
			t.Fatalf("event %v %s, want create good", ev.Type, ev.Service.Nodes[0].ID)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no create event for the good node")
	}
	// One more round of everything; then nothing but the good node was seen.
	ro.announce()
	registrytest.Eventually(t, 5*time.Second, onlyGood)
	// Every kind of damage was noticed and logged (the readers may still be
	// busy with the last packets).
	kinds := []string{"not hex", "not zlib", "decompresses to more than", "JSON", "published under instance",
		"records in one message", "TXT of", "nodes, want 1", "invalid node[0].address"}
	registrytest.Eventually(t, 5*time.Second, func() error {
		all := strings.Join(rec.lines("WARN mdns: ignoring bad record"), "\n")
		for _, want := range kinds {
			if !strings.Contains(all, want) {
				return fmt.Errorf("no warning mentions %q", want)
			}
		}
		return nil
	})
	registrytest.Eventually(t, 5*time.Second, func() error {
		if n := len(limited.lines("WARN mdns: ignoring bad record")); n != warnBurst {
			return fmt.Errorf("registry with the default limit logged %d warnings, want %d", n, warnBurst)
		}
		return nil
	})
	// All packets were handled by now; none made an event.
	select {
	case ev := <-events:
		t.Fatalf("unexpected event %v %s", ev.Type, ev.Service.Nodes[0].ID)
	default:
	}
	warns := rec.lines("WARN mdns: ignoring bad record")
	t.Logf("%d warnings, e.g.\n%s", len(warns), strings.Join(warns[:min(3, len(warns))], "\n"))
}
