package cmd_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/beacon-go/beacon/cmd"
	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
)

// TestStaticRegistry: --registry static takes the inline list (whose commas
// the address flag splits) or a file.
func TestStaticRegistry(t *testing.T) {
	file := filepath.Join(t.TempDir(), "services.yaml")
	if err := os.WriteFile(file, []byte("services:\n- name: greeter\n  nodes: [{address: '127.0.0.1:8001'}, {address: '127.0.0.1:8002'}]\n- name: orders\n  nodes: [{address: '127.0.0.1:9000'}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{"greeter=127.0.0.1:8001, 127.0.0.1:8002;orders=127.0.0.1:9000", file, "file:" + file} {
		cfg, _, err := cmd.Parse(cmd.App{Name: "t"}, []string{"t", "--registry", "static", "--registry_address", addr}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		r, err := cmd.NewRegistry(context.Background(), cfg.Registry, cfg.RegistryAddress, nil)
		if err != nil {
			t.Fatalf("%s: %v", addr, err)
		}
		g, err := r.GetService(context.Background(), "greeter")
		if err != nil || len(g) != 1 || len(g[0].Nodes) != 2 || g[0].Nodes[1].Address != "127.0.0.1:8002" {
			t.Errorf("%s: greeter = %v, %v", addr, g, err)
		}
		if o, err := r.GetService(context.Background(), "orders"); err != nil || o[0].Nodes[0].Address != "127.0.0.1:9000" {
			t.Errorf("%s: orders = %v, %v", addr, o, err)
		}
		if err := r.Register(context.Background(), g[0]); !errors.Is(err, registry.ErrReadOnly) {
			t.Errorf("%s: Register = %v, want ErrReadOnly", addr, err)
		}
		r.Close()
	}
	for addr, want := range map[string]string{
		"":                   "no services",
		"greeter":            `entry 1 "greeter": want name=host:port`,
		"/nonexistent.yaml":  "no such file",
		"greeter=127.0.0.1:": "port must be 1-65535",
	} {
		_, err := cmd.NewRegistry(context.Background(), "static", strings.Split(addr, ","), nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("static %q: err = %v, want it to mention %q", addr, err, want)
		}
	}
}

// TestKubernetesRegistry: --registry kubernetes against a real
// kube-apiserver, configured by the address items or $KUBECONFIG.
func TestKubernetesRegistry(t *testing.T) {
	k := testserver.MustStartKubeAPIServer(t)
	svc := &registry.Service{Name: "cmd-greeter", Version: "1.0.0",
		Nodes: []*registry.Node{{ID: "n1", Address: "127.0.0.1:8001", Metadata: map[string]string{"protocol": "beacon"}}}}
	check := func(addr string) {
		t.Helper()
		cfg, _, err := cmd.Parse(cmd.App{Name: "t"}, []string{"t", "--registry", "kubernetes", "--registry_address", addr}, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		r, err := cmd.NewRegistry(context.Background(), cfg.Registry, cfg.RegistryAddress, nil)
		if err != nil {
			t.Fatalf("%q: %v", addr, err)
		}
		defer r.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := r.Register(ctx, svc, registry.RegisterTTL(30*time.Second)); err != nil {
			t.Fatalf("%q: Register: %v", addr, err)
		}
		defer r.Deregister(ctx, svc)
		for {
			got, err := r.GetService(ctx, svc.Name)
			if err == nil && len(got) == 1 && got[0].Nodes[0].Address == "127.0.0.1:8001" {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("%q: GetService = %v, %v", addr, got, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	check("kubeconfig=" + k.Kubeconfig() + ", namespace=default")
	t.Setenv("KUBECONFIG", k.Kubeconfig())
	check("namespace=kube-public")
	for addr, want := range map[string]string{
		"127.0.0.1:6443":            "want key=value",
		"namespace=a,zone=b":        `unknown key "zone"`,
		"kubeconfig=/nonexistent/x": "/nonexistent/x",
	} {
		_, err := cmd.NewRegistry(context.Background(), "kubernetes", strings.Split(addr, ","), nil)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("kubernetes %q: err = %v, want it to mention %q", addr, err, want)
		}
	}
}
