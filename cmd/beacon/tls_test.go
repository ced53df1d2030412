package main

import (
	"context"
	"strings"
	"testing"

	"github.com/beacon-go/beacon/examples/greeter"
	"github.com/beacon-go/beacon/internal/testcert"
	"github.com/beacon-go/beacon/server"
	"github.com/beacon-go/beacon/tlsconfig"
)

// beacon call speaks TLS with the TLS flags: mutual TLS with a
// certificate, refused without one, told the node requires TLS without TLS.
func TestCallTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testcert.NewCA(t, "CA")
	caFile := ca.Write(t, dir, "ca")
	cert, key := ca.Server(t, "node").Write(t, dir, "node")
	cfg, err := tlsconfig.Files{Cert: cert, Key: key, CA: caFile, ClientAuth: true, Logger: quiet}.Server()
	if err != nil {
		t.Fatal(err)
	}
	s, err := server.New(server.Name("greeter"), server.Address("127.0.0.1:0"), server.TLS(cfg), server.Logger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Handle(&greeter.Greeter{Node: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer s.Stop(context.Background())
	addr := s.Addr().String()
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"mTLS", []string{"--tls_ca", caFile, "--tls_cert", cert, "--tls_key", key}, 0, "Hello Ann"},
		{"no client certificate", []string{"--tls_ca", caFile}, 1, "certificate required"},
		{"no TLS", nil, 1, "requires TLS"},
		{"certificate without key", []string{"--tls_cert", cert}, 2, "--tls_cert needs --tls_key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string{"--client_retries", "0"}, tc.args...), "call", "--address", addr, "greeter", "Greeter.Hello", `{"name":"Ann"}`)
			out, errOut, code := beacon(t, args...)
			if code != tc.code || !strings.Contains(out+errOut, tc.want) {
				t.Fatalf("exit %d, want %d; out %q, err %q; want %q", code, tc.code, out, errOut, tc.want)
			}
		})
	}
}
