// Package ui is Beacon's web dashboard of a live registry, served by
// `beacon ui`: services with their versions and node counts; each service's
// nodes (address, metadata, and health as the dashboard's selector sees it:
// ejected, requests in flight, latency EWMA); endpoints with their request
// and response shapes; a live log of registry events (server-sent events
// from one registry watch, no polling); and a form that calls an endpoint
// with JSON through Beacon's client and the dashboard's selector, showing
// the answer, its timing and every attempt.
//
// It uses only the Registry interface, so it works on every backend. The
// page is plain HTML, CSS and JavaScript embedded in the binary (go:embed);
// nothing is fetched from elsewhere.
//
// Security. Registry records are written by whoever can reach the registry,
// so the page renders them only as text (no innerHTML; a Content Security
// Policy forbids inline and foreign scripts). Every request must name the
// server by an IP literal, "localhost" or a host given with AllowHosts (a
// DNS-rebinding page cannot reach it). The call endpoint, the one that does
// something, is refused to cross-site requests: it takes only POST with
// Content-Type application/json and the header X-Beacon-UI (a cross-site
// form cannot send either; a cross-site fetch that does needs a CORS
// preflight, which is never granted), an Origin, when sent, must be the
// server's own, Sec-Fetch-Site, when sent, same-origin; its body is bounded
// (MaxBody). Listen refuses addresses that are not loopback unless told
// otherwise: anyone who reaches the dashboard can read the registry and
// call every service.
package ui

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/selector"
)

// DefaultListen is the address `beacon ui` listens on by default.
const DefaultListen = "127.0.0.1:8082"

// Defaults and bounds.
const (
	// DefaultMaxBody bounds the body of a call request (the JSON envelope
	// with the request inside).
	DefaultMaxBody = 1 << 20
	// DefaultTimeout bounds registry lookups and, unless the form says
	// otherwise, calls.
	DefaultTimeout = 10 * time.Second
	// MaxCallTimeout bounds the timeout a call request may ask for.
	MaxCallTimeout = 5 * time.Minute
	// DefaultMaxStreams bounds the event streams served at once.
	DefaultMaxStreams = 64
	// History is the number of registry events kept for pages that
	// connect (or reconnect) later.
	History = 500
)

// HeaderName is the header every call request must carry (any value): a
// cross-site form cannot send it.
const HeaderName = "X-Beacon-UI"

//go:embed static
var static embed.FS

// Option configures a Server.
type Option func(*options)

type options struct {
	log        *slog.Logger
	selOpts    []selector.Option
	cliOpts    []client.Option
	maxBody    int64
	timeout    time.Duration
	hosts      []string
	maxStreams int
	keepAlive  time.Duration
}

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithSelectorOptions adds options of the dashboard's selector (strategy,
// protocols, logger...). Its health figures are what the node tables show.
func WithSelectorOptions(opts ...selector.Option) Option {
	return func(o *options) { o.selOpts = append(o.selOpts, opts...) }
}

// WithClientOptions adds options of the client that makes the form's calls
// (retries, timeouts, TLS, callers of other protocols...).
func WithClientOptions(opts ...client.Option) Option {
	return func(o *options) { o.cliOpts = append(o.cliOpts, opts...) }
}

// MaxBody bounds the body of a call request (default DefaultMaxBody); a
// larger one is refused with 413.
func MaxBody(n int64) Option { return func(o *options) { o.maxBody = n } }

// Timeout bounds each registry lookup and is the calls' default timeout
// (default DefaultTimeout).
func Timeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// AllowHosts adds host names by which the dashboard may be reached
// (the Host header; IP literals and "localhost" always may), e.g. the
// name of a machine it serves with AllowRemote.
func AllowHosts(hosts ...string) Option {
	return func(o *options) { o.hosts = append(o.hosts, hosts...) }
}

// MaxStreams bounds the event streams served at once (default
// DefaultMaxStreams); one more is refused with 503.
func MaxStreams(n int) Option { return func(o *options) { o.maxStreams = n } }

// keepAlive sets the interval of the event stream's comments (tests).
func keepAlive(d time.Duration) Option { return func(o *options) { o.keepAlive = d } }

// Server is the dashboard: an http.Handler over a registry. It watches the
// registry from New until Close.
type Server struct {
	o      options
	reg    registry.Registry
	sel    *selector.Cached
	cl     *client.Client
	hub    *hub
	mux    *http.ServeMux
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

// New returns the dashboard of reg and starts watching it. The caller
// keeps reg (Close does not close it) and must Close the Server.
func New(reg registry.Registry, opts ...Option) *Server {
	o := options{log: slog.Default(), maxBody: DefaultMaxBody, timeout: DefaultTimeout, maxStreams: DefaultMaxStreams, keepAlive: 15 * time.Second}
	for _, f := range opts {
		f(&o)
	}
	s := &Server{o: o, reg: reg}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.hub = newHub(History)
	selOpts := append([]selector.Option{selector.WithLogger(o.log)}, o.selOpts...)
	selOpts = append(selOpts, selector.OnEject(func(service string, node *registry.Node, ejected bool) {
		s.hub.health(service, node.ID, ejected)
	}))
	s.sel = selector.New(reg, selOpts...)
	cliOpts := append([]client.Option{client.Logger(o.log)}, o.cliOpts...)
	cliOpts = append(cliOpts, client.WithAttemptInterceptors(recordAttempt))
	s.cl = client.New(s.sel, cliOpts...)

	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embedded tree is part of the binary
	}
	m := http.NewServeMux()
	m.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) { http.ServeFileFS(w, r, sub, "index.html") })
	m.HandleFunc("GET /static/{file}", func(w http.ResponseWriter, r *http.Request) {
		switch f := r.PathValue("file"); f {
		case "app.js", "app.css":
			http.ServeFileFS(w, r, sub, f)
		default:
			http.NotFound(w, r)
		}
	})
	m.HandleFunc("GET /api/info", s.info)
	m.HandleFunc("GET /api/services", s.services)
	m.HandleFunc("GET /api/service", s.service)
	m.HandleFunc("GET /api/events", s.events)
	m.HandleFunc("POST /api/call", s.call)
	s.mux = m

	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.watch()
	}()
	return s
}

// ServeHTTP serves the page, its assets and its API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	if err := s.checkHost(r); err != nil {
		httpError(w, http.StatusMisdirectedRequest, err.Error())
		return
	}
	s.mux.ServeHTTP(w, r)
}

// Selector returns the dashboard's selector (its health figures are the
// ones shown).
func (s *Server) Selector() *selector.Cached { return s.sel }

// Serve serves the dashboard on ln until ctx is done, then ends the event
// streams, shuts the HTTP server down (waiting up to 5 s for requests
// under way) and closes s.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(s.o.log.Handler(), slog.LevelDebug)}
	done := make(chan error, 1)
	go func() { done <- hs.Serve(ln) }()
	var err error
	select {
	case <-ctx.Done():
	case err = <-done:
	}
	s.hub.close() // event streams end, so Shutdown need not wait for them
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if serr := hs.Shutdown(sctx); serr != nil {
		hs.Close()
	}
	if err == nil {
		err = <-done
	}
	s.Close()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// Close stops the registry watch, ends the event streams and closes the
// dashboard's client and selector. It is idempotent.
func (s *Server) Close() error {
	var err error
	s.once.Do(func() {
		s.cancel()
		s.hub.close()
		s.wg.Wait()
		err = errors.Join(s.cl.Close(), s.sel.Close())
	})
	return err
}

// ErrNotLoopback: Listen was asked for an address that is not loopback
// without allowRemote.
var ErrNotLoopback = errors.New("ui: not a loopback address")

// Listen listens on addr, an IP literal and a port ("127.0.0.1:8082",
// "[::1]:0"; "localhost" means 127.0.0.1). Unless allowRemote, it refuses
// an address that is not loopback (an empty host means every interface)
// with ErrNotLoopback.
func Listen(addr string, allowRemote bool) (net.Listener, error) {
	a, err := checkListen(addr, allowRemote)
	if err != nil {
		return nil, err
	}
	return net.Listen("tcp", a)
}

// checkListen returns the address Listen listens on, or why not.
func checkListen(addr string, allowRemote bool) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("ui: listen address %q: %w", addr, err)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	const why = "the dashboard shows the registry and calls services for whoever reaches it; allow other hosts explicitly"
	if host != "" {
		ip := net.ParseIP(host)
		if ip == nil {
			return "", fmt.Errorf("ui: listen address %q: the host must be an IP address", addr)
		}
		if !ip.IsLoopback() && !allowRemote {
			return "", fmt.Errorf("%w: %s (%s)", ErrNotLoopback, addr, why)
		}
	} else if !allowRemote {
		return "", fmt.Errorf("%w: %q listens on every interface (%s)", ErrNotLoopback, addr, why)
	}
	return net.JoinHostPort(host, port), nil
}

// checkHost refuses requests whose Host is not an IP literal, "localhost"
// or an allowed name: a page of another site whose name was made to
// resolve to this address (DNS rebinding) names its own host.
func (s *Server) checkHost(r *http.Request) error {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if host == "" {
		return errors.New("request without a host")
	}
	if net.ParseIP(host) != nil || strings.EqualFold(host, "localhost") {
		return nil
	}
	for _, h := range s.o.hosts {
		if strings.EqualFold(host, h) {
			return nil
		}
	}
	return fmt.Errorf("host %q not allowed: use an IP address (or start the dashboard with the host allowed)", host)
}
