// Package registrar keeps one node of a service registered while it serves:
// the registration, heartbeat and deregistration shared by Beacon's own
// server (package server) and by servers of other protocols (package
// beacongrpc registers grpc-go servers with it).
//
// Start registers the service (one node) with the TTL and starts a
// heartbeat that registers it again every interval; a failed registration
// or heartbeat is logged and retried with jittered backoff (from 100 ms,
// doubling, up to the interval), never fatal, and recreates a record the
// backend lost. A registry that refuses the credentials
// (registry.ErrPermission) is logged at Error as "registry permission
// denied" at every attempt, never as a passing outage. Stop stops the heartbeat, deregisters, then waits the drain
// grace so that callers' caches drop the node before the server stops
// serving (the caller of Stop then stops its server).
package registrar

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/beacon-go/beacon/internal/backoff"
	"github.com/beacon-go/beacon/registry"
)

// Defaults, the one place they are defined (package server re-exports
// them as its DefaultRegisterTTL, DefaultRegisterInterval and
// DefaultDrainGrace).
const (
	DefaultTTL        = 15 * time.Second
	DefaultInterval   = 5 * time.Second
	DefaultDrainGrace = time.Second
	// MaxTTL bounds the TTL, and so the interval, which must be below it.
	MaxTTL = 24 * time.Hour
	// DeregisterTimeout bounds the deregistration in Stop (and Stop's ctx
	// bounds it too).
	DeregisterTimeout = 5 * time.Second
)

// Errors.
var (
	ErrBadTTL      = errors.New("registrar: register TTL out of range")
	ErrBadInterval = errors.New("registrar: register interval must be positive and below the register TTL")
	ErrStarted     = errors.New("registrar: already started")
)

// Option configures a Registrar.
type Option func(*options)

type options struct {
	ttl, interval, grace time.Duration
	log                  *slog.Logger
	prefix               string
}

// TTL sets the registration's TTL (default DefaultTTL, at most MaxTTL).
func TTL(d time.Duration) Option { return func(o *options) { o.ttl = d } }

// Interval sets the heartbeat interval, below the TTL (default
// DefaultInterval).
func Interval(d time.Duration) Option { return func(o *options) { o.interval = d } }

// DrainGrace sets how long Stop waits after deregistering (default
// DefaultDrainGrace; 0: not at all).
func DrainGrace(d time.Duration) Option { return func(o *options) { o.grace = max(d, 0) } }

// Logger sets the logger (default slog.Default()).
func Logger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// LogPrefix sets the prefix of the log messages (default "registrar"), e.g.
// "server" for "server: registered".
func LogPrefix(p string) Option { return func(o *options) { o.prefix = p } }

// CheckTTL checks a TTL and interval pair: the TTL at most MaxTTL (else
// ErrBadTTL), the interval positive and below the TTL (else ErrBadInterval).
func CheckTTL(ttl, interval time.Duration) error {
	if ttl > MaxTTL {
		return fmt.Errorf("%w: %v, want at most %v", ErrBadTTL, ttl, MaxTTL)
	}
	if interval <= 0 || ttl <= 0 || interval >= ttl {
		return fmt.Errorf("%w (interval %v, TTL %v)", ErrBadInterval, interval, ttl)
	}
	return nil
}

// Registrar keeps one service registered. Its methods are safe for
// concurrent use.
type Registrar struct {
	reg registry.Registry
	svc *registry.Service
	o   options

	mu       sync.Mutex
	started  bool
	stopped  bool
	readOnly bool // the registry refused the node as read-only: no heartbeat
	cancel   context.CancelFunc
	done     chan struct{}
}

// New returns a Registrar of svc (a copy is kept; it should hold exactly
// one node, this server's) in reg. It checks the TTL and interval
// (CheckTTL) and validates svc (registry.Validate); it registers nothing
// until Start.
func New(reg registry.Registry, svc *registry.Service, opts ...Option) (*Registrar, error) {
	o := options{ttl: DefaultTTL, interval: DefaultInterval, grace: DefaultDrainGrace, log: slog.Default(), prefix: "registrar"}
	for _, f := range opts {
		f(&o)
	}
	if reg == nil {
		return nil, errors.New("registrar: nil registry")
	}
	if err := CheckTTL(o.ttl, o.interval); err != nil {
		return nil, err
	}
	if err := registry.Validate(svc); err != nil {
		return nil, err
	}
	return &Registrar{reg: reg, svc: svc.Copy(), o: o}, nil
}

// Service returns a copy of the registered service.
func (r *Registrar) Service() *registry.Service { return r.svc.Copy() }

func (r *Registrar) node() string {
	if len(r.svc.Nodes) > 0 {
		return r.svc.Nodes[0].ID
	}
	return ""
}

// Start registers the service under ctx and starts the heartbeat. A
// registration refused as invalid (registry.ErrInvalid) is returned and
// nothing is started; any other failure is logged and the heartbeat keeps
// trying (a registry that is down when the server starts does not stop
// it). Start may be called once.
func (r *Registrar) Start(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started || r.stopped {
		return ErrStarted
	}
	err := r.reg.Register(ctx, r.svc, registry.RegisterTTL(r.o.ttl))
	if errors.Is(err, registry.ErrInvalid) {
		return err
	}
	if errors.Is(err, registry.ErrReadOnly) {
		// A read-only registry (static): the node is listed there by its
		// operator, or not at all; nothing to heartbeat or deregister.
		r.o.log.Info(r.o.prefix+": the registry is read-only; not registering (list the node in it)", "service", r.svc.Name, "node", r.node(), "registry", r.reg.String())
		r.started, r.readOnly = true, true
		return nil
	}
	switch {
	case errors.Is(err, registry.ErrPermission):
		r.o.log.Error(r.o.prefix+": register failed: registry permission denied (check the registry credentials); the heartbeat will retry",
			"service", r.svc.Name, "node", r.node(), "registry", r.reg.String(), "err", err)
	case err != nil:
		r.o.log.Error(r.o.prefix+": register failed; the heartbeat will retry", "service", r.svc.Name, "node", r.node(), "err", err)
	default:
		addr := ""
		if len(r.svc.Nodes) > 0 {
			addr = r.svc.Nodes[0].Address
		}
		r.o.log.Info(r.o.prefix+": registered", "service", r.svc.Name, "version", r.svc.Version, "node", r.node(), "address", addr, "registry", r.reg.String())
	}
	hctx, cancel := context.WithCancel(context.Background())
	r.started, r.cancel, r.done = true, cancel, make(chan struct{})
	go r.heartbeat(hctx, err == nil)
	return nil
}

// heartbeat re-registers every interval; after a failure it retries with
// jittered backoff (from 100 ms, doubling, up to the interval) until it
// succeeds.
func (r *Registrar) heartbeat(ctx context.Context, ok bool) {
	defer close(r.done)
	log := r.o.log.With("service", r.svc.Name, "node", r.node())
	bo := backoff.New(100*time.Millisecond, r.o.interval)
	failing := !ok
	wait := r.o.interval
	if failing {
		wait = bo.Next()
	}
	for backoff.Sleep(ctx, wait) {
		rctx, cancel := context.WithTimeout(ctx, r.o.interval)
		err := r.reg.Register(rctx, r.svc, registry.RegisterTTL(r.o.ttl))
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, registry.ErrPermission):
			// The credentials, not the registry's health: say it at
			// Error every time, and keep trying (grants may change).
			wait = bo.Next()
			log.Error(r.o.prefix+": heartbeat failed: registry permission denied (check the registry credentials); retrying",
				"registry", r.reg.String(), "err", err, "retry_in", wait)
			failing = true
			continue
		case err != nil:
			wait = bo.Next()
			log.Warn(r.o.prefix+": heartbeat failed; retrying", "err", err, "retry_in", wait)
			failing = true
			continue
		case failing:
			log.Info(r.o.prefix + ": registered again after failures")
			failing = false
		}
		bo.Reset()
		wait = r.o.interval
	}
}

// Deregister stops the heartbeat and deregisters the node (bounded by
// DeregisterTimeout and ctx), without the drain grace; it returns the
// deregistration's error, logged too. It is idempotent: later calls (and
// Stop after it) do nothing and return nil. Before Start, it only prevents
// a later Start.
func (r *Registrar) Deregister(ctx context.Context) error {
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		return nil
	}
	r.stopped = true
	started := r.started
	r.mu.Unlock()
	if !started || r.readOnly {
		return nil
	}
	r.cancel()
	<-r.done
	dctx, cancel := context.WithTimeout(ctx, DeregisterTimeout)
	err := r.reg.Deregister(dctx, r.svc)
	cancel()
	if err != nil {
		r.o.log.Warn(r.o.prefix+": deregister failed", "service", r.svc.Name, "err", err)
	}
	return err
}

// Stop deregisters (see Deregister) and then, when it was started, waits
// the drain grace or until ctx ends, so that callers' caches drop the node
// while the server still serves. It returns the deregistration's error.
func (r *Registrar) Stop(ctx context.Context) error {
	r.mu.Lock()
	wait := r.started && !r.stopped
	r.mu.Unlock()
	err := r.Deregister(ctx)
	if wait {
		Wait(ctx, r.o.grace)
	}
	return err
}

// Wait sleeps d or until ctx ends.
func Wait(ctx context.Context, d time.Duration) { backoff.Sleep(ctx, d) }

// NewID returns a node ID for a service: name-<16 random hex digits>.
func NewID(name string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return name + "-" + hex.EncodeToString(b[:])
}

// AdvertiseAddr turns a listen address into one that others can reach: an
// unspecified host (0.0.0.0, ::) is replaced by this host's first up,
// non-loopback IPv4 address, or 127.0.0.1.
func AdvertiseAddr(a net.Addr) string {
	host, port, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	ip := net.ParseIP(host)
	if ip != nil && !ip.IsUnspecified() {
		return a.String()
	}
	return net.JoinHostPort(HostIP(), port)
}

// HostIP returns the first up, non-loopback IPv4 address, or 127.0.0.1.
func HostIP() string {
	ifaces, err := net.Interfaces()
	if err != nil {
		return "127.0.0.1"
	}
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip4 := ipn.IP.To4(); ip4 != nil && !ip4.IsLinkLocalUnicast() {
					return ip4.String()
				}
			}
		}
	}
	return "127.0.0.1"
}
