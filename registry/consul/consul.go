// Package consul is a Registry on a HashiCorp Consul agent
// (github.com/hashicorp/consul/api).
//
// # Storage layout
//
// Every node is a plain consul agent service, so consul's UI and CLI read it:
//
//	ID       the node ID (consul wants service IDs unique per agent, across
//	         service names: use node IDs that are unique, as Beacon's are)
//	Name     the service name
//	Address  the host of the node address, Port its port
//	Meta     the record below
//	Tags     go-micro's record (gomicro.go): "v-" + hex(zlib(version)),
//	         "t-" + hex(zlib(JSON {key: value})) per node metadata entry,
//	         "e-" + hex(zlib(JSON endpoint)) per endpoint, which is all
//	         go-micro's consul registry reads; and "beacon-rev-<hash>", a
//	         hash of the record that changes with any change of the node
//	Check    one TTL check "beacon-ttl:<node ID>" with the register TTL,
//	         initial status passing, DeregisterCriticalServiceAfter (at
//	         least consul's minimum of one minute)
//
// Meta (consul allows 64 keys of at most 128 bytes matching
// ^[A-Za-z0-9_-]+$, values of at most 512 bytes):
//
//	beacon     "1": the record was written by Beacon in this format
//	version    the service version, verbatim (absent when empty)
//	s-<key>    one service metadata entry whose key consul accepts
//	n-<key>    one node metadata entry whose key consul accepts
//	b-0 ...    the blob: base64url(deflate(JSON)) cut into 512-byte values
//	b-<k-1>    under consecutive keys; the JSON object holds
//	           "e": the endpoints (registry JSON, go-micro compatible),
//	           "s"/"n": the service/node metadata entries whose keys
//	           consul would refuse (any character outside [A-Za-z0-9_-],
//	           or too long with the prefix)
//
// When the plain keys and the blob together need more than 64 keys, all
// metadata moves into the blob (compression then covers the keys too).
// Register refuses, with a *registry.ValidationError, a record that does not
// fit even so (about 30 KB of compressed metadata and endpoints).
//
// Services registered by go-micro (no "beacon" key, a "v-" tag that
// decodes) are read from their tags as go-micro reads them: node ID = the
// service ID as it is, version, node metadata and endpoints. Services
// registered by other tools are read as nodes with ID "<service
// ID>@<consul node name>", the service address (or the node's address when
// empty) and port, the service Meta as node metadata when it passes
// registry.ValidateMetadata, and an empty version. The "consul" service of
// consul's own servers is left out. Entries that cannot be read (no
// address, a port outside 1-65535, a garbled blob or tag, a record failing
// registry.Validate) are skipped with a slog Warn, once per service
// instance and consul modify index. When entries on several consul nodes
// carry one node ID, the one registered through its agent with its own
// check is the node and the others are never shown (owner.go).
//
// # Health
//
// Consul reaps a service whose check stays critical only after
// DeregisterCriticalServiceAfter (one minute at least) plus up to 30 s of
// reaper interval, so GetService, ListServices and Watch hide every node
// that has a critical check (its own TTL check, a node check such as
// serfHealth, or maintenance mode). A node that stops heartbeating leaves
// the results within its TTL plus the time consul takes to notice (a few
// milliseconds on a local agent). Nodes in "warning" stay visible.
//
// # Register and heartbeats
//
// Register of a node that this Registry registered with the same data and
// TTL is a heartbeat: one PUT /v1/agent/check/update (status passing). When
// consul answers that it does not know the check (the agent restarted or
// reaped the service) the same call registers the node again. Changed data
// is registered again in full (replacing the checks). The initial status of
// the TTL check is passing, so a node is visible as soon as its
// registration reaches the catalog. With TTL 0 the node has no check and
// never expires; each Register then re-registers it.
//
// # Watch
//
// All watchers of one service share one blocking query on
// /v1/health/service/<name>; watchers of all services share one blocking
// query on /v1/catalog/services plus the watches of every service it lists.
// At most WithServiceQueries services (DefaultServiceQueries, 64) have a
// blocking query of their own; the watches of further services share two
// blocking queries, on /v1/catalog/services and /v1/health/state/any, which
// tell which of them changed and must be fetched again (feed.go). So one
// Registry watches any number of services within consul's
// http_max_conns_per_client (200 connections per client address): 1,000
// services take about 70. The index is reset to 0 when it goes backwards and
// after every error (the agent may have been replaced); errors back off
// exponentially (50 ms to 5 s) and keep the last state: nodes are only
// reported deleted on a successful answer. A query that returns at once
// without progress is also backed off. Events are the registry.Diff of
// successive answers; consul's raft writes that do not change a node's data
// (such as heartbeats) produce none.
//
// # Addresses
//
// With several WithAddrs addresses New uses the first that answers; a
// transport failure later moves the registry to the next address in turn.
// Agent services belong to one agent: after a move, the next heartbeat
// registers the node on the new agent and the copy on the old one (if it
// still runs) goes critical and is hidden.
//
// # ACLs and TLS
//
// Every request carries the ACL token of WithToken (else of
// CONSUL_HTTP_TOKEN_FILE or CONSUL_HTTP_TOKEN; else none, which consul
// serves as its anonymous token). New checks the token against
// /v1/acl/token/self: a token consul does not know fails New with
// registry.ErrPermission. Afterwards consul's 401 and 403 answers are
// registry.ErrPermission (not ErrUnavailable), and so is a read whose every
// result consul's ACLs hid: consul filters reads instead of refusing them,
// and says so (X-Consul-Results-Filtered-By-ACLs) for tokens other than the
// anonymous one; an empty catalog is always hidden, since it lists consul's
// own "consul" service. Watches log either at Error, once, and go on. TLS:
// WithTLS or WithTLSFiles, or an "https://" address (the system roots).
//
// # Transport
//
// One HTTP transport per Registry, with keep-alive connections, responses
// not gzip-compressed (inflating consul's large health answers costs far
// more than it saves on a local link) and capped at MaxResponseBytes.
//
// Connections: a Registry holds one per blocking query (at most
// WithServiceQueries, plus the catalog and checks watches and 4 fetchers
// of fed services) and per call in flight; the agent refuses more than
// http_max_conns_per_client (default 200) from one client address, shared
// by every program on that address.
package consul

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/beacon-go/beacon/registry"
)

// Registry is a registry.Registry on consul. It is safe for concurrent use.
// Create it with New and release it with Close.
type Registry struct {
	opts      options
	token     string // the ACL token sent ("": none, consul uses its anonymous token)
	anonymous bool   // ACLs are on and no token was given (checkToken)
	log       *slog.Logger
	transport *http.Transport
	clients   []*api.Client // one per address, in WithAddrs order
	active    atomic.Int32  // index into clients
	codec     codec

	ctx    context.Context // cancelled by Close: stops loops and in-flight calls
	cancel context.CancelFunc
	wg     sync.WaitGroup // watch loops, the janitor, in-flight calls

	closeMu sync.RWMutex // read-held by calls in flight; Close takes it to set closed
	closed  bool

	nodesMu sync.Mutex
	nodes   map[string]*nodeState // node ID -> what this Registry registered

	members membersCache // owner.go

	watch watchState

	warnMu sync.Mutex
	warned map[string]struct{} // "service/id/modifyindex" already logged as malformed
}

var _ registry.Registry = (*Registry)(nil)

// New connects to consul and returns a Registry. It checks that an address
// answers /v1/status/leader with a leader, trying the addresses in order,
// each for its share of the connect timeout (WithConnectTimeout, default
// DefaultConnectTimeout), and never past ctx. When none does, it returns an
// error matching registry.ErrUnavailable. Invalid options (a TLS file that cannot be read,
// an address with an unknown scheme) are returned as they are. It then
// checks the ACL token (see the package documentation): one that consul
// does not know is an error matching registry.ErrPermission.
func New(ctx context.Context, opts ...Option) (*Registry, error) {
	o := buildOptions(opts)
	token, err := resolveToken(o.token)
	if err != nil {
		return nil, err
	}
	tr, err := newTransport(&o)
	if err != nil {
		return nil, err
	}
	hc := &http.Client{Transport: &limitedTransport{base: tr, max: MaxResponseBytes, token: token}}
	r := &Registry{
		token:     token,
		opts:      o,
		log:       o.log.With("registry", "consul"),
		transport: tr,
		nodes:     make(map[string]*nodeState),
		warned:    make(map[string]struct{}),
	}
	for _, addr := range o.addrs {
		cfg := &api.Config{
			Address:    addr,
			Datacenter: o.datacenter,
			HttpClient: hc,
			Token:      token, // the transport sets it, whatever the library read from the environment
		}
		if o.tlsConfig != nil || o.tlsFiles {
			cfg.Scheme = "https"
		}
		c, err := api.NewClient(cfg)
		if err != nil {
			tr.CloseIdleConnections()
			return nil, fmt.Errorf("consul: address %q: %w", addr, err)
		}
		r.clients = append(r.clients, c)
	}
	cctx, cancel := context.WithTimeout(ctx, o.connectTimeout)
	defer cancel()
	var errs []error
	found := -1
	for i, c := range r.clients {
		// Each address gets its share of the timeout, so that a silent
		// first one leaves time for the others.
		actx, acancel := context.WithTimeout(cctx, o.connectTimeout/time.Duration(len(r.clients)))
		leader, err := c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(actx))
		acancel()
		if err == nil && leader == "" {
			err = errors.New("no cluster leader")
		}
		if err == nil {
			found = i
			break
		}
		errs = append(errs, fmt.Errorf("%s: %w", o.addrs[i], err))
		if cctx.Err() != nil {
			break
		}
	}
	if found < 0 {
		tr.CloseIdleConnections()
		return nil, fmt.Errorf("%w: consul: no agent answered (connect timeout %v): %w", registry.ErrUnavailable, o.connectTimeout, errors.Join(errs...))
	}
	r.active.Store(int32(found))
	if err := r.checkToken(cctx); err != nil {
		tr.CloseIdleConnections()
		return nil, err
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	r.watch.init()
	r.wg.Add(1)
	go r.janitor()
	return r, nil
}

func newTransport(o *options) (*http.Transport, error) {
	tr := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   o.connectTimeout,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   256,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   o.connectTimeout,
		ExpectContinueTimeout: time.Second,
		// Consul gzips large answers; on the usual loopback or LAN link
		// compressing and inflating costs far more time than it saves
		// (200-node health answer: about 100 ms against 14 ms).
		DisableCompression: true,
		// A blocking query answers within WaitTime plus consul's jitter
		// of at most WaitTime/16; a silent peer beyond that is dead.
		ResponseHeaderTimeout: o.waitTime + o.waitTime/16 + 30*time.Second,
	}
	switch {
	case o.tlsConfig != nil:
		tr.TLSClientConfig = o.tlsConfig.Clone()
	case o.tlsFiles:
		tc, err := api.SetupTLSConfig(&api.TLSConfig{CAFile: o.caFile, CertFile: o.certFile, KeyFile: o.keyFile})
		if err != nil {
			return nil, fmt.Errorf("consul: TLS files: %w", err)
		}
		tr.TLSClientConfig = tc
	}
	return tr, nil
}

// String returns "consul".
func (r *Registry) String() string { return "consul" }

// Close stops every watcher (their Next returns registry.ErrWatcherStopped),
// cancels calls in flight, waits for the registry's goroutines and closes
// its idle connections. It does not deregister nodes: their TTL checks go
// critical (hidden) and consul reaps them later. Close is idempotent; later
// calls of other methods return registry.ErrClosed.
func (r *Registry) Close() error {
	r.closeMu.Lock()
	if r.closed {
		r.closeMu.Unlock()
		return nil
	}
	r.closed = true
	r.closeMu.Unlock()
	r.cancel()
	r.stopWatches()
	r.wg.Wait()
	r.transport.CloseIdleConnections()
	return nil
}

// begin registers a call in flight: it returns a context that Close
// cancels and a done func, or ErrClosed.
func (r *Registry) begin(ctx context.Context) (context.Context, func(), error) {
	r.closeMu.RLock()
	defer r.closeMu.RUnlock()
	if r.closed {
		return nil, nil, registry.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	r.wg.Add(1)
	cctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(r.ctx, cancel)
	return cctx, func() {
		stop()
		cancel()
		r.wg.Done()
	}, nil
}

// client returns the active client and its index.
func (r *Registry) client() (*api.Client, int) {
	i := int(r.active.Load())
	return r.clients[i], i
}

// fail records err from client i: a transport failure (consul did not
// answer) moves the registry to the next address.
func (r *Registry) fail(i int, err error) {
	if len(r.clients) < 2 || !transportError(err) {
		return
	}
	next := (i + 1) % len(r.clients)
	if r.active.CompareAndSwap(int32(i), int32(next)) {
		r.log.Warn("consul agent unreachable, moving to the next address",
			"from", r.opts.addrs[i], "to", r.opts.addrs[next], "err", err)
	}
}

// transportError reports whether err is a failure to talk to consul at all
// (as opposed to an HTTP error status, or our own context ending).
func transportError(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var se api.StatusError
	return !errors.As(err, &se)
}

// statusCode returns the HTTP status consul answered with, or 0.
func statusCode(err error) int {
	var se api.StatusError
	if errors.As(err, &se) {
		return se.Code
	}
	return 0
}

// wrap turns a consul client error into the registry's: the caller's
// context error as is, 401 and 403 (consul refused the ACL token, or it
// lacks a permission) wrapped with ErrPermission, anything else with
// ErrUnavailable.
func (r *Registry) wrap(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		r.closeMu.RLock()
		closed := r.closed
		r.closeMu.RUnlock()
		if closed {
			return registry.ErrClosed
		}
		return fmt.Errorf("consul: %s: %w", op, ctx.Err())
	}
	if permissionStatus(err) {
		return fmt.Errorf("%w: consul: %s (%s): %w", registry.ErrPermission, op, r.tokenDesc(), err)
	}
	return fmt.Errorf("%w: consul: %s: %w", registry.ErrUnavailable, op, err)
}

// permissionStatus reports whether consul answered 401 or 403.
func permissionStatus(err error) bool {
	c := statusCode(err)
	return c == http.StatusUnauthorized || c == http.StatusForbidden
}

// warnMalformed logs a skipped record once per instance and modify index.
func (r *Registry) warnMalformed(service string, e *entry, err error) {
	key := "entry/" + service
	if e != nil && e.Service != nil {
		key = fmt.Sprintf("entry/%s/%s/%d", service, e.Service.ID, e.Service.ModifyIndex)
	}
	if r.firstWarning(key) {
		r.log.Warn("skipping unreadable consul service entry", "service", service, "err", err)
	}
}

// firstWarning reports whether key is new to the (bounded) set of things
// already warned about, and adds it.
func (r *Registry) firstWarning(key string) bool {
	r.warnMu.Lock()
	defer r.warnMu.Unlock()
	if _, seen := r.warned[key]; seen {
		return false
	}
	if len(r.warned) >= maxWarned {
		clear(r.warned)
	}
	r.warned[key] = struct{}{}
	return true
}

// maxWarned bounds the memory of warnings already given.
const maxWarned = 4096

// limitedTransport caps response bodies at max bytes and sends the ACL
// token (and only it: the consul library may have read another from the
// environment).
type limitedTransport struct {
	base  http.RoundTripper
	max   int64
	token string
}

func (t *limitedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if got := req.Header.Get(tokenHeader); got != t.token {
		req = req.Clone(req.Context())
		if t.token == "" {
			req.Header.Del(tokenHeader)
		} else {
			req.Header.Set(tokenHeader, t.token)
		}
	}
	resp, err := t.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{rc: resp.Body, left: t.max}
	return resp, nil
}

var errTooLarge = errors.New("consul response larger than the limit")

type limitedBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// Distinguish a body of exactly the limit from a larger one.
		var one [1]byte
		n, err := b.rc.Read(one[:])
		if n > 0 {
			return 0, errTooLarge
		}
		return 0, err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }
