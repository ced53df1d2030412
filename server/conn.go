package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/beacon-go/beacon/codec"
	"github.com/beacon-go/beacon/internal/wire"
	"github.com/beacon-go/beacon/metadata"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/status"
)

// outboxLimit is how many response bytes a connection queues for a client
// that reads slower than they come; past it, handlers wait to queue theirs
// (holding their streams) and the reader's refusals close the connection.
const outboxLimit = 1 << 20

// conn serves one client connection: one reader goroutine, which runs
// quick handlers itself (see InlineBudget; a watchdog moves reading to a
// new goroutine when one runs past the budget) and starts a goroutine for
// the others; responses queued in a wire.Writer (handlers never wait for
// the client unless it is a megabyte behind; the answers to the requests
// of one read go out in one write, before the reader waits for more;
// concurrent responses share system calls; a write that stalls for the
// write timeout closes the connection).
//
// What one connection can cost is bounded: MaxStreamsPerConn requests from
// arrival until their response is written (past it a request is refused
// without running), a read buffer that grows only as bytes arrive, an idle
// timeout, a frame timeout for a started request, and a write stall timeout.
type conn struct {
	s      *Server
	nc     net.Conn
	out    *wire.Writer
	ctx    context.Context // canceled (ErrConnClosed) when the connection closes
	cancel context.CancelCauseFunc
	closed atomic.Bool
	goaway atomic.Bool // told to go away: new requests are refused
	// An HTTP connection (handed to net/http): no wire frame is ever
	// written to it; busy while net/http serves a request on it.
	http, httpBusy atomic.Bool
	active         atomic.Int64 // when the last request arrived (Unix ns; accept time at first)

	mu      sync.Mutex
	streams map[uint64]*stream // requests in flight

	// Handlers run inline, on the reading goroutine, while they are quick
	// (see conn.inline); the watchdog hands reading over to a new goroutine
	// when one runs past the server's inline budget.
	r         *wire.Reader
	unflushed []*stream     // answered inline, queued, not yet written
	seq       uint64        // the reader's count of inline runs
	running   atomic.Uint64 // the inline run in progress (its seq), 0: none
	runStart  atomic.Int64  // when it started (Unix ns)
	armed     atomic.Bool   // the watchdog timer is set
	watchdog  *time.Timer
}

func newConn(s *Server, nc net.Conn) *conn {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	c := &conn{s: s, nc: nc, out: wire.NewWriter(nc, s.o.writeTimeout, outboxLimit), streams: map[uint64]*stream{}}
	c.ctx, c.cancel = context.WithCancelCause(s.baseCtx)
	context.AfterFunc(c.ctx, c.endStreams)
	c.active.Store(time.Now().UnixNano())
	return c
}

// bufPool is a server's free list of byte buffers.
type bufPool struct{ p sync.Pool }

func (bp *bufPool) get() *[]byte {
	if b, ok := bp.p.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 0, 1024)
	return &b
}

func (bp *bufPool) put(b *[]byte) {
	if cap(*b) > 64<<10 {
		return
	}
	*b = (*b)[:0]
	bp.p.Put(b)
}

func (c *conn) serve() {
	if !c.open() {
		c.finish()
		return
	}
	if !c.loop() {
		c.finish()
	}
}

// finish ends the connection; the goroutine reading it last calls it.
func (c *conn) finish() {
	c.close()
	c.s.removeConn(c)
	c.s.connWG.Done()
}

// open runs the TLS handshake and reads the preface (or hands an HTTP
// connection to the HTTP server), and sends the server's settings. It
// reports whether the connection is to be read for frames.
func (c *conn) open() bool {
	if !c.handshake() { // TLS (tls.go)
		return false
	}
	log := c.s.o.log
	c.r = wire.NewReader(c.nc, c.s.o.maxMessage, wire.IdleTimeout(c.s.o.idleTimeout), wire.FrameTimeout(c.s.o.frameTimeout))
	if err := c.r.ReadPreface(); err != nil {
		if errors.Is(err, wire.ErrBadPreface) && c.s.web != nil && looksHTTP(c.r.Unread()) {
			c.s.web.serve(c, c.r.Unread())
			return false
		}
		if !c.closed.Load() {
			log.Debug("server: connection without a valid preface closed", "remote", c.nc.RemoteAddr(), "err", err)
		}
		return false
	}
	settings := wire.AppendSettings(nil, wire.Settings{MaxStreams: uint32(c.s.streams), MaxFrame: uint32(c.s.o.maxMessage)})
	if !c.write(settings, false) {
		return false
	}
	if c.s.o.inline > 0 {
		c.watchdog = time.AfterFunc(time.Hour, c.watch)
		c.watchdog.Stop()
	}
	return true
}

// loop reads frames until the connection ends (it returns false: the
// caller finishes the connection) or, while it ran a handler inline, the
// watchdog gave reading to another goroutine (it returns true once that
// handler's response is written).
func (c *conn) loop() (handedOver bool) {
	defer func() {
		if !handedOver {
			c.endUnflushed()
		}
	}()
	log := c.s.o.log
	r := c.r
	var f wire.Frame
	var tooLarge *wire.TooLargeError
	for {
		if !r.HasFrame() {
			// Answers to the requests read so far go out in one write
			// before the reader waits for more.
			err := c.out.Flush()
			c.endUnflushed()
			if err != nil {
				c.writeFailed(err)
				return false
			}
		}
		err := r.Next(&f)
		switch {
		case err == nil:
		case errors.Is(err, wire.ErrIdle):
			if c.inFlight() > 0 {
				continue
			}
			if c.goaway.Load() {
				log.Debug("server: idle connection closed", "remote", c.nc.RemoteAddr())
				return false
			}
			c.goAway() // the client closes it; if not, the next idle period does
			continue
		case errors.As(err, &tooLarge) && (tooLarge.Kind == wire.KindRequest || tooLarge.Kind == wire.KindRequestMeta):
			c.refuse(tooLarge.ID, status.TooLarge, fmt.Sprintf("request of %d bytes is larger than the server's limit of %d bytes", tooLarge.Size, tooLarge.Limit))
			continue
		default:
			if !c.closed.Load() && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
				log.Debug("server: connection closed", "remote", c.nc.RemoteAddr(), "err", err)
			}
			if errors.Is(err, wire.ErrFrameTooLarge) || errors.Is(err, wire.ErrMalformed) || errors.Is(err, wire.ErrFrameTimeout) {
				log.Warn("server: bad frame; closing connection", "remote", c.nc.RemoteAddr(), "err", err)
			}
			return false
		}
		switch f.Kind {
		case wire.KindRequest, wire.KindRequestMeta:
			if c.request(&f) {
				return true
			}
		case wire.KindCancel:
			c.cancelStream(f.ID)
		case wire.KindPing:
			c.queue(wire.AppendResponse(nil, f.ID, status.OK, wire.FlagNotRun, "", "", nil, nil), false)
		default:
			log.Warn("server: unexpected frame from a client; closing connection", "remote", c.nc.RemoteAddr(), "kind", f.Kind)
			return false
		}
	}
}

func (c *conn) inFlight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.streams)
}

// request dispatches one request frame. It runs on the reader goroutine.
// Refusals are queued inline (a client that does not read them stops being
// read). A quick handler (see inline) runs inline and its response is
// queued, to go out with the others of the batch; any other runs in a
// goroutine of its own. It reports whether, while the handler ran inline,
// the watchdog gave reading to another goroutine.
func (c *conn) request(f *wire.Frame) (handedOver bool) {
	id := f.ID
	if c.s.refusing.Load() || c.goaway.Load() {
		c.refuse(id, status.Unavailable, "server is going away; not run")
		return false
	}
	h, ok := c.s.handlers[string(f.Endpoint)]
	if !ok {
		c.refuse(id, status.NotFound, fmt.Sprintf("unknown endpoint %q", f.Endpoint))
		return false
	}
	cd, err := c.s.o.codecs.GetBytes(f.ContentType)
	if err != nil {
		c.refuse(id, status.BadRequest, err.Error())
		return false
	}
	var md metadata.MD
	if f.Meta.Len() > 0 {
		if f.Meta.Len() > metadata.MaxEntries || len(f.Meta) > metadata.MaxSize+2+3*metadata.MaxEntries {
			c.refuse(id, status.HeaderTooLarge, fmt.Sprintf("request metadata of %d entries, %d bytes: the limits are %d entries, %d bytes; not run", f.Meta.Len(), len(f.Meta), metadata.MaxEntries, metadata.MaxSize))
			return false
		}
		md = metadata.MD(f.Meta.Map())
		if err := metadata.Validate(md); err != nil {
			c.refuse(id, status.HeaderTooLarge, fmt.Sprintf("request metadata refused: %v; not run", err))
			return false
		}
	}
	now := time.Now()
	c.active.Store(now.UnixNano())
	c.mu.Lock()
	if _, dup := c.streams[id]; dup {
		c.mu.Unlock()
		c.refuse(id, status.BadRequest, "call ID already in flight on this connection")
		return false
	}
	if len(c.streams) >= c.s.streams {
		c.mu.Unlock()
		c.refuse(id, status.Unavailable, fmt.Sprintf("over the connection's limit of %d requests in flight; not run", c.s.streams))
		return false
	}
	if c.s.slots != nil {
		select {
		case c.s.slots <- struct{}{}:
		default:
			c.mu.Unlock()
			c.refuse(id, status.Unavailable, "server overloaded; not run")
			return false
		}
	}
	if !c.s.inflight.enter() { // Stop is waiting for the requests in flight
		if c.s.slots != nil {
			<-c.s.slots
		}
		c.mu.Unlock()
		c.refuse(id, status.Unavailable, "server is going away; not run")
		return false
	}
	// The handler's context ends with the caller's deadline, a Cancel from
	// the client, the connection's close (cause ErrConnClosed) or the
	// server's stop (cause ErrStopped).
	st := newStream(c.ctx, c.s.causeKey, id, f.Timeout, now)
	c.streams[id] = st
	c.mu.Unlock()

	// A copy, even inline: if the watchdog moves reading on while the
	// handler runs, the next frame lands in the reader's buffer.
	body := c.s.bufs.get()
	*body = append(*body, f.Body...)
	var ctx context.Context = st
	if md != nil {
		ctx = metadata.NewIncomingContext(st, md)
	}
	if !c.inline(h) {
		go func() { c.answer(st, c.exec(st, ctx, h, cd, body, time.Now())) }()
		return false
	}
	c.seq++
	run := c.seq
	c.runStart.Store(now.UnixNano())
	c.running.Store(run)
	if !c.armed.Swap(true) {
		c.watchdog.Reset(c.s.o.inline)
	}
	frame := c.exec(st, ctx, h, cd, body, now)
	if c.running.CompareAndSwap(run, 0) {
		c.queue(*frame, true)
		c.s.bufs.put(frame)
		c.unflushed = append(c.unflushed, st) // ended once its answer is written (loop)
		return false
	}
	// Reading went to another goroutine meanwhile: this one answers and
	// leaves, like a handler's own goroutine.
	c.answer(st, frame)
	return true
}

// answer writes a request's response frame (waiting for room in the
// outbox) and ends the request; it runs off the reading goroutine.
func (c *conn) answer(st *stream, frame *[]byte) {
	c.write(*frame, true)
	c.s.bufs.put(frame)
	c.endStream(st)
}

// inline reports whether h runs on the reading goroutine: handlers that
// have been quick (their average run time under a quarter of the server's
// inline budget; see InlineBudget). A handler that runs inline past the
// budget gets the reading moved to a new goroutine (watch), so it never
// holds up the connection's other requests for longer than that.
func (c *conn) inline(h *handler) bool {
	return c.watchdog != nil && h.cost.Load() < int64(c.s.o.inline/4)
}

// exec runs a request and returns its response frame (a pooled buffer).
// It frees the request's concurrency slot and body; the caller writes the
// frame, then ends the request (answer, or endUnflushed after the flush).
func (c *conn) exec(st *stream, ctx context.Context, h *handler, cd codec.Codec, body *[]byte, start time.Time) *[]byte {
	rsp, err := c.s.run(ctx, h, cd, *body, registry.ProtocolBeacon, c.nc.RemoteAddr())
	h.observe(time.Since(start))
	c.s.bufs.put(body)
	if c.s.slots != nil {
		<-c.s.slots // the handler is done: free its slot before writing
	}
	rmd := st.metadata()
	frame := c.s.bufs.get()
	if err == nil {
		out := c.s.bufs.get()
		var enc []byte
		if enc, err = cd.Marshal(*out, rsp); err == nil {
			*frame = wire.AppendResponse(*frame, st.id, status.OK, 0, cd.ContentType(), "", rmd, enc)
		} else {
			err = status.Newf(status.InternalError, "encode response: %v", err)
		}
		*out = enc[:0]
		c.s.bufs.put(out)
		if err == nil {
			return frame
		}
	}
	e := toStatus(st, err)
	code := e.Code
	if code <= 0 || code > 0xffff {
		code = status.InternalError
	}
	*frame = wire.AppendResponse(*frame, st.id, uint16(code), 0, "", e.Detail, rmd, nil)
	return frame
}

// watch is the watchdog: when the handler running inline has run past the
// inline budget, reading moves to a new goroutine.
func (c *conn) watch() {
	c.armed.Store(false)
	run := c.running.Load()
	if run == 0 || c.closed.Load() {
		return
	}
	budget := c.s.o.inline
	if ran := time.Duration(time.Now().UnixNano() - c.runStart.Load()); ran < budget || !c.running.CompareAndSwap(run, 0) {
		if c.running.Load() != 0 && !c.armed.Swap(true) {
			c.watchdog.Reset(max(budget-ran, budget/8))
		}
		return
	}
	c.s.o.log.Debug("server: a handler ran past the inline budget; reading moves to a new goroutine", "remote", c.nc.RemoteAddr(), "budget", budget)
	go func() {
		if !c.loop() {
			c.finish()
		}
	}()
}

// endUnflushed ends the requests answered inline since the last flush.
func (c *conn) endUnflushed() {
	for i, st := range c.unflushed {
		c.endStream(st)
		c.unflushed[i] = nil
	}
	c.unflushed = c.unflushed[:0]
}

// endStream forgets a finished request (its response written) and ends
// its context.
func (c *conn) endStream(st *stream) {
	c.mu.Lock()
	delete(c.streams, st.id)
	c.mu.Unlock()
	st.end(context.Canceled, true)
	c.s.inflight.exit()
}

// cancelStream cancels the handler of a call the client gave up on.
func (c *conn) cancelStream(id uint64) {
	c.mu.Lock()
	st := c.streams[id]
	c.mu.Unlock()
	if st != nil {
		st.end(context.Canceled, true)
	}
}

// endStreams ends the contexts of the requests in flight when the
// connection's context ends (it closed, or the server stopped).
func (c *conn) endStreams() {
	err := c.ctx.Err()
	c.mu.Lock()
	sts := make([]*stream, 0, len(c.streams))
	for _, st := range c.streams {
		sts = append(sts, st)
	}
	c.mu.Unlock()
	for _, st := range sts {
		st.end(err, false)
	}
}

func toStatus(ctx context.Context, err error) *status.Error {
	var se *status.Error
	var de *decodeError
	switch {
	case errors.As(err, &se):
		return se
	case errors.As(err, &de):
		return status.New(status.BadRequest, de.Error())
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded):
		return status.Newf(status.Timeout, "%v", err)
	case errors.Is(err, context.Canceled):
		return status.Newf(status.Canceled, "%v", err)
	default:
		return status.New(status.InternalError, err.Error())
	}
}

// refuse answers a request that was not run. It runs on the reader and
// queues the answer with the batch's; past the outbox's limit (a client
// that sends while not reading its answers) the connection is closed.
func (c *conn) refuse(id uint64, code int, detail string) {
	frame := c.s.bufs.get()
	*frame = wire.AppendResponse(*frame, id, uint16(code), wire.FlagNotRun, "", detail, nil, nil)
	c.queue(*frame, false)
	c.s.bufs.put(frame)
}

// queue queues a frame of the reader's to go out with its batch (Flush
// before the next read that waits). Past the outbox's limit, an answer
// (wait) waits for room, as a handler's own goroutine would, while a
// refusal or a ping's answer does not: a client that sends while not
// reading them is closed.
func (c *conn) queue(frame []byte, wait bool) bool {
	if !wait && c.out.Queued()+len(frame) > outboxLimit {
		return c.write(frame, false)
	}
	if err := c.out.Queue(frame); err != nil {
		c.writeFailed(err)
		return false
	}
	return true
}

// writeFailed closes the connection after a failed write.
func (c *conn) writeFailed(err error) {
	if !c.closed.Load() {
		c.s.o.log.Debug("server: write failed; closing connection", "remote", c.nc.RemoteAddr(), "err", err)
	}
	c.close()
}

// write queues one frame (wait: for room in the outbox); a failure (a
// client that stopped reading for the write timeout, or is a megabyte
// behind while still sending, a reset) closes the connection.
func (c *conn) write(frame []byte, wait bool) bool { return c.writeBy(frame, wait, time.Time{}) }

// writeBy is write with a deadline for the write, if this sender writes.
func (c *conn) writeBy(frame []byte, wait bool, deadline time.Time) bool {
	if err := c.out.Send(frame, wait, deadline); err != nil {
		c.writeFailed(err)
		return false
	}
	return true
}

// goAway tells the client to send nothing more on this connection, waiting
// at most a second to do so (a client that does not read is closed).
func (c *conn) goAway() {
	if c.http.Load() {
		return // net/http's Shutdown, or the close that follows, tells it
	}
	if !c.goaway.Swap(true) {
		c.writeBy(wire.AppendGoAway(nil), false, time.Now().Add(time.Second))
	}
}

func (c *conn) close() {
	if c.closed.Swap(true) {
		return
	}
	c.nc.Close()
	c.out.Fail(net.ErrClosed)
	c.cancel(ErrConnClosed)
	if c.watchdog != nil {
		c.watchdog.Stop()
	}
}
