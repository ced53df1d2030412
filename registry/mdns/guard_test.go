package mdns

import (
	"net/netip"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	l := &limiterSet{self: map[netip.Addr]bool{netip.MustParseAddr("10.0.0.9"): true}, sources: map[netip.Addr]*source{}}
	now := time.Now()
	rogue := netip.MustParseAddr("10.0.0.66")
	count := func(src netip.Addr, kind packetKind, n int, at time.Time) int {
		ok := 0
		for range n {
			if l.allow(at, src, kind) {
				ok++
			}
		}
		return ok
	}
	if got := count(rogue, kindMulticast, 2000, now); got != multicastBurst {
		t.Errorf("multicast burst: %d of 2000 taken, want %d", got, multicastBurst)
	}
	if got := count(rogue, kindMulticast, 2000, now.Add(time.Second)); got != multicastRate {
		t.Errorf("a second later: %d taken, want %d", got, multicastRate)
	}
	// Another source is not affected; this host never limited.
	if got := count(netip.MustParseAddr("10.0.0.7"), kindMulticast, 10, now); got != 10 {
		t.Errorf("another source: %d of 10", got)
	}
	for _, self := range []string{"10.0.0.9", "127.0.0.1", "0.0.0.0", "::1"} {
		if got := count(netip.MustParseAddr(self), kindMulticast, 5000, now); got != 5000 {
			t.Errorf("this host (%s) limited: %d of 5000", self, got)
		}
	}
	// Answers: a budget per second plus one per query sent.
	node := netip.MustParseAddr("10.0.0.8")
	count(node, kindAnswer, answerBurst, now) // drain
	l.sent(3)
	if got := count(node, kindAnswer, 1000, now); got != 3*answerPerQuery {
		t.Errorf("after 3 queries: %d answers taken, want %d", got, 3*answerPerQuery)
	}
	if n, top, most := l.report(); n == 0 || top != rogue || most == 0 {
		t.Errorf("report = %d, %v, %d", n, top, most)
	}
	if n, _, _ := l.report(); n != 0 {
		t.Errorf("report not reset: %d", n)
	}
}
