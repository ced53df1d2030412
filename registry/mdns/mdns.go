package mdns

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/mdns"
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
	stdLog  *log.Logger // for hashicorp/mdns, at Debug level
	names   names
	iface   *net.Interface
	hostIPs []net.IP
	tr      *transport
	warn    limiter

	mu      sync.Mutex
	closed  bool
	nodes   map[string]*localNode   // nodeKey -> our registered nodes
	byes    map[string]*pendingBye  // nodeKey -> second goodbye to send
	loops   map[string]*watchLoop   // service ("" = all) -> its watch loop
	lookups map[*collector]struct{} // lookups in flight
	seen    *seen                   // who was heard lately, for lookups

	kick chan struct{} // wakes the keeper
	done chan struct{} // closed by Close
	wg   sync.WaitGroup
}

type pendingBye struct {
	msg []byte
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
	tr, err := newTransport(o.log, ifi, o.ipv4, o.ipv6)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", registry.ErrUnavailable, err)
	}
	r := &Registry{
		opts:    o,
		log:     o.log,
		stdLog:  slog.NewLogLogger(o.log.Handler(), slog.LevelDebug),
		names:   names{domain: domain + "."},
		iface:   ifi,
		hostIPs: hostIPs,
		tr:      tr,
		nodes:   make(map[string]*localNode),
		byes:    make(map[string]*pendingBye),
		loops:   make(map[string]*watchLoop),
		lookups: make(map[*collector]struct{}),
		seen:    newSeen(),
		kick:    make(chan struct{}, 1),
		done:    make(chan struct{}),
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

// Register starts (or refreshes) one hashicorp/mdns responder per node of s
// and announces new or changed nodes. Registering a node again with the same
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
	// Start the responders of new nodes first: if one cannot start, stop
	// the others and change nothing.
	type started struct {
		zone   *zone
		server *mdns.Server
	}
	fresh := map[string]started{}
	for _, p := range preps {
		if _, ok := r.nodes[p.key]; ok {
			continue
		}
		z := &zone{}
		z.cur.Store(p.data)
		srv, err := mdns.NewServer(&mdns.Config{Zone: z, Iface: r.iface, Logger: r.stdLog})
		if err != nil {
			for _, st := range fresh {
				_ = st.server.Shutdown()
			}
			return fmt.Errorf("%w: mdns: starting responder for %s/%s: %v", registry.ErrUnavailable, s.Name, p.svc.Nodes[0].ID, err)
		}
		fresh[p.key] = started{z, srv}
	}
	for _, p := range preps {
		delete(r.byes, p.key) // registering again cancels a pending goodbye
		ln, ok := r.nodes[p.key]
		switch {
		case !ok:
			st := fresh[p.key]
			ln = &localNode{svc: p.svc, ttl: ttl, expires: expires, zone: st.zone, server: st.server, ann: p.ann, bye: p.bye}
			r.nodes[p.key] = ln
			r.announceLocked(ln, now)
		case registry.SameNode(ln.svc, p.svc):
			ln.expires = expires
			if ln.ttl != ttl { // same data, new TTL: answer with it from now on
				ln.ttl, ln.ann, ln.bye = ttl, p.ann, p.bye
				ln.zone.cur.Store(p.data)
			}
		default: // changed data: same responder, new answers, announced
			ln.svc, ln.ttl, ln.expires, ln.ann, ln.bye = p.svc, ttl, expires, p.ann, p.bye
			ln.zone.cur.Store(p.data)
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
	r.send(ln.ann, "announcement")
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

// Deregister stops the responders of the nodes of s and sends goodbyes
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

// dropLocked stops a local node's responder and says goodbye.
func (r *Registry) dropLocked(key string, ln *localNode, now time.Time) {
	delete(r.nodes, key)
	_ = ln.server.Shutdown()
	r.send(ln.bye, "goodbye")
	r.byes[key] = &pendingBye{msg: ln.bye, at: now.Add(goodbyeRepeat)}
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
			r.send(ln.ann, "announcement")
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
		r.send(b.msg, "goodbye")
		delete(r.byes, key)
	}
	return next
}

// delivery is one received message's observations.
type delivery struct {
	at      time.Time
	unicast bool // arrived on the query socket: an answer to a query
	parsed
}

// handlePacket is called by the socket readers for every packet.
func (r *Registry) handlePacket(b []byte, from *net.UDPAddr, unicast bool) {
	var m dns.Msg
	if err := m.Unpack(b); err != nil {
		r.log.Debug("mdns: ignoring packet that is not DNS", "from", from, "bytes", len(b), "err", err)
		return
	}
	if !m.Response || m.Opcode != dns.OpcodeQuery || m.Rcode != dns.RcodeSuccess {
		return // queries (ours and others'), and what RFC 6762 says to ignore
	}
	p, bad := r.names.parse(&m)
	for _, br := range bad {
		if r.warn.allow(time.Now(), r.log) {
			r.log.Warn("mdns: ignoring bad record", "from", from, "instance", br.instance, "err", br.err)
		}
	}
	if len(p.nodes) == 0 && len(p.services) == 0 {
		return
	}
	r.dispatch(&delivery{at: time.Now(), unicast: unicast, parsed: p})
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

// Close stops every responder (without goodbyes: Close does not
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
	nodes, loops := r.nodes, r.loops
	r.nodes, r.loops, r.byes, r.lookups = nil, nil, nil, nil
	r.mu.Unlock()
	for _, ln := range nodes {
		_ = ln.server.Shutdown()
	}
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
