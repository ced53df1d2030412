package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/beacon-go/beacon/internal/wire"
)

// TransportError is a failure to get a response from a node: dial refused,
// connection reset, no response before the attempt's timeout, or a node
// that answered 503, refusing the request without running it (shutting
// down or overloaded). The client retries
// these on another node; it never retries an error returned by a handler.
type TransportError struct {
	Addr string
	Op   string // "dial", "write", "read", "timeout", "unavailable"
	Err  error
}

func (e *TransportError) Error() string { return fmt.Sprintf("%s %s: %v", e.Op, e.Addr, e.Err) }
func (e *TransportError) Unwrap() error { return e.Err }

// ErrNotRun: the node refused the request without running it (status 503:
// it is shutting down or overloaded); the request is safe to retry.
var ErrNotRun = errors.New("request refused without running")

// errConnGone: the connection was closed or told to go away before the
// request was sent.
var errConnGone = errors.New("connection closing")

// call is one request in flight; pooled.
type call struct {
	ch     chan struct{}
	status uint16
	detail string
	ctype  string
	body   []byte
	err    error
	timer  *time.Timer
}

func newCall() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &call{ch: make(chan struct{}, 1), timer: t}
}

func newBuf() any { b := make([]byte, 0, 1024); return &b }

// pools are a client's free lists of calls and byte buffers.
type pools struct {
	calls sync.Pool
	bufs  sync.Pool
}

func (p *pools) init() {
	p.calls.New = newCall
	p.bufs.New = newBuf
}

func (p *pools) getCall() *call { return p.calls.Get().(*call) }

func (p *pools) putCall(cl *call) {
	if cap(cl.body) > 64<<10 {
		cl.body = nil
	}
	cl.body = cl.body[:0]
	cl.status, cl.detail, cl.ctype, cl.err = 0, "", "", nil
	p.calls.Put(cl)
}

func (p *pools) getBuf() *[]byte { return p.bufs.Get().(*[]byte) }

func (p *pools) putBuf(b *[]byte) {
	if cap(*b) > 64<<10 {
		return
	}
	*b = (*b)[:0]
	p.bufs.Put(b)
}

// conn is one multiplexed connection to a node.
type conn struct {
	p    *pool
	nc   net.Conn
	w    *wire.Writer
	load atomic.Int32 // requests in flight

	mu      sync.Mutex
	pending map[uint64]*call
	nextID  uint64
	err     error // set once the connection is unusable
	goaway  bool
	done    chan struct{}
}

func newConn(p *pool, nc net.Conn) *conn {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	c := &conn{p: p, nc: nc, w: wire.NewWriter(nc), pending: map[uint64]*call{}, done: make(chan struct{})}
	p.c.wg.Add(1)
	go c.read()
	return c
}

// usable reports whether new requests may be sent.
func (c *conn) usable() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err == nil && !c.goaway
}

// roundTrip sends one request and waits for its response, ctx's end, or the
// deadline (zero: none). On success the response is in cl.
func (c *conn) roundTrip(ctx context.Context, cl *call, deadline time.Time, endpoint, ctype string, body []byte) error {
	c.mu.Lock()
	if c.err != nil || c.goaway {
		c.mu.Unlock()
		return &TransportError{Addr: c.p.addr, Op: "write", Err: errConnGone}
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = cl
	c.mu.Unlock()
	c.load.Add(1)
	defer c.load.Add(-1)

	var timeout time.Duration
	if !deadline.IsZero() {
		if timeout = time.Until(deadline); timeout <= 0 {
			c.forget(id, cl)
			return &TransportError{Addr: c.p.addr, Op: "timeout", Err: context.DeadlineExceeded}
		}
	}
	frame := c.p.c.free.getBuf()
	var err error
	*frame, err = wire.AppendRequest(*frame, id, endpoint, ctype, timeout, body)
	if err == nil {
		err = c.write(*frame)
	}
	c.p.c.free.putBuf(frame)
	if err != nil {
		c.forget(id, cl)
		return &TransportError{Addr: c.p.addr, Op: "write", Err: err}
	}

	var timerC <-chan time.Time
	if timeout > 0 {
		cl.timer.Reset(timeout)
		timerC = cl.timer.C
	}
	select {
	case <-cl.ch:
		if timerC != nil {
			cl.timer.Stop()
		}
		if cl.err != nil {
			return &TransportError{Addr: c.p.addr, Op: "read", Err: cl.err}
		}
		return nil
	case <-ctx.Done():
		if timerC != nil {
			cl.timer.Stop()
		}
		c.forget(id, cl)
		return ctx.Err()
	case <-timerC:
		c.forget(id, cl)
		return &TransportError{Addr: c.p.addr, Op: "timeout", Err: context.DeadlineExceeded}
	}
}

// forget abandons a pending call; when the reader already took it, wait for
// its (imminent) delivery so that cl can be reused.
func (c *conn) forget(id uint64, cl *call) {
	c.mu.Lock()
	_, ok := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if !ok {
		<-cl.ch
	}
}

// write sends one frame; a failure makes the connection unusable.
func (c *conn) write(frame []byte) error {
	err := c.w.Write(frame)
	if err != nil {
		c.fail(err)
	}
	return err
}

func (c *conn) read() {
	defer c.p.c.wg.Done()
	defer close(c.done)
	r := wire.NewReader(c.nc, c.p.c.o.maxMessage)
	var f wire.Frame
	for {
		if err := r.Next(&f); err != nil {
			c.fail(err)
			return
		}
		switch f.Kind {
		case wire.KindResponse:
			c.mu.Lock()
			cl := c.pending[f.ID]
			delete(c.pending, f.ID)
			idle := c.goaway && len(c.pending) == 0
			c.mu.Unlock()
			if cl != nil {
				cl.status = f.Status
				if len(f.Detail) > 0 {
					cl.detail = string(f.Detail)
				}
				if len(f.ContentType) > 0 {
					cl.ctype = string(f.ContentType)
				}
				cl.body = append(cl.body[:0], f.Body...)
				cl.ch <- struct{}{}
			}
			if idle {
				c.fail(errConnGone)
			}
		case wire.KindGoAway:
			c.mu.Lock()
			c.goaway = true
			idle := len(c.pending) == 0
			c.mu.Unlock()
			c.p.remove(c)
			if idle {
				c.fail(errConnGone)
			}
		}
	}
}

// fail makes the connection unusable, fails its pending calls and closes it.
func (c *conn) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	pending := c.pending
	c.pending = map[uint64]*call{}
	c.mu.Unlock()
	c.nc.Close()
	c.p.remove(c)
	for _, cl := range pending {
		cl.err = err
		cl.ch <- struct{}{}
	}
}

// pool holds the connections to one address.
type pool struct {
	c      *Client
	addr   string
	mu     sync.Mutex
	conns  []*conn
	dead   bool // dropped from the client's map: take no new connection
	dialMu sync.Mutex
	rr     atomic.Uint32
}

// get returns a usable connection, dialing when there is none or when every
// connection is busy and the pool is below its size.
func (p *pool) get(ctx context.Context) (*conn, error) {
	p.mu.Lock()
	var best *conn
	n := len(p.conns)
	if n > 0 {
		start := int(p.rr.Add(1)) % n
		for k := range n {
			c := p.conns[(start+k)%n]
			if best == nil || c.load.Load() < best.load.Load() {
				best = c
			}
		}
	}
	p.mu.Unlock()
	if best != nil && (best.load.Load() == 0 || n >= p.c.o.connsPerNode) {
		return best, nil
	}
	if best != nil && !p.dialMu.TryLock() {
		return best, nil // someone is already dialing; share an existing connection
	}
	if best == nil {
		p.dialMu.Lock()
		// Another caller may have dialed while we waited.
		p.mu.Lock()
		if len(p.conns) > 0 {
			c := p.conns[0]
			p.mu.Unlock()
			p.dialMu.Unlock()
			return c, nil
		}
		dead := p.dead
		p.mu.Unlock()
		if dead {
			p.dialMu.Unlock()
			return p.again(ctx)
		}
	}
	d := net.Dialer{Timeout: p.c.o.dialTimeout, KeepAlive: 15 * time.Second}
	nc, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		p.dialMu.Unlock()
		if best != nil {
			return best, nil
		}
		p.c.dropIfEmpty(p) // a node that is gone leaves no pool behind
		return nil, &TransportError{Addr: p.addr, Op: "dial", Err: err}
	}
	c := newConn(p, nc)
	p.mu.Lock()
	if p.c.closed.Load() || p.dead {
		closed := p.c.closed.Load()
		p.mu.Unlock()
		p.dialMu.Unlock()
		c.fail(errConnGone)
		<-c.done
		if closed {
			return nil, &TransportError{Addr: p.addr, Op: "dial", Err: ErrClosed}
		}
		return p.again(ctx)
	}
	p.conns = append(p.conns, c)
	p.mu.Unlock()
	p.dialMu.Unlock()
	return c, nil
}

// again gets a connection from the pool that now stands for p's address
// (p was dropped while this caller held it).
func (p *pool) again(ctx context.Context) (*conn, error) {
	np := p.c.pool(p.addr)
	if np == nil {
		return nil, &TransportError{Addr: p.addr, Op: "dial", Err: ErrClosed}
	}
	return np.get(ctx)
}

// remove forgets c; a pool left without connections is dropped from the
// client, so addresses of nodes that left do not accumulate.
func (p *pool) remove(c *conn) {
	p.mu.Lock()
	for i, x := range p.conns {
		if x == c {
			p.conns = append(p.conns[:i], p.conns[i+1:]...)
			break
		}
	}
	empty := len(p.conns) == 0
	p.mu.Unlock()
	if empty {
		p.c.dropIfEmpty(p)
	}
}

func (p *pool) closeAll() {
	p.mu.Lock()
	conns := append([]*conn(nil), p.conns...)
	p.mu.Unlock()
	for _, c := range conns {
		c.fail(ErrClosed)
	}
}
