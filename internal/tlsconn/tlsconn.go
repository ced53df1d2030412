// Package tlsconn carries Beacon's wire over crypto/tls.
//
// A *tls.Conn cannot resume a write that a deadline cut short (the record is
// lost and the connection with it), while Beacon's writers (wire.Writer,
// wire.Writer) set short deadlines only to check their bounds (a caller's
// cancel, a stall timeout) and resume. Conn therefore takes the bounds
// itself (wire.BoundedWriter) and applies them beneath TLS, on the TCP
// connection, where a cut-short write resumes (wire.Stream): a write still
// fails, and the connection with it, exactly when a plaintext one would.
//
// Conn also replays bytes read before the handshake (a server sniffs the
// first bytes to tell TLS from plaintext), refuses bounded writes before its
// handshake completed (so that a goroutine telling a connection to go away
// never waits for another's handshake), and closes at once, without a
// close_notify alert that could wait on a peer that does not read (frames
// are length-prefixed: a truncation is always detected).
package tlsconn

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/beacon-go/beacon/internal/wire"
)

// ErrNotReady: a bounded write before the TLS handshake completed.
var ErrNotReady = errors.New("tls: handshake not complete")

// Conn is a TLS connection for Beacon's wire. See the package doc.
type Conn struct {
	*tls.Conn
	raw   *rawConn
	ready atomic.Bool // the handshake completed
}

// Client returns a client Conn on nc; nothing happens until Handshake.
func Client(nc net.Conn, cfg *tls.Config) *Conn {
	r := newRaw(nc)
	return &Conn{Conn: tls.Client(r, cfg), raw: r}
}

// Server returns a server Conn on nc; nothing happens until Sniff or
// Handshake.
func Server(nc net.Conn, cfg *tls.Config) *Conn {
	r := newRaw(nc)
	return &Conn{Conn: tls.Server(r, cfg), raw: r}
}

// Raw returns the connection beneath TLS.
func (c *Conn) Raw() net.Conn { return c.raw.Conn }

// Sniff reads the first bytes the peer sent (at least one, as many as
// arrived, up to 512) before deadline, without consuming them: the
// handshake reads them again. It must be called before Handshake, once.
func (c *Conn) Sniff(deadline time.Time) ([]byte, error) {
	if err := c.raw.Conn.SetReadDeadline(deadline); err != nil {
		return nil, err
	}
	buf := make([]byte, 512)
	n, err := c.raw.Conn.Read(buf)
	_ = c.raw.Conn.SetReadDeadline(time.Time{})
	c.raw.pre = buf[:n]
	if n > 0 {
		err = nil
	}
	return c.raw.pre, err
}

// Handshake runs the TLS handshake, bounded by deadline (zero: none; then
// only closing the connection ends it). The connection's deadlines are
// cleared afterwards.
func (c *Conn) Handshake(deadline time.Time) error {
	if err := c.SetDeadline(deadline); err != nil {
		return err
	}
	// A context without Done: no goroutine watches it; the deadline bounds
	// the handshake.
	if err := c.HandshakeContext(context.Background()); err != nil {
		return err
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		return err
	}
	c.ready.Store(true)
	return nil
}

// WriteBounded writes p within the bounds (wire.BoundedWriter), applied
// beneath TLS. It fails with ErrNotReady before the handshake completed.
func (c *Conn) WriteBounded(p []byte, deadline time.Time, stall time.Duration, done <-chan struct{}) (int, error) {
	if !c.ready.Load() {
		return 0, ErrNotReady
	}
	c.raw.bound(deadline, stall, done)
	n, err := c.Conn.Write(p)
	c.raw.bound(time.Time{}, 0, nil)
	return n, err
}

// Close closes the connection at once, without a close_notify alert.
func (c *Conn) Close() error { return c.raw.Conn.Close() }

// rawConn is the TCP connection beneath TLS: it replays sniffed bytes and,
// during a bounded write, writes within the bounds.
type rawConn struct {
	net.Conn
	pre []byte // sniffed bytes, read first (by TLS's reader alone)

	mu       sync.Mutex // guards the fields below
	bounded  bool
	deadline time.Time
	stall    time.Duration
	done     <-chan struct{}
	st       *wire.Stream
	left     bool // bounded writes may have left a deadline

	// dirty: a deadline was set by another party (the handshake, the HTTP
	// server) since the stream set its own.
	dirty atomic.Bool
}

func newRaw(nc net.Conn) *rawConn { return &rawConn{Conn: nc, st: wire.NewStream(nc)} }

func (r *rawConn) bound(deadline time.Time, stall time.Duration, done <-chan struct{}) {
	r.mu.Lock()
	r.bounded = !deadline.IsZero() || stall > 0 || done != nil
	r.deadline, r.stall, r.done = deadline, stall, done
	r.mu.Unlock()
}

func (r *rawConn) Read(p []byte) (int, error) {
	if len(r.pre) > 0 {
		n := copy(p, r.pre)
		if r.pre = r.pre[n:]; len(r.pre) == 0 {
			r.pre = nil
		}
		return n, nil
	}
	return r.Conn.Read(p)
}

// Write writes a record. TLS writes one record at a time (its own lock), so
// a bounded write and another never overlap here.
func (r *rawConn) Write(p []byte) (int, error) {
	r.mu.Lock()
	if !r.bounded {
		if r.left && !r.dirty.Load() {
			// A write TLS makes on its own (an alert) after bounded ones:
			// not bounded by a deadline left for them.
			_ = r.SetWriteDeadline(time.Time{})
		}
		r.left = false
		r.mu.Unlock()
		return r.Conn.Write(p) // whatever deadline its setter chose
	}
	defer r.mu.Unlock()
	if r.dirty.Swap(false) {
		r.st.Forget()
	}
	r.left = true
	return r.st.Write(p, r.deadline, r.stall, r.done)
}

func (r *rawConn) SetDeadline(t time.Time) error {
	r.dirty.Store(true)
	return r.Conn.SetDeadline(t)
}

func (r *rawConn) SetWriteDeadline(t time.Time) error {
	r.dirty.Store(true)
	return r.Conn.SetWriteDeadline(t)
}
