package beacon_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/beacon-go/beacon"
	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/cmd"
	"github.com/beacon-go/beacon/examples/greeter"
	"github.com/beacon-go/beacon/internal/testcert"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/memory"
)

// The TLS flags reach the service's server and client: a node serving
// mutual TLS, a client-only program with a certificate calling it, one
// without refused.
func TestServiceTLSFlags(t *testing.T) {
	dir := t.TempDir()
	ca := testcert.NewCA(t, "CA")
	caFile := ca.Write(t, dir, "ca")
	cert, key := ca.Server(t, "node").Write(t, dir, "node")
	reg := memory.New()
	defer reg.Close()
	srv, err := cmd.NewService(cmd.App{Args: []string{"--tls_cert", cert, "--tls_key", key, "--tls_ca", caFile, "--tls_client_auth"}},
		beacon.Name("greeter"), beacon.Registry(reg), beacon.Logger(quiet), beacon.Address("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop(context.Background())
	if err := srv.Handle(&greeter.Greeter{Node: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if md := srv.Server().Service().Nodes[0].Metadata; md[registry.MetaTLS] != "true" {
		t.Fatalf("metadata %v", md)
	}
	for _, tc := range []struct {
		name string
		env  map[string]string
		want string
	}{
		{"mTLS", map[string]string{"BEACON_TLS_CERT": cert, "BEACON_TLS_KEY": key, "BEACON_TLS_CA": caFile}, ""},
		{"no client certificate", map[string]string{"MICRO_TLS_CA": caFile}, "certificate required"},
		{"no TLS", nil, client.ErrTLSRequired.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			cli, err := beacon.NewService(beacon.Registry(reg), beacon.Logger(quiet))
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Stop(context.Background())
			rsp := new(greeter.HelloRsp)
			err = cli.Client().Call(context.Background(), "greeter", "Greeter.Hello", &greeter.HelloReq{Name: "Ann"}, rsp)
			switch {
			case tc.want == "" && (err != nil || rsp.Msg != "Hello Ann"):
				t.Fatalf("call: %v %+v", err, rsp)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, client.ErrNotRun)):
				t.Fatalf("err = %v, want one saying %q, not run", err, tc.want)
			}
		})
	}
	// A service that serves needs a certificate once TLS is on.
	_, err = cmd.NewService(cmd.App{Args: []string{"--tls_ca", caFile}}, beacon.Name("x"), beacon.Registry(reg), beacon.Logger(quiet))
	if !errors.Is(err, beacon.ErrTLSSettings) {
		t.Fatalf("err = %v, want beacon.ErrTLSSettings", err)
	}
}
