package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/beacon-go/beacon/internal/tlsconn"
	"github.com/beacon-go/beacon/internal/wire"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/tlsconfig"
)

// ErrTLSRequired: the node serves TLS only (it advertises registry.MetaTLS,
// or answered so) and the client has no TLS config (TLS); nothing was sent
// (the error also matches ErrNotRun).
var ErrTLSRequired = errors.New("client: node requires TLS")

// ErrPlaintextNode: a client with a TLS config selected only nodes that do
// not advertise TLS (registry.MetaTLS), and does not call them in plaintext
// without AllowPlaintext; nothing was sent (the error also matches
// ErrNotRun).
var ErrPlaintextNode = errors.New("client: node does not advertise TLS")

// TLS makes the client speak TLS with cfg (nil: plaintext, the default).
//
// Each new connection does its TLS handshake after the dial, within the dial
// timeout, in the dial's goroutine (callers wait for it as for the dial).
// When cfg names no server (ServerName), the host of the address dialled is
// the name verified: nodes are dialled at IP literals, so their certificates
// need IP SANs (tlsconfig.ForHost). A failed handshake fails the attempt
// with a *TransportError whose Op is "dial" and NotRun true (retried on
// another node like any dial failure), and whose error says what happened:
// "tls: failed to verify certificate: x509: certificate signed by unknown
// authority" when the node's certificate is not trusted, "remote error: tls:
// certificate required" when a node requiring mutual TLS got no client
// certificate, "remote error: tls: unknown certificate authority" when it
// does not trust the one it got.
//
// Selection: nodes that do not advertise registry.MetaTLS = "true" are
// skipped (a stale or forged plaintext record must not make a TLS client
// send in plaintext), with ErrPlaintextNode when no other node is left,
// unless AllowPlaintext. Calls by address (WithAddress) use TLS, except to
// an address that selection found advertised without TLS under
// AllowPlaintext. A client without TLS skips nodes advertising TLS, with
// ErrTLSRequired when no other node is left.
func TLS(cfg *tls.Config) Option {
	return func(o *options) {
		if o.tls == nil {
			o.tls = &tlsSetup{}
		}
		o.tls.cfg = cfg
	}
}

// AllowPlaintext lets a client with a TLS config call, in plaintext, the
// nodes that do not advertise TLS (registry.MetaTLS), for a service whose
// nodes move to TLS one by one. Nodes that advertise TLS are still called
// with TLS only. Without a TLS config it changes nothing.
func AllowPlaintext() Option {
	return func(o *options) {
		if o.tls == nil {
			o.tls = &tlsSetup{}
		}
		o.tls.allowPlain = true
	}
}

// maxPlain bounds the addresses remembered as plaintext under
// AllowPlaintext: past it the set starts over (selection fills it again).
const maxPlain = 4096

// tlsSetup is a client's TLS: its config, and under AllowPlaintext the
// addresses of nodes selected without TLS. A nil *tlsSetup is a client
// without TLS.
type tlsSetup struct {
	cfg        *tls.Config
	allowPlain bool

	mu    sync.Mutex
	plain map[string]struct{}
}

func (t *tlsSetup) on() bool { return t != nil && t.cfg != nil }

// admit tells whether the client may call node n: a client without TLS
// skips nodes that serve TLS, one with TLS skips nodes that do not
// advertise it unless AllowPlaintext (then they are called in plaintext).
func (t *tlsSetup) admit(n *registry.Node) error {
	secure := n.Metadata[registry.MetaTLS] == "true"
	switch {
	case !t.on() && secure:
		return fmt.Errorf("%w (%w): node %s at %s advertises %s=true and this client has no TLS config (client.TLS; flags --tls_ca, --tls_cert, --tls_key)",
			ErrTLSRequired, ErrNotRun, n.ID, n.Address, registry.MetaTLS)
	case !t.on():
		return nil
	case !secure && !t.allowPlain:
		return fmt.Errorf("%w (%w): node %s at %s does not advertise %s=true; a TLS client calls it in plaintext only with client.AllowPlaintext",
			ErrPlaintextNode, ErrNotRun, n.ID, n.Address, registry.MetaTLS)
	}
	if t.allowPlain {
		t.mu.Lock()
		if secure {
			delete(t.plain, n.Address)
		} else {
			if t.plain == nil || len(t.plain) >= maxPlain {
				t.plain = map[string]struct{}{}
			}
			t.plain[n.Address] = struct{}{}
		}
		t.mu.Unlock()
	}
	return nil
}

// plaintext reports whether addr is called without TLS.
func (t *tlsSetup) plaintext(addr string) bool {
	if !t.on() {
		return true
	}
	if !t.allowPlain {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.plain[addr]
	return ok
}

// client runs the TLS handshake on a new connection to addr, within ctx,
// when the client speaks TLS to addr; else it returns nc. On failure nc is
// closed.
func (t *tlsSetup) client(ctx context.Context, nc net.Conn, addr string) (net.Conn, error) {
	if t.plaintext(addr) {
		return nc, nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	tc := tlsconn.Client(nc, tlsconfig.ForHost(t.cfg, host))
	deadline, _ := ctx.Deadline()
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	err = tc.Handshake(deadline)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err != nil {
		nc.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("tls handshake: %w", ctx.Err())
		}
		return nil, explainTLS(err)
	}
	return tc, nil
}

// explainTLS makes a handshake error say what went on.
func explainTLS(err error) error {
	var op *net.OpError
	switch {
	case errors.As(err, &op) && op.Op == "remote error":
		return refusedTLS(err)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET):
		return fmt.Errorf("tls handshake: %w (the node closed the connection: it may not serve TLS, or be at its connection limit)", err)
	}
	return fmt.Errorf("tls handshake: %w", err)
}

// explain makes the error of a connection's setup (after the dial) say what
// went on: a TLS-only node's plaintext answer becomes ErrTLSRequired, a TLS
// alert (a node requiring a client certificate refuses the session after
// the client's side of a TLS 1.3 handshake completed) says so.
func (t *tlsSetup) explain(addr string, err error, f *wire.Frame) error {
	var op *net.OpError
	switch {
	case errors.Is(err, wire.ErrMalformed) && f.Kind == wire.KindResponse && f.Status == wire.StatusTLSRequired && f.Flags&wire.FlagNotRun != 0:
		return fmt.Errorf("%w: the node at %s says: %s", ErrTLSRequired, addr, f.Detail)
	case t.on() && errors.As(err, &op) && op.Op == "remote error":
		return refusedTLS(err)
	}
	return err
}

// refusedTLS explains a TLS alert from the node.
func refusedTLS(err error) error {
	if strings.Contains(err.Error(), "certificate required") {
		return fmt.Errorf("the node refused the TLS session: %w (it requires a client certificate: client.TLS with one; flags --tls_cert, --tls_key)", err)
	}
	return fmt.Errorf("the node refused the TLS session: %w", err)
}
