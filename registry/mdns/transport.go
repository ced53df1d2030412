package mdns

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// The mDNS groups and port.
const (
	group4   = "224.0.0.251"
	group6   = "ff02::fb"
	mdnsPort = 5353
)

// conn is one socket and what it is for.
type conn struct {
	c       *net.UDPConn
	unicast bool // the querier's socket: answers to our queries arrive here
}

// A listener (unicast false) receives queries, which are answered from it
// (port 5353), and announcements and goodbyes.

// transport owns the Registry's sockets: per IP family a listener on
// <group>:5353 (joined, SO_REUSEADDR, loopback on, also used to send
// announcements and goodbyes from port 5353) and a querier on an ephemeral
// port (queries go out from it, responders answer to it by unicast).
type transport struct {
	log    *slog.Logger
	conns  []conn
	mcast  []*net.UDPConn // listeners, to send announcements
	query  []*net.UDPConn // queriers
	groups []*net.UDPAddr // per family, same order as mcast/query
	wg     sync.WaitGroup
	done   chan struct{}
}

// newTransport opens the sockets. It fails if a family that is enabled
// cannot join its group (no interface, no route to the group).
func newTransport(log *slog.Logger, ifi *net.Interface, v4, v6 bool) (*transport, error) {
	t := &transport{log: log, done: make(chan struct{})}
	fail := func(err error) (*transport, error) {
		for _, c := range t.conns {
			c.c.Close()
		}
		return nil, err
	}
	if v4 {
		g := &net.UDPAddr{IP: net.ParseIP(group4), Port: mdnsPort}
		mc, err := net.ListenMulticastUDP("udp4", ifi, g)
		if err != nil {
			return fail(fmt.Errorf("mdns: listening on %v: %w", g, err))
		}
		t.conns = append(t.conns, conn{c: mc})
		q, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
		if err != nil {
			return fail(fmt.Errorf("mdns: opening IPv4 query socket: %w", err))
		}
		t.conns = append(t.conns, conn{c: q, unicast: true})
		for _, c := range []*net.UDPConn{mc, q} {
			p := ipv4.NewPacketConn(c)
			// ListenMulticastUDP turns loopback off: other processes on
			// this host (and this Registry) must hear our packets.
			err := errors.Join(p.SetMulticastLoopback(true), p.SetMulticastTTL(255))
			if ifi != nil {
				err = errors.Join(err, p.SetMulticastInterface(ifi))
			}
			if err != nil {
				return fail(fmt.Errorf("mdns: IPv4 socket options: %w", err))
			}
		}
		t.mcast, t.query, t.groups = append(t.mcast, mc), append(t.query, q), append(t.groups, g)
	}
	if v6 {
		g := &net.UDPAddr{IP: net.ParseIP(group6), Port: mdnsPort}
		if ifi != nil {
			g.Zone = ifi.Name
		}
		mc, err := net.ListenMulticastUDP("udp6", ifi, &net.UDPAddr{IP: net.ParseIP(group6), Port: mdnsPort})
		if err != nil {
			return fail(fmt.Errorf("mdns: listening on [%v]:%d: %w", group6, mdnsPort, err))
		}
		t.conns = append(t.conns, conn{c: mc})
		q, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6unspecified})
		if err != nil {
			return fail(fmt.Errorf("mdns: opening IPv6 query socket: %w", err))
		}
		t.conns = append(t.conns, conn{c: q, unicast: true})
		for _, c := range []*net.UDPConn{mc, q} {
			p := ipv6.NewPacketConn(c)
			err := errors.Join(p.SetMulticastLoopback(true), p.SetMulticastHopLimit(255))
			if ifi != nil {
				err = errors.Join(err, p.SetMulticastInterface(ifi))
			}
			if err != nil {
				return fail(fmt.Errorf("mdns: IPv6 socket options: %w", err))
			}
		}
		t.mcast, t.query, t.groups = append(t.mcast, mc), append(t.query, q), append(t.groups, g)
	}
	if len(t.conns) == 0 {
		return nil, errors.New("mdns: both IPv4 and IPv6 are disabled")
	}
	for _, c := range t.conns {
		_ = c.c.SetReadBuffer(1 << 20) // best effort: many answers at once
	}
	return t, nil
}

// start runs one reader goroutine per socket; handle is called with each
// packet (the buffer is reused after handle returns).
func (t *transport) start(handle func(b []byte, from *net.UDPAddr, c *conn)) {
	for i := range t.conns {
		t.wg.Add(1)
		go t.read(&t.conns[i], handle)
	}
}

func (t *transport) read(c *conn, handle func([]byte, *net.UDPAddr, *conn)) {
	defer t.wg.Done()
	buf := make([]byte, 65536)
	backoff := time.Millisecond
	for {
		n, from, err := c.c.ReadFromUDP(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Never spin on a persistent error.
			t.log.Debug("mdns: read error", "local", c.c.LocalAddr(), "err", err)
			select {
			case <-t.done:
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 100*time.Millisecond)
			continue
		}
		backoff = time.Millisecond
		handle(buf[:n], from, c)
	}
}

// sendQuery multicasts b from the query sockets.
func (t *transport) sendQuery(b []byte) error { return t.send(t.query, b) }

// queryFamilies is how many sockets a query goes out on.
func (t *transport) queryFamilies() int { return len(t.query) }

// sendResponse multicasts b from port 5353 (announcements, goodbyes).
func (t *transport) sendResponse(b []byte) error { return t.send(t.mcast, b) }

func (t *transport) send(cs []*net.UDPConn, b []byte) error {
	var errs []error
	for i, c := range cs {
		if _, err := c.WriteToUDP(b, t.groups[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == len(cs) {
		return errors.Join(errs...)
	}
	return nil // one family working is enough
}

// close closes the sockets and waits for the readers.
func (t *transport) close() {
	close(t.done)
	for _, c := range t.conns {
		c.c.Close()
	}
	t.wg.Wait()
}
