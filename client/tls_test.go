package client_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/internal/testcert"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/server"
	"github.com/beacon-go/beacon/tlsconfig"
)

// pki: two CAs, each with a server certificate (IP SAN 127.0.0.1) and a
// client certificate, on disk.
type pki struct {
	dir                  string
	ca, other            *testcert.CA
	caFile, otherCA      string
	srvCert, srvKey      string
	cliCert, cliKey      string
	otherCli, otherCliKy string
}

func newPKI(t testing.TB) *pki {
	p := &pki{dir: t.TempDir(), ca: testcert.NewCA(t, "beacon CA"), other: testcert.NewCA(t, "other CA")}
	p.caFile, p.otherCA = p.ca.Write(t, p.dir, "ca"), p.other.Write(t, p.dir, "other-ca")
	p.srvCert, p.srvKey = p.ca.Server(t, "node").Write(t, p.dir, "server")
	p.cliCert, p.cliKey = p.ca.Client(t, "caller").Write(t, p.dir, "client")
	p.otherCli, p.otherCliKy = p.other.Client(t, "stranger").Write(t, p.dir, "other-client")
	return p
}

func (p *pki) server(t testing.TB, clientAuth bool) *tls.Config {
	t.Helper()
	f := tlsconfig.Files{Cert: p.srvCert, Key: p.srvKey, Logger: quiet}
	if clientAuth {
		f.CA, f.ClientAuth = p.caFile, true
	}
	cfg, err := f.Server()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func (p *pki) client(t testing.TB, f tlsconfig.Files) *tls.Config {
	t.Helper()
	f.Logger = quiet
	cfg, err := f.Client()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// newTLSClient is a client of e's registry with the given options, closed at
// cleanup.
func newTLSClient(t testing.TB, e *env, opts ...client.Option) *client.Client {
	t.Helper()
	sel := selector.New(e.reg, selector.WithLogger(quiet))
	c := client.New(sel, append([]client.Option{client.Logger(quiet),
		client.WithDefaultBackoff(client.ExponentialBackoff(time.Millisecond, 5*time.Millisecond))}, opts...)...)
	t.Cleanup(func() { c.Close(); sel.Close() })
	return c
}

func callWith(c *client.Client, opts ...client.CallOption) (*HelloRsp, error) {
	rsp := new(HelloRsp)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return rsp, c.Call(ctx, "greeter", "Greeter.Hello", &HelloReq{Name: "Ann"}, rsp, opts...)
}

// The checks of issue 10 item 4: TLS and mutual TLS calls work; a client
// without a certificate, or with one the node does not trust, or trusting
// another CA, is refused with an error that says why, before anything ran.
func TestTLSCalls(t *testing.T) {
	p := newPKI(t)
	for _, tc := range []struct {
		name       string
		clientAuth bool
		files      tlsconfig.Files
		want       string // "": the call succeeds
	}{
		{"TLS", false, tlsconfig.Files{CA: p.caFile}, ""},
		{"TLS with a client certificate the node does not ask for", false, tlsconfig.Files{Cert: p.cliCert, Key: p.cliKey, CA: p.caFile}, ""},
		{"mTLS", true, tlsconfig.Files{Cert: p.cliCert, Key: p.cliKey, CA: p.caFile}, ""},
		{"mTLS with the node's certificate as the client's", true, tlsconfig.Files{Cert: p.srvCert, Key: p.srvKey, CA: p.caFile}, ""},
		{"mTLS without a client certificate", true, tlsconfig.Files{CA: p.caFile}, "remote error: tls: certificate required"},
		{"mTLS with a client certificate of another CA", true, tlsconfig.Files{Cert: p.otherCli, Key: p.otherCliKy, CA: p.caFile}, "remote error: tls: unknown certificate authority"},
		{"client trusting another CA", false, tlsconfig.Files{CA: p.otherCA}, "x509: certificate signed by unknown authority"},
		{"mTLS client trusting another CA", true, tlsconfig.Files{Cert: p.cliCert, Key: p.cliKey, CA: p.otherCA}, "x509: certificate signed by unknown authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 1, server.TLS(p.server(t, tc.clientAuth)))
			c := newTLSClient(t, e, client.TLS(p.client(t, tc.files)))
			rsp, err := callWith(c)
			if tc.want == "" {
				if err != nil || rsp.Msg != "Hello Ann" {
					t.Fatalf("call: %v, %+v", err, rsp)
				}
				return
			}
			if err == nil {
				t.Fatal("the call succeeded")
			}
			t.Logf("err: %v", err)
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v\nwant it to say %q", err, tc.want)
			}
			var te *client.TransportError
			if !errors.Is(err, client.ErrNotRun) || !errors.As(err, &te) || te.Op != "dial" || !te.NotRun {
				t.Fatalf("err = %v (%T): want a dial TransportError, not run", err, err)
			}
			if n := e.greet[0].calls.Load(); n != 0 {
				t.Fatalf("the handler ran %d times", n)
			}
		})
	}
}

// Selection: a client without TLS never dials a node that serves TLS only;
// a client with TLS never calls a node that does not advertise TLS in
// plaintext, unless AllowPlaintext.
func TestTLSSelection(t *testing.T) {
	p := newPKI(t)
	for _, tc := range []struct {
		name     string
		nodes    []bool // per node: serves TLS
		tls      bool
		allow    bool
		want     error    // nil: calls succeed
		wantSeen []string // nodes the calls reach
	}{
		{"plaintext client, TLS nodes", []bool{true, true}, false, false, client.ErrTLSRequired, nil},
		{"plaintext client, mixed nodes", []bool{true, false}, false, false, nil, []string{"node-1"}},
		{"TLS client, plaintext nodes", []bool{false, false}, true, false, client.ErrPlaintextNode, nil},
		{"TLS client, mixed nodes", []bool{false, true}, true, false, nil, []string{"node-1"}},
		{"TLS client allowing plaintext, plaintext node", []bool{false}, true, true, nil, []string{"node-0"}},
		{"TLS client allowing plaintext, mixed nodes", []bool{true, false}, true, true, nil, []string{"node-0", "node-1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, 0)
			for i, secure := range tc.nodes {
				var opts []server.Option
				if secure {
					opts = append(opts, server.TLS(p.server(t, false)))
				}
				e.start(t, i, opts...)
			}
			var opts []client.Option
			if tc.tls {
				opts = append(opts, client.TLS(p.client(t, tlsconfig.Files{CA: p.caFile})))
			}
			if tc.allow {
				opts = append(opts, client.AllowPlaintext())
			}
			c := newTLSClient(t, e, opts...)
			seen := map[string]bool{}
			for range 20 {
				rsp, err := callWith(c, client.WithSelectOptions(selector.WithSelectStrategy(selector.RoundRobin())))
				if tc.want != nil {
					if !errors.Is(err, tc.want) || !errors.Is(err, client.ErrNotRun) {
						t.Fatalf("err = %v, want %v, not run", err, tc.want)
					}
					if !strings.Contains(err.Error(), "node-") || !strings.Contains(err.Error(), registry.MetaTLS) {
						t.Fatalf("err = %v: want it to name the node and %q", err, registry.MetaTLS)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				seen[rsp.Node] = true
			}
			if tc.want != nil {
				for i, g := range e.greet {
					if n := g.calls.Load(); n != 0 {
						t.Fatalf("node %d ran %d calls", i, n)
					}
				}
				return
			}
			if len(seen) != len(tc.wantSeen) {
				t.Fatalf("calls reached %v, want %v", seen, tc.wantSeen)
			}
			for _, n := range tc.wantSeen {
				if !seen[n] {
					t.Fatalf("calls reached %v, want %v", seen, tc.wantSeen)
				}
			}
		})
	}
}

// A spoofed record: a node that serves TLS, registered again without
// registry.MetaTLS, is not called by a TLS client in plaintext, nor with
// TLS (the record does not say it serves TLS).
func TestTLSClientRefusesSpoofedPlaintextRecord(t *testing.T) {
	p := newPKI(t)
	e := newEnv(t, 0)
	s := e.start(t, 0, server.TLS(p.server(t, false)))
	spoof := &registry.Service{Name: "greeter", Version: "1.0.0", Nodes: []*registry.Node{{ID: "spoof", Address: s.Addr().String(),
		Metadata: map[string]string{registry.MetaProtocol: registry.ProtocolBeacon}}}}
	if err := s.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := e.reg.Register(context.Background(), spoof); err != nil {
		t.Fatal(err)
	}
	c := newTLSClient(t, e, client.TLS(p.client(t, tlsconfig.Files{CA: p.caFile})))
	if _, err := callWith(c); !errors.Is(err, client.ErrPlaintextNode) {
		t.Fatalf("err = %v, want ErrPlaintextNode", err)
	}
}

// Calls by address: a TLS client uses TLS; a plaintext client at a TLS node
// learns from the node that it requires TLS; a TLS client at a plaintext
// node is told the node closed the handshake.
func TestTLSByAddress(t *testing.T) {
	p := newPKI(t)
	secure := newEnv(t, 1, server.TLS(p.server(t, true)))
	plain := newEnv(t, 1)
	tlsCli := newTLSClient(t, secure, client.TLS(p.client(t, tlsconfig.Files{Cert: p.cliCert, Key: p.cliKey, CA: p.caFile})), client.Retries(0))
	plainCli := newTLSClient(t, secure, client.Retries(0))
	for _, tc := range []struct {
		name string
		c    *client.Client
		addr string
		is   error
		want string
	}{
		{"TLS client, TLS node", tlsCli, secure.servers[0].Addr().String(), nil, ""},
		{"plaintext client, TLS node", plainCli, secure.servers[0].Addr().String(), client.ErrTLSRequired, "the node requires TLS"},
		{"TLS client, plaintext node", tlsCli, plain.servers[0].Addr().String(), client.ErrNotRun, "it may not serve TLS"},
		{"plaintext client, plaintext node", plainCli, plain.servers[0].Addr().String(), nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rsp, err := callWith(tc.c, client.WithAddress(tc.addr))
			if tc.is == nil {
				if err != nil || rsp.Msg != "Hello Ann" {
					t.Fatalf("call: %v %+v", err, rsp)
				}
				return
			}
			t.Logf("err: %v", err)
			if !errors.Is(err, tc.is) || !errors.Is(err, client.ErrNotRun) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v\nwant %v, not run, saying %q", err, tc.is, tc.want)
			}
		})
	}
}

// The node's record says it serves TLS.
func TestTLSMetadata(t *testing.T) {
	p := newPKI(t)
	e := newEnv(t, 0)
	e.start(t, 0, server.TLS(p.server(t, false)))
	e.start(t, 1)
	svcs, err := e.reg.GetService(context.Background(), "greeter")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, s := range svcs {
		for _, n := range s.Nodes {
			got[n.ID] = n.Metadata[registry.MetaTLS]
		}
	}
	if got["node-0"] != "true" || got["node-1"] != "" {
		t.Fatalf("%s metadata by node: %v", registry.MetaTLS, got)
	}
}

// Certificates reload while the server runs: new connections get the new
// certificate, established ones keep working.
func TestTLSReloadWhileServing(t *testing.T) {
	p := newPKI(t)
	srvCfg, err := tlsconfig.Files{Cert: p.srvCert, Key: p.srvKey, CheckInterval: 20 * time.Millisecond, Logger: quiet}.Server()
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, 1, server.TLS(srvCfg))
	var mu sync.Mutex
	var seen []string
	newClient := func() *client.Client {
		cfg := p.client(t, tlsconfig.Files{CA: p.caFile})
		verify := cfg.VerifyConnection
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			mu.Lock()
			seen = append(seen, cs.PeerCertificates[0].Subject.CommonName)
			mu.Unlock()
			return verify(cs)
		}
		return newTLSClient(t, e, client.TLS(cfg), client.ConnsPerNode(1))
	}
	last := func() string {
		mu.Lock()
		defer mu.Unlock()
		if len(seen) == 0 {
			return ""
		}
		return seen[len(seen)-1]
	}
	first := newClient()
	if _, err := callWith(first); err != nil || last() != "node" {
		t.Fatalf("before: %v, certificate %q", err, last())
	}
	renewed := p.ca.Server(t, "renewed")
	testcert.WriteFile(t, p.srvKey, renewed.KeyPEM)
	testcert.WriteFile(t, p.srvCert, renewed.CertPEM)
	time.Sleep(50 * time.Millisecond)
	second := newClient()
	if _, err := callWith(second); err != nil || last() != "renewed" {
		t.Fatalf("after: %v, certificate %q", err, last())
	}
	if _, err := callWith(first); err != nil {
		t.Fatalf("the connection made before the reload: %v", err)
	}
}

// HTTP/JSON on a TLS node's port is HTTPS, HTTP/1.1 and h2; plain HTTP is
// told to use HTTPS.
func TestTLSHTTP(t *testing.T) {
	p := newPKI(t)
	e := newEnv(t, 1, server.TLS(p.server(t, false)))
	addr := e.servers[0].Addr().String()
	for _, tc := range []struct {
		name  string
		h2    bool
		proto int
	}{{"HTTP/1.1", false, 1}, {"h2", true, 2}} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.ca.Pool()}, ForceAttemptHTTP2: tc.h2}
			if !tc.h2 {
				tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			}
			hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
			defer hc.CloseIdleConnections()
			rsp, err := hc.Post("https://"+addr+"/Greeter.Hello", "application/json", strings.NewReader(`{"name":"Ann"}`))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(rsp.Body)
			rsp.Body.Close()
			if rsp.StatusCode != 200 || rsp.ProtoMajor != tc.proto || !strings.Contains(string(b), `"msg":"Hello Ann"`) {
				t.Fatalf("%s %d %s", rsp.Proto, rsp.StatusCode, b)
			}
			rsp, err = hc.Get("https://" + addr + "/health")
			if err != nil {
				t.Fatal(err)
			}
			rsp.Body.Close()
			if rsp.StatusCode != 200 {
				t.Fatalf("health: %d", rsp.StatusCode)
			}
		})
	}
	hc := &http.Client{Timeout: 5 * time.Second}
	rsp, err := hc.Post("http://"+addr+"/Greeter.Hello", "application/json", strings.NewReader(`{"name":"Ann"}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rsp.Body)
	rsp.Body.Close()
	if rsp.StatusCode != 400 || !strings.Contains(string(b), "HTTP request to an HTTPS server") {
		t.Fatalf("plain HTTP to a TLS node: %d %s", rsp.StatusCode, b)
	}
}

// Large messages and many calls at once over TLS: the wire's bounded writes
// run beneath TLS (a write cut short to check a bound resumes).
func TestTLSLargeConcurrent(t *testing.T) {
	p := newPKI(t)
	e := newEnv(t, 1, server.TLS(p.server(t, true)))
	c := newTLSClient(t, e, client.TLS(p.client(t, tlsconfig.Files{Cert: p.cliCert, Key: p.cliKey, CA: p.caFile})), client.ConnsPerNode(1))
	big := strings.Repeat("x", 1<<20)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 16 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			rsp := new(HelloRsp)
			name := fmt.Sprint(i)
			if i%2 == 0 {
				name += big
			}
			if err := c.Call(ctx, "greeter", "Greeter.Hello", &HelloReq{Name: name}, rsp); err != nil {
				errs <- err
				return
			}
			if rsp.Msg != "Hello "+name {
				errs <- fmt.Errorf("call %d: response of %d bytes", i, len(rsp.Msg))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// A call given up while its large request is being written fails alone
	// (its connection with it); the next call works.
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	_ = c.Call(ctx, "greeter", "Greeter.Hello", &HelloReq{Name: strings.Repeat(big, 3)}, new(HelloRsp))
	cancel()
	if _, err := callWith(c); err != nil {
		t.Fatal(err)
	}
}

// Read deadlines do not break TLS: a connection idle past the server's idle
// timeout is told to go away (a read timeout on both sides first), and the
// next calls work; so do calls whose handler takes longer than the client's
// probes of its read deadline.
func TestTLSIdleAndSlow(t *testing.T) {
	p := newPKI(t)
	e := newEnv(t, 1, server.TLS(p.server(t, false)), server.IdleTimeout(50*time.Millisecond))
	c := newTLSClient(t, e, client.TLS(p.client(t, tlsconfig.Files{CA: p.caFile})))
	for i := range 3 {
		if _, err := callWith(c); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		time.Sleep(150 * time.Millisecond)
	}
	rsp := new(HelloRsp)
	if err := c.Call(context.Background(), "greeter", "Greeter.Hello", &HelloReq{Name: "slow", Delay: 120 * time.Millisecond}, rsp); err != nil || rsp.Msg != "Hello slow" {
		t.Fatalf("slow call: %v %+v", err, rsp)
	}
}
