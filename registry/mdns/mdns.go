package mdns

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/beacon-go/beacon/registry"
)

// Timing of announcements and goodbyes.
const (
	announcements = 2                      // sent per registration or change
	announceGap   = time.Second            // between them (RFC 6762 8.3)
	goodbyeRepeat = 100 * time.Millisecond // second goodbye after the first
)

// Registry is an mDNS registry. It is safe for concurrent use. Create it
// with New and Close it.
type Registry struct {
	opts    options
	log     *slog.Logger
	names   names
	iface   *net.Interface
	hostIPs []net.IP
	tr      *transport
	warn    limiter
	sig     *signer     // nil without a key
	lim     *limiterSet // per-source packet budgets

	mu      sync.Mutex
	closed  bool
	nodes   map[string]*localNode   // nodeKey -> our registered nodes
	byes    map[string]*pendingBye  // nodeKey -> second goodbye to send
	loops   map[string]*watchLoop   // service ("" = all) -> its watch loop
	lookups map[*collector]struct{} // lookups in flight
	seen    *seen                   // who was heard lately, for lookups
	owners  map[string]*owner       // nodeKey -> who speaks for it (without a key)

	kick chan struct{} // wakes the keeper
	done chan struct{} // closed by Close
	wg   sync.WaitGroup

	dropReport atomic.Int64 // Unix ns of the next report of dropped packets
}

type pendingBye struct {
	rec *nodeRecords
	at  time.Time
}

var _ registry.Registry = (*Registry)(nil)

// New opens the multicast sockets and returns a running Registry. It fails
// at once (no network round trip is involved) when the interface does not
// exist, the group cannot be joined (no multicast route or interface) or an
// option is invalid; such errors match registry.ErrUnavailable or
// registry.ErrInvalid.
func New(ctx context.Context, opts ...Option) (*Registry, error) {
	o := defaults()
	for _, f := range opts {
		f(&o)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	domain := strings.Trim(o.domain, ".")
	if _, ok := dns.IsDomainName(domain); !ok || domain == "" || strings.Contains(domain, "..") {
		return nil, &registry.ValidationError{Field: "mdns.domain", Value: o.domain, Reason: "not a DNS name"}
	}
	ifi := o.iface
	if ifi == nil && o.ifaceName != "" {
		var err error
		if ifi, err = net.InterfaceByName(o.ifaceName); err != nil {
			return nil, fmt.Errorf("%w: mdns: interface %q: %v", registry.ErrUnavailable, o.ifaceName, err)
		}
	}
	hostIPs, err := hostIPs(&o, ifi)
	if err != nil {
		return nil, err
	}
	if o.key != nil && len(o.key) < MinKeySize {
		return nil, &registry.ValidationError{Field: "mdns.key", Value: fmt.Sprintf("%d bytes", len(o.key)), Reason: fmt.Sprintf("a signing key needs at least %d bytes", MinKeySize)}
	}
	lim := newLimiterSet() // before the sockets: it reads this host's addresses
	tr, err := newTransport(o.log, ifi, o.ipv4, o.ipv6)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", registry.ErrUnavailable, err)
	}
	r := &Registry{
		opts:    o,
		log:     o.log,
		lim:     lim,
		names:   names{domain: domain + "."},
		iface:   ifi,
		hostIPs: hostIPs,
		tr:      tr,
		nodes:   make(map[string]*localNode),
		byes:    make(map[string]*pendingBye),
		loops:   make(map[string]*watchLoop),
		lookups: make(map[*collector]struct{}),
		seen:    newSeen(),
		owners:  make(map[string]*owner),
		kick:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	if o.key != nil {
		r.sig = newSigner(o.key, r.names.domain, o.window)
	}
	tr.start(r.handlePacket)
	r.wg.Add(1)
	go r.keeper()
	return r, nil
}

// hostIPs returns the IPs advertised for nodes whose address is a name:
// WithAddrs, else the interface's, else those of the first interface that is
// up and multicast-capable, else loopback.
func hostIPs(o *options, ifi *net.Interface) ([]net.IP, error) {
	var ips []net.IP
	for _, a := range o.addrs {
		if strings.TrimSpace(a) == "" {
			continue
		}
		host := a
		if h, _, err := net.SplitHostPort(a); err == nil {
			host = h
		}
		ip := net.ParseIP(host)
		if ip == nil {
			return nil, &registry.ValidationError{Field: "mdns.addrs", Value: a, Reason: "not an IP address (mdns advertises IPs)"}
		}
		ips = append(ips, ip)
	}
	if len(ips) > 0 {
		return ips, nil
	}
	want := func(ip net.IP) bool {
		return ip.To4() != nil && o.ipv4 || ip.To4() == nil && o.ipv6 && !ip.IsLinkLocalUnicast()
	}
	ifaces := []net.Interface{}
	if ifi != nil {
		ifaces = append(ifaces, *ifi)
	} else if all, err := net.Interfaces(); err == nil {
		for _, i := range all {
			if i.Flags&net.FlagUp != 0 && i.Flags&net.FlagMulticast != 0 && i.Flags&net.FlagLoopback == 0 {
				ifaces = append(ifaces, i)
			}
		}
	}
	for _, i := range ifaces {
		addrs, _ := i.Addrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && want(n.IP) {
				ips = append(ips, n.IP)
			}
		}
		if len(ips) > 0 {
			return ips, nil
		}
	}
	if o.ipv4 {
		return []net.IP{net.IPv4(127, 0, 0, 1)}, nil
	}
	return []net.IP{net.IPv6loopback}, nil
}

// String returns "mdns".
func (r *Registry) String() string { return "mdns" }

// Register publishes (or refreshes) the nodes of s, which this Registry then
// answers queries for, and announces new or changed nodes. Registering a node again with the same
// data only extends its TTL (no packet, no event). All nodes are validated
// and encoded before anything changes: invalid input, a node ID that is not
// a DNS name, or a record over MaxRecordSize fail with an error matching
// registry.ErrInvalid and change nothing. It does not block on the network.
func (r *Registry) Register(ctx context.Context, s *registry.Service, opts ...registry.RegisterOption) error {
	if err := registry.Validate(s); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	ttl := max(registry.ApplyRegister(opts...).TTL, 0)
	if done, err := r.heartbeat(s, ttl); done || err != nil {
		return err
	}
	preps := make([]*prepared, 0, len(s.Nodes))
	for i, n := range s.Nodes {
		one := &registry.Service{Name: s.Name, Version: s.Version, Metadata: s.Metadata, Endpoints: s.Endpoints, Nodes: []*registry.Node{n}}
		p, err := r.prepare(fmt.Sprintf("node[%d]", i), one.Copy(), ttl)
		if err != nil {
			return err
		}
		preps = append(preps, p)
	}
	now := time.Now()
	var expires time.Time
	if ttl > 0 {
		expires = now.Add(ttl)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return registry.ErrClosed
	}
	for _, p := range preps {
		delete(r.byes, p.key) // registering again cancels a pending goodbye
		ln, ok := r.nodes[p.key]
		switch {
		case !ok:
			ln = &localNode{svc: p.svc, ttl: ttl, expires: expires, rec: p.rec}
			r.nodes[p.key] = ln
			r.announceLocked(ln, now)
		case registry.SameNode(ln.svc, p.svc):
			ln.expires = expires
			if ln.ttl != ttl { // same data, new TTL: answer with it from now on
				ln.ttl, ln.rec = ttl, p.rec
			}
		default: // changed data: new answers, announced
			ln.svc, ln.ttl, ln.expires, ln.rec = p.svc, ttl, expires, p.rec
			r.announceLocked(ln, now)
		}
	}
	r.kickKeeper()
	return nil
}

// heartbeat is Register's fast path: when every node of s is registered
// with the same data and TTL, it only extends their expiry (no encoding, no
// packet) and returns true.
func (r *Registry) heartbeat(s *registry.Service, ttl time.Duration) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false, registry.ErrClosed
	}
	lns := make([]*localNode, len(s.Nodes))
	for i, n := range s.Nodes {
		ln := r.nodes[nodeKey(s.Name, n.ID)]
		one := &registry.Service{Name: s.Name, Version: s.Version, Metadata: s.Metadata, Endpoints: s.Endpoints, Nodes: []*registry.Node{n}}
		if ln == nil || ln.ttl != ttl || !registry.SameNode(ln.svc, one) {
			return false, nil
		}
		lns[i] = ln
	}
	var expires time.Time
	if ttl > 0 {
		expires = time.Now().Add(ttl)
	}
	for _, ln := range lns {
		ln.expires = expires
	}
	return true, nil
}

// announceLocked sends the first announcement now and schedules the rest.
func (r *Registry) announceLocked(ln *localNode, now time.Time) {
	r.sendMsg(r.announcement(ln.rec, now), "announcement")
	ln.annLeft, ln.annNext = announcements-1, now.Add(announceGap)
}

func (r *Registry) send(b []byte, what string) {
	if err := r.tr.sendResponse(b); err != nil {
		r.log.Warn("mdns: sending "+what, "err", err)
	}
}

func (r *Registry) kickKeeper() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Deregister stops answering for the nodes of s and sends goodbyes
// (TTL 0), so that watchers drop the nodes at once. Unknown nodes are
// ignored. It does not block on the network.
func (r *Registry) Deregister(ctx context.Context, s *registry.Service, _ ...registry.DeregisterOption) error {
	if err := registry.ValidateDeregister(s); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return registry.ErrClosed
	}
	now := time.Now()
	for _, n := range s.Nodes {
		key := nodeKey(s.Name, n.ID)
		if ln, ok := r.nodes[key]; ok {
			r.dropLocked(key, ln, now)
		}
	}
	r.kickKeeper()
	return nil
}

// dropLocked stops answering for a local node and says goodbye.
func (r *Registry) dropLocked(key string, ln *localNode, now time.Time) {
	delete(r.nodes, key)
	r.sendMsg(r.goodbye(ln.rec, now), "goodbye")
	r.byes[key] = &pendingBye{rec: ln.rec, at: now.Add(goodbyeRepeat)}
}

// keeper sends repeated announcements and goodbyes and expires local nodes
// whose TTL ran out. It sleeps until the next thing is due.
func (r *Registry) keeper() {
	defer r.wg.Done()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		t.Stop()
		if next := r.due(time.Now()); !next.IsZero() {
			t.Reset(time.Until(next))
		}
		select {
		case <-r.done:
			return
		case <-r.kick:
		case <-t.C:
		}
	}
}

// due does what is due at now and returns when the next thing is (zero:
// nothing scheduled).
func (r *Registry) due(now time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return time.Time{}
	}
	var next time.Time
	at := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	for key, ln := range r.nodes {
		if !ln.expires.IsZero() && !now.Before(ln.expires) {
			r.log.Info("mdns: node not registered again within its TTL, withdrawn", "service", ln.svc.Name, "node", ln.svc.Nodes[0].ID, "ttl", ln.ttl)
			r.dropLocked(key, ln, now)
			continue
		}
		if ln.annLeft > 0 && !now.Before(ln.annNext) {
			r.sendMsg(r.announcement(ln.rec, now), "announcement")
			ln.annLeft--
			ln.annNext = now.Add(announceGap)
		}
		if ln.annLeft > 0 {
			at(ln.annNext)
		}
		if !ln.expires.IsZero() {
			at(ln.expires)
		}
	}
	for key, b := range r.byes {
		if now.Before(b.at) {
			at(b.at)
			continue
		}
		r.sendMsg(r.goodbye(b.rec, now), "goodbye")
		delete(r.byes, key)
	}
	return next
}

// delivery is one received message's observations.
type delivery struct {
	at      time.Time
	unicast bool       // arrived on the query socket: an answer to a query
	src     netip.Addr // the sender
	parsed
}

// handlePacket is called by the socket readers for every packet. Packets
// over their source's budget (guard.go) are dropped before anything else.
// Queries arriving on a listener are answered for the local nodes;
// responses are parsed, checked (signatures with a key, who speaks for a
// node without) and dispatched.
func (r *Registry) handlePacket(b []byte, from *net.UDPAddr, c *conn) {
	now := time.Now()
	src := srcAddr(from)
	if len(b) < 12 {
		return // not even a DNS header
	}
	kind := kindMulticast
	switch {
	case b[2]&0x80 == 0: // QR bit clear: a query
		if c.unicast {
			return // queries go to port 5353, never to a query socket
		}
		kind = kindQuery
	case c.unicast:
		kind = kindAnswer
	}
	if !r.lim.allow(now, src, kind) {
		r.reportDrops(now)
		return
	}
	var m dns.Msg
	if err := m.Unpack(b); err != nil {
		r.log.Debug("mdns: ignoring packet that is not DNS", "from", from, "bytes", len(b), "err", err)
		return
	}
	if m.Opcode != dns.OpcodeQuery || m.Rcode != dns.RcodeSuccess {
		return // what RFC 6762 says to ignore
	}
	if !m.Response {
		r.answer(&m, from, c, now)
		return
	}
	p, bad := r.names.parse(&m)
	for _, br := range bad {
		r.warnBad(now, from, br.instance, br.err)
	}
	if r.sig != nil {
		kept := p.nodes[:0]
		for _, o := range p.nodes {
			if err := r.sig.verify(now, o.goodbye, o.txtTTL, o.raw, o.sig); err != nil {
				r.warnBad(now, from, o.service+"/"+o.id, err)
				continue
			}
			kept = append(kept, o)
		}
		p.nodes = kept
	}
	if len(p.nodes) == 0 && len(p.services) == 0 {
		return
	}
	if r.lim.local(src) {
		src = thisHost
	}
	r.dispatch(&delivery{at: now, unicast: c.unicast, src: src, parsed: p})
}

func (r *Registry) warnBad(now time.Time, from *net.UDPAddr, instance string, err error) {
	if r.warn.allow(now, r.log) {
		r.log.Warn("mdns: ignoring bad record", "from", from, "instance", instance, "err", err)
	}
}

// reportDrops logs, at most every warnWindow, how many packets the
// per-source budgets dropped.
func (r *Registry) reportDrops(now time.Time) {
	if next := r.dropReport.Load(); now.UnixNano() < next || !r.dropReport.CompareAndSwap(next, now.Add(warnWindow).UnixNano()) {
		return
	}
	if n, top, most := r.lim.report(); n > 0 {
		r.log.Warn("mdns: packets over their source's budget dropped", "count", n, "top_source", top, "top_count", most)
	}
}

// answer answers a query for the local nodes, by unicast to its source
// (with its ID and question, as RFC 6762 6.7 asks and go-micro's reader
// needs), or by multicast when it came from port 5353 (a full mDNS querier).
func (r *Registry) answer(q *dns.Msg, from *net.UDPAddr, c *conn, now time.Time) {
	r.mu.Lock()
	if r.closed || len(r.nodes) == 0 {
		r.mu.Unlock()
		return
	}
	msgs := r.answersLocked(q, now)
	r.mu.Unlock()
	for _, m := range msgs {
		if from.Port == mdnsPort {
			m.Id = 0
		}
		b, err := m.Pack()
		if err != nil {
			r.log.Warn("mdns: packing answer", "err", err)
			continue
		}
		if from.Port == mdnsPort {
			r.send(b, "answer")
		} else if _, err := c.c.WriteToUDP(b, from); err != nil {
			r.log.Debug("mdns: sending answer", "to", from, "err", err)
		}
	}
}

// admitLocked decides, without a key, whether an observation from src may
// change what is known of its node: a node is spoken for by the address it
// was first heard from, and by its own address's IP; records and goodbyes
// for it from elsewhere are ignored until it has not been heard for its
// record TTL (then whoever speaks next takes it over).
func (r *Registry) admitLocked(o *observation, src netip.Addr, now time.Time) bool {
	key := nodeKey(o.service, o.id)
	ow := r.owners[key]
	if ow != nil && !ow.speaks(src) && (o.goodbye || now.Sub(ow.heard) <= ow.hold) {
		if r.warn.allow(now, r.log) {
			what := "record"
			if o.goodbye {
				what = "goodbye"
			}
			r.log.Warn("mdns: ignoring "+what+" for a node from another host than its own", "service", o.service, "node", o.id,
				"from", src, "node_heard_from", ow.src, "node_address", ow.addr)
		}
		return false
	}
	if o.goodbye {
		delete(r.owners, key)
		return true
	}
	if ow == nil || !ow.speaks(src) {
		if ow == nil && src != thisHost && !r.lim.allow(now, src, kindNewNode) {
			if r.warn.allow(now, r.log) {
				r.log.Warn("mdns: ignoring record of a new node: its host brought too many new nodes lately",
					"service", o.service, "node", o.id, "from", src, "burst", newNodeBurst, "per_second", newNodeRate)
			}
			return false
		}
		if len(r.owners) >= MaxSeen {
			for k, x := range r.owners {
				if now.Sub(x.heard) > x.hold {
					delete(r.owners, k)
				}
			}
			if len(r.owners) >= MaxSeen {
				return true // cannot remember more: take it, unowned
			}
		}
		ow = &owner{src: src}
		r.owners[key] = ow
	}
	if ow.addr = addrIP(o.svc.Nodes[0].Address); ow.addr.IsValid() && r.lim.local(ow.addr) {
		ow.addr = thisHost
	}
	ow.heard, ow.hold = now, max(o.ttl, time.Second)
	return true
}

// dispatch hands a delivery to the lookups and watch loops that want it.
// It blocks until each has taken it (they drain continuously), so nothing
// is dropped.
func (r *Registry) dispatch(d *delivery) {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	if r.sig == nil && d.src.IsValid() {
		kept := d.nodes[:0]
		for _, o := range d.nodes {
			if r.admitLocked(&o, d.src, d.at) {
				kept = append(kept, o)
			}
		}
		d.nodes = kept
		if len(d.nodes) == 0 && len(d.services) == 0 {
			r.mu.Unlock()
			return
		}
	}
	r.seen.note(d)
	var cs []*collector
	var ls []*watchLoop
	for c := range r.lookups {
		if c.wants(d) {
			cs = append(cs, c)
		}
	}
	for _, l := range r.loops {
		if l.wants(d) {
			ls = append(ls, l)
		}
	}
	r.mu.Unlock()
	for _, c := range cs {
		select {
		case c.in <- d:
		case <-c.done:
		case <-r.done:
		}
	}
	for _, l := range ls {
		select {
		case l.in <- d:
		case <-l.exited:
		case <-r.done:
		}
	}
}

// Close stops answering for every node (without goodbyes: Close does not
// deregister), every watcher (their Next returns registry.ErrWatcherStopped)
// and every goroutine of the Registry, and waits for them. Lookups in flight
// return registry.ErrClosed. Close is idempotent.
func (r *Registry) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	close(r.done)
	loops := r.loops
	r.nodes, r.loops, r.byes, r.lookups = nil, nil, nil, nil
	r.mu.Unlock()
	r.tr.close()
	r.wg.Wait()
	for _, l := range loops {
		l.stopWatchers()
	}
	return nil
}

// limiter rate-limits warnings about bad records: a rogue responder must
// not flood the log.
type limiter struct {
	burst int // per window; 0: warnBurst

	mu      sync.Mutex
	start   time.Time
	n       int
	dropped int
}

const (
	warnBurst  = 20
	warnWindow = 10 * time.Second
)

func (l *limiter) allow(now time.Time, log *slog.Logger) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.start) > warnWindow {
		if l.dropped > 0 {
			log.Warn("mdns: bad records not logged", "count", l.dropped, "window", warnWindow)
		}
		l.start, l.n, l.dropped = now, 0, 0
	}
	if l.n < warnBurst || l.n < l.burst {
		l.n++
		return true
	}
	l.dropped++
	return false
}
