package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/beacon-go/beacon/metadata"
	"github.com/beacon-go/beacon/status"
)

// HTTP on Beacon's port: a connection that opens with an HTTP/1.1 request
// line, or HTTP/2's cleartext preface (h2c with prior knowledge), instead of
// Beacon's preface is served by net/http on the same port:
//
//	POST /<Endpoint>   e.g. POST /Greeter.Hello with a JSON body (JSON also
//	                   when sent as a form or text/plain, as curl -d does;
//	                   application/protobuf for protobuf); the answer is
//	                   the response body, or a JSON error
//	                   {"code": 404, "detail": "..."} with the code as the
//	                   HTTP status; X-Beacon-Not-Run: true marks the server's
//	                   own refusals (nothing ran)
//	GET /health        200 {"status":"ok"}, 503 {"status":"draining"} from
//	                   the start of Stop (for consul HTTP checks and
//	                   Kubernetes probes: they stop routing while calls
//	                   still served during the drain grace)
//
// A Beacon-Timeout header (a Go duration, "250ms") bounds the handler like a
// wire call's deadline; the client closing the connection cancels it. The
// same limits apply: MaxMessageSize, MaxConcurrentRequests, MaxConnections,
// FrameTimeout for the request header, IdleTimeout between requests. The
// detection reads the first four bytes of a connection: it costs nothing per
// call afterwards.

// HTTP turns serving HTTP/1.1 on the server's port on or off (default on).
func HTTP(enabled bool) Option { return func(o *options) { o.noHTTP = !enabled } }

// looksHTTP reports whether a connection's first bytes start an HTTP/1.x
// request line.
func looksHTTP(b []byte) bool {
	if len(b) < 4 {
		return false
	}
	switch string(b[:4]) {
	case "GET ", "POST", "PUT ", "HEAD", "DELE", "OPTI", "PATC", "PRI ": // PRI: HTTP/2 with prior knowledge
		return true
	}
	return false
}

// web serves the HTTP connections handed over by the wire's accept loop.
type web struct {
	s     *Server
	srv   *http.Server
	conns chan net.Conn
	done  chan struct{} // closed when the listener is closed
	once  sync.Once
	ended chan struct{} // closed when Serve returned
}

func newWeb(s *Server) *web {
	w := &web{s: s, conns: make(chan net.Conn), done: make(chan struct{}), ended: make(chan struct{})}
	w.srv = &http.Server{
		Handler:           w,
		ReadHeaderTimeout: s.o.frameTimeout,
		IdleTimeout:       s.o.idleTimeout,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.o.log.Handler(), slog.LevelDebug),
		Protocols:         new(http.Protocols),
		ConnState:         connState,
	}
	w.srv.Protocols.SetHTTP1(true)
	w.srv.Protocols.SetUnencryptedHTTP2(true) // h2c with prior knowledge
	go func() {
		defer close(w.ended)
		_ = w.srv.Serve(w)
	}()
	return w
}

// serve hands c (whose first bytes r read already) to the HTTP server and
// waits until that connection is closed, so that it counts against
// MaxConnections and Stop waits for it.
func (w *web) serve(c *conn, read []byte) {
	c.http.Store(true)
	c.httpBusy.Store(true) // until net/http says it is idle
	hc := &handedConn{Conn: c.nc, c: c, pre: append([]byte(nil), read...), closed: make(chan struct{})}
	select {
	case w.conns <- hc:
	case <-w.done:
		return
	}
	// net/http owns it now: it closes it (at the latest web.stop's
	// srv.Close); returning earlier, when the listener closes at the start
	// of Shutdown, would close it under a request in flight.
	<-hc.closed
}

// connState keeps the server's record of an HTTP connection up to date:
// busy while net/http serves a request on it (the connection limit's
// eviction then passes it over), idle since when.
func connState(nc net.Conn, st http.ConnState) {
	hc, ok := nc.(*handedConn)
	if !ok {
		return
	}
	switch st {
	case http.StateActive:
		hc.c.httpBusy.Store(true)
	case http.StateIdle:
		hc.c.active.Store(time.Now().UnixNano())
		hc.c.httpBusy.Store(false)
	}
}

// Accept, Close and Addr make web the net.Listener of its HTTP server.
func (w *web) Accept() (net.Conn, error) {
	select {
	case c := <-w.conns:
		return c, nil
	case <-w.done:
		return nil, net.ErrClosed
	}
}

func (w *web) Close() error {
	w.once.Do(func() { close(w.done) })
	return nil
}

func (w *web) Addr() net.Addr { return webAddr{} }

type webAddr struct{}

func (webAddr) Network() string { return "beacon" }
func (webAddr) String() string  { return "beacon-port" }

// stop ends HTTP serving: idle connections close at once, requests in
// flight get until ctx ends.
func (w *web) stop(ctx context.Context) {
	_ = w.srv.Shutdown(ctx)
	_ = w.srv.Close()
	w.Close()
	<-w.ended
}

// handedConn replays the bytes read while detecting the protocol, then
// reads the connection; Close tells the wire's accept loop it ended.
type handedConn struct {
	net.Conn
	c      *conn // the server's record of the connection
	pre    []byte
	once   sync.Once
	closed chan struct{}
}

func (h *handedConn) Read(p []byte) (int, error) {
	if len(h.pre) > 0 {
		n := copy(p, h.pre)
		h.pre = h.pre[n:]
		return n, nil
	}
	return h.Conn.Read(p)
}

func (h *handedConn) Close() error {
	err := h.Conn.Close()
	h.once.Do(func() { close(h.closed) })
	return err
}

// httpStatus maps a Beacon code to an HTTP status.
func httpStatus(code int) int {
	if code >= 100 && code <= 599 {
		return code
	}
	return http.StatusInternalServerError
}

func (w *web) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	s := w.s
	if r.URL.Path == "/health" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		rw.Header().Set("Content-Type", "application/json")
		if s.draining.Load() {
			rw.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(rw, `{"status":"draining"}`)
			return
		}
		io.WriteString(rw, `{"status":"ok"}`)
		return
	}
	endpoint := strings.TrimPrefix(r.URL.Path, "/")
	h, ok := s.handlers[endpoint]
	if !ok {
		writeHTTPError(rw, status.Newf(status.NotFound, "unknown endpoint %q", endpoint), true)
		return
	}
	if r.Method != http.MethodPost {
		rw.Header().Set("Allow", http.MethodPost)
		writeHTTPError(rw, status.Newf(http.StatusMethodNotAllowed, "call %s with POST", endpoint), true)
		return
	}
	if s.refusing.Load() {
		writeHTTPError(rw, status.New(status.Unavailable, "server is going away; not run"), true)
		return
	}
	ct := r.Header.Get("Content-Type")
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = strings.TrimSpace(ct)
	if ct == "application/x-www-form-urlencoded" || ct == "text/plain" {
		ct = "" // curl -d and friends: the body is taken as JSON
	}
	cd, err := s.o.codecs.Get(ct)
	if err != nil {
		writeHTTPError(rw, status.New(http.StatusUnsupportedMediaType, err.Error()), true)
		return
	}
	in := s.bufs.get()
	defer s.bufs.put(in)
	body, err := readBody(*in, rw, r, s.o.maxMessage)
	*in = body
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			writeHTTPError(rw, status.Newf(status.TooLarge, "request larger than the server's limit of %d bytes", s.o.maxMessage), true)
			return
		}
		writeHTTPError(rw, status.Newf(status.BadRequest, "read request: %v", err), true)
		return
	}
	md, serr := headerMetadata(r.Header)
	if serr != nil {
		writeHTTPError(rw, serr, true)
		return
	}
	ctx := r.Context()
	if md != nil {
		ctx = metadata.NewIncomingContext(ctx, md)
	}
	if v := r.Header.Get("Beacon-Timeout"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			writeHTTPError(rw, status.Newf(status.BadRequest, "Beacon-Timeout %q is not a positive duration", v), true)
			return
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	if s.slots != nil {
		select {
		case s.slots <- struct{}{}:
		default:
			writeHTTPError(rw, status.New(status.Unavailable, "server overloaded; not run"), true)
			return
		}
	}
	var remote net.Addr
	if s.intercept != nil { // only interceptors see it: no parse, no allocation otherwise
		remote = remoteAddr(r)
	}
	if !s.inflight.enter() {
		if s.slots != nil {
			<-s.slots
		}
		writeHTTPError(rw, status.New(status.Unavailable, "server is going away; not run"), true)
		return
	}
	defer s.inflight.exit() // once the answer is written
	rc := &reqCtx{Context: ctx}
	rsp, err := s.run(rc, h, cd, body, "http", remote)
	if s.slots != nil {
		<-s.slots
	}
	for k, v := range rc.metadata() {
		rw.Header().Set(k, v)
	}
	if err != nil {
		writeHTTPError(rw, toStatus(ctx, err), false)
		return
	}
	buf := s.bufs.get()
	defer s.bufs.put(buf)
	out, err := cd.Marshal(*buf, rsp)
	if err != nil {
		writeHTTPError(rw, status.Newf(status.InternalError, "encode response: %v", err), false)
		return
	}
	*buf = out
	hdr := rw.Header()
	hdr["Content-Type"] = contentTypeHeader(cd.ContentType())
	if len(out) > 2048 { // smaller bodies: net/http sets the length itself
		hdr.Set("Content-Length", strconv.Itoa(len(out)))
	}
	rw.Write(out)
}

// contentTypeHeader returns the header value of a content type, shared for
// the built-in codecs' (no allocation per response).
func contentTypeHeader(ct string) []string {
	switch ct {
	case "application/json":
		return jsonCT
	case "application/protobuf":
		return protoCT
	}
	return []string{ct}
}

var (
	jsonCT  = []string{"application/json"}
	protoCT = []string{"application/protobuf"}
)

// readBody appends the request body to dst, up to max bytes (more: an
// *http.MaxBytesError).
func readBody(dst []byte, rw http.ResponseWriter, r *http.Request, max int) ([]byte, error) {
	if r.ContentLength > int64(max) {
		return dst, &http.MaxBytesError{Limit: int64(max)}
	}
	if r.ContentLength > 0 && int64(cap(dst)) < r.ContentLength {
		dst = make([]byte, 0, r.ContentLength)
	}
	// A body of a known length (at most max, checked above) is bounded by
	// net/http's own reader: that length is all it returns. Others
	// (chunked) are read through a MaxBytesReader.
	var rd io.Reader = r.Body
	if r.ContentLength < 0 {
		rd = http.MaxBytesReader(rw, r.Body, int64(max))
	}
	for {
		if len(dst) == cap(dst) {
			dst = append(dst, 0)[:len(dst)]
		}
		n, err := rd.Read(dst[len(dst):cap(dst)])
		dst = dst[:len(dst)+n]
		if err == io.EOF {
			return dst, nil
		}
		if err != nil {
			return dst, err
		}
	}
}

// transportHeader reports whether a request header, in canonical form (as
// net/http stores them), is HTTP's own, not metadata (a switch: no map
// lookup per header and request).
func transportHeader(k string) bool {
	switch k {
	case "Accept", "Accept-Encoding", "Connection", "Content-Length", "Content-Type",
		"Expect", "Host", "Keep-Alive", "Proxy-Authorization", "Proxy-Connection",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade", "Http2-Settings",
		"User-Agent", "Beacon-Timeout":
		return true
	}
	return false
}

// headerMetadata turns request headers into request metadata: every header
// but HTTP's own (transportHeader), the name lower-cased, several values
// joined with ", ". Headers over the limits, or whose names are not valid
// keys, are refused with status 431 naming them. Requests with only HTTP's
// own headers cost no allocation.
func headerMetadata(h http.Header) (metadata.MD, *status.Error) {
	var md metadata.MD
	for k, vs := range h {
		if transportHeader(k) || transportHeader(http.CanonicalHeaderKey(k)) {
			continue
		}
		if md == nil {
			md = metadata.MD{}
		}
		md[strings.ToLower(k)] = strings.Join(vs, ", ")
	}
	if md == nil {
		return nil, nil
	}
	if err := metadata.Validate(md); err != nil {
		return nil, status.Newf(status.HeaderTooLarge, "request headers refused as metadata: %v; not run", err)
	}
	return md, nil
}

// remoteAddr parses an HTTP request's remote address (nil if it does not).
func remoteAddr(r *http.Request) net.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return nil
	}
	return net.TCPAddrFromAddrPort(ap)
}

// writeHTTPError answers with the code as the HTTP status and a JSON body;
// notRun marks the server's own refusals.
func writeHTTPError(rw http.ResponseWriter, e *status.Error, notRun bool) {
	rw.Header().Set("Content-Type", "application/json")
	if notRun {
		rw.Header().Set("X-Beacon-Not-Run", "true")
	}
	rw.WriteHeader(httpStatus(e.Code))
	b, err := json.Marshal(struct {
		Code   int    `json:"code"`
		Detail string `json:"detail"`
	}{e.Code, e.Detail})
	if err != nil {
		b = fmt.Appendf(nil, `{"code":%d}`, e.Code)
	}
	rw.Write(b)
}
