package server

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// startHTTPTest starts a server of good{} for the HTTP tests and returns
// its address.
func startHTTPTest(t *testing.T, opts ...Option) string {
	t.Helper()
	return startTest(t, good{}, append([]Option{Name("greeter")}, opts...)...).Addr().String()
}

// closedWithin reports how long after start the server closed c (reading
// and dropping whatever it sends through br), failing the test past limit.
// start is taken before what starts the server's timer: the time reported
// is never less than the server's timeout.
func closedWithin(t *testing.T, what string, c net.Conn, br *bufio.Reader, start time.Time, limit time.Duration) time.Duration {
	t.Helper()
	c.SetReadDeadline(start.Add(limit))
	_, err := io.Copy(io.Discard, br)
	took := time.Since(start)
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatalf("%s: still open after %v", what, took)
	}
	return took
}

// call makes one keep-alive call on c.
func call(t *testing.T, c net.Conn, br *bufio.Reader) {
	t.Helper()
	body := `{"name":"Ann"}`
	if _, err := io.WriteString(c, "POST /good.Hello HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n"+body); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	rsp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rsp.Body)
	rsp.Body.Close()
	if rsp.StatusCode != 200 || !strings.Contains(string(b), "hi Ann") {
		t.Fatalf("call: %d %s", rsp.StatusCode, b)
	}
}

// A hostile HTTP client is bounded like a wire one: a request header that
// dribbles in (slowloris) is cut off after the frame timeout, a keep-alive
// connection left idle is closed after the idle timeout, and a connection
// that stops after the bytes that made it HTTP is closed after the frame
// timeout.
func TestHTTPHostileClientsBounded(t *testing.T) {
	const frame, idle = 300 * time.Millisecond, 400 * time.Millisecond
	addr := startHTTPTest(t, FrameTimeout(frame), IdleTimeout(idle))

	// The first request's header is also bounded by the deadline of the
	// protocol detection; a later one only by the HTTP server's.
	for _, first := range []bool{true, false} {
		name := "slowloris header, first request"
		if !first {
			name = "slowloris header, after a request"
		}
		t.Run(name, func(t *testing.T) {
			start := time.Now() // the detection's deadline starts at the accept
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			br := bufio.NewReader(c)
			if !first {
				call(t, c, br)
				time.Sleep(frame)  // the detection's deadline, if still set, has passed
				start = time.Now() // the header's deadline starts at its first bytes
			}
			if _, err := io.WriteString(c, "POST /good.Hello HTTP/1.1\r\nHost: x\r\n"); err != nil {
				t.Fatal(err)
			}
			stop := make(chan struct{})
			defer close(stop)
			go func() { // one header byte every 20 ms, never the end of the header
				tk := time.NewTicker(20 * time.Millisecond)
				defer tk.Stop()
				for {
					select {
					case <-stop:
						return
					case <-tk.C:
						if _, err := c.Write([]byte("X")); err != nil {
							return
						}
					}
				}
			}()
			took := closedWithin(t, "dribbling header", c, br, start, 5*time.Second)
			if took < frame*9/10 || took > frame+2*time.Second {
				t.Errorf("dribbling header closed after %v, want about the frame timeout %v", took, frame)
			}
		})
	}

	t.Run("idle keep-alive", func(t *testing.T) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		br := bufio.NewReader(c)
		start := time.Now() // the idle deadline starts after the response
		call(t, c, br)
		took := closedWithin(t, "idle keep-alive connection", c, br, start, 5*time.Second)
		if took < idle*9/10 || took > idle+2*time.Second {
			t.Errorf("idle keep-alive connection closed after %v, want about the idle timeout %v", took, idle)
		}
	})

	t.Run("stalled after the method", func(t *testing.T) {
		start := time.Now()
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, "POST /go"); err != nil {
			t.Fatal(err)
		}
		took := closedWithin(t, "stalled request line", c, bufio.NewReader(c), start, 5*time.Second)
		if took < frame*9/10 || took > frame+2*time.Second {
			t.Errorf("stalled request line closed after %v, want about the frame timeout %v", took, frame)
		}
	})
}

// Body limits: a body of known length up to the limit is served, one
// over it is refused unread, and a chunked one (no length) is cut off at
// the limit.
func TestHTTPBodyLimits(t *testing.T) {
	const max = 1024
	addr := startHTTPTest(t, MaxMessageSize(max))
	hc := &http.Client{Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	url := "http://" + addr + "/good.Hello"
	call := func(body io.Reader) (int, string, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, url, body)
		req.Header.Set("Content-Type", "application/json")
		rsp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer rsp.Body.Close()
		b, _ := io.ReadAll(rsp.Body)
		return rsp.StatusCode, string(b), rsp.Header
	}
	json := func(n int) string { // a request of exactly n bytes
		return `{"name":"` + strings.Repeat("a", n-len(`{"name":""}`)) + `"}`
	}
	onlyReader := func(s string) io.Reader { return struct{ io.Reader }{strings.NewReader(s)} } // no length: chunked

	if code, body, _ := call(strings.NewReader(json(max))); code != 200 || !strings.Contains(body, "hi aaa") {
		t.Errorf("body of the limit's length: %d %s", code, body)
	}
	if code, body, hdr := call(strings.NewReader(json(max + 1))); code != 413 || hdr.Get("X-Beacon-Not-Run") != "true" {
		t.Errorf("body over the limit: %d %s", code, body)
	}
	if code, body, _ := call(onlyReader(json(max))); code != 200 || !strings.Contains(body, "hi aaa") {
		t.Errorf("chunked body of the limit's length: %d %s", code, body)
	}
	if code, body, hdr := call(onlyReader(json(4 * max))); code != 413 || hdr.Get("X-Beacon-Not-Run") != "true" || !strings.Contains(body, "limit of 1024 bytes") {
		t.Errorf("chunked body over the limit: %d, %d bytes: %.100s", code, len(body), body)
	}
}

// Interceptors see an HTTP request's remote address (it is parsed only
// for them).
func TestHTTPRemoteForInterceptors(t *testing.T) {
	got := make(chan *HandlerInfo, 1)
	addr := startHTTPTest(t, WithInterceptors(func(ctx context.Context, req any, info *HandlerInfo, next HandlerFunc) (any, error) {
		got <- info
		return next(ctx, req)
	}))
	hc := &http.Client{Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	rsp, err := hc.Post("http://"+addr+"/good.Hello", "application/json", strings.NewReader(`{"name":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, rsp.Body)
	rsp.Body.Close()
	info := <-got
	ta, ok := info.Remote.(*net.TCPAddr)
	if info.Protocol != "http" || !ok || !ta.IP.IsLoopback() || ta.Port == 0 {
		t.Errorf("interceptor saw protocol %q, remote %v (%T)", info.Protocol, info.Remote, info.Remote)
	}
}
