package mdns

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// Per-source limits: a host that sends more than this has the excess dropped
// before it is even unpacked, so that a flood from one host costs a map
// lookup per packet and the answers of the others still get through. Packets
// from this host's own addresses are not limited.
const (
	// Unsolicited responses (announcements, goodbyes) multicast by one
	// source: per second, and burst.
	multicastRate  = 100
	multicastBurst = 500
	// Answers sent to our query sockets by one source: per second, plus
	// this many per query this Registry sent (a host answers once per node
	// and question), and burst.
	answerRate     = 100
	answerPerQuery = 64
	answerBurst    = 1000
	// Queries from one source that this Registry answers: per second, and
	// burst. Beyond, the source gets no answer (no amplification).
	queryRate  = 500
	queryBurst = 1000
	// Without a key: nodes never heard before that one source may bring,
	// per second, and burst. Beyond, records of further new nodes from it
	// are ignored (a host inventing nodes cannot swamp watches and
	// lookups; known nodes are not counted).
	newNodeRate  = 8
	newNodeBurst = 64
	// maxSources bounds the table of sources; beyond it (a flood from many
	// spoofed addresses), new sources share one budget.
	maxSources = 4096
)

type packetKind int

const (
	kindQuery packetKind = iota
	kindMulticast
	kindAnswer
	kindNewNode // not a packet: a node never heard before
)

// bucket is a token bucket.
type bucket struct {
	tokens float64
	last   time.Time
}

func (b *bucket) take(now time.Time, rate, burst, extra float64) bool {
	if b.last.IsZero() {
		b.tokens = burst
	} else {
		b.tokens += now.Sub(b.last).Seconds()*rate + extra
	}
	b.last = now
	b.tokens = min(b.tokens, burst)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

type source struct {
	query, mcast, answer, newNode bucket
	queries                       uint64 // the Registry's query count at the last answer
	seen                          time.Time
	dropped                       int // since the last report
}

// limiterSet rate-limits packets per source address.
type limiterSet struct {
	mu      sync.Mutex
	self    map[netip.Addr]bool
	sources map[netip.Addr]*source
	other   source // shared by sources beyond maxSources
	queries uint64 // queries sent by this Registry
	dropped int    // packets dropped since the last report
}

func newLimiterSet() *limiterSet {
	l := &limiterSet{self: map[netip.Addr]bool{}, sources: map[netip.Addr]*source{}}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(n.IP); ok {
					l.self[ip.Unmap()] = true
				}
			}
		}
	}
	return l
}

// sent counts a query this Registry sent: every source may answer it.
func (l *limiterSet) sent(n int) {
	l.mu.Lock()
	l.queries += uint64(n)
	l.mu.Unlock()
}

// thisHost stands for every address of this host in the owners table: a
// packet sent to the group on a host may arrive with the address of the
// interface, a loopback address or none (0.0.0.0 when the route to the
// group is over lo), depending on the socket.
var thisHost = netip.IPv4Unspecified()

// local reports whether src is this host.
func (l *limiterSet) local(src netip.Addr) bool {
	if src.IsLoopback() || src.IsUnspecified() {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.self[src]
}

// allow reports whether a packet of kind from src may be handled.
func (l *limiterSet) allow(now time.Time, src netip.Addr, kind packetKind) bool {
	if src.IsLoopback() || src.IsUnspecified() {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.self[src] {
		return true
	}
	s := l.sources[src]
	if s == nil {
		if len(l.sources) >= maxSources {
			for a, x := range l.sources {
				if now.Sub(x.seen) > 10*time.Second {
					delete(l.sources, a)
				}
			}
		}
		if len(l.sources) >= maxSources {
			s = &l.other
		} else {
			s = &source{queries: l.queries}
			l.sources[src] = s
		}
	}
	s.seen = now
	var ok bool
	switch kind {
	case kindQuery:
		ok = s.query.take(now, queryRate, queryBurst, 0)
	case kindMulticast:
		ok = s.mcast.take(now, multicastRate, multicastBurst, 0)
	case kindNewNode:
		ok = s.newNode.take(now, newNodeRate, newNodeBurst, 0)
	default:
		extra := float64(l.queries-s.queries) * answerPerQuery
		s.queries = l.queries
		ok = s.answer.take(now, answerRate, answerBurst, extra)
	}
	if !ok {
		s.dropped++
		l.dropped++
	}
	return ok
}

// report returns and resets the number of packets dropped, and the source
// that dropped most.
func (l *limiterSet) report() (int, netip.Addr, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var top netip.Addr
	most := 0
	for a, s := range l.sources {
		if s.dropped > most {
			top, most = a, s.dropped
		}
		s.dropped = 0
	}
	n := l.dropped
	l.dropped = 0
	return n, top, most
}

// owner is what a Registry without a key knows of who speaks for a node:
// the address it was first heard from and the IP of its own address. Other
// sources may neither change the node nor say goodbye for it until it has
// not been heard for its record TTL (see Registry.admitLocked).
type owner struct {
	src   netip.Addr
	addr  netip.Addr // IP of the node's address, if it is one
	heard time.Time
	hold  time.Duration
}

func (o *owner) speaks(src netip.Addr) bool {
	return src == o.src || o.addr.IsValid() && src == o.addr
}

// addrIP returns the IP of a host:port address, if it is an IP.
func addrIP(hostport string) netip.Addr {
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// srcAddr converts a packet's source.
func srcAddr(from *net.UDPAddr) netip.Addr {
	if from == nil {
		return netip.Addr{}
	}
	ip, _ := netip.AddrFromSlice(from.IP)
	return ip.Unmap()
}
