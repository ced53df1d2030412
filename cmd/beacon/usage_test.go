package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/beacon-go/beacon/examples/greeter"
	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry/etcd"
	"github.com/beacon-go/beacon/registry/registrytest"
	"github.com/beacon-go/beacon/server"
)

func beaconIn(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	var out, errb syncBuf
	code := runIO(context.Background(), append([]string{"beacon"}, args...), strings.NewReader(stdin), &out, &errb)
	return out.String(), errb.String(), code
}

// TestUsage: the CLI's edges (issue 14): help, --version, flags after the
// command, --timeout in seconds and bounded, exit codes, bodies from a
// file and stdin, unknown endpoints listing the service's, JSON errors,
// no server-only flags.
func TestUsage(t *testing.T) {
	srvEtcd := testserver.MustStartEtcd(t)
	addr := strings.Join(srvEtcd.Endpoints(), ",")
	reg, err := etcd.New(context.Background(), etcd.WithAddrs(srvEtcd.Endpoints()...), etcd.WithLogger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	srv, err := server.New(server.Name("greeter"), server.Address("127.0.0.1:0"), server.Registry(reg), server.Logger(quiet), server.DrainGrace(0))
	if err != nil {
		t.Fatal(err)
	}
	srv.Handle(&greeter.Greeter{Node: "n1"})
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.Stop(context.Background())
	registrytest.Eventually(t, 10*time.Second, func() error {
		_, errs, code := beacon(t, "--registry", "etcd", "--registry_address", addr, "describe", "greeter")
		if code != 0 {
			return &exitError{code: code, err: os.ErrNotExist}
		}
		_ = errs
		return nil
	})
	file := filepath.Join(t.TempDir(), "req.json")
	os.WriteFile(file, []byte(`{"name":"File"}`), 0o600)
	reg2 := []string{"--registry", "etcd", "--registry_address", addr}

	tests := []struct {
		name     string
		args     []string
		stdin    string
		code     int
		out, err string // substrings of stdout and stderr
	}{
		{"help", []string{"help"}, "", 0, "COMMANDS", ""},
		{"help call", []string{"help", "call"}, "", 0, "@FILE", ""},
		{"version", []string{"--version"}, "", 0, "beacon version", ""},
		{"flags after the command", append([]string{"services"}, reg2...), "", 0, "greeter", ""},
		{"flags on both sides", []string{"--registry", "etcd", "describe", "greeter", "--registry_address", addr}, "", 0, "Greeter.Hello", ""},
		{"timeout in seconds", append([]string{"services", "--timeout", "5"}, reg2...), "", 0, "greeter", ""},
		{"timeout zero", append([]string{"services", "--timeout", "0"}, reg2...), "", 2, "", "want more than 0"},
		{"timeout negative", append([]string{"services", "--timeout", "-1s"}, reg2...), "", 2, "", "negative"},
		{"unknown flag", []string{"services", "--nope"}, "", 2, "", "nope"},
		{"server-only flag refused", []string{"services", "--register_ttl", "5"}, "", 2, "", "register_ttl"},
		{"invalid service name", append([]string{"describe", "bad name!"}, reg2...), "", 2, "", "describe"},
		{"invalid name in call", append([]string{"call", "bad name!", "X.Y"}, reg2...), "", 2, "", "call"},
		{"body from a file", append([]string{"call", "greeter", "Greeter.Hello", "@" + file}, reg2...), "", 0, "Hello File", ""},
		{"body from stdin", append([]string{"call", "greeter", "Greeter.Hello", "-"}, reg2...), `{"name":"Stdin"}`, 0, "Hello Stdin", ""},
		{"bad JSON", append([]string{"call", "greeter", "Greeter.Hello", "{nope"}, reg2...), "", 2, "", "not valid JSON"},
		{"unknown endpoint lists them", append([]string{"call", "greeter", "Greeter.Nope"}, reg2...), "", 1, "", "greeter has the endpoints Greeter.Hello"},
		{"lookup failure", append([]string{"describe", "nobody"}, reg2...), "", 1, "", "nobody"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, errs, code := beaconIn(t, tc.stdin, tc.args...)
			if code != tc.code || !strings.Contains(out, tc.out) || !strings.Contains(errs, tc.err) {
				t.Fatalf("exit %d (want %d)\nstdout %q (want %q)\nstderr %q (want %q)", code, tc.code, out, tc.out, errs, tc.err)
			}
			if code != 0 && strings.Count(errs, "beacon:") > 1 {
				t.Fatalf("error said more than once: %q", errs)
			}
			if code == 2 && strings.Contains(errs, "GLOBAL OPTIONS") {
				t.Fatalf("a usage error dumped the help: %q", errs)
			}
		})
	}

	// --json errors are records with the code and detail as fields.
	out, _, code := beacon(t, append([]string{"--json", "call", "greeter", "Greeter.Hello", `{"Fail":418}`}, reg2...)...)
	var rec struct {
		Code   int    `json:"code"`
		Detail string `json:"detail"`
		Error  string `json:"error"`
		Exit   int    `json:"exit"`
	}
	if code != 1 || json.Unmarshal([]byte(strings.TrimSpace(out)), &rec) != nil || rec.Exit != 1 || rec.Error == "" {
		t.Fatalf("--json error: exit %d %q", code, out)
	}

	// The help lists no server-only flag.
	out, _, _ = beacon(t, "--help")
	for _, f := range []string{"--server_address", "--register_ttl", "--register_interval", "--tls_client_auth"} {
		if strings.Contains(out, f) {
			t.Errorf("the CLI's help offers the server-only %s", f)
		}
	}
}
