package cmd_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/beacon-go/beacon/client"
	"github.com/beacon-go/beacon/cmd"
	"github.com/beacon-go/beacon/internal/testcert"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/selector"
	"github.com/beacon-go/beacon/server"
)

var quietLog = slog.New(slog.DiscardHandler)

type files struct{ ca, cert, key, cliCert, cliKey, missing string }

func newFiles(t *testing.T) files {
	dir := t.TempDir()
	ca := testcert.NewCA(t, "CA")
	f := files{ca: ca.Write(t, dir, "ca"), missing: dir + "/missing.pem"}
	f.cert, f.key = ca.Server(t, "node").Write(t, dir, "node")
	f.cliCert, f.cliKey = ca.Client(t, "caller").Write(t, dir, "caller")
	return f
}

func TestTLSFlags(t *testing.T) {
	f := newFiles(t)
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want cmd.TLSConfig
		err  string // "": no error
	}{
		{"none", nil, nil, cmd.TLSConfig{}, ""},
		{"flags", nil, []string{"--tls_cert", f.cert, "--tls_key", f.key, "--tls_ca", f.ca, "--tls_client_auth"},
			cmd.TLSConfig{Cert: f.cert, Key: f.key, CA: f.ca, ClientAuth: true}, ""},
		{"beacon env", map[string]string{"BEACON_TLS_CERT": f.cert, "BEACON_TLS_KEY": f.key, "BEACON_TLS_CA": f.ca, "BEACON_TLS_CLIENT_AUTH": "true"}, nil,
			cmd.TLSConfig{Cert: f.cert, Key: f.key, CA: f.ca, ClientAuth: true}, ""},
		{"micro env", map[string]string{"MICRO_TLS_CERT": f.cert, "MICRO_TLS_KEY": f.key, "MICRO_TLS_CA": f.ca, "MICRO_TLS_CLIENT_AUTH": "1"}, nil,
			cmd.TLSConfig{Cert: f.cert, Key: f.key, CA: f.ca, ClientAuth: true}, ""},
		{"flag beats env", map[string]string{"BEACON_TLS_CA": "env.pem"}, []string{"--tls_ca", f.ca}, cmd.TLSConfig{CA: f.ca}, ""},
		{"cert without key", nil, []string{"--tls_cert", f.cert}, cmd.TLSConfig{}, "--tls_cert needs --tls_key"},
		{"key without cert", map[string]string{"BEACON_TLS_KEY": f.key}, nil, cmd.TLSConfig{}, "--tls_key needs --tls_cert"},
		{"client auth without CA", nil, []string{"--tls_cert", f.cert, "--tls_key", f.key, "--tls_client_auth"}, cmd.TLSConfig{}, "--tls_client_auth needs --tls_ca"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			cfg, _, err := cmd.Parse(cmd.App{Name: "t"}, append([]string{"t"}, tc.args...), nil, nil)
			if tc.err != "" {
				if !errors.Is(err, cmd.ErrTLSFlags) || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want ErrTLSFlags saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.TLS != tc.want || cfg.TLS.Enabled() != (tc.want != cmd.TLSConfig{}) {
				t.Fatalf("TLS %+v, want %+v", cfg.TLS, tc.want)
			}
			if tc.want.CA != "" && !cfg.Set[cmd.FlagTLSCA] {
				t.Fatal("--tls_ca not marked set")
			}
		})
	}
	var out bytes.Buffer
	if _, help, err := cmd.Parse(cmd.App{Name: "t", Output: &out}, []string{"t", "--help"}, nil, nil); err != nil || !help {
		t.Fatal(err, help)
	}
	for _, want := range []string{"--tls_cert", "--tls_key", "--tls_ca", "--tls_client_auth", "BEACON_TLS_CERT", "MICRO_TLS_CERT",
		"BEACON_TLS_CLIENT_AUTH", "MICRO_TLS_CA"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %q", want)
		}
	}
}

func TestTLSOptions(t *testing.T) {
	f := newFiles(t)
	for _, tc := range []struct {
		name       string
		cfg        cmd.TLSConfig
		withServer bool
		server     bool // a server option comes back
		client     bool
		err        []string
	}{
		{"off", cmd.TLSConfig{}, true, false, false, nil},
		{"mTLS", cmd.TLSConfig{Cert: f.cert, Key: f.key, CA: f.ca, ClientAuth: true}, true, true, true, nil},
		{"client only with a CA", cmd.TLSConfig{CA: f.ca}, false, false, true, nil},
		{"server without a certificate", cmd.TLSConfig{CA: f.ca}, true, false, false, []string{"serving TLS needs --tls_cert and --tls_key"}},
		{"missing certificate file", cmd.TLSConfig{Cert: f.missing, Key: f.key}, true, false, false, []string{"--tls_cert", f.missing}},
		{"missing CA file", cmd.TLSConfig{CA: f.missing}, false, false, false, []string{"--tls_ca", f.missing}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			so, co, err := tc.cfg.Options(tc.withServer, quietLog)
			if tc.err != nil {
				if err == nil {
					t.Fatal("no error")
				}
				for _, s := range tc.err {
					if !strings.Contains(err.Error(), s) {
						t.Fatalf("err = %v, want it to say %q", err, s)
					}
				}
				return
			}
			if err != nil || (len(so) > 0) != tc.server || (len(co) > 0) != tc.client {
				t.Fatalf("server options %d, client options %d, err %v", len(so), len(co), err)
			}
		})
	}
}

// The flags run a server and a client with mutual TLS; a client with the
// CA alone (no certificate) is refused with a clear error.
func TestTLSFlagsEndToEnd(t *testing.T) {
	f := newFiles(t)
	reg := memory.New()
	defer reg.Close()
	parse := func(args ...string) cmd.Config {
		cfg, _, err := cmd.Parse(cmd.App{Name: "t"}, append([]string{"t"}, args...), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	srvCfg := parse("--tls_cert", f.cert, "--tls_key", f.key, "--tls_ca", f.ca, "--tls_client_auth")
	so, _, err := srvCfg.TLS.Options(true, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	s, err := server.New(append([]server.Option{server.Name("greeter"), server.Address("127.0.0.1:0"), server.Registry(reg),
		server.Logger(quietLog), server.DrainGrace(time.Millisecond)}, so...)...)
	if err != nil {
		t.Fatal(err)
	}
	if err := server.HandleFunc(s, "Greeter.Hello", func(ctx context.Context, req *struct{ Name string }, rsp *struct{ Msg string }) error {
		rsp.Msg = "Hello " + req.Name
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer s.Stop(context.Background())
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"mTLS client", []string{"--tls_cert", f.cliCert, "--tls_key", f.cliKey, "--tls_ca", f.ca}, ""},
		{"client without a certificate", []string{"--tls_ca", f.ca}, "certificate required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, co, err := parse(tc.args...).TLS.Options(false, quietLog)
			if err != nil {
				t.Fatal(err)
			}
			sel := selector.New(reg, selector.WithLogger(quietLog))
			defer sel.Close()
			c := client.New(sel, append([]client.Option{client.Logger(quietLog)}, co...)...)
			defer c.Close()
			rsp := new(struct{ Msg string })
			err = c.Call(context.Background(), "greeter", "Greeter.Hello", &struct{ Name string }{"Ann"}, rsp)
			switch {
			case tc.want == "" && (err != nil || rsp.Msg != "Hello Ann"):
				t.Fatalf("call: %v %+v", err, rsp)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, client.ErrNotRun)):
				t.Fatalf("err = %v, want one saying %q, not run", err, tc.want)
			}
		})
	}
}
