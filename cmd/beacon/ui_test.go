package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/beacon-go/beacon/examples/greeter"
	"github.com/beacon-go/beacon/internal/browsertest"
	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/etcd"
	"github.com/beacon-go/beacon/server"
)

func TestUIRefusesRemoteListen(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:8082", ":8082", "10.0.0.1:8082"} {
		_, errs, code := beacon(t, "--registry", "memory", "ui", "--listen", addr)
		if code != 2 || !strings.Contains(errs, "not a loopback address") || !strings.Contains(errs, "--allow_remote") {
			t.Fatalf("ui --listen %s: exit %d, %q", addr, code, errs)
		}
	}
	_, errs, code := beacon(t, "--registry", "memory", "ui", "--listen", "example.com:8082")
	if code != 2 || !strings.Contains(errs, "IP address") {
		t.Fatalf("ui --listen example.com: exit %d, %q", code, errs)
	}
}

// TestUI runs `beacon ui` on a real etcd with real Beacon servers: the JSON
// API, the event stream, a call, and the page in a real headless Chromium.
func TestUI(t *testing.T) {
	srv := testserver.MustStartEtcd(t)
	reg, err := etcd.New(context.Background(), etcd.WithAddrs(srv.Endpoints()...), etcd.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	node := func(id string) *server.Server {
		s, err := server.New(server.Name("greeter"), server.Version("1.0.0"), server.ID(id), server.Address("127.0.0.1:0"),
			server.Registry(reg), server.Logger(quiet), server.DrainGrace(0))
		if err != nil {
			t.Fatal(err)
		}
		s.Handle(&greeter.Greeter{Node: id})
		if err := s.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		return s
	}
	n1 := node("n1")
	defer n1.Stop(context.Background())

	ctx, cancel := context.WithCancel(context.Background())
	var out, errb syncBuf
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{"beacon", "--registry", "etcd", "--registry_address", strings.Join(srv.Endpoints(), ","),
			"ui", "--listen", "127.0.0.1:0"}, &out, &errb)
	}()
	defer func() {
		cancel()
		select {
		case code := <-exited:
			if code != 0 {
				t.Errorf("beacon ui exited %d: %s", code, errb.String())
			}
		case <-time.After(15 * time.Second):
			t.Error("beacon ui did not end after its context")
		}
	}()
	re := regexp.MustCompile(`http://127\.0\.0\.1:\d+/`)
	var base string
	for deadline := time.Now().Add(15 * time.Second); base == ""; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no address printed: %q %q", out.String(), errb.String())
		}
		base = strings.TrimSuffix(re.FindString(out.String()), "/")
	}
	if !strings.Contains(out.String(), "the etcd registry") {
		t.Fatalf("banner: %q", out.String())
	}
	hc := &http.Client{Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	get := func(path string, v any) {
		t.Helper()
		rsp, err := hc.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer rsp.Body.Close()
		if err := json.NewDecoder(rsp.Body).Decode(v); err != nil || rsp.StatusCode != 200 {
			t.Fatalf("GET %s: %d %v", path, rsp.StatusCode, err)
		}
	}

	var rows []struct {
		Name  string `json:"name"`
		Nodes int    `json:"nodes"`
	}
	get("/api/services", &rows)
	if len(rows) != 1 || rows[0].Name != "greeter" || rows[0].Nodes != 1 {
		t.Fatalf("services: %+v", rows)
	}

	// The event stream follows etcd's watch.
	sctx, scancel := context.WithCancel(context.Background())
	defer scancel()
	req, _ := http.NewRequestWithContext(sctx, "GET", base+"/api/events", nil)
	rsp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer rsp.Body.Close()
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(rsp.Body)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				lines <- d
			}
		}
	}()
	wait := func(what string, match func(string) bool) {
		t.Helper()
		timeout := time.After(5 * time.Second)
		for {
			select {
			case l := <-lines:
				if match(l) {
					return
				}
			case <-timeout:
				t.Fatalf("no %s event", what)
			}
		}
	}
	wait("n1 create (history)", func(l string) bool {
		return strings.Contains(l, `"type":"create"`) && strings.Contains(l, `"node":"n1"`)
	})
	start := time.Now()
	n2 := node("n2")
	wait("n2 create", func(l string) bool {
		return strings.Contains(l, `"type":"create"`) && strings.Contains(l, `"node":"n2"`)
	})
	t.Logf("n2 create event after %v", time.Since(start))
	n2.Stop(context.Background())
	wait("n2 delete", func(l string) bool {
		return strings.Contains(l, `"type":"delete"`) && strings.Contains(l, `"node":"n2"`)
	})

	// A call through the dashboard.
	creq, _ := http.NewRequest("POST", base+"/api/call", strings.NewReader(`{"service":"greeter","endpoint":"Greeter.Hello","request":{"name":"Ann"}}`))
	creq.Header.Set("Content-Type", "application/json")
	creq.Header.Set("X-Beacon-UI", "1")
	crsp, err := hc.Do(creq)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(crsp.Body)
	crsp.Body.Close()
	if crsp.StatusCode != 200 || !strings.Contains(string(body), `"ok":true`) || !strings.Contains(string(body), `"msg":"Hello Ann"`) {
		t.Fatalf("call: %d %s", crsp.StatusCode, body)
	}
	// A grpc-go node (beacongrpc, with reflection): JSON in and out, as
	// with beacon call.
	grpcGreeter(t, reg, "grpcgreeter", true)
	var sv struct {
		Versions []struct {
			Nodes []struct {
				Metadata map[string]string `json:"metadata"`
			} `json:"nodes"`
		} `json:"versions"`
	}
	get("/api/service?name=grpcgreeter", &sv)
	if len(sv.Versions) != 1 || len(sv.Versions[0].Nodes) != 1 || sv.Versions[0].Nodes[0].Metadata[registry.MetaProtocol] != registry.ProtocolGRPC {
		t.Fatalf("grpc service: %+v", sv)
	}
	creq, _ = http.NewRequest("POST", base+"/api/call", strings.NewReader(`{"service":"grpcgreeter","endpoint":"helloworld.Greeter.SayHello","request":{"name":"Gu"}}`))
	creq.Header.Set("Content-Type", "application/json")
	creq.Header.Set("X-Beacon-UI", "1")
	if crsp, err = hc.Do(creq); err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(crsp.Body)
	crsp.Body.Close()
	if crsp.StatusCode != 200 || !strings.Contains(string(body), `"ok":true`) || !strings.Contains(string(body), `"message":"Hello Gu"`) {
		t.Fatalf("call of a gRPC node: %d %s", crsp.StatusCode, body)
	}

	// Cross-site: refused.
	creq, _ = http.NewRequest("POST", base+"/api/call", strings.NewReader(`{"service":"greeter","endpoint":"Greeter.Hello"}`))
	creq.Header.Set("Content-Type", "text/plain")
	creq.Header.Set("Origin", "http://evil.example")
	if crsp, err = hc.Do(creq); err != nil || crsp.StatusCode == 200 {
		t.Fatalf("cross-site call: %v %v", crsp.StatusCode, err)
	}
	crsp.Body.Close()
	scancel()

	// The page, in a real Chromium: the service from etcd, a node that
	// joins within a second.
	b := browsertest.Start(t, 1280, 900)
	if err := chromedp.Do(b.Ctx, chromedp.Navigate(base+"/#/service/greeter")); err != nil {
		t.Fatal(err)
	}
	poll := func(what, expr string, d time.Duration) {
		t.Helper()
		pctx, pcancel := context.WithTimeout(b.Ctx, d+time.Second)
		defer pcancel()
		if _, err := chromedp.Run(pctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(d))); err != nil {
			text, _ := chromedp.Run(b.Ctx, chromedp.Evaluate[string](`document.body.innerText`))
			t.Fatalf("%s: %v\n%s\n%q", what, err, text, b.Errors())
		}
	}
	nodes := `document.querySelector('#service-rows tr[data-service="greeter"] td.nodes')?.textContent`
	poll("the page shows greeter from etcd", `document.getElementById('registry').textContent === 'etcd' && `+nodes+` === '1' &&
		document.querySelector('#versions tr[data-node="n1"]') !== null && document.getElementById('live').textContent === 'live'`, 5*time.Second)
	n3 := node("n3")
	poll("n3 joins", nodes+` === '2' && document.querySelector('#versions tr[data-node="n3"]') !== null`, time.Second)
	n3.Stop(context.Background())
	poll("n3 leaves", nodes+` === '1' && document.querySelector('#versions tr[data-node="n3"]') === null`, time.Second)
}
