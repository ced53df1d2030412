package consul

import (
	"crypto/tls"
	"log/slog"
	"time"
)

// Defaults. Each is defined once here; documentation and code read them from
// this place.
const (
	// DefaultAddr is the consul agent HTTP address used without WithAddrs.
	DefaultAddr = "127.0.0.1:8500"
	// DefaultConnectTimeout bounds New's reachability check when the
	// context passed to New has no earlier deadline.
	DefaultConnectTimeout = 5 * time.Second
	// DefaultWaitTime is the longest a blocking query waits for a change
	// before it is renewed.
	DefaultWaitTime = time.Minute
	// MinDeregisterCriticalAfter is consul's floor for
	// DeregisterCriticalServiceAfter (and the default).
	MinDeregisterCriticalAfter = time.Minute
	// MaxResponseBytes caps the body of one consul HTTP response; a larger
	// answer fails with ErrUnavailable instead of exhausting memory.
	MaxResponseBytes = 64 << 20
)

// Option configures New.
type Option func(*options)

type options struct {
	addrs           []string
	token           string
	tlsConfig       *tls.Config
	caFile          string
	certFile        string
	keyFile         string
	tlsFiles        bool
	datacenter      string
	stale           bool
	log             *slog.Logger
	connectTimeout  time.Duration
	waitTime        time.Duration
	deregisterAfter time.Duration
	serviceQueries  *int // WithServiceQueries (feed.go); nil: the default
}

func buildOptions(opts []Option) options {
	o := options{
		log:             slog.Default(),
		connectTimeout:  DefaultConnectTimeout,
		waitTime:        DefaultWaitTime,
		deregisterAfter: MinDeregisterCriticalAfter,
	}
	for _, f := range opts {
		if f != nil {
			f(&o)
		}
	}
	if len(o.addrs) == 0 {
		o.addrs = []string{DefaultAddr}
	}
	if o.log == nil {
		o.log = slog.Default()
	}
	if o.connectTimeout <= 0 {
		o.connectTimeout = DefaultConnectTimeout
	}
	if o.waitTime <= 0 {
		o.waitTime = DefaultWaitTime
	}
	o.deregisterAfter = max(o.deregisterAfter, MinDeregisterCriticalAfter)
	return o
}

// WithAddrs sets the consul agent HTTP addresses, "host:port" or
// "http://host:port" / "https://host:port". The first one that answers in
// New is used; when it later fails at the transport level the registry moves
// on to the next one (see the package documentation). Default DefaultAddr.
// Empty strings are ignored.
func WithAddrs(addrs ...string) Option {
	return func(o *options) {
		for _, a := range addrs {
			if a != "" {
				o.addrs = append(o.addrs, a)
			}
		}
	}
}

// WithToken sets the ACL token sent with every request. Without it, as
// consul's own tools do, the token is read from the file named by
// CONSUL_HTTP_TOKEN_FILE, else from CONSUL_HTTP_TOKEN; else no token is sent
// (consul then uses its anonymous token). New checks the token: one consul
// does not know fails New with registry.ErrPermission.
func WithToken(token string) Option { return func(o *options) { o.token = token } }

// WithTLS makes the registry talk HTTPS to consul with a clone of cfg
// (nil: the system roots and default settings).
func WithTLS(cfg *tls.Config) Option {
	return func(o *options) {
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		o.tlsConfig = cfg.Clone()
	}
}

// WithTLSFiles makes the registry talk HTTPS to consul with a CA bundle and
// an optional client certificate read from PEM files when New runs. Empty
// names are skipped (caFile "" means the system roots). It is ignored when
// WithTLS is also given.
func WithTLSFiles(caFile, certFile, keyFile string) Option {
	return func(o *options) {
		o.caFile, o.certFile, o.keyFile, o.tlsFiles = caFile, certFile, keyFile, true
	}
}

// WithDatacenter sets the datacenter queried by reads (GetService,
// ListServices, Watch). Registration always goes to the local agent.
func WithDatacenter(dc string) Option { return func(o *options) { o.datacenter = dc } }

// WithStale allows reads (GetService, ListServices, Watch) to be answered by
// any consul server rather than only the leader: cheaper and available
// without a leader, possibly a little behind.
func WithStale(stale bool) Option { return func(o *options) { o.stale = stale } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithConnectTimeout bounds New's reachability check (default
// DefaultConnectTimeout) and the dial of every connection.
func WithConnectTimeout(d time.Duration) Option { return func(o *options) { o.connectTimeout = d } }

// WithWaitTime sets the longest wait of one blocking query (default
// DefaultWaitTime; consul caps it at 10 minutes).
func WithWaitTime(d time.Duration) Option { return func(o *options) { o.waitTime = d } }

// WithDeregisterCriticalAfter sets after how long consul itself removes a
// service whose TTL check stays critical (DeregisterCriticalServiceAfter).
// Consul's floor, and the default, is MinDeregisterCriticalAfter; smaller
// values are raised to it. Until then the registry hides such nodes.
func WithDeregisterCriticalAfter(d time.Duration) Option {
	return func(o *options) { o.deregisterAfter = d }
}
