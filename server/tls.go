package server

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/beacon-go/beacon/internal/tlsconn"
	"github.com/beacon-go/beacon/internal/wire"
	"github.com/beacon-go/beacon/registry"
)

// TLS on Beacon's port: with server.TLS every connection starts with a TLS
// handshake, run in the connection's own goroutine (never in the accept
// loop) and bounded by the frame timeout (DefaultFrameTimeout when that is
// off); Beacon's wire, or HTTP (then HTTPS, HTTP/1.1 or h2, told apart by
// their first bytes as in plaintext), runs inside it. The node publishes
// registry.MetaTLS = "true", so that clients without TLS skip it and TLS
// clients call it.
//
// A connection that does not start with a TLS handshake is told why, in a
// form its sender reads, and closed: a plaintext Beacon client gets a
// response frame with status wire.StatusTLSRequired, which Beacon's client
// reports as client.ErrTLSRequired; a plain HTTP request gets 400 "Client
// sent an HTTP request to an HTTPS server". Failed handshakes (port probes,
// clients without an accepted certificate, plaintext peers) are logged at
// debug level. The connection is then closed gracefully (the server stops
// sending and reads what the peer still sends, for at most a quarter of a
// second), so that the peer reads the reason (a TLS alert such as
// "certificate required") rather than a reset.
//
// Certificates: the config decides (tlsconfig.Files.Server reloads the
// files when they change). A config without NextProtos and without
// GetConfigForClient gets "h2" and "http/1.1" for HTTPS clients; Beacon's
// client offers no ALPN.

// TLS makes the server accept TLS connections only, with cfg (nil: plain
// TCP, the default). cfg must provide a certificate (Certificates,
// GetCertificate or GetConfigForClient); with ClientAuth
// tls.RequireAndVerifyClientCert and ClientCAs (tlsconfig.Files with CA and
// ClientAuth) clients must present a certificate the CA signed: mutual TLS.
// See the TLS section of the package's files for what happens on the
// connection.
func TLS(cfg *tls.Config) Option { return func(o *options) { o.tls = cfg } }

// ErrTLSConfig: the TLS config given to server.TLS cannot serve.
var ErrTLSConfig = errors.New("server: TLS config without a certificate")

// tlsConfig lets options name the config without importing crypto/tls.
type tlsConfig = tls.Config

// lingerTimeout bounds the graceful close of a connection refused before
// the wire started.
const lingerTimeout = 250 * time.Millisecond

// checkTLS checks and completes the TLS config in New.
func checkTLS(o *options) error {
	cfg := o.tls
	if cfg == nil {
		return nil
	}
	if len(cfg.Certificates) == 0 && cfg.GetCertificate == nil && cfg.GetConfigForClient == nil {
		return fmt.Errorf("%w: set Certificates or GetCertificate (tlsconfig.Files.Server does)", ErrTLSConfig)
	}
	if len(cfg.NextProtos) == 0 && cfg.GetConfigForClient == nil && !o.noHTTP {
		cfg = cfg.Clone()
		cfg.NextProtos = []string{"h2", "http/1.1"}
		o.tls = cfg
	}
	return nil
}

// advertiseTLS adds registry.MetaTLS to the node's metadata.
func (s *Server) advertiseTLS(md map[string]string) {
	if s.o.tls != nil {
		md[registry.MetaTLS] = "true"
	}
}

// secure wraps an accepted connection in TLS when the server has it; no I/O
// happens here (the accept loop must not wait for a peer).
func (s *Server) secure(nc net.Conn) net.Conn {
	if s.o.tls == nil {
		return nc
	}
	return tlsconn.Server(nc, s.o.tls)
}

// handshake runs the TLS handshake of a TLS connection, in its own
// goroutine, bounded by the frame timeout. It reports whether the
// connection may serve; when not, it has been closed.
func (c *conn) handshake() bool {
	tc, ok := c.nc.(*tlsconn.Conn)
	if !ok {
		return true
	}
	log := c.s.o.log
	limit := c.s.o.frameTimeout
	if limit <= 0 {
		limit = DefaultFrameTimeout
	}
	deadline := time.Now().Add(limit)
	first, err := tc.Sniff(deadline)
	if err != nil {
		if !c.closed.Load() && !errors.Is(err, io.EOF) {
			log.Debug("server: connection closed before a TLS handshake", "remote", c.nc.RemoteAddr(), "err", err)
		}
		return false
	}
	if first[0] != 0x16 { // not a TLS handshake record
		c.refusePlaintext(tc, first)
		return false
	}
	if err := tc.Handshake(deadline); err != nil {
		if !c.closed.Load() {
			log.Debug("server: TLS handshake failed", "remote", c.nc.RemoteAddr(), "err", err)
			linger(tc.Raw())
		}
		return false
	}
	return true
}

// refusePlaintext tells a peer that spoke plaintext to a TLS node why it is
// closed, and closes the connection.
func (c *conn) refusePlaintext(tc *tlsconn.Conn, first []byte) {
	raw := tc.Raw()
	var reply []byte
	what := "unknown protocol"
	switch {
	case len(first) <= len(wire.Preface) && wire.Preface[:len(first)] == string(first),
		len(first) > len(wire.Preface) && string(first[:len(wire.Preface)]) == wire.Preface:
		what = "plaintext Beacon client"
		reply = wire.AppendResponse(nil, 0, wire.StatusTLSRequired, wire.FlagNotRun, "",
			"the node requires TLS (it advertises registry.MetaTLS): the client needs a TLS config (client.TLS; flags --tls_ca, --tls_cert, --tls_key)", nil, nil)
	case looksHTTP(first):
		what = "plain HTTP request"
		reply = []byte("HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
	}
	c.s.o.log.Debug("server: plaintext connection to a TLS node closed", "remote", c.nc.RemoteAddr(), "what", what)
	if reply != nil {
		_ = raw.SetWriteDeadline(time.Now().Add(lingerTimeout))
		_, _ = raw.Write(reply)
	}
	linger(raw)
}

// linger closes nc gracefully: it stops sending, then reads and drops what
// the peer still sends until it closes or lingerTimeout passes, so that the
// peer gets the last bytes sent (a reason, a TLS alert) instead of a reset.
func linger(nc net.Conn) {
	defer nc.Close()
	cw, ok := nc.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		return
	}
	_ = nc.SetReadDeadline(time.Now().Add(lingerTimeout))
	_, _ = io.Copy(io.Discard, io.LimitReader(nc, 256<<10))
}
