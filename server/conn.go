package server

import (
	"context"
	"errors"
	"io"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/beacon-go/beacon/codec"
	"github.com/beacon-go/beacon/internal/wire"
	"github.com/beacon-go/beacon/status"
)

// conn serves one client connection: one reader goroutine, one goroutine
// per request, responses written under a lock and flushed by the last
// writer in line (so concurrent responses share syscalls).
type conn struct {
	s      *Server
	nc     net.Conn
	w      *wire.Writer
	closed atomic.Bool
}

func newConn(s *Server, nc net.Conn) *conn {
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	return &conn{s: s, nc: nc, w: wire.NewWriter(nc)}
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
	r := wire.NewReader(c.nc, c.s.o.maxMessage)
	var f wire.Frame
	for {
		if err := r.Next(&f); err != nil {
			if !c.closed.Load() && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.EOF) {
				c.s.o.log.Debug("server: connection closed", "remote", c.nc.RemoteAddr(), "err", err)
			}
			if errors.Is(err, wire.ErrFrameTooLarge) || errors.Is(err, wire.ErrMalformed) {
				c.s.o.log.Warn("server: bad frame; closing connection", "remote", c.nc.RemoteAddr(), "err", err)
			}
			return
		}
		if f.Kind != wire.KindRequest {
			continue
		}
		c.request(&f)
	}
}

// request dispatches one request frame. It runs on the reader goroutine and
// must not block: the handler runs in its own goroutine.
func (c *conn) request(f *wire.Frame) {
	id := f.ID
	if c.s.refusing.Load() {
		c.writeError(id, status.New(status.Unavailable, "server is shutting down; not run"))
		return
	}
	h, ok := c.s.handlers[string(f.Endpoint)]
	if !ok {
		c.writeError(id, status.Newf(status.NotFound, "unknown endpoint %q", f.Endpoint))
		return
	}
	cd, err := c.s.o.codecs.GetBytes(f.ContentType)
	if err != nil {
		c.writeError(id, status.New(status.BadRequest, err.Error()))
		return
	}
	if c.s.slots != nil {
		select {
		case c.s.slots <- struct{}{}:
		default:
			c.writeError(id, status.New(status.Unavailable, "server overloaded; not run"))
			return
		}
	}
	body := c.s.bufs.get()
	*body = append(*body, f.Body...)
	timeout := f.Timeout
	c.s.inflight.Add(1)
	go func() {
		defer c.s.inflight.Done()
		if c.s.slots != nil {
			defer func() { <-c.s.slots }()
		}
		defer c.s.bufs.put(body)
		ctx := c.s.baseCtx
		if timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, timeout)
			defer cancel()
		}
		rsp, err := c.run(ctx, h, cd, *body)
		if err != nil {
			c.writeError(id, toStatus(ctx, err))
			return
		}
		out := c.s.bufs.get()
		defer c.s.bufs.put(out)
		enc, err := cd.Marshal(*out, rsp)
		if err != nil {
			c.writeError(id, status.Newf(status.InternalError, "encode response: %v", err))
			return
		}
		*out = enc
		frame := c.s.bufs.get()
		*frame = wire.AppendResponse(*frame, id, status.OK, cd.ContentType(), "", enc)
		c.write(*frame)
		c.s.bufs.put(frame)
	}()
}

// run calls the handler, turning a panic into an error.
func (c *conn) run(ctx context.Context, h *handler, cd codec.Codec, body []byte) (rsp any, err error) {
	defer func() {
		if p := recover(); p != nil {
			c.s.o.log.Error("server: handler panicked", "endpoint", h.name, "panic", p, "stack", string(debug.Stack()))
			err = status.Newf(status.InternalError, "handler %s panicked", h.name)
		}
	}()
	return h.serve(ctx, cd, body)
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

func (c *conn) writeError(id uint64, e *status.Error) {
	code := e.Code
	if code <= 0 || code > 0xffff {
		code = status.InternalError
	}
	frame := c.s.bufs.get()
	*frame = wire.AppendResponse(*frame, id, uint16(code), "", e.Detail, nil)
	c.write(*frame)
	c.s.bufs.put(frame)
}

// write sends one frame; a failure closes the connection.
func (c *conn) write(frame []byte) {
	if err := c.w.Write(frame); err != nil && !c.closed.Load() {
		c.s.o.log.Debug("server: write failed", "remote", c.nc.RemoteAddr(), "err", err)
		c.close()
	}
}

func (c *conn) goAway() { c.write(wire.AppendGoAway(nil)) }

func (c *conn) close() {
	if c.closed.Swap(true) {
		return
	}
	c.nc.Close()
}
