package cmd_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/beacon-go/beacon/cmd"
	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
)

// securityEnv lists every variable the registry security settings read;
// clearEnv empties them for a test (an empty variable counts as unset).
var securityEnv = []string{
	"BEACON_REGISTRY", "MICRO_REGISTRY", "BEACON_REGISTRY_ADDRESS", "MICRO_REGISTRY_ADDRESS",
	"ETCDCTL_CACERT", "ETCDCTL_CERT", "ETCDCTL_KEY", "ETCDCTL_USER", "ETCDCTL_PASSWORD", "ETCD_USERNAME", "ETCD_PASSWORD",
	"CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_HTTP_SSL", "CONSUL_CACERT", "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY", "CONSUL_TLS_SERVER_NAME",
}

func clearEnv(t *testing.T) {
	t.Helper()
	unset := func(e string) {
		t.Setenv(e, "") // restored after the test
		os.Unsetenv(e)  // an empty BEACON_ variable would hide the MICRO_ one
	}
	for _, e := range securityEnv {
		unset(e)
	}
	for _, f := range []string{cmd.FlagRegistryTLS, cmd.FlagRegistryTLSCA, cmd.FlagRegistryTLSCert, cmd.FlagRegistryTLSKey,
		cmd.FlagRegistryTLSServerName, cmd.FlagRegistryUsername, cmd.FlagRegistryPassword, cmd.FlagRegistryToken} {
		unset("BEACON_" + strings.ToUpper(f))
		unset("MICRO_" + strings.ToUpper(f))
	}
}

// parse parses args (after clearEnv and setting env) and resolves the
// security settings for the registry the flags name.
func parse(t *testing.T, env map[string]string, args ...string) (cmd.Config, cmd.RegistrySecurity, error) {
	t.Helper()
	clearEnv(t)
	for k, v := range env {
		t.Setenv(k, v)
	}
	cfg, _, err := cmd.Parse(cmd.App{Name: "t"}, append([]string{"t"}, args...), nil, nil)
	if err != nil {
		return cfg, cmd.RegistrySecurity{}, err
	}
	sec, err := cfg.RegistrySecurity.Resolve(cfg.Registry, cfg.RegistryAddress)
	return cfg, sec, err
}

// TestRegistrySecuritySources: every setting from a flag, BEACON_*,
// MICRO_*, then the registry's own variables, in that order.
func TestRegistrySecuritySources(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(" file-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	type want struct {
		ca, cert, key, server, user, pw, token string
		tls                                    bool
		src                                    map[string]string // flag -> source, checked when given
	}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want want
	}{
		{"flags", nil, []string{"--registry", "etcd", "--registry_tls_ca", "ca.pem", "--registry_tls_cert", "c.pem", "--registry_tls_key", "k.pem",
			"--registry_tls_server_name", "etcd.example", "--registry_username", "u", "--registry_password", "p"},
			want{ca: "ca.pem", cert: "c.pem", key: "k.pem", server: "etcd.example", user: "u", pw: "p",
				src: map[string]string{cmd.FlagRegistryTLSCA: "--registry_tls_ca", cmd.FlagRegistryPassword: "--registry_password"}}},
		{"beacon env", map[string]string{"BEACON_REGISTRY": "consul", "BEACON_REGISTRY_TOKEN": "t1", "BEACON_REGISTRY_TLS": "true"}, nil,
			want{token: "t1", tls: true, src: map[string]string{cmd.FlagRegistryToken: "BEACON_REGISTRY_TOKEN", cmd.FlagRegistryTLS: "BEACON_REGISTRY_TLS"}}},
		{"micro env", map[string]string{"MICRO_REGISTRY": "etcd", "MICRO_REGISTRY_USERNAME": "mu", "MICRO_REGISTRY_PASSWORD": "mp"}, nil,
			want{user: "mu", pw: "mp", src: map[string]string{cmd.FlagRegistryUsername: "MICRO_REGISTRY_USERNAME"}}},
		{"flag > BEACON > MICRO > native", map[string]string{"BEACON_REGISTRY": "etcd",
			"BEACON_REGISTRY_TLS_CA": "beacon-ca", "MICRO_REGISTRY_TLS_CA": "micro-ca", "ETCDCTL_CACERT": "etcdctl-ca",
			"MICRO_REGISTRY_USERNAME": "mu", "MICRO_REGISTRY_PASSWORD": "mp", "ETCDCTL_USER": "eu:ep"},
			[]string{"--registry_tls_ca", "flag-ca"},
			want{ca: "flag-ca", user: "mu", pw: "mp"}},
		{"BEACON beats MICRO", map[string]string{"BEACON_REGISTRY": "etcd", "BEACON_REGISTRY_TLS_CA": "beacon-ca", "MICRO_REGISTRY_TLS_CA": "micro-ca"}, nil,
			want{ca: "beacon-ca", src: map[string]string{cmd.FlagRegistryTLSCA: "BEACON_REGISTRY_TLS_CA"}}},
		{"etcdctl env", map[string]string{"BEACON_REGISTRY": "etcd", "ETCDCTL_CACERT": "ca", "ETCDCTL_CERT": "c", "ETCDCTL_KEY": "k", "ETCDCTL_USER": "eu:e:p"}, nil,
			want{ca: "ca", cert: "c", key: "k", user: "eu", pw: "e:p",
				src: map[string]string{cmd.FlagRegistryTLSCA: "ETCDCTL_CACERT", cmd.FlagRegistryUsername: "ETCDCTL_USER"}}},
		{"ETCDCTL_PASSWORD: ETCDCTL_USER is the whole name", map[string]string{"BEACON_REGISTRY": "etcd", "ETCDCTL_USER": "a:b", "ETCDCTL_PASSWORD": "pw"}, nil,
			want{user: "a:b", pw: "pw", src: map[string]string{cmd.FlagRegistryPassword: "ETCDCTL_PASSWORD"}}},
		{"go-micro's ETCD_USERNAME", map[string]string{"BEACON_REGISTRY": "etcd", "ETCD_USERNAME": "gu", "ETCD_PASSWORD": "gp"}, nil,
			want{user: "gu", pw: "gp", src: map[string]string{cmd.FlagRegistryUsername: "ETCD_USERNAME"}}},
		{"ETCDCTL_USER beats ETCD_USERNAME", map[string]string{"BEACON_REGISTRY": "etcd", "ETCDCTL_USER": "eu:ep", "ETCD_USERNAME": "gu", "ETCD_PASSWORD": "gp"}, nil,
			want{user: "eu", pw: "ep"}},
		{"native credentials never mix with Beacon's", map[string]string{"BEACON_REGISTRY": "etcd", "BEACON_REGISTRY_USERNAME": "bu", "BEACON_REGISTRY_PASSWORD": "bp", "ETCD_USERNAME": "gu", "ETCD_PASSWORD": "gp"}, nil,
			want{user: "bu", pw: "bp"}},
		{"etcd ignores consul's variables", map[string]string{"BEACON_REGISTRY": "etcd", "CONSUL_HTTP_TOKEN": "x", "CONSUL_CACERT": "x"}, nil, want{}},
		{"consul token file beats CONSUL_HTTP_TOKEN", map[string]string{"BEACON_REGISTRY": "consul", "CONSUL_HTTP_TOKEN_FILE": tokenFile, "CONSUL_HTTP_TOKEN": "env-token"}, nil,
			want{token: "file-token", src: map[string]string{cmd.FlagRegistryToken: "CONSUL_HTTP_TOKEN_FILE"}}},
		{"BEACON token beats the file", map[string]string{"BEACON_REGISTRY": "consul", "BEACON_REGISTRY_TOKEN": "b", "CONSUL_HTTP_TOKEN_FILE": tokenFile}, nil,
			want{token: "b"}},
		{"consul TLS variables need TLS on", map[string]string{"BEACON_REGISTRY": "consul", "CONSUL_CACERT": "ca", "CONSUL_HTTP_TOKEN": "t"}, nil,
			want{token: "t"}},
		{"CONSUL_HTTP_SSL turns TLS on", map[string]string{"BEACON_REGISTRY": "consul", "CONSUL_HTTP_SSL": "true", "CONSUL_CACERT": "ca",
			"CONSUL_CLIENT_CERT": "c", "CONSUL_CLIENT_KEY": "k", "CONSUL_TLS_SERVER_NAME": "consul.example"}, nil,
			want{tls: true, ca: "ca", cert: "c", key: "k", server: "consul.example", src: map[string]string{cmd.FlagRegistryTLS: "CONSUL_HTTP_SSL"}}},
		{"an https:// address turns TLS on", map[string]string{"BEACON_REGISTRY": "consul", "CONSUL_CACERT": "ca"},
			[]string{"--registry_address", "https://127.0.0.1:8501"}, want{ca: "ca"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, sec, err := parse(t, tc.env, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			w := tc.want
			if sec.CA != w.ca || sec.Cert != w.cert || sec.Key != w.key || sec.ServerName != w.server ||
				sec.Username != w.user || sec.Password != w.pw || sec.Token != w.token || sec.TLS != w.tls {
				t.Errorf("got %+v, want %+v", sec, w)
			}
			for f, src := range w.src {
				if sec.Source[f] != src {
					t.Errorf("source of %s = %q, want %q", f, sec.Source[f], src)
				}
			}
		})
	}
}

func TestRegistrySecurityErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"cert without key", nil, []string{"--registry", "etcd", "--registry_tls_cert", "c"}, "--registry_tls_cert needs --registry_tls_key"},
		{"key without cert", map[string]string{"BEACON_REGISTRY_TLS_KEY": "k"}, nil, "--registry_tls_key needs --registry_tls_cert"},
		{"user without password", nil, []string{"--registry_username", "u"}, "--registry_username needs --registry_password"},
		{"password without user", map[string]string{"MICRO_REGISTRY_PASSWORD": "p"}, nil, "--registry_password needs --registry_username"},
		{"token for etcd", nil, []string{"--registry", "etcd", "--registry_token", "t"}, "--registry_token is consul's ACL token"},
		{"user for consul", nil, []string{"--registry", "consul", "--registry_username", "u", "--registry_password", "p"}, "--registry_username is for etcd"},
		{"TLS for mdns", nil, []string{"--registry", "mdns", "--registry_tls_ca", "ca"}, "registry mdns takes no TLS settings or credentials"},
		{"ETCDCTL_USER without a password", map[string]string{"BEACON_REGISTRY": "etcd", "ETCDCTL_USER": "u"}, nil, "ETCDCTL_USER gives no password"},
		{"ETCDCTL_CERT without ETCDCTL_KEY", map[string]string{"BEACON_REGISTRY": "etcd", "ETCDCTL_CERT": "c"}, nil, "ETCDCTL_CERT and ETCDCTL_KEY go together"},
		{"bad CONSUL_HTTP_SSL", map[string]string{"BEACON_REGISTRY": "consul", "CONSUL_HTTP_SSL": "maybe"}, nil, "CONSUL_HTTP_SSL"},
		{"unreadable CONSUL_HTTP_TOKEN_FILE", map[string]string{"BEACON_REGISTRY": "consul", "CONSUL_HTTP_TOKEN_FILE": "/nonexistent/token"}, nil, "CONSUL_HTTP_TOKEN_FILE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := parse(t, tc.env, tc.args...)
			if !errors.Is(err, cmd.ErrRegistrySecurity) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want ErrRegistrySecurity saying %q", err, tc.want)
			}
		})
	}
	// A CA file that does not load names the file and where it came from.
	_, _, _ = parse(t, map[string]string{"ETCDCTL_CACERT": "/nonexistent/ca.pem"})
	_, err := cmd.NewRegistry(context.Background(), "etcd", []string{"127.0.0.1:1"}, quietLog)
	if !errors.Is(err, cmd.ErrRegistrySecurity) || !strings.Contains(err.Error(), "ETCDCTL_CACERT") {
		t.Errorf("NewRegistry with a missing ETCDCTL_CACERT file: err = %v", err)
	}
}

func TestRegistrySecurityRedacted(t *testing.T) {
	cfg, _, err := parse(t, map[string]string{"BEACON_REGISTRY": "etcd", "BEACON_REGISTRY_USERNAME": "u", "BEACON_REGISTRY_PASSWORD": "s3cret", "BEACON_REGISTRY_TOKEN": "t0ken"})
	if err == nil {
		t.Fatal("a token for etcd accepted")
	}
	for _, f := range []string{"%v", "%+v", "%#v", "%s"} {
		if out := fmt.Sprintf(f, cfg); strings.Contains(out, "s3cret") || strings.Contains(out, "t0ken") {
			t.Errorf("%s of the Config shows a secret: %s", f, out)
		}
	}
}

// newRegistry parses the flags and env and makes the registry they name,
// as beacon.NewService does.
func newRegistry(t *testing.T, env map[string]string, args ...string) (registry.Registry, error) {
	t.Helper()
	clearEnv(t)
	for k, v := range env {
		t.Setenv(k, v)
	}
	cfg, _, err := cmd.Parse(cmd.App{Name: "t"}, append([]string{"t"}, args...), nil, nil)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := cmd.NewRegistry(ctx, cfg.Registry, cfg.RegistryAddress, quietLog, cmd.WithRegistrySecurity(cfg.RegistrySecurity))
	if err == nil {
		t.Cleanup(func() { r.Close() })
	}
	return r, err
}

func registerAndGet(t *testing.T, r registry.Registry, name string) {
	t.Helper()
	s := &registry.Service{Name: name, Version: "1", Nodes: []*registry.Node{{ID: name + "-1", Address: "127.0.0.1:9"}}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := r.Register(ctx, s, registry.RegisterTTL(10*time.Second)); err != nil {
		t.Fatalf("Register: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := r.GetService(ctx, name)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("GetService: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestEtcdTLSAndRBACFromEnv: a real etcd serving TLS only, with client
// certificate authentication and RBAC (a user whose role covers /micro/),
// reached through settings from the environment only.
func TestEtcdTLSAndRBACFromEnv(t *testing.T) {
	pk := testserver.MustPKI(t, "beacon-client")
	e := testserver.MustStartEtcd(t, testserver.WithTLS(pk, true))
	if err := e.EnableAuth("rootpw", testserver.EtcdUser{Name: "svc", Password: "svcpw", Prefix: "/micro/"}); err != nil {
		t.Fatal(err)
	}
	addr := e.Endpoints()[0]
	beaconEnv := map[string]string{
		"BEACON_REGISTRY": "etcd", "BEACON_REGISTRY_ADDRESS": addr,
		"BEACON_REGISTRY_TLS_CA": pk.CA, "BEACON_REGISTRY_TLS_CERT": pk.ClientCert, "BEACON_REGISTRY_TLS_KEY": pk.ClientKey,
		"BEACON_REGISTRY_USERNAME": "svc", "BEACON_REGISTRY_PASSWORD": "svcpw",
	}
	with := func(extra map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range beaconEnv {
			m[k] = v
		}
		for k, v := range extra {
			if v == "-" {
				delete(m, k)
			} else {
				m[k] = v
			}
		}
		return m
	}

	t.Run("BEACON_ variables", func(t *testing.T) {
		r, err := newRegistry(t, beaconEnv)
		if err != nil {
			t.Fatal(err)
		}
		registerAndGet(t, r, "regsec-beacon")
	})
	t.Run("etcdctl's variables", func(t *testing.T) {
		r, err := newRegistry(t, map[string]string{"MICRO_REGISTRY": "etcd", "MICRO_REGISTRY_ADDRESS": addr,
			"ETCDCTL_CACERT": pk.CA, "ETCDCTL_CERT": pk.ClientCert, "ETCDCTL_KEY": pk.ClientKey, "ETCDCTL_USER": "svc:svcpw"})
		if err != nil {
			t.Fatal(err)
		}
		registerAndGet(t, r, "regsec-etcdctl")
	})
	t.Run("server name", func(t *testing.T) {
		r, err := newRegistry(t, with(map[string]string{"BEACON_REGISTRY_TLS_SERVER_NAME": testserver.PKIServerName}))
		if err != nil {
			t.Fatal(err)
		}
		registerAndGet(t, r, "regsec-name")
		start := time.Now()
		_, err = newRegistry(t, with(map[string]string{"BEACON_REGISTRY_TLS_SERVER_NAME": "other.beacon.test"}))
		if !errors.Is(err, registry.ErrUnavailable) || !strings.Contains(err.Error(), "not other.beacon.test") {
			t.Errorf("wrong server name: err = %v, want a certificate name mismatch", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("the TLS failure took %v to report", took)
		}
	})
	t.Run("BEACON beats etcdctl's wrong password", func(t *testing.T) {
		r, err := newRegistry(t, with(map[string]string{"ETCDCTL_USER": "svc:wrong"}))
		if err != nil {
			t.Fatal(err)
		}
		registerAndGet(t, r, "regsec-precedence")
	})
	for name, extra := range map[string]map[string]string{
		"wrong password":                         {"BEACON_REGISTRY_PASSWORD": "-", "BEACON_REGISTRY_USERNAME": "-", "MICRO_REGISTRY_USERNAME": "svc", "MICRO_REGISTRY_PASSWORD": "wrong"},
		"no user (the certificate's CN is none)": {"BEACON_REGISTRY_PASSWORD": "-", "BEACON_REGISTRY_USERNAME": "-"},
	} {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			_, err := newRegistry(t, with(extra))
			if !errors.Is(err, registry.ErrPermission) || errors.Is(err, registry.ErrUnavailable) {
				t.Errorf("err = %v, want ErrPermission only", err)
			}
			if took := time.Since(start); took > 2*time.Second {
				t.Errorf("the permission error took %v", took)
			}
			t.Logf("%v", err)
		})
	}
	t.Run("no client certificate", func(t *testing.T) {
		start := time.Now()
		_, err := newRegistry(t, with(map[string]string{"BEACON_REGISTRY_TLS_CERT": "-", "BEACON_REGISTRY_TLS_KEY": "-"}))
		if !errors.Is(err, registry.ErrUnavailable) || !strings.Contains(err.Error(), "TLS") {
			t.Errorf("err = %v, want a TLS failure", err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Errorf("the TLS failure took %v to report", took)
		}
	})
}

// TestConsulACLAndTLSFromEnv: a real consul with ACLs in default-deny mode
// and HTTPS with client certificates, configured by the environment only.
func TestConsulACLAndTLSFromEnv(t *testing.T) {
	pk := testserver.MustPKI(t, "beacon-client")
	c := testserver.MustStartConsul(t, testserver.WithACL("5d6c0a4e-1b2c-4d3e-8f90-0123456789ab"), testserver.WithTLS(pk, true))
	tok, err := c.CreateToken("svc", `service_prefix "" { policy = "write" }
node_prefix "" { policy = "read" }`)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("CONSUL_ variables over https", func(t *testing.T) {
		r, err := newRegistry(t, map[string]string{"BEACON_REGISTRY": "consul", "BEACON_REGISTRY_ADDRESS": "https://" + c.HTTPSAddr(),
			"CONSUL_CACERT": pk.CA, "CONSUL_CLIENT_CERT": pk.ClientCert, "CONSUL_CLIENT_KEY": pk.ClientKey, "CONSUL_HTTP_TOKEN": tok})
		if err != nil {
			t.Fatal(err)
		}
		registerAndGet(t, r, "regsec-consul")
	})
	t.Run("CONSUL_HTTP_SSL and a server name", func(t *testing.T) {
		r, err := newRegistry(t, map[string]string{"BEACON_REGISTRY": "consul", "BEACON_REGISTRY_ADDRESS": c.HTTPSAddr(), "CONSUL_HTTP_SSL": "1",
			"CONSUL_CACERT": pk.CA, "CONSUL_CLIENT_CERT": pk.ClientCert, "CONSUL_CLIENT_KEY": pk.ClientKey,
			"CONSUL_TLS_SERVER_NAME": testserver.PKIServerName, "BEACON_REGISTRY_TOKEN": tok})
		if err != nil {
			t.Fatal(err)
		}
		registerAndGet(t, r, "regsec-consul-ssl")
	})
	t.Run("BEACON token beats CONSUL_HTTP_TOKEN", func(t *testing.T) {
		r, err := newRegistry(t, map[string]string{"BEACON_REGISTRY": "consul", "BEACON_REGISTRY_ADDRESS": c.Addr(),
			"BEACON_REGISTRY_TOKEN": tok, "CONSUL_HTTP_TOKEN": "00000000-0000-0000-0000-000000000bad"})
		if err != nil {
			t.Fatal(err)
		}
		registerAndGet(t, r, "regsec-consul-precedence")
	})
	t.Run("wrong token", func(t *testing.T) {
		_, err := newRegistry(t, map[string]string{"BEACON_REGISTRY": "consul", "BEACON_REGISTRY_ADDRESS": c.Addr(),
			"MICRO_REGISTRY_TOKEN": "00000000-0000-0000-0000-000000000bad"})
		if !errors.Is(err, registry.ErrPermission) {
			t.Errorf("err = %v, want ErrPermission", err)
		}
	})
	t.Run("no token", func(t *testing.T) {
		r, err := newRegistry(t, map[string]string{"BEACON_REGISTRY": "consul", "BEACON_REGISTRY_ADDRESS": c.Addr()})
		if err != nil {
			t.Fatal(err)
		}
		s := &registry.Service{Name: "regsec-anon", Nodes: []*registry.Node{{ID: "regsec-anon-1", Address: "127.0.0.1:9"}}}
		if err := r.Register(context.Background(), s, registry.RegisterTTL(10*time.Second)); !errors.Is(err, registry.ErrPermission) {
			t.Errorf("Register: err = %v, want ErrPermission", err)
		}
		if _, err := r.ListServices(context.Background()); !errors.Is(err, registry.ErrPermission) {
			t.Errorf("ListServices: err = %v, want ErrPermission", err)
		}
	})
}
