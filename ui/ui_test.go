package ui

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beacon-go/beacon/examples/greeter"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/server"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.DiscardHandler)

// env is a dashboard served on 127.0.0.1:0 over a memory registry shared
// with real Beacon servers.
type env struct {
	t    *testing.T
	reg  *memory.Registry
	ui   *Server
	base string // http://127.0.0.1:PORT
	hc   *http.Client
}

func newEnv(t *testing.T, opts ...Option) *env {
	t.Helper()
	reg := memory.New(memory.WithLogger(quiet))
	srv := New(reg, append([]Option{WithLogger(quiet)}, opts...)...)
	ln, err := Listen("127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	e := &env{t: t, reg: reg, ui: srv, base: "http://" + ln.Addr().String(), hc: &http.Client{Timeout: 10 * time.Second}}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		e.hc.CloseIdleConnections()
		reg.Close()
	})
	return e
}

// greeterNode starts a real Beacon server of greeter on the registry; it
// is stopped (deregistered) by the returned function or at cleanup.
func (e *env) greeterNode(id string, md map[string]string) (*server.Server, func()) {
	e.t.Helper()
	srv, err := server.New(server.Name("greeter"), server.Version("1.0.0"), server.ID(id), server.Address("127.0.0.1:0"),
		server.Registry(e.reg), server.Logger(quiet), server.DrainGrace(0), server.Metadata(md))
	if err != nil {
		e.t.Fatal(err)
	}
	if err := srv.Handle(&greeter.Greeter{Node: id}); err != nil {
		e.t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			srv.Stop(context.Background())
		}
	}
	e.t.Cleanup(stop)
	return srv, stop
}

func (e *env) do(req *http.Request) (int, http.Header, []byte) {
	e.t.Helper()
	rsp, err := e.hc.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rsp.Body.Close()
	b, err := io.ReadAll(rsp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return rsp.StatusCode, rsp.Header, b
}

func (e *env) get(path string, v any) int {
	e.t.Helper()
	req, _ := http.NewRequest("GET", e.base+path, nil)
	code, _, b := e.do(req)
	if v != nil && code == 200 {
		if err := json.Unmarshal(b, v); err != nil {
			e.t.Fatalf("GET %s: %v: %s", path, err, b)
		}
	}
	return code
}

// callReq is a request as the page sends it.
func (e *env) callReq(body string) *http.Request {
	req, _ := http.NewRequest("POST", e.base+"/api/call", strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(HeaderName, "1")
	req.Header.Set("Origin", e.base)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	return req
}

func (e *env) call(body string) CallResult {
	e.t.Helper()
	code, _, b := e.do(e.callReq(body))
	if code != 200 {
		e.t.Fatalf("call %s: %d %s", body, code, b)
	}
	var res CallResult
	if err := json.Unmarshal(b, &res); err != nil {
		e.t.Fatalf("call: %v: %s", err, b)
	}
	return res
}

func TestAPI(t *testing.T) {
	e := newEnv(t)
	e.greeterNode("n1", map[string]string{"zone": "a"})

	var info Info
	if e.get("/api/info", &info) != 200 || info.Registry != "memory" || !strings.HasPrefix(info.Selector, "cache/") || info.MaxBody != DefaultMaxBody {
		t.Fatalf("info: %+v", info)
	}
	var rows []ServiceRow
	if code := e.get("/api/services", &rows); code != 200 || len(rows) != 1 || rows[0].Name != "greeter" || rows[0].Nodes != 1 ||
		len(rows[0].Versions) != 1 || rows[0].Versions[0] != (VersionRow{Version: "1.0.0", Nodes: 1}) {
		t.Fatalf("services: %d %+v", code, rows)
	}

	var sv ServiceView
	if code := e.get("/api/service?name=greeter", &sv); code != 200 || len(sv.Versions) != 1 || sv.Selected {
		t.Fatalf("service: %d %+v", code, sv)
	}
	v := sv.Versions[0]
	if len(v.Nodes) != 1 || v.Nodes[0].ID != "n1" || v.Nodes[0].Metadata["zone"] != "a" || v.Nodes[0].Health != nil ||
		!strings.HasPrefix(v.Nodes[0].Address, "127.0.0.1:") {
		t.Fatalf("nodes before any call: %+v", v.Nodes)
	}
	if len(v.Endpoints) != 1 || v.Endpoints[0].Name != "Greeter.Hello" || v.Endpoints[0].Request == nil ||
		len(v.Endpoints[0].Request.Values) != 1 || v.Endpoints[0].Request.Values[0].Name != "name" || v.Endpoints[0].Request.Values[0].Type != "string" {
		t.Fatalf("endpoints: %+v", v.Endpoints)
	}
	if code := e.get("/api/service?name=nobody", nil); code != 404 {
		t.Fatalf("unknown service: %d", code)
	}
	if code := e.get("/api/service", nil); code != 400 {
		t.Fatalf("no name: %d", code)
	}

	// A call through Beacon's client: the answer, its timing, its attempt.
	res := e.call(`{"service":"greeter","endpoint":"Greeter.Hello","request":{"name":"Ann"}}`)
	var ans greeter.HelloRsp
	if !res.OK || res.Code != 0 || json.Unmarshal(res.Response, &ans) != nil || ans != (greeter.HelloRsp{Msg: "Hello Ann", Node: "n1"}) {
		t.Fatalf("call: %+v", res)
	}
	if res.DurationNS <= 0 || len(res.Attempts) != 1 || res.Attempts[0].Node != "n1" || res.Attempts[0].Number != 1 ||
		res.Attempts[0].DurationNS <= 0 || res.Attempts[0].DurationNS > res.DurationNS || res.Attempts[0].Address != v.Nodes[0].Address {
		t.Fatalf("call timing: %+v", res)
	}
	// The selector now knows the service: health figures.
	if code := e.get("/api/service?name=greeter", &sv); code != 200 || !sv.Selected {
		t.Fatalf("service after a call: %d %+v", code, sv)
	}
	h := sv.Versions[0].Nodes[0].Health
	if h == nil || h.Ejected || h.InFlight != 0 || h.LatencyNS <= 0 || h.Weight != 1 {
		t.Fatalf("health after a call: %+v", h)
	}

	// The handler's error is the call's answer, not an API failure.
	res = e.call(`{"service":"greeter","endpoint":"Greeter.Hello","request":{}}`)
	if res.OK || res.Code != 400 || !strings.Contains(res.Error, greeter.ErrNoName.Error()) {
		t.Fatalf("call without a name: %+v", res)
	}
	res = e.call(`{"service":"greeter","endpoint":"Greeter.Hello","request":{"name":"Bo"},"node":"nope"}`)
	if res.OK || len(res.Attempts) != 0 {
		t.Fatalf("call of a node that does not exist: %+v", res)
	}
	res = e.call(`{"service":"nobody","endpoint":"X.Y"}`)
	if res.OK || res.Code != 404 && res.Code != 503 {
		t.Fatalf("call of an unknown service: %+v", res)
	}
}

func TestCallNodeAndFailover(t *testing.T) {
	e := newEnv(t)
	e.greeterNode("n1", nil)
	e.greeterNode("n2", nil)
	for _, id := range []string{"n1", "n2", "n1"} {
		res := e.call(`{"service":"greeter","endpoint":"Greeter.Hello","request":{"name":"Ann"},"node":"` + id + `"}`)
		if !res.OK || len(res.Attempts) != 1 || res.Attempts[0].Node != id || !strings.Contains(string(res.Response), `"node":"`+id+`"`) {
			t.Fatalf("call pinned to %s: %+v", id, res)
		}
	}
	// A node that is registered but dead: the call fails over, the node is
	// ejected, and the page hears of it on the event stream.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	if err := e.reg.Register(context.Background(), &registry.Service{Name: "greeter", Version: "1.0.0",
		Nodes: []*registry.Node{{ID: "dead", Address: dead, Metadata: map[string]string{registry.MetaProtocol: registry.ProtocolBeacon}}}}); err != nil {
		t.Fatal(err)
	}
	events := e.stream(nil)
	waitEvent(t, events, "registry", func(m sse) bool { return strings.Contains(m.data, `"node":"dead"`) })
	var sv ServiceView
	for range 50 {
		if e.get("/api/service?name=greeter", &sv); len(sv.Versions) == 1 && len(sv.Versions[0].Nodes) == 3 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	ejected := false
	for i := 0; i < 30 && !ejected; i++ {
		res := e.call(`{"service":"greeter","endpoint":"Greeter.Hello","request":{"name":"Ann"}}`)
		if !res.OK {
			t.Fatalf("call with a dead node among live ones: %+v", res)
		}
		for _, a := range res.Attempts {
			if a.Node == "dead" {
				if a.Error == "" || len(res.Attempts) < 2 {
					t.Fatalf("attempt on the dead node: %+v", res)
				}
				ejected = true
			}
		}
	}
	if !ejected {
		t.Fatal("no call tried the dead node")
	}
	waitEvent(t, events, "health", func(m sse) bool { return m.data == `{"service":"greeter","node":"dead","ejected":true}` })
	e.get("/api/service?name=greeter", &sv)
	for _, n := range sv.Versions[0].Nodes {
		if n.ID == "dead" && (n.Health == nil || !n.Health.Ejected || n.Health.Until == nil || n.Health.Incidents != 1) {
			t.Fatalf("dead node's health: %+v", n.Health)
		}
	}
}

// sse is one server-sent event.
type sse struct{ event, id, data string }

// stream reads the event stream until the test ends; header may set
// request headers (Last-Event-ID).
func (e *env) stream(header http.Header) <-chan sse {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", e.base+"/api/events", nil)
	for k, v := range header {
		req.Header[k] = v
	}
	rsp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		e.t.Fatal(err)
	}
	if rsp.StatusCode != 200 || rsp.Header.Get("Content-Type") != "text/event-stream" {
		cancel()
		rsp.Body.Close()
		e.t.Fatalf("events: %d %s", rsp.StatusCode, rsp.Header.Get("Content-Type"))
	}
	out := make(chan sse, 1000)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(out)
		sc := bufio.NewScanner(rsp.Body)
		var m sse
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if m.event != "" {
					out <- m
				}
				m = sse{}
			case strings.HasPrefix(line, "event: "):
				m.event = line[7:]
			case strings.HasPrefix(line, "id: "):
				m.id = line[4:]
			case strings.HasPrefix(line, "data: "):
				m.data = line[6:]
			}
		}
	}()
	e.t.Cleanup(func() {
		cancel()
		rsp.Body.Close()
		<-done
	})
	return out
}

func waitEvent(t *testing.T, c <-chan sse, event string, match func(sse) bool) sse {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case m, ok := <-c:
			if !ok {
				t.Fatalf("stream ended waiting for %s", event)
			}
			if m.event == event && (match == nil || match(m)) {
				return m
			}
		case <-timeout:
			t.Fatalf("no %s event within 5s", event)
		}
	}
}

func TestEvents(t *testing.T) {
	e := newEnv(t, keepAlive(50*time.Millisecond))
	events := e.stream(nil)
	if m := waitEvent(t, events, "watch", nil); m.data == `{"ok":false,"error":"starting"}` {
		waitEvent(t, events, "watch", func(m sse) bool { return m.data == `{"ok":true}` })
	} else if m.data != `{"ok":true}` {
		t.Fatalf("first watch status: %+v", m)
	}

	start := time.Now()
	srv, stop := e.greeterNode("n1", map[string]string{"zone": "a"})
	m := waitEvent(t, events, "registry", nil)
	var ev Event
	if err := json.Unmarshal([]byte(m.data), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Type != "create" || ev.Service != "greeter" || ev.Version != "1.0.0" || ev.Node != "n1" ||
		ev.Address != srv.Service().Nodes[0].Address || ev.Metadata["zone"] != "a" || m.id != fmt.Sprint(ev.ID) || ev.ID == 0 {
		t.Fatalf("create event: %+v %+v", m, ev)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("create event after %v", d)
	}
	firstID := ev.ID

	start = time.Now()
	stop()
	m = waitEvent(t, events, "registry", func(m sse) bool { return strings.Contains(m.data, `"type":"delete"`) })
	if err := json.Unmarshal([]byte(m.data), &ev); err != nil || ev.Node != "n1" || ev.Service != "greeter" {
		t.Fatalf("delete event: %+v %v", m, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("delete event after %v", d)
	}

	// A page that connects later gets the history; one that reconnects
	// (Last-Event-ID) only what it missed.
	later := e.stream(nil)
	waitEvent(t, later, "watch", nil)
	if m := waitEvent(t, later, "registry", nil); m.id != fmt.Sprint(firstID) {
		t.Fatalf("history starts with %+v", m)
	}
	resumed := e.stream(http.Header{"Last-Event-Id": {fmt.Sprint(firstID)}})
	if m := waitEvent(t, resumed, "registry", nil); !strings.Contains(m.data, `"type":"delete"`) {
		t.Fatalf("resumed stream starts with %+v", m)
	}
	restarted := e.stream(http.Header{"Last-Event-Id": {"999999"}}) // an ID of an earlier server
	if m := waitEvent(t, restarted, "registry", nil); m.id != fmt.Sprint(firstID) {
		t.Fatalf("stream after a server restart starts with %+v", m)
	}
}

func TestStreamsBounded(t *testing.T) {
	e := newEnv(t, MaxStreams(1))
	e.stream(nil)
	req, _ := http.NewRequest("GET", e.base+"/api/events", nil)
	if code, _, b := e.do(req); code != http.StatusServiceUnavailable {
		t.Fatalf("second stream over MaxStreams(1): %d %s", code, b)
	}
}

func TestCallRefusesCrossSite(t *testing.T) {
	e := newEnv(t)
	e.greeterNode("n1", nil)
	ok := `{"service":"greeter","endpoint":"Greeter.Hello","request":{"name":"Ann"}}`
	for _, tc := range []struct {
		name string
		edit func(*http.Request)
		code int
	}{
		{"no custom header", func(r *http.Request) { r.Header.Del(HeaderName) }, 403},
		{"form post", func(r *http.Request) { r.Header.Set("Content-Type", "application/x-www-form-urlencoded") }, 415},
		{"text/plain", func(r *http.Request) { r.Header.Set("Content-Type", "text/plain") }, 415},
		{"other origin", func(r *http.Request) { r.Header.Set("Origin", "http://evil.example") }, 403},
		{"other port", func(r *http.Request) { r.Header.Set("Origin", "http://127.0.0.1:1") }, 403},
		{"null origin", func(r *http.Request) { r.Header.Set("Origin", "null") }, 403},
		{"cross-site fetch", func(r *http.Request) { r.Header.Set("Sec-Fetch-Site", "cross-site") }, 403},
		{"same-site fetch", func(r *http.Request) { r.Header.Set("Sec-Fetch-Site", "same-site") }, 403},
		{"rebound host", func(r *http.Request) { r.Host = "evil.example" }, 421},
		{"GET", func(r *http.Request) { r.Method = "GET" }, 405},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := e.callReq(ok)
			tc.edit(req)
			code, h, b := e.do(req)
			if code != tc.code || h.Get("Access-Control-Allow-Origin") != "" {
				t.Fatalf("%d %s, want %d", code, b, tc.code)
			}
		})
	}
	// A CORS preflight is never granted.
	req, _ := http.NewRequest("OPTIONS", e.base+"/api/call", nil)
	req.Header.Set("Origin", "http://evil.example")
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", "content-type,x-beacon-ui")
	if code, h, _ := e.do(req); code < 400 || h.Get("Access-Control-Allow-Origin") != "" || h.Get("Access-Control-Allow-Headers") != "" {
		t.Fatalf("preflight: %d %v", code, h)
	}
	// Without Origin and Sec-Fetch-Site (curl), with the header: served.
	req = e.callReq(ok)
	req.Header.Del("Origin")
	req.Header.Del("Sec-Fetch-Site")
	if code, _, b := e.do(req); code != 200 || !strings.Contains(string(b), `"ok":true`) {
		t.Fatalf("call without Origin: %d %s", code, b)
	}
	// Every route refuses a host name that is not allowed (DNS rebinding).
	for _, p := range []string{"/", "/static/app.js", "/api/info", "/api/services", "/api/service?name=greeter", "/api/events"} {
		req, _ := http.NewRequest("GET", e.base+p, nil)
		req.Host = "rebind.example:8082"
		if code, _, _ := e.do(req); code != http.StatusMisdirectedRequest {
			t.Fatalf("GET %s with Host rebind.example: %d", p, code)
		}
		req.Host = "localhost"
		if p != "/api/events" {
			if code, _, _ := e.do(req); code != 200 {
				t.Fatalf("GET %s with Host localhost: %d", p, code)
			}
		}
	}
}

func TestAllowHosts(t *testing.T) {
	e := newEnv(t, AllowHosts("dash.internal"))
	req, _ := http.NewRequest("GET", e.base+"/api/info", nil)
	req.Host = "dash.internal:8082"
	if code, _, b := e.do(req); code != 200 {
		t.Fatalf("allowed host: %d %s", code, b)
	}
	req.Host = "other.internal"
	if code, _, _ := e.do(req); code != http.StatusMisdirectedRequest {
		t.Fatalf("other host: %d", code)
	}
}

func TestCallBodyBounded(t *testing.T) {
	e := newEnv(t, MaxBody(1024))
	e.greeterNode("n1", nil)
	big := `{"service":"greeter","endpoint":"Greeter.Hello","request":{"name":"` + strings.Repeat("x", 2000) + `"}}`
	if code, _, b := e.do(e.callReq(big)); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("body over MaxBody: %d %s", code, b)
	}
	trailing := `{"service":"greeter","endpoint":"Greeter.Hello"}` + strings.Repeat(" ", 900) + `{"x":` + strings.Repeat("1", 200) + `}`
	if code, _, b := e.do(e.callReq(trailing)); code != http.StatusRequestEntityTooLarge {
		t.Fatalf("trailing data over MaxBody: %d %s", code, b)
	}
	for body, want := range map[string]int{
		`{"service":"greeter","endpoint":"Greeter.Hello"} {}`:                     400, // more data
		`{"service":"greeter","endpoint":"Greeter.Hello","bogus":1}`:              400, // unknown field
		`{"service":"greeter"}`:                                                   400, // no endpoint
		`not json`:                                                                400,
		`{"service":"greeter","endpoint":"Greeter.Hello","request":{"name":"a"}}`: 200,
	} {
		if code, _, b := e.do(e.callReq(body)); code != want {
			t.Fatalf("%s: %d %s, want %d", body, code, b, want)
		}
	}
}

func TestTimeout(t *testing.T) {
	e := newEnv(t)
	srv, err := server.New(server.Name("slow"), server.Address("127.0.0.1:0"), server.Registry(e.reg), server.Logger(quiet), server.DrainGrace(0))
	if err != nil {
		t.Fatal(err)
	}
	srv.Handle(&greeter.Greeter{Node: "s", Delay: 2 * time.Second})
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.Stop(context.Background())
	start := time.Now()
	res := e.call(`{"service":"slow","endpoint":"Greeter.Hello","request":{"name":"a"},"timeout_ms":200}`)
	if res.OK || res.Code != 408 || time.Since(start) > 1500*time.Millisecond {
		t.Fatalf("call with timeout_ms 200 of a 2s handler: %+v after %v", res, time.Since(start))
	}
}

func TestPageAndHeaders(t *testing.T) {
	e := newEnv(t)
	req, _ := http.NewRequest("GET", e.base+"/", nil)
	code, h, b := e.do(req)
	if code != 200 || !strings.Contains(string(b), `<script src="/static/app.js" defer></script>`) || !strings.HasPrefix(h.Get("Content-Type"), "text/html") {
		t.Fatalf("page: %d %v", code, h)
	}
	csp := h.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Fatalf("CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") || h.Get("X-Content-Type-Options") != "nosniff" || h.Get("X-Frame-Options") != "DENY" {
		t.Fatalf("headers: %v", h)
	}
	for path, ct := range map[string]string{"/static/app.js": "text/javascript", "/static/app.css": "text/css"} {
		req, _ := http.NewRequest("GET", e.base+path, nil)
		if code, h, _ := e.do(req); code != 200 || !strings.HasPrefix(h.Get("Content-Type"), ct) {
			t.Fatalf("%s: %d %s", path, code, h.Get("Content-Type"))
		}
	}
	req, _ = http.NewRequest("GET", e.base+"/static/", nil)
	if code, _, b := e.do(req); code != 404 {
		t.Fatalf("GET /static/: %d %s", code, b)
	}
	// The script never parses registry data as HTML.
	js, _ := static.ReadFile("static/app.js")
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"} {
		if strings.Contains(string(js), bad) {
			t.Fatalf("app.js uses %s", bad)
		}
	}
}

func TestListen(t *testing.T) {
	for addr, want := range map[string]error{
		"127.0.0.1:8082": nil,
		"127.0.0.9:0":    nil,
		"localhost:0":    nil,
		"[::1]:0":        nil,
		"0.0.0.0:8082":   ErrNotLoopback,
		":8082":          ErrNotLoopback,
		"[::]:8082":      ErrNotLoopback,
		"10.1.2.3:8082":  ErrNotLoopback,
		"example.com:80": errors.New("the host must be an IP address"),
		"127.0.0.1":      errors.New("missing port"),
	} {
		_, err := checkListen(addr, false)
		switch {
		case want == nil && err != nil, want != nil && err == nil:
			t.Fatalf("%s: %v, want %v", addr, err, want)
		case want == ErrNotLoopback && !errors.Is(err, ErrNotLoopback):
			t.Fatalf("%s: %v, want ErrNotLoopback", addr, err)
		case want != nil && want != ErrNotLoopback && !strings.Contains(err.Error(), want.Error()):
			t.Fatalf("%s: %v, want %v", addr, err, want)
		}
	}
	if a, err := checkListen("0.0.0.0:8082", true); err != nil || a != "0.0.0.0:8082" {
		t.Fatalf("allowed remote: %q %v", a, err)
	}
	if a, err := checkListen("example.com:80", true); err == nil {
		t.Fatalf("a DNS name with allowRemote: %q", a)
	}
	if _, err := Listen("0.0.0.0:0", false); !errors.Is(err, ErrNotLoopback) {
		t.Fatalf("Listen 0.0.0.0: %v", err)
	}
}
