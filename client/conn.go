package client

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/beacon-go/beacon/internal/wire"
	"github.com/beacon-go/beacon/metadata"
	"github.com/beacon-go/beacon/status"
	"github.com/beacon-go/beacon/transport"
)

// TransportError is a failure to get a response from a node (see
// transport.Error): the dial failed, the connection broke, no response came
// before the attempt's deadline, or the node refused the request without
// running it. NotRun tells whether the request provably did not run: only
// then is it retried on another node, unless the call is idempotent.
type TransportError = transport.Error

// ErrNotRun: the request provably did not run on the node (the dial failed,
// nothing of it was sent, or the node refused it without running it); it is
// safe to retry anywhere. errors.Is finds it in a call's error.
var ErrNotRun = transport.ErrNotRun

// ErrRefused: the node refused the request without running it (it is
// shutting down, or over its concurrency bounds).
var ErrRefused = transport.ErrRefused

// errConnGone: the connection was closed or told to go away before the
// request was sent.
var errConnGone = errors.New("connection closing")

// errNoResponse: the attempt's deadline passed after the request was sent.
var errNoResponse = errors.New("no response before the deadline")

// call is one request in flight; pooled. The reader fills rsp.
type call struct {
	ch          chan struct{}
	rsp         *transport.Response
	contentType string             // the request's (the response's is likely the same)
	scratch     transport.Response // a ping's response
	err         error
	timer       *time.Timer
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
	cl.rsp, cl.err, cl.contentType = nil, nil, ""
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

// wireCaller is the transport.Caller of Beacon's wire (internal/wire):
// per node address a pool of multiplexed connections.
type wireCaller struct {
	o      *options
	pools  atomic.Pointer[map[string]*pool] // copy on write
	mu     sync.Mutex
	wg     sync.WaitGroup
	closed atomic.Bool
	ctx    context.Context // ends with Close: bounds dials
	cancel context.CancelFunc
	free   pools
}

func newWireCaller(o *options) *wireCaller {
	w := &wireCaller{o: o}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	w.free.init()
	m := map[string]*pool{}
	w.pools.Store(&m)
	return w
}

// Call implements transport.Caller: one request to addr, bounded by ctx and
// req.Deadline.
func (w *wireCaller) Call(ctx context.Context, addr string, req *transport.Request, rsp *transport.Response) error {
	p := w.pool(addr)
	if p == nil {
		return &TransportError{Addr: addr, Op: "dial", NotRun: true, Err: ErrClosed}
	}
	cl := w.free.getCall()
	defer w.free.putCall(cl)
	var expired <-chan time.Time
	var timeout time.Duration
	if !req.Deadline.IsZero() {
		if timeout = time.Until(req.Deadline); timeout <= 0 {
			return &TransportError{Addr: addr, Op: "timeout", NotRun: true, Err: context.DeadlineExceeded}
		}
		cl.timer.Reset(timeout)
		defer cl.timer.Stop()
		expired = cl.timer.C
	}
	cn, err := p.get(ctx, expired)
	if err != nil {
		return err
	}
	cl.rsp, cl.contentType = rsp, req.ContentType
	return cn.exchange(ctx, cl, req.Deadline, timeout, expired, false, req)
}

// Ping implements transport.Pinger.
func (w *wireCaller) Ping(ctx context.Context, addr string) error {
	p := w.pool(addr)
	if p == nil {
		return ErrClosed
	}
	deadline, _ := ctx.Deadline()
	cl := w.free.getCall()
	defer w.free.putCall(cl)
	var expired <-chan time.Time
	if !deadline.IsZero() {
		cl.timer.Reset(time.Until(deadline))
		defer cl.timer.Stop()
		expired = cl.timer.C
	}
	cn, err := p.get(ctx, expired)
	if err != nil {
		return err
	}
	cl.rsp = &cl.scratch
	return cn.exchange(ctx, cl, deadline, 0, expired, true, nil)
}

// Connecting implements transport.DialState.
func (w *wireCaller) Connecting(addr string) bool {
	pl, ok := (*w.pools.Load())[addr]
	return ok && pl.connecting()
}

func (w *wireCaller) pool(addr string) *pool {
	if p, ok := (*w.pools.Load())[addr]; ok {
		return p
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed.Load() {
		return nil
	}
	old := *w.pools.Load()
	if p, ok := old[addr]; ok {
		return p
	}
	p := &pool{c: w, addr: addr}
	m := maps.Clone(old)
	m[addr] = p
	w.pools.Store(&m)
	return p
}

// dropIfEmpty removes p from the pool map when it has no connection; a
// caller still holding p then moves to a new pool (see pool.again).
func (w *wireCaller) dropIfEmpty(p *pool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dead || len(p.conns) > 0 || p.dialing != nil {
		return
	}
	p.dead = true
	old := *w.pools.Load()
	if old[p.addr] != p {
		return
	}
	m := maps.Clone(old)
	delete(m, p.addr)
	w.pools.Store(&m)
}

// goTracked runs f in a goroutine that Close waits for.
func (w *wireCaller) goTracked(f func()) {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		f()
	}()
}

// Close closes every connection and waits for the caller's goroutines.
func (w *wireCaller) Close() error {
	w.mu.Lock()
	if w.closed.Swap(true) {
		w.mu.Unlock()
		return nil
	}
	pools := *w.pools.Load()
	w.mu.Unlock()
	w.cancel()
	for _, p := range pools {
		p.closeAll()
	}
	w.wg.Wait()
	return nil
}

// conn is one multiplexed connection to a node.
type conn struct {
	p          *pool
	nc         net.Conn
	w          *wire.Writer
	load       atomic.Int32 // requests in flight (reserved by pool.get)
	maxStreams atomic.Int32 // the server's advertised limit
	maxFrame   atomic.Int64 // the largest request frame the server accepts
	batch      atomic.Int32 // responses the last read delivered together

	mu         sync.Mutex
	pending    map[uint64]*call
	nextID     uint64
	err        error // set once the connection is unusable
	goaway     bool
	sentAtFail int64 // bytes that had left when the connection failed
	done       chan struct{}
}

// handshake dials addr and reads the server's Settings, all within ctx.
func (p *pool) handshake(ctx context.Context) (*conn, error) {
	nc, err := p.c.o.dial(ctx, "tcp", p.addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	if nc, err = p.c.o.tls.client(ctx, nc, p.addr); err != nil { // TLS (tls.go)
		return nil, err
	}
	if d, ok := ctx.Deadline(); ok {
		_ = nc.SetDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	r := wire.NewReader(nc, p.c.o.maxMessage)
	var f wire.Frame
	_, err = nc.Write([]byte(wire.Preface))
	if err == nil {
		err = r.Next(&f)
	}
	switch {
	case err != nil:
	case f.Kind == wire.KindGoAway:
		err = fmt.Errorf("%w: the server refused the connection (at its connection limit, or going away)", ErrRefused)
	case f.Kind != wire.KindSettings:
		err = fmt.Errorf("%w: the server did not start with its settings", wire.ErrMalformed)
	}
	if err == nil && !stop() {
		err = ctx.Err()
	}
	if err != nil {
		nc.Close()
		return nil, p.c.o.tls.explain(p.addr, err, &f)
	}
	_ = nc.SetDeadline(time.Time{})
	c := &conn{p: p, nc: nc, w: wire.NewWriter(nc, p.c.o.writeStall, 0), pending: map[uint64]*call{}, done: make(chan struct{})}
	c.apply(f.Settings)
	p.c.wg.Add(1)
	go c.read(r)
	return c, nil
}

func (c *conn) apply(s wire.Settings) {
	c.maxStreams.Store(int32(min(max(s.MaxStreams, 1), 1<<20)))
	c.maxFrame.Store(int64(max(s.MaxFrame, 1024)))
}

// reserve takes one of the connection's stream slots.
func (c *conn) reserve() bool {
	for {
		l := c.load.Load()
		if l >= c.maxStreams.Load() {
			return false
		}
		if c.load.CompareAndSwap(l, l+1) {
			return true
		}
	}
}

// release returns a stream slot taken by pool.get.
func (c *conn) release() {
	c.load.Add(-1)
	c.p.freed()
}

// exchange sends one request (or a ping: req nil) and waits for its
// response, ctx's end, or the attempt's deadline (expired fires then).
// timeout is the time left before the deadline when the caller looked (the
// request carries it; 0 with a deadline: read the clock here). On success
// the response is in cl.rsp. Every error says whether the request provably
// did not run.
func (c *conn) exchange(ctx context.Context, cl *call, deadline time.Time, timeout time.Duration, expired <-chan time.Time, ping bool, req *transport.Request) error {
	defer c.release()
	if n := 0; !ping {
		if n = wire.RequestSize(req.Endpoint, req.ContentType, req.Metadata, len(req.Body)) - 4; int64(n) > c.maxFrame.Load() {
			return &status.Error{Code: status.TooLarge, Detail: fmt.Sprintf("request of %d bytes is larger than the limit of %d bytes of the node at %s; not sent", n, c.maxFrame.Load(), c.p.addr)}
		}
	}
	c.mu.Lock()
	if c.err != nil || c.goaway {
		c.mu.Unlock()
		return &TransportError{Addr: c.p.addr, Op: "write", NotRun: true, Err: errConnGone}
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = cl
	c.mu.Unlock()

	if !deadline.IsZero() && timeout <= 0 {
		if timeout = time.Until(deadline); timeout <= 0 {
			c.forget(id, cl)
			return &TransportError{Addr: c.p.addr, Op: "timeout", NotRun: true, Err: context.DeadlineExceeded}
		}
	}
	frame := c.p.c.free.getBuf()
	var err error
	var end int64
	if ping {
		*frame = wire.AppendPing(*frame, id)
	} else {
		*frame, err = wire.AppendRequest(*frame, id, req.Endpoint, req.ContentType, timeout, req.Metadata, req.Body)
	}
	if err == nil {
		// Calls answered together are likely followed by calls sent
		// together: this caller waits (at most 30 µs) for as many others
		// as were answered with the last batch and are in flight, and one
		// write sends them all (wire.Writer.Write).
		expect := min(int(c.batch.Load()), int(c.load.Load())) - 1
		end, err = c.w.Write(*frame, deadline, ctx.Done(), expired, expect)
	}
	c.p.c.free.putBuf(frame)
	if err != nil {
		c.forget(id, cl)
		if !errors.Is(err, wire.ErrNotQueued) {
			c.fail(err) // the frame may have left in part: framing is lost
		}
		return &TransportError{Addr: c.p.addr, Op: "write", NotRun: end == 0 || end > c.w.Sent(), Err: err}
	}

	select {
	case <-cl.ch:
		if cl.err != nil {
			c.mu.Lock()
			notRun := end > c.sentAtFail
			c.mu.Unlock()
			return &TransportError{Addr: c.p.addr, Op: "read", NotRun: notRun, Err: cl.err}
		}
		return nil
	case <-ctx.Done():
		c.abandon(id, cl, !ping)
		return ctx.Err()
	case <-expired:
		c.abandon(id, cl, !ping)
		return &TransportError{Addr: c.p.addr, Op: "timeout", Err: fmt.Errorf("%w (%v): %w", errNoResponse, timeout.Round(time.Millisecond), context.DeadlineExceeded)}
	}
}

// forget abandons a pending call; when the reader already took it, wait for
// its (imminent) delivery so that cl can be reused. It reports whether the
// call was still pending.
func (c *conn) forget(id uint64, cl *call) bool {
	c.mu.Lock()
	_, ok := c.pending[id]
	delete(c.pending, id)
	c.mu.Unlock()
	if !ok {
		<-cl.ch
	}
	return ok
}

// abandon forgets a call that was sent and tells the server to cancel its
// handler, in the background (the caller returns at once).
func (c *conn) abandon(id uint64, cl *call, cancel bool) {
	if !c.forget(id, cl) || !cancel {
		return // answered meanwhile, or the connection failed
	}
	c.p.c.goTracked(func() {
		t := time.NewTimer(time.Second)
		defer t.Stop()
		if _, err := c.w.Write(wire.AppendCancel(nil, id), time.Now().Add(time.Second), nil, t.C, 0); err != nil && !errors.Is(err, wire.ErrNotQueued) {
			c.fail(err)
		}
	})
}

func (c *conn) read(r *wire.Reader) {
	defer c.p.c.wg.Done()
	defer close(c.done)
	var f wire.Frame
	var tooLarge *wire.TooLargeError
	var batch int32
	for {
		if !r.HasFrame() && batch > 0 {
			c.batch.Store(batch) // the next Next waits for bytes: this batch is whole
			batch = 0
		}
		err := r.Next(&f)
		if err != nil && errors.As(err, &tooLarge) && tooLarge.Kind == wire.KindResponse {
			// The handler ran; its answer is dropped, the connection kept.
			f = wire.Frame{Kind: wire.KindResponse, ID: tooLarge.ID, Status: status.TooLarge}
			f.Detail = fmt.Appendf(nil, "response of %d bytes is larger than the client's limit of %d bytes (client.MaxMessageSize)", tooLarge.Size, tooLarge.Limit)
		} else if err != nil {
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
				r := cl.rsp
				r.Status, r.NotRun = int(f.Status), f.Flags&wire.FlagNotRun != 0
				r.Detail, r.ContentType = "", ""
				if len(f.Detail) > 0 {
					r.Detail = string(f.Detail)
				}
				switch {
				case len(f.ContentType) == 0:
				case string(f.ContentType) == cl.contentType: // the request's: no copy
					r.ContentType = cl.contentType
				default:
					r.ContentType = string(f.ContentType)
				}
				r.Metadata = metadata.MD(f.Meta.Map())
				r.Body = append(r.Body[:0], f.Body...)
				batch++
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
		case wire.KindSettings:
			c.apply(f.Settings)
		default:
			c.fail(fmt.Errorf("%w: unexpected frame kind %d from the server", wire.ErrMalformed, f.Kind))
			return
		}
	}
}

// fail makes the connection unusable, fails its pending calls and closes it.
// Each pending call learns from sentAtFail whether its request left whole.
func (c *conn) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	c.mu.Unlock()
	c.nc.Close()
	sent := c.w.Settle() // nothing more can leave: count what did
	c.mu.Lock()
	c.sentAtFail = sent
	pending := c.pending
	c.pending = map[uint64]*call{}
	c.mu.Unlock()
	c.p.remove(c)
	for _, cl := range pending {
		cl.err = err
		cl.ch <- struct{}{}
	}
}

// pool holds the connections to one address.
type pool struct {
	c       *wireCaller
	addr    string
	mu      sync.Mutex
	conns   []*conn
	dead    bool    // dropped from the client's map: take no new connection
	dialing *dialOp // the dial in progress, if any
	waitCh  chan struct{}
	waiters atomic.Int32 // callers waiting for a slot or a dial
	ready   atomic.Int32 // len(conns), readable without the lock
	rr      atomic.Uint32
}

// dialOp is one dial in progress; done closes when it ends.
type dialOp struct {
	done chan struct{}
	err  error
}

// connecting reports whether the pool has no connection yet and a dial is
// under way (the node may be unreachable: callers prefer other nodes).
func (p *pool) connecting() bool {
	if p.ready.Load() > 0 {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.dialing != nil && len(p.conns) == 0
}

// get returns a connection with a stream slot reserved for the caller (give
// it back with conn.release, which roundTrip does). It prefers the least
// loaded connection; it opens another one, in the background, when every
// connection is busy and the pool is below ConnsPerNode, or when every one
// is at the server's stream limit and the pool is below MaxConnsPerNode.
// It waits, for a dial or a freed slot, only until ctx ends or expired fires.
// The dial runs on its own, bounded by the dial timeout: a caller that gives
// up does not cancel it for the others.
func (p *pool) get(ctx context.Context, expired <-chan time.Time) (*conn, error) {
	for {
		p.mu.Lock()
		if p.dead {
			p.mu.Unlock()
			return p.again(ctx, expired)
		}
		var best, room *conn
		n := len(p.conns)
		if n > 0 {
			start := int(p.rr.Add(1)) % n
			for k := range n {
				c := p.conns[(start+k)%n]
				l := c.load.Load()
				if l >= c.maxStreams.Load() {
					continue
				}
				if room == nil || l < room.load.Load() {
					room = c
				}
			}
			best = room
		}
		busy := best == nil || best.load.Load() > 0
		if p.dialing == nil && busy && (n < p.c.o.connsPerNode || (best == nil && n < p.c.o.maxConnsPerNode)) {
			p.startDial()
		}
		if best != nil && best.reserve() {
			p.mu.Unlock()
			return best, nil
		}
		if best != nil {
			p.mu.Unlock()
			continue // the slot was taken meanwhile: look again
		}
		op := p.dialing
		var wake <-chan struct{}
		if op != nil {
			wake = op.done
		} else {
			if p.waitCh == nil {
				p.waitCh = make(chan struct{})
			}
			wake = p.waitCh
		}
		p.waiters.Add(1)
		p.mu.Unlock()
		select {
		case <-wake:
			p.waiters.Add(-1)
			if op != nil && op.err != nil && p.ready.Load() == 0 {
				return nil, &TransportError{Addr: p.addr, Op: "dial", NotRun: true, Err: op.err}
			}
		case <-ctx.Done():
			p.waiters.Add(-1)
			return nil, ctx.Err()
		case <-expired:
			p.waiters.Add(-1)
			what := "no free stream on the node's connections"
			if op != nil {
				what = "still connecting"
			}
			return nil, &TransportError{Addr: p.addr, Op: "wait", NotRun: true, Err: fmt.Errorf("%w: %s", context.DeadlineExceeded, what)}
		}
	}
}

// startDial starts a background dial; p.mu is held.
func (p *pool) startDial() {
	op := &dialOp{done: make(chan struct{})}
	p.dialing = op
	p.c.goTracked(func() {
		ctx, cancel := context.WithTimeout(p.c.ctx, p.c.o.dialTimeout)
		c, err := p.handshake(ctx)
		cancel()
		p.mu.Lock()
		p.dialing = nil
		if err == nil && (p.dead || p.c.closed.Load()) {
			err = ErrClosed
		}
		if err == nil {
			p.conns = append(p.conns, c)
			p.ready.Store(int32(len(p.conns)))
		}
		empty := len(p.conns) == 0
		p.mu.Unlock()
		if err != nil && c != nil {
			c.fail(errConnGone)
		}
		op.err = err
		close(op.done)
		p.freed() // callers waiting for a slot may take the new connection
		if err != nil && empty {
			p.c.dropIfEmpty(p) // a node that is gone leaves no pool behind
		}
	})
}

// freed wakes callers waiting for a stream slot.
func (p *pool) freed() {
	if p.waiters.Load() == 0 {
		return
	}
	p.mu.Lock()
	if p.waitCh != nil {
		close(p.waitCh)
		p.waitCh = nil
	}
	p.mu.Unlock()
}

// again gets a connection from the pool that now stands for p's address
// (p was dropped while this caller held it).
func (p *pool) again(ctx context.Context, expired <-chan time.Time) (*conn, error) {
	np := p.c.pool(p.addr)
	if np == nil {
		return nil, &TransportError{Addr: p.addr, Op: "dial", NotRun: true, Err: ErrClosed}
	}
	return np.get(ctx, expired)
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
	p.ready.Store(int32(len(p.conns)))
	empty := len(p.conns) == 0 && p.dialing == nil
	p.mu.Unlock()
	p.freed() // waiters may now dial a replacement
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
