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

	"github.com/beacon-go/beacon/internal/wire"
	"github.com/beacon-go/beacon/metadata"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/status"
)

// outboxLimit is how many response bytes a connection queues for a client
// that reads slower than they come; past it, handlers wait to queue theirs
// (holding their streams) and the reader's refusals close the connection.
const outboxLimit = 1 << 20

// conn serves one client connection: one reader goroutine, one goroutine
// per request, responses queued in a wire.Outbox (handlers never wait for
// the client unless it is a megabyte behind; concurrent responses share
// system calls; a write that stalls for the write timeout closes the
// connection).
//
// What one connection can cost is bounded: MaxStreamsPerConn requests from
// arrival until their response is written (past it a request is refused
// without running), a read buffer that grows only as bytes arrive, an idle
// timeout, a frame timeout for a started request, and a write stall timeout.
type conn struct {
	s      *Server
	nc     net.Conn
	out    *wire.Outbox
	ctx    context.Context // canceled (ErrConnClosed) when the connection closes
	cancel context.CancelCauseFunc
	closed atomic.Bool
	goaway atomic.Bool  // told to go away: new requests are refused
	active atomic.Int64 // when the last request arrived (Unix ns; accept time at first)

	mu      sync.Mutex
	streams map[uint64]context.CancelFunc // requests in flight
}

func newConn(s *Server, nc net.Conn) *conn {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	c := &conn{s: s, nc: nc, out: wire.NewOutbox(nc, s.o.writeTimeout, outboxLimit), streams: map[uint64]context.CancelFunc{}}
	c.ctx, c.cancel = context.WithCancelCause(s.baseCtx)
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
	defer c.s.connWG.Done()
	defer c.s.removeConn(c)
	defer c.close()
	if !c.handshake() { // TLS (tls.go)
		return
	}
	log := c.s.o.log
	r := wire.NewReader(c.nc, c.s.o.maxMessage, wire.IdleTimeout(c.s.o.idleTimeout), wire.FrameTimeout(c.s.o.frameTimeout))
	if err := r.ReadPreface(); err != nil {
		if errors.Is(err, wire.ErrBadPreface) && c.s.web != nil && looksHTTP(r.Unread()) {
			c.s.web.serve(c, r.Unread())
			return
		}
		if !c.closed.Load() {
			log.Debug("server: connection without a valid preface closed", "remote", c.nc.RemoteAddr(), "err", err)
		}
		return
	}
	settings := wire.AppendSettings(nil, wire.Settings{MaxStreams: uint32(c.s.streams), MaxFrame: uint32(c.s.o.maxMessage)})
	if !c.write(settings, false) {
		return
	}
	var f wire.Frame
	var tooLarge *wire.TooLargeError
	for {
		err := r.Next(&f)
		switch {
		case err == nil:
		case errors.Is(err, wire.ErrIdle):
			if c.inFlight() > 0 {
				continue
			}
			if c.goaway.Load() {
				log.Debug("server: idle connection closed", "remote", c.nc.RemoteAddr())
				return
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
			return
		}
		switch f.Kind {
		case wire.KindRequest, wire.KindRequestMeta:
			c.active.Store(time.Now().UnixNano())
			c.request(&f)
		case wire.KindCancel:
			c.cancelStream(f.ID)
		case wire.KindPing:
			c.write(wire.AppendResponse(nil, f.ID, status.OK, wire.FlagNotRun, "", "", nil, nil), false)
		default:
			log.Warn("server: unexpected frame from a client; closing connection", "remote", c.nc.RemoteAddr(), "kind", f.Kind)
			return
		}
	}
}

func (c *conn) inFlight() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.streams)
}

// request dispatches one request frame. It runs on the reader goroutine and
// does not wait for the handler, which runs in its own goroutine; refusals
// are written inline (a client that does not read them stops being read).
func (c *conn) request(f *wire.Frame) {
	id := f.ID
	if c.s.refusing.Load() || c.goaway.Load() {
		c.refuse(id, status.Unavailable, "server is going away; not run")
		return
	}
	h, ok := c.s.handlers[string(f.Endpoint)]
	if !ok {
		c.refuse(id, status.NotFound, fmt.Sprintf("unknown endpoint %q", f.Endpoint))
		return
	}
	cd, err := c.s.o.codecs.GetBytes(f.ContentType)
	if err != nil {
		c.refuse(id, status.BadRequest, err.Error())
		return
	}
	var md metadata.MD
	if f.Meta.Len() > 0 {
		if f.Meta.Len() > metadata.MaxEntries || len(f.Meta) > metadata.MaxSize+2+3*metadata.MaxEntries {
			c.refuse(id, status.HeaderTooLarge, fmt.Sprintf("request metadata of %d entries, %d bytes: the limits are %d entries, %d bytes; not run", f.Meta.Len(), len(f.Meta), metadata.MaxEntries, metadata.MaxSize))
			return
		}
		md = metadata.MD(f.Meta.Map())
		if err := metadata.Validate(md); err != nil {
			c.refuse(id, status.HeaderTooLarge, fmt.Sprintf("request metadata refused: %v; not run", err))
			return
		}
	}
	c.mu.Lock()
	if _, dup := c.streams[id]; dup {
		c.mu.Unlock()
		c.refuse(id, status.BadRequest, "call ID already in flight on this connection")
		return
	}
	if len(c.streams) >= c.s.streams {
		c.mu.Unlock()
		c.refuse(id, status.Unavailable, fmt.Sprintf("over the connection's limit of %d requests in flight; not run", c.s.streams))
		return
	}
	if c.s.slots != nil {
		select {
		case c.s.slots <- struct{}{}:
		default:
			c.mu.Unlock()
			c.refuse(id, status.Unavailable, "server overloaded; not run")
			return
		}
	}
	// The handler's context ends with the caller's deadline, a Cancel from
	// the client, the connection's close (cause ErrConnClosed) or the
	// server's stop (cause ErrStopped).
	ctx, cancel := timeoutCtx(c.ctx, f.Timeout)
	c.streams[id] = cancel
	c.mu.Unlock()

	body := c.s.bufs.get()
	*body = append(*body, f.Body...)
	c.s.inflight.Add(1)
	go func() {
		defer c.s.inflight.Done()
		defer c.endStream(id, cancel)
		hctx := ctx
		if md != nil {
			hctx = metadata.NewIncomingContext(ctx, md)
		}
		rc := &reqCtx{Context: hctx}
		rsp, err := c.s.run(rc, h, cd, *body, registry.ProtocolBeacon, c.nc.RemoteAddr())
		c.s.bufs.put(body)
		if c.s.slots != nil {
			<-c.s.slots // the handler is done: free its slot before writing
		}
		rmd := rc.metadata()
		if err != nil {
			c.writeError(id, toStatus(ctx, err), 0, rmd)
			return
		}
		out := c.s.bufs.get()
		defer c.s.bufs.put(out)
		enc, err := cd.Marshal(*out, rsp)
		if err != nil {
			c.writeError(id, status.Newf(status.InternalError, "encode response: %v", err), 0, rmd)
			return
		}
		*out = enc
		frame := c.s.bufs.get()
		*frame = wire.AppendResponse(*frame, id, status.OK, 0, cd.ContentType(), "", rmd, enc)
		c.write(*frame, true)
		c.s.bufs.put(frame)
	}()
}

// endStream forgets a finished request (its response written) and releases
// its context.
func (c *conn) endStream(id uint64, cancel context.CancelFunc) {
	c.mu.Lock()
	delete(c.streams, id)
	c.mu.Unlock()
	cancel()
}

// cancelStream cancels the handler of a call the client gave up on.
func (c *conn) cancelStream(id uint64) {
	c.mu.Lock()
	cancel := c.streams[id]
	c.mu.Unlock()
	if cancel != nil {
		cancel()
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

// refuse answers a request that was not run. It runs on the reader and does
// not wait for room in the outbox: a client that sends while not reading
// its answers is closed.
func (c *conn) refuse(id uint64, code int, detail string) {
	c.writeError(id, status.New(code, detail), wire.FlagNotRun, nil)
}

// writeError answers with an error; a handler's error (flags 0) waits for
// room in the outbox, a refusal does not.
func (c *conn) writeError(id uint64, e *status.Error, flags byte, md metadata.MD) {
	code := e.Code
	if code <= 0 || code > 0xffff {
		code = status.InternalError
	}
	frame := c.s.bufs.get()
	*frame = wire.AppendResponse(*frame, id, uint16(code), flags, "", e.Detail, md, nil)
	c.write(*frame, flags == 0)
	c.s.bufs.put(frame)
}

// write queues one frame (wait: for room in the outbox); a failure (a
// client that stopped reading for the write timeout, or is a megabyte
// behind while still sending, a reset) closes the connection.
func (c *conn) write(frame []byte, wait bool) bool { return c.writeBy(frame, wait, time.Time{}) }

// writeBy is write with a deadline for the write, if this sender writes.
func (c *conn) writeBy(frame []byte, wait bool, deadline time.Time) bool {
	if err := c.out.Send(frame, wait, deadline); err != nil {
		if !c.closed.Load() {
			c.s.o.log.Debug("server: write failed; closing connection", "remote", c.nc.RemoteAddr(), "err", err)
		}
		c.close()
		return false
	}
	return true
}

// goAway tells the client to send nothing more on this connection, waiting
// at most a second to do so (a client that does not read is closed).
func (c *conn) goAway() {
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
}
