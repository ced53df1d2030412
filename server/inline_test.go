package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/beacon-go/beacon/internal/wire"
)

// inlineSvc has quick endpoints (run inline) and ones that block.
type inlineSvc struct {
	release chan struct{}
	once    sync.Once
}

type Empty struct{}

func (s *inlineSvc) Hello(ctx context.Context, req *Req, rsp *Rsp) error { return nil }

// Wait blocks until Release is called: on a connection read by the
// handler's own goroutine it would never return.
func (s *inlineSvc) Wait(ctx context.Context, req *Empty, rsp *Empty) error {
	select {
	case <-s.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *inlineSvc) Release(ctx context.Context, req *Empty, rsp *Empty) error {
	s.once.Do(func() { close(s.release) })
	return nil
}

func (s *inlineSvc) Sleep(ctx context.Context, req *Empty, rsp *Empty) error {
	time.Sleep(300 * time.Millisecond)
	return nil
}

// countingListener counts the writes to the connections it accepts.
type countingListener struct {
	net.Listener
	writes atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: nc, n: &l.writes}, nil
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(p)
}

// startTest starts a server of handler on 127.0.0.1 (opts first: they may
// override the name, address, logger) and stops it at the test's end.
func startTest(t *testing.T, handler any, opts ...Option) *Server {
	t.Helper()
	s, err := New(append([]Option{Name("test"), Address("127.0.0.1:0"), Logger(slog.New(slog.DiscardHandler))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Handle(handler); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Stop(ctx)
	})
	return s
}

// startInline starts a server of inlineSvc on a counting listener.
func startInline(t *testing.T, opts ...Option) (*Server, *countingListener) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	return startTest(t, &inlineSvc{release: make(chan struct{})}, append([]Option{Listener(cl)}, opts...)...), cl
}

// dialTest dials addr with a 10 s deadline on everything, closed at the
// test's end.
func dialTest(t *testing.T, addr string) net.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	return nc
}

// rawConn is one wire connection, driven frame by frame.
type rawConn struct {
	nc net.Conn
	r  *wire.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	nc := dialTest(t, addr)
	rc := &rawConn{nc: nc, r: wire.NewReader(nc, 0)}
	if _, err := nc.Write([]byte(wire.Preface)); err != nil {
		t.Fatal(err)
	}
	var f wire.Frame
	if err := rc.r.Next(&f); err != nil || f.Kind != wire.KindSettings {
		t.Fatalf("settings: %v, kind %d", err, f.Kind)
	}
	return rc
}

// send writes requests (endpoint per ID from 1) in one write.
func (rc *rawConn) send(t *testing.T, first uint64, endpoints ...string) {
	t.Helper()
	var b []byte
	for i, ep := range endpoints {
		var err error
		if b, err = wire.AppendRequest(b, first+uint64(i), ep, "application/json", 5*time.Second, nil, []byte("{}")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := rc.nc.Write(b); err != nil {
		t.Fatal(err)
	}
}

// next reads one response: its ID and status.
func (rc *rawConn) next(t *testing.T) (uint64, uint16) {
	t.Helper()
	var f wire.Frame
	if err := rc.r.Next(&f); err != nil {
		t.Fatal(err)
	}
	if f.Kind != wire.KindResponse {
		t.Fatalf("frame kind %d", f.Kind)
	}
	return f.ID, f.Status
}

// A handler that blocks until a later request on its own connection runs
// must not deadlock the connection: reading moves on at the inline budget.
func TestInlineHandlerBlockingOnItsConnection(t *testing.T) {
	for _, budget := range []time.Duration{DefaultInlineBudget, 0} {
		t.Run(fmt.Sprint("budget=", budget), func(t *testing.T) {
			s, _ := startInline(t, InlineBudget(budget))
			rc := dialRaw(t, s.Addr().String())
			rc.send(t, 1, "inlineSvc.Wait")
			rc.send(t, 2, "inlineSvc.Release")
			got := map[uint64]uint16{}
			for range 2 {
				id, st := rc.next(t)
				got[id] = st
			}
			if got[1] != 0 || got[2] != 0 {
				t.Fatalf("responses %v, want both OK", got)
			}
		})
	}
}

// A slow handler does not hold up the quick requests sent after it on the
// same connection for longer than about the inline budget.
func TestSlowHandlerDoesNotHoldConnection(t *testing.T) {
	s, _ := startInline(t)
	rc := dialRaw(t, s.Addr().String())
	start := time.Now()
	rc.send(t, 1, "inlineSvc.Sleep")
	eps := make([]string, 20)
	for i := range eps {
		eps[i] = "inlineSvc.Hello"
	}
	rc.send(t, 2, eps...)
	for range eps {
		id, st := rc.next(t)
		if id == 1 || st != 0 {
			t.Fatalf("response %d (status %d) before the quick ones", id, st)
		}
	}
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Fatalf("quick requests answered after %v, behind the 300ms handler", d)
	}
	if id, _ := rc.next(t); id != 1 {
		t.Fatalf("last response %d, want 1", id)
	}
}

// Requests that arrive together are answered in one write (old code: one
// write per response).
func TestBatchedAnswersShareAWrite(t *testing.T) {
	s, cl := startInline(t)
	rc := dialRaw(t, s.Addr().String())
	rc.send(t, 1, "inlineSvc.Hello") // the endpoint's first run, and the settings write, before counting
	rc.next(t)
	before := cl.writes.Load()
	eps := make([]string, 50)
	for i := range eps {
		eps[i] = "inlineSvc.Hello"
	}
	rc.send(t, 2, eps...)
	for range eps {
		if _, st := rc.next(t); st != 0 {
			t.Fatalf("status %d", st)
		}
	}
	if w := cl.writes.Load() - before; w > 5 {
		t.Fatalf("%d writes for 50 requests sent in one write, want at most 5", w)
	}
}

// The request context behaves as a context.WithTimeout of the connection's
// context: deadline, cancel, the connection's end with its cause, derived
// contexts, values.
func TestStreamContext(t *testing.T) {
	type key struct{}
	causeKey := cancelCauseKey()
	if causeKey == nil {
		t.Fatal("no cancel-cause key found")
	}
	tests := []struct {
		name      string
		timeout   time.Duration
		end       func(st *stream, cancelConn context.CancelCauseFunc)
		err       error
		cause     error
		lazyFirst bool // ask for Done before the end
	}{
		{"deadline", 20 * time.Millisecond, func(*stream, context.CancelCauseFunc) {}, context.DeadlineExceeded, context.DeadlineExceeded, true},
		{"deadline, Done never asked", 20 * time.Millisecond, func(st *stream, _ context.CancelCauseFunc) {
			for limit := time.Now().Add(5 * time.Second); st.Err() == nil && time.Now().Before(limit); { // Err reads the clock
				time.Sleep(time.Millisecond)
			}
		}, context.DeadlineExceeded, context.DeadlineExceeded, false},
		{"client's cancel", 0, func(st *stream, _ context.CancelCauseFunc) { st.end(context.Canceled, true) }, context.Canceled, context.Canceled, true},
		{"connection closed", time.Second, func(st *stream, cancel context.CancelCauseFunc) {
			cancel(ErrConnClosed)
			st.end(context.Canceled, false) // conn.endStreams
		}, context.Canceled, ErrConnClosed, true},
		{"connection closed, Done never asked", time.Second, func(st *stream, cancel context.CancelCauseFunc) { cancel(ErrStopped) }, context.Canceled, ErrStopped, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			base := context.WithValue(context.Background(), key{}, "v")
			connCtx, cancel := context.WithCancelCause(base)
			defer cancel(nil)
			st := newStream(connCtx, causeKey, 7, tc.timeout, time.Now())
			if d, ok := st.Deadline(); ok != (tc.timeout > 0) || (ok && time.Until(d) > tc.timeout) {
				t.Fatalf("Deadline() = %v, %v", d, ok)
			}
			if st.Value(key{}) != "v" {
				t.Fatal("value of the connection's context not seen")
			}
			if st.Err() != nil || context.Cause(st) != nil {
				t.Fatalf("ended before its time: %v", st.Err())
			}
			var child context.Context
			var stop context.CancelFunc
			if tc.lazyFirst {
				child, stop = context.WithCancel(st)
				defer stop()
				select {
				case <-st.Done():
					t.Fatal("Done closed early")
				default:
				}
			}
			tc.end(st, cancel)
			if tc.lazyFirst {
				select {
				case <-st.Done():
				case <-time.After(5 * time.Second):
					t.Fatal("Done not closed")
				}
				select {
				case <-child.Done():
				case <-time.After(5 * time.Second):
					t.Fatal("derived context not canceled")
				}
			}
			if err := st.Err(); !errors.Is(err, tc.err) {
				t.Fatalf("Err() = %v, want %v", err, tc.err)
			}
			<-st.Done() // made after the end: closed at once
			if c := context.Cause(st); !errors.Is(c, tc.cause) {
				t.Fatalf("Cause = %v, want %v", c, tc.cause)
			}
		})
	}
}

func TestStreamAfterFunc(t *testing.T) {
	st := newStream(context.Background(), cancelCauseKey(), 1, 0, time.Now())
	ran := make(chan struct{})
	stopped := st.AfterFunc(func() { t.Error("stopped func ran") })
	if !stopped() {
		t.Fatal("stop of a pending func reported false")
	}
	st.AfterFunc(func() { close(ran) })
	st.end(context.Canceled, true)
	<-ran
	again := make(chan struct{})
	if st.AfterFunc(func() { close(again) })() {
		t.Fatal("stop after the end reported true")
	}
	<-again
}

// httpRequest sends a POST of {} to path on a new connection and returns
// the connection and a channel with the response's status (or an error).
func httpRequest(t *testing.T, addr, path string) <-chan error {
	t.Helper()
	nc := dialTest(t, addr)
	if _, err := fmt.Fprintf(nc, "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", path); err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() {
		rsp, err := http.ReadResponse(bufio.NewReader(nc), nil)
		if err == nil {
			rsp.Body.Close()
			if rsp.StatusCode != 200 {
				err = fmt.Errorf("status %d", rsp.StatusCode)
			}
		}
		res <- err
	}()
	return res
}

// waitBusy waits until the server counts a request in flight.
func waitBusy(t *testing.T, s *Server) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; {
		s.mu.Lock()
		busy := false
		for c := range s.conns {
			busy = busy || c.httpBusy.Load()
		}
		s.mu.Unlock()
		if busy {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("HTTP request not in flight")
		}
		time.Sleep(time.Millisecond)
	}
}

// An HTTP connection serving a request is not the one the connection limit
// evicts, and no wire frame is ever written into its stream (old code: it
// was picked as idle, sent a wire GoAway and closed mid-request).
func TestHTTPConnectionNotEvictedMidRequest(t *testing.T) {
	s, _ := startInline(t, MaxConnections(2))
	res := httpRequest(t, s.Addr().String(), "/inlineSvc.Sleep")
	waitBusy(t, s)
	dialRaw(t, s.Addr().String())
	dialRaw(t, s.Addr().String()) // over the limit: one idle connection goes
	if err := <-res; err != nil {
		t.Fatalf("HTTP request in flight: %v", err)
	}
}

// Stop does not write a wire GoAway into an HTTP connection: the request in
// flight gets its answer (old code: the frame's bytes came first).
func TestStopLeavesHTTPStreamsAlone(t *testing.T) {
	s, _ := startInline(t)
	res := httpRequest(t, s.Addr().String(), "/inlineSvc.Sleep")
	for deadline := time.Now().Add(5 * time.Second); ; { // the handler runs
		s.inflight.mu.Lock()
		n := s.inflight.n
		s.inflight.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("handler not running")
		}
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-res; err != nil {
		t.Fatalf("HTTP request in flight during Stop: %v", err)
	}
}
