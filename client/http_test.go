package client_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/beacon-go/beacon/server"
	"github.com/beacon-go/beacon/status"
)

// HTTP/JSON on Beacon's port (issue 10, part 5): curl-style POST
// /<Endpoint>, errors as JSON with the code as HTTP status, GET /health,
// limits; Beacon calls keep working on the same port.
func TestHTTPOnTheSamePort(t *testing.T) {
	e := newEnv(t, 1, server.MaxMessageSize(4<<10))
	base := "http://" + e.servers[0].Addr().String()
	hc := &http.Client{Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	post := func(path, ctype, body string, hdr ...string) (int, string, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		rsp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer rsp.Body.Close()
		b, _ := io.ReadAll(rsp.Body)
		return rsp.StatusCode, string(b), rsp.Header
	}
	tests := []struct {
		name, path, ctype, body string
		hdr                     []string
		code                    int
		want                    string
		notRun                  bool
	}{
		{"call", "/Greeter.Hello", "application/json", `{"name":"Ann"}`, nil, 200, `"msg":"Hello Ann"`, false},
		{"call without content type", "/Greeter.Hello", "", `{"name":"Bo"}`, nil, 200, `"msg":"Hello Bo"`, false},
		{"handler error", "/Greeter.Hello", "application/json", `{"name":"x","Fail":409}`, nil, 409, `"code":409`, false},
		{"unknown endpoint", "/Nope.Nope", "application/json", `{}`, nil, 404, `unknown endpoint`, true},
		{"bad json", "/Greeter.Hello", "application/json", `{`, nil, 400, `decode request`, false},
		{"too large", "/Greeter.Hello", "application/json", `{"name":"` + strings.Repeat("a", 8<<10) + `"}`, nil, 413, `limit of 4096 bytes`, true},
		{"unknown content type", "/Greeter.Hello", "text/csv", `a,b`, nil, 415, `"code":415`, true},
		{"timeout", "/Greeter.Hello", "application/json", `{"name":"x","Delay":2000000000}`, []string{"Beacon-Timeout", "50ms"}, 408, `"code":408`, false},
	}
	for _, tc := range tests {
		code, body, hdr := post(tc.path, tc.ctype, tc.body, tc.hdr...)
		if code != tc.code || !strings.Contains(body, tc.want) || (hdr.Get("X-Beacon-Not-Run") == "true") != tc.notRun {
			t.Errorf("%s: %d %s (not run %q), want %d with %s", tc.name, code, body, hdr.Get("X-Beacon-Not-Run"), tc.code, tc.want)
		}
	}
	var got map[string]any
	_, body, _ := post("/Greeter.Hello", "application/json", `{"name":"J"}`)
	if err := json.Unmarshal([]byte(body), &got); err != nil || got["msg"] != "Hello J" {
		t.Errorf("response is not the handler's JSON: %s", body)
	}
	rsp, err := hc.Get(base + "/health")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rsp.Body)
	rsp.Body.Close()
	if rsp.StatusCode != 200 || string(b) != `{"status":"ok"}` {
		t.Errorf("health: %d %s", rsp.StatusCode, b)
	}
	// Beacon's own calls on the same port are unaffected.
	if err := e.cli.Call(context.Background(), "greeter", "Greeter.Hello", &HelloReq{Name: "w"}, new(HelloRsp)); err != nil {
		t.Fatal(err)
	}
	if err := e.cli.Call(context.Background(), "greeter", "Greeter.Hello", &HelloReq{Fail: 409}, new(HelloRsp)); status.Code(err) != 409 {
		t.Fatalf("wire error: %v", err)
	}
}

// With HTTP off, an HTTP request is closed like any bad preface.
func TestHTTPOff(t *testing.T) {
	e := newEnv(t, 1, server.HTTP(false))
	hc := &http.Client{Timeout: 5 * time.Second}
	if rsp, err := hc.Get("http://" + e.servers[0].Addr().String() + "/health"); err == nil {
		rsp.Body.Close()
		t.Fatalf("HTTP served with HTTP(false): %d", rsp.StatusCode)
	}
}

// /health says "draining" from the start of Stop, while the node still
// serves calls during its drain grace.
func TestHealthDuringDrain(t *testing.T) {
	e := newEnv(t, 1, server.DrainGrace(time.Second))
	base := "http://" + e.servers[0].Addr().String()
	hc := &http.Client{Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	stopped := make(chan struct{})
	go func() { e.servers[0].Stop(context.Background()); close(stopped) }()
	deadline := time.Now().Add(900 * time.Millisecond)
	for {
		rsp, err := hc.Get(base + "/health")
		if err != nil {
			t.Fatal(err)
		}
		rsp.Body.Close()
		if rsp.StatusCode == http.StatusServiceUnavailable {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("health %d during the drain grace, want 503", rsp.StatusCode)
		}
		time.Sleep(10 * time.Millisecond)
	}
	code, _ := func() (int, error) {
		rsp, err := hc.Post(base+"/Greeter.Hello", "application/json", strings.NewReader(`{"name":"d"}`))
		if err != nil {
			return 0, err
		}
		rsp.Body.Close()
		return rsp.StatusCode, nil
	}()
	if code != http.StatusOK {
		t.Errorf("a call during the drain grace: %d, want 200", code)
	}
	<-stopped
}

// HTTP/2 cleartext (h2c, prior knowledge) on Beacon's port too.
func TestH2C(t *testing.T) {
	e := newEnv(t, 1)
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	defer hc.CloseIdleConnections()
	rsp, err := hc.Post("http://"+e.servers[0].Addr().String()+"/Greeter.Hello", "application/json", strings.NewReader(`{"name":"H2"}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rsp.Body)
	rsp.Body.Close()
	if rsp.ProtoMajor != 2 || rsp.StatusCode != 200 || !strings.Contains(string(b), "Hello H2") {
		t.Fatalf("h2c: %s %d %s", rsp.Proto, rsp.StatusCode, b)
	}
}
