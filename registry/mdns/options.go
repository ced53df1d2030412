package mdns

import (
	"log/slog"
	"net"
	"time"
)

// Defaults and limits.
const (
	// DefaultDomain is the mDNS domain, go-micro's.
	DefaultDomain = "micro"
	// DefaultQuietPeriod: a lookup returns this long after the last answer
	// once every node it expected has answered.
	DefaultQuietPeriod = time.Millisecond
	// DefaultStragglerWait: a lookup returns this long after the last
	// answer while nodes it expected are missing, or when it expected none.
	DefaultStragglerWait = 25 * time.Millisecond
	// SeenTTL: a lookup expects the nodes this Registry heard from within
	// this long.
	SeenTTL = 30 * time.Second
	// MaxSeen caps how many nodes and names the Registry remembers for that.
	MaxSeen = 8192
	// DefaultLookupTimeout bounds a lookup round; it is what a lookup costs
	// when nothing answers.
	DefaultLookupTimeout = 250 * time.Millisecond
	// DefaultQueryInterval is how often a watch queries its service.
	DefaultQueryInterval = time.Second
	// DefaultMissedQueries: a watched node that misses this many
	// consecutive query rounds is dropped.
	DefaultMissedQueries = 3
	// DefaultRecordTTL is the record TTL advertised for nodes registered
	// without a TTL.
	DefaultRecordTTL = 120 * time.Second
	// MaxRecordSize is the hard cap on a node's packed answer, in bytes.
	MaxRecordSize = 9000
	// PacketSize is what fits one Ethernet frame (1500 - IPv4 - UDP
	// headers); records above it are fragmented and logged at Warn.
	PacketSize = 1472
	// MaxDecodedSize caps the decompressed JSON of a TXT record.
	MaxDecodedSize = 256 << 10
	// MinKeySize is the shortest signing key WithKey accepts.
	MinKeySize = 16
)

// Option configures a Registry.
type Option func(*options)

type options struct {
	log       *slog.Logger
	domain    string
	iface     *net.Interface
	ifaceName string
	ipv4      bool
	ipv6      bool
	addrs     []string
	quiet     time.Duration
	straggle  time.Duration
	timeout   time.Duration
	interval  time.Duration
	missed    int
	key       []byte
	window    time.Duration
}

func defaults() options {
	return options{
		log:      slog.Default(),
		domain:   DefaultDomain,
		ipv4:     true,
		quiet:    DefaultQuietPeriod,
		straggle: DefaultStragglerWait,
		timeout:  DefaultLookupTimeout,
		interval: DefaultQueryInterval,
		missed:   DefaultMissedQueries,
		window:   DefaultSignatureWindow,
	}
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l != nil {
			o.log = l
		}
	}
}

// WithAddrs sets the IP addresses advertised in A/AAAA records for nodes
// whose address host is not an IP literal (e.g. "myhost:8080"). Each entry is
// an IP, optionally with a port, which is ignored; empty entries are
// skipped; New rejects anything else. mDNS has no server address, so this is the only use of the
// addresses the cmd package passes.
func WithAddrs(addrs ...string) Option {
	return func(o *options) { o.addrs = append([]string(nil), addrs...) }
}

// WithDomain sets the mDNS domain (default "micro"; trailing dots are
// ignored). Registries see each other only within one domain.
func WithDomain(d string) Option { return func(o *options) { o.domain = d } }

// WithInterface sends and listens on ifi only. By default the system picks
// the interface of the route to 224.0.0.251 (and ff02::fb).
func WithInterface(ifi *net.Interface) Option { return func(o *options) { o.iface = ifi } }

// WithInterfaceName is WithInterface by name; New fails if there is no such
// interface.
func WithInterfaceName(name string) Option { return func(o *options) { o.ifaceName = name } }

// WithIPv4 enables or disables IPv4 multicast (default enabled).
func WithIPv4(enabled bool) Option { return func(o *options) { o.ipv4 = enabled } }

// WithIPv6 enables or disables IPv6 multicast on ff02::fb (default
// disabled). With IPv6, also set WithInterface: link-local multicast needs
// one.
func WithIPv6(enabled bool) Option { return func(o *options) { o.ipv6 = enabled } }

// WithQuietPeriod sets how long a lookup waits after the last answer once
// every node it expected has answered (default DefaultQuietPeriod): the time
// left for nodes this Registry has never heard of.
func WithQuietPeriod(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.quiet = d
		}
	}
}

// WithStragglerWait sets how long a lookup waits after the last answer
// while some node it expected has not answered, or when it expected none
// (default DefaultStragglerWait). Raise it on slow links (Wi-Fi multicast
// can take tens of milliseconds).
func WithStragglerWait(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.straggle = d
		}
	}
}

// WithLookupTimeout bounds one lookup round (default DefaultLookupTimeout);
// it is how long GetService takes to say ErrNotFound.
func WithLookupTimeout(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.timeout = d
		}
	}
}

// WithQueryInterval sets how often watches query (default 1 s).
func WithQueryInterval(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.interval = d
		}
	}
}

// WithMissedQueries sets after how many consecutive unanswered query rounds
// a watched node is dropped (default 3, minimum 1).
func WithMissedQueries(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.missed = n
		}
	}
}

// WithKey makes the Registry sign the records of its nodes (announcements,
// answers, goodbyes) with HMAC-SHA256 under key, and drop every node record
// or goodbye that is not signed with it: unsigned (go-micro's and Beacon's
// without a key), badly signed, with a timestamp further than the
// signature window from this host's clock, or seen before within the
// window (a replay). All the Registries of a domain that must see each
// other need the same key. A key of less than MinKeySize bytes makes New
// fail; nil or empty means no key (the default). See the package doc,
// "Signed records".
func WithKey(key []byte) Option {
	return func(o *options) {
		if len(key) == 0 {
			o.key = nil
			return
		}
		o.key = append([]byte(nil), key...)
	}
}

// WithSignatureWindow sets how far a signed record's timestamp may be from
// this host's clock (default DefaultSignatureWindow): it bounds both the
// clock difference between hosts and how long a captured record can be
// replayed to a reader that did not see it.
func WithSignatureWindow(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.window = d
		}
	}
}
