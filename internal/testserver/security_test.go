package testserver

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// etcd with TLS, client certificates and RBAC: the client port speaks
// HTTPS only and wants a certificate; after EnableAuth, requests need a
// user.
func TestEtcdTLSAndAuth(t *testing.T) {
	defer goleak.VerifyNone(t)
	p := MustPKI(t, "beacon-client")
	e, err := StartEtcd(t.TempDir(), WithTLS(p, true))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Stop()
	if !strings.HasPrefix(e.ClientURL(), "https://") {
		t.Errorf("ClientURL = %s, want https", e.ClientURL())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := doJSON(ctx, http.MethodGet, e.ClientURL()+"/health", nil, nil); err == nil {
		t.Error("GET /health without a client certificate succeeded")
	}
	if err := e.EnableAuth("rootpw", EtcdUser{Name: "svc", Password: "pw", Prefix: "/micro/"}); err != nil {
		t.Fatal(err)
	}
	// No user: refused (the JSON gateway does not take the client
	// certificate's CN as the user, as gRPC requests do).
	err = doJSONWith(ctx, e.hc, nil, http.MethodPost, e.ClientURL()+"/v3/kv/range", strings.NewReader(`{"key":"L21pY3JvLw=="}`), nil)
	if err == nil {
		t.Error("range without a user succeeded")
	}
}

// consul with ACLs in default-deny mode and HTTPS beside HTTP.
func TestConsulACLAndTLS(t *testing.T) {
	defer goleak.VerifyNone(t)
	p := MustPKI(t, "beacon-client")
	c, err := StartConsul(t.TempDir(), WithACL("0b0e3c8a-9a1d-4c7e-8f00-000000000001"), WithTLS(p, true))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if c.HTTPSAddr() == "" || c.ManagementToken() == "" {
		t.Fatalf("HTTPSAddr %q, ManagementToken %q", c.HTTPSAddr(), c.ManagementToken())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	reg := `{"ID":"x1","Name":"x","Port":1}`
	if err := doJSON(ctx, http.MethodPut, c.URL()+"/v1/agent/service/register", strings.NewReader(reg), nil); err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("anonymous register: err = %v, want 403", err)
	}
	tok, err := c.CreateToken("x", `service "x" { policy = "write" }`)
	if err != nil {
		t.Fatal(err)
	}
	if err := doJSONWith(ctx, nil, http.Header{"X-Consul-Token": {tok}}, http.MethodPut, c.URL()+"/v1/agent/service/register", strings.NewReader(reg), nil); err != nil {
		t.Errorf("register with the token: %v", err)
	}
	cfg, err := p.ClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	if err := doJSONWith(ctx, tlsHTTPClient(cfg), nil, http.MethodGet, "https://"+c.HTTPSAddr()+"/v1/status/leader", nil, nil); err != nil {
		t.Errorf("HTTPS with a client certificate: %v", err)
	}
}
