package kubernetes

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/beacon-go/beacon/registry"
)

// kubeconfigWith writes a copy of the test server's kubeconfig with two
// contexts: "test" (namespace ctx-ns, the current one unless current is
// set) and "broken" (a server where nothing listens).
func kubeconfigWith(t *testing.T, current string) string {
	t.Helper()
	data, err := os.ReadFile(apiserver.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(data), "namespace: default", "namespace: ctx-ns", 1)
	s = strings.Replace(s, "clusters:\n", "clusters:\n- name: broken\n  cluster: {server: \"https://127.0.0.1:1\"}\n", 1)
	s = strings.Replace(s, "contexts:\n", "contexts:\n- name: broken\n  context: {cluster: broken, user: admin}\n", 1)
	if current != "" {
		s = strings.Replace(s, "current-context: test", "current-context: "+current, 1)
	}
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// cleanEnv removes every source of configuration from the environment.
func cleanEnv(t *testing.T) string {
	t.Helper()
	home := t.TempDir()
	t.Setenv("HOME", home)
	t.Setenv("KUBECONFIG", "")
	os.Unsetenv("KUBECONFIG")
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	os.Unsetenv("KUBERNETES_SERVICE_HOST")
	return home
}

// reachable checks that a registry made from a configuration talks to the
// test server.
func reachable(t *testing.T, r *Registry) {
	t.Helper()
	defer r.Close()
	if _, err := r.ListServices(ctxT(t)); err != nil {
		t.Errorf("ListServices through %s: %v", r.Namespace(), err)
	}
}

func TestConfigSources(t *testing.T) {
	home := cleanEnv(t)
	if _, err := New(); err == nil || !strings.Contains(err.Error(), "no configuration: not in a pod") {
		t.Errorf("New without any configuration = %v", err)
	}
	kc := kubeconfigWith(t, "")

	// WithKubeconfig: the context's namespace, unless WithNamespace.
	r, err := New(WithKubeconfig(kc))
	if err != nil {
		t.Fatal(err)
	}
	if r.Namespace() != "ctx-ns" {
		t.Errorf("namespace %q, want the context's ctx-ns", r.Namespace())
	}
	reachable(t, r)
	r, err = New(WithKubeconfig(kc), WithNamespace("mine"))
	if err != nil || r.Namespace() != "mine" {
		t.Fatalf("WithNamespace: %v %v", r, err)
	}
	r.Close()

	// The address items, as cmd passes them.
	r, err = New(WithAddress("kubeconfig="+kc, " namespace = from-address ", "port=grpc"))
	if err != nil || r.Namespace() != "from-address" || r.o.portName != "grpc" {
		t.Fatalf("WithAddress: %v %v", r, err)
	}
	reachable(t, r)

	// WithContext picks another context: one that does not answer.
	r, err = New(WithKubeconfig(kc), WithContext("broken"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := r.ListServices(ctx); !errors.Is(err, registry.ErrUnavailable) {
		t.Errorf("context broken: ListServices = %v, want ErrUnavailable", err)
	}
	r.Close()
	if _, err := New(WithKubeconfig(kc), WithContext("nope")); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("unknown context: %v", err)
	}

	// $KUBECONFIG, when no path is given.
	t.Setenv("KUBECONFIG", kubeconfigWith(t, "broken")+string(os.PathListSeparator)+filepath.Join(home, "missing"))
	r, err = New(WithContext("test"))
	if err != nil {
		t.Fatal(err)
	}
	reachable(t, r)

	// In a pod (KUBERNETES_SERVICE_HOST set) but without the service
	// account's files, rest.InClusterConfig's error is reported.
	// (TestInClusterRBAC runs the successful case with the real files.)
	os.Unsetenv("KUBECONFIG")
	t.Setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "1")
	if _, err := os.Stat(NamespaceFile); err == nil {
		t.Skip("this machine has a pod's service account files")
	}
	if _, err := New(); err == nil || !strings.Contains(err.Error(), "in-cluster configuration") {
		t.Errorf("in a pod without its files: %v", err)
	}

	// ~/.kube/config, last.
	os.Unsetenv("KUBERNETES_SERVICE_HOST")
	if err := os.MkdirAll(filepath.Join(home, ".kube"), 0o755); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(kc)
	if err := os.WriteFile(filepath.Join(home, ".kube", "config"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err = New()
	if err != nil {
		t.Fatal(err)
	}
	if r.Namespace() != "ctx-ns" {
		t.Errorf("~/.kube/config: namespace %q", r.Namespace())
	}
	reachable(t, r)
}

func TestAddressErrors(t *testing.T) {
	for _, tc := range []struct{ item, want string }{
		{"127.0.0.1:6443", "want key=value"},
		{"namespace=", "want key=value"},
		{"zone=a", `unknown key "zone"`},
	} {
		_, err := New(WithAddress(tc.item), WithConfig(adminCfg))
		if !errors.Is(err, registry.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("WithAddress(%q): %v, want ErrInvalid mentioning %q", tc.item, err, tc.want)
		}
	}
}
