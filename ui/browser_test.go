package ui

import (
	"bytes"
	"context"
	"flag"
	"image/png"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/beacon-go/beacon/internal/browsertest"
	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
)

var screenshots = flag.Bool("screenshots", false, "write the browser test's screenshots into docs/ (for the README)")

// screenshot saves the browser's viewport as docs/ui-NAME.png with
// -screenshots, else into the test's temporary directory (so that taking
// it is tested either way).
func screenshot(t *testing.T, b *browsertest.Browser, name string) {
	t.Helper()
	buf, err := chromedp.Run(b.Ctx, chromedp.CaptureScreenshot())
	if err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(bytes.NewReader(buf))
	if err != nil {
		t.Fatalf("screenshot %s is not a PNG: %v", name, err)
	}
	if b := img.Bounds(); b.Dx() < 1000 || b.Dy() < 800 {
		t.Fatalf("screenshot %s is %v", name, b)
	}

	dir := t.TempDir()
	if *screenshots {
		root, err := testserver.RepoRoot()
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Join(root, "docs")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "ui-"+name+".png"), buf, 0o644); err != nil {
		t.Fatal(err)
	}
}

// poll waits until the JavaScript expression is true, within d.
func poll(t *testing.T, b *browsertest.Browser, d time.Duration, what, expr string) time.Duration {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(b.Ctx, d+time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(d))); err != nil {
		text, _ := chromedp.Run(b.Ctx, chromedp.Evaluate[string](`document.body.innerText`))
		t.Fatalf("%s: not within %v: %v\npage text:\n%s\nbrowser errors: %q", what, d, err, text, b.Errors())
	}
	return time.Since(start)
}

func jsString(s string) string { return strconv.Quote(s) }

// TestBrowser drives the page in a real headless Chromium: it shows a
// service of real Beacon servers on a memory registry, follows nodes that
// join and leave within a second (server-sent events), calls an endpoint
// from the form, and renders hostile registry data as text.
func TestBrowser(t *testing.T) {
	e := newEnv(t)
	const xss = `<img src=x onerror="window.__xss=1">`
	srv1, stop1 := e.greeterNode("n1", map[string]string{"zone": "a", "note": xss})
	b := browsertest.Start(t, 1280, 1000)

	if err := chromedp.Do(b.Ctx, chromedp.Navigate(e.base+"/#/service/greeter")); err != nil {
		t.Fatal(err)
	}
	nodesCell := `document.querySelector('#service-rows tr[data-service="greeter"] td.nodes')`
	poll(t, b, 5*time.Second, "the page shows greeter and its node",
		nodesCell+`?.textContent === '1' && document.querySelector('#versions tr[data-node="n1"]') !== null && document.getElementById('live').textContent === 'live'`)
	poll(t, b, time.Second, "the event log shows n1's registration",
		`document.querySelector('#log-rows tr[data-event="create"][data-node="n1"]') !== null`)
	poll(t, b, time.Second, "the endpoint and its request shape",
		`document.querySelector('#versions tr[data-endpoint="Greeter.Hello"]')?.textContent.includes('name string') &&
		 document.getElementById('call-endpoint').value === 'Greeter.Hello' &&
		 JSON.parse(document.getElementById('call-body').value).name === ''`)

	// Registry data is text, never markup.
	poll(t, b, time.Second, "hostile metadata shown as text",
		`document.querySelector('#versions tr[data-node="n1"]').textContent.includes('note='+`+jsString(xss)+`)`)
	if got, err := chromedp.Run(b.Ctx, chromedp.Evaluate[bool](`window.__xss === undefined && document.querySelectorAll('main img').length === 0`)); err != nil || !got {
		t.Fatalf("hostile metadata became markup (%v)", err)
	}

	// A node joins: the page shows it within a second, without polling.
	_, stop2 := e.greeterNode("n2", map[string]string{"zone": "b"})
	d := poll(t, b, time.Second, "n2 joins",
		nodesCell+`?.textContent === '2' && document.querySelector('#versions tr[data-node="n2"]') !== null &&
		 document.querySelector('#log-rows tr[data-event="create"][data-node="n2"]') !== null &&
		 [...document.getElementById('call-node').options].some(o => o.value === 'n2')`)
	t.Logf("node joined: page updated in %v", d)
	screenshot(t, b, "services")

	// It leaves: gone within a second.
	stop2()
	d = poll(t, b, time.Second, "n2 leaves",
		nodesCell+`?.textContent === '1' && document.querySelector('#versions tr[data-node="n2"]') === null &&
		 document.querySelector('#log-rows tr[data-event="delete"][data-node="n2"]') !== null`)
	t.Logf("node left: page updated in %v", d)

	// The call form: the handler's answer, its timing, and the health
	// figures that the call gave the selector.
	if err := chromedp.Do(b.Ctx,
		chromedp.SetValue(chromedp.ID("call-body"), `{"name": "Ann"}`),
		chromedp.Click(chromedp.ID("call-submit")),
	); err != nil {
		t.Fatal(err)
	}
	poll(t, b, 5*time.Second, "the call's answer",
		`document.getElementById('call-status').textContent === 'OK' &&
		 JSON.parse(document.getElementById('call-response').textContent).msg === 'Hello Ann' &&
		 /\d/.test(document.getElementById('call-time').textContent) &&
		 document.querySelector('#call-attempts tbody tr')?.textContent.includes('n1')`)
	poll(t, b, time.Second, "the node's health after the call",
		`document.querySelector('#versions tr[data-node="n1"] td.health')?.textContent === 'healthy' &&
		 /\d/.test(document.querySelector('#versions tr[data-node="n1"] td.latency')?.textContent)`)
	screenshot(t, b, "call")

	// A node registered but dead, called from the form: the call is not
	// run, the selector ejects the node, and the page shows it ejected.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := &registry.Service{Name: "greeter", Version: "1.0.0", Endpoints: srv1.Service().Endpoints,
		Nodes: []*registry.Node{{ID: "dead", Address: ln.Addr().String(), Metadata: map[string]string{registry.MetaProtocol: registry.ProtocolBeacon, "zone": "c"}}}}
	ln.Close()
	if err := e.reg.Register(context.Background(), dead); err != nil {
		t.Fatal(err)
	}
	poll(t, b, time.Second, "the dead node joins the form's node list",
		`[...document.getElementById('call-node').options].some(o => o.value === 'dead')`)
	if err := chromedp.Do(b.Ctx,
		chromedp.SetValue(chromedp.ID("call-node"), "dead"),
		chromedp.Click(chromedp.ID("call-submit")),
	); err != nil {
		t.Fatal(err)
	}
	poll(t, b, 5*time.Second, "the dead node's call fails, not run",
		`document.getElementById('call-status').textContent === 'status 503 (not run)' &&
		 document.querySelector('#call-attempts tbody tr')?.textContent.includes('dead')`)
	poll(t, b, time.Second, "the dead node shown ejected",
		`document.querySelector('#versions tr[data-node="dead"] td.health')?.textContent.startsWith('ejected until') &&
		 document.querySelector('#versions tr[data-node="n1"] td.health')?.textContent === 'healthy'`)
	screenshot(t, b, "health")
	if err := e.reg.Deregister(context.Background(), dead); err != nil {
		t.Fatal(err)
	}

	// A failing call shows its status.
	if err := chromedp.Do(b.Ctx,
		chromedp.SetValue(chromedp.ID("call-node"), ""),
		chromedp.SetValue(chromedp.ID("call-body"), `{}`),
		chromedp.Click(chromedp.ID("call-submit")),
	); err != nil {
		t.Fatal(err)
	}
	poll(t, b, 5*time.Second, "the failed call's status",
		`document.getElementById('call-status').textContent === 'status 400' &&
		 document.getElementById('call-response').textContent.includes('name is required')`)

	// The last node leaves: the service is gone from the list.
	stop1()
	poll(t, b, time.Second, "greeter leaves",
		`document.querySelector('#service-rows tr[data-service="greeter"]') === null &&
		 document.getElementById('no-services').hidden === false && document.getElementById('gone') !== null`)

	// The page's only failed request is the lookup of the service after it
	// left (404); no exception, no console error, no CSP violation.
	for _, err := range b.Errors() {
		if !strings.Contains(err, "status of 404") || !strings.Contains(err, "/api/service?name=greeter") {
			t.Errorf("browser error: %s", err)
		}
	}
}
