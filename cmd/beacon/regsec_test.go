package main

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/consul"
)

// unsetenv unsets variables for the test (restored afterwards).
func unsetenv(t *testing.T, names ...string) {
	for _, n := range names {
		t.Setenv(n, "")
		os.Unsetenv(n)
	}
}

// TestCLIConsulACL: consul with ACLs in default-deny mode. Without a token
// the CLI used to print an empty list and exit 0; now it exits
// exitPermission saying permission denied.
func TestCLIConsulACL(t *testing.T) {
	unsetenv(t, "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "BEACON_REGISTRY_TOKEN", "MICRO_REGISTRY_TOKEN")
	c := testserver.MustStartConsul(t, testserver.WithACL("7e1f0c2d-3b4a-4c5d-8e6f-0123456789ab"))
	tok, err := c.CreateToken("svc", `service_prefix "" { policy = "write" }
node_prefix "" { policy = "read" }`)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := consul.New(context.Background(), consul.WithAddrs(c.Addr()), consul.WithToken(tok), consul.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	s := &registry.Service{Name: "greeter", Version: "1.0.0", Nodes: []*registry.Node{{ID: "greeter-1", Address: "127.0.0.1:9"}}}
	if err := reg.Register(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	flags := []string{"--registry", "consul", "--registry_address", c.Addr()}

	out, errs, code := beacon(t, append(flags, "services")...)
	t.Logf("services without a token: exit %d\n%s", code, errs)
	if code != exitPermission || !strings.Contains(errs, "permission denied") || !strings.Contains(errs, "--registry_token") {
		t.Errorf("services without a token: code %d, stdout %q, stderr %q; want %d and permission denied", code, out, errs, exitPermission)
	}
	_, errs, code = beacon(t, append(flags, "--registry_token", "00000000-0000-0000-0000-000000000bad", "services")...)
	if code != exitPermission || !strings.Contains(errs, "ACL not found") {
		t.Errorf("services with a wrong token: code %d, stderr %q", code, errs)
	}
	_, errs, code = beacon(t, append(flags, "--registry_token", "00000000-0000-0000-0000-000000000bad", "call", "greeter", "Greeter.Hello", "{}")...)
	if code != exitPermission {
		t.Errorf("call with a wrong token: code %d, stderr %q", code, errs)
	}
	_, errs, code = beacon(t, append(flags, "describe", "greeter")...)
	if code == 0 || !strings.Contains(errs, "anonymous") {
		t.Errorf("describe without a token: code %d, stderr %q; want a failure naming the anonymous token", code, errs)
	}
	t.Setenv("CONSUL_HTTP_TOKEN", tok)
	out, errs, code = beacon(t, append(flags, "services")...)
	if code != 0 || !strings.Contains(out, "greeter") {
		t.Errorf("services with CONSUL_HTTP_TOKEN: code %d, stdout %q, stderr %q", code, out, errs)
	}
}

// TestCLIRefusedEtcd: nothing listens at the etcd address. The CLI says
// "connection refused" at once, where it used to wait 5 s for "context
// deadline exceeded".
func TestCLIRefusedEtcd(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	start := time.Now()
	_, errs, code := beacon(t, "--registry", "etcd", "--registry_address", addr, "services")
	took := time.Since(start)
	t.Logf("exit %d after %v\n%s", code, took.Round(time.Millisecond), errs)
	if code != 1 || !strings.Contains(errs, "connection refused") {
		t.Errorf("code %d, stderr %q; want 1 and connection refused", code, errs)
	}
	if took > 2*time.Second {
		t.Errorf("took %v", took)
	}
}

// TestCLIEtcdRBAC: etcd with TLS, client certificates and RBAC; the CLI
// configured by etcdctl's variables.
func TestCLIEtcdRBAC(t *testing.T) {
	pk := testserver.MustPKI(t, "beacon-client")
	e := testserver.MustStartEtcd(t, testserver.WithTLS(pk, true))
	if err := e.EnableAuth("rootpw", testserver.EtcdUser{Name: "svc", Password: "svcpw", Prefix: "/micro/"}); err != nil {
		t.Fatal(err)
	}
	unsetenv(t, "BEACON_REGISTRY_USERNAME", "BEACON_REGISTRY_PASSWORD", "MICRO_REGISTRY_USERNAME", "MICRO_REGISTRY_PASSWORD", "ETCD_USERNAME", "ETCD_PASSWORD", "ETCDCTL_PASSWORD")
	t.Setenv("ETCDCTL_CACERT", pk.CA)
	t.Setenv("ETCDCTL_CERT", pk.ClientCert)
	t.Setenv("ETCDCTL_KEY", pk.ClientKey)
	flags := []string{"--registry", "etcd", "--registry_address", e.Endpoints()[0]}
	t.Setenv("ETCDCTL_USER", "svc:svcpw")
	if _, errs, code := beacon(t, append(flags, "services")...); code != 0 {
		t.Errorf("services with ETCDCTL_USER: code %d, stderr %q", code, errs)
	}
	t.Setenv("ETCDCTL_USER", "svc:wrong")
	if _, errs, code := beacon(t, append(flags, "services")...); code != exitPermission || !strings.Contains(errs, "authentication failed") {
		t.Errorf("services with a wrong password: code %d, stderr %q", code, errs)
	}
	t.Setenv("ETCDCTL_USER", "svc")
	if _, errs, code := beacon(t, append(flags, "services")...); code != 2 || !strings.Contains(errs, "ETCDCTL_USER gives no password") {
		t.Errorf("ETCDCTL_USER without a password: code %d, stderr %q", code, errs)
	}
}
