package kubernetes

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientset "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
)

// The in-cluster test re-executes the test binary in a private mount
// namespace, where it mounts a tmpfs over /run (/var/run) and writes a pod's
// service-account files; the child then runs inClusterChild (from TestMain)
// instead of the tests.
const (
	envInClusterChild = "BEACON_K8S_INCLUSTER_CHILD" // the namespace
	envChildToken     = "BEACON_K8S_CHILD_TOKEN"
	envChildCA        = "BEACON_K8S_CHILD_CA" // path of the CA PEM
	envChildService   = "BEACON_K8S_CHILD_SERVICE"
)

// applyRBAC creates the objects of rbac.yaml (the file the README shows) in
// ns.
func applyRBAC(t *testing.T, cs clientset.Interface, ns string) {
	t.Helper()
	data, err := os.ReadFile("rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dec := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := dec.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("rbac.yaml: %v", err)
		}
		ctx := ctxT(t)
		switch o := obj.(type) {
		case *corev1.ServiceAccount:
			_, err = cs.CoreV1().ServiceAccounts(ns).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.Role:
			_, err = cs.RbacV1().Roles(ns).Create(ctx, o, metav1.CreateOptions{})
		case *rbacv1.RoleBinding:
			_, err = cs.RbacV1().RoleBindings(ns).Create(ctx, o, metav1.CreateOptions{})
		default:
			t.Fatalf("rbac.yaml: unexpected %T", obj)
		}
		if err != nil {
			t.Fatalf("rbac.yaml: create %T: %v", obj, err)
		}
	}
}

// TestInClusterRBAC proves the README's RBAC objects (rbac.yaml) and the
// in-cluster configuration on a real kube-apiserver with
// --authorization-mode=RBAC: a service-account token from the TokenRequest
// API, the pod's files at their real paths (in a private mount namespace),
// KUBERNETES_SERVICE_HOST/PORT, and New() without options.
func TestInClusterRBAC(t *testing.T) {
	k, err := testserver.StartKubeAPIServer(t.TempDir(), etcdURL, testserver.WithArgs("--authorization-mode=RBAC"))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Stop()
	cfg, err := clientcmd.BuildConfigFromFlags("", k.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	closeConns := prepare(cfg)
	defer closeConns()
	cs, err := clientset.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ns := "beacon-rbac"
	if _, err := cs.CoreV1().Namespaces().Create(ctxT(t), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	applyRBAC(t, cs, ns)
	// An ordinary Service the child must discover (list/watch services and
	// endpointslices).
	createService(t, cs, ns, "web", nil, nil)
	createSlice(t, cs, ns, "web-1", "web", []discoveryv1.EndpointPort{{Port: ptr.To[int32](8080)}},
		discoveryv1.Endpoint{Addresses: []string{"10.1.0.1"}})
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctxT(t), "beacon",
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](3600)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// RBAC is enforced: the token may do what rbac.yaml grants in its
	// namespace, and nothing else.
	sa := rest.AnonymousClientConfig(cfg)
	sa.BearerToken = tr.Status.Token
	saClient, err := clientset.NewForConfig(sa)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := saClient.CoreV1().Pods(ns).List(ctxT(t), metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("service account lists pods: %v, want Forbidden", err)
	}
	other, err := New(WithConfig(sa), WithNamespace("default"), WithLogger(newLogBuf().Logger()))
	if err != nil {
		t.Fatal(err)
	}
	err = other.Register(ctxT(t), &registry.Service{Name: "x", Nodes: []*registry.Node{{ID: "x", Address: "127.0.0.1:1"}}}, registry.RegisterTTL(time.Minute))
	if !errors.Is(err, registry.ErrUnavailable) || !apierrors.IsForbidden(err) {
		t.Errorf("Register outside the granted namespace: %v, want Forbidden wrapped in ErrUnavailable", err)
	}
	other.Close()

	caFile := filepath.Join(t.TempDir(), "ca.crt")
	if err := os.WriteFile(caFile, k.CAPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KUBECONFIG=") && !strings.HasPrefix(kv, "KUBERNETES_") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env,
		envInClusterChild+"="+ns, envChildToken+"="+tr.Status.Token, envChildCA+"="+caFile, envChildService+"=web",
		"KUBERNETES_SERVICE_HOST=127.0.0.1", fmt.Sprintf("KUBERNETES_SERVICE_PORT=%d", k.Port()),
		"HOME="+t.TempDir())
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	if os.Geteuid() != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
			UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}},
			GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}},
			Pdeathsig:   syscall.SIGKILL,
		}
	}
	out, err := cmd.CombinedOutput()
	var exitErr *exec.ExitError
	if err != nil && !errors.As(err, &exitErr) {
		t.Skipf("cannot make a private mount namespace for the pod's files (%v); not root and no user namespaces", err)
	}
	t.Logf("child:\n%s", out)
	if err != nil || !bytes.Contains(out, []byte("IN-CLUSTER OK")) {
		t.Fatalf("in-cluster child failed: %v", err)
	}
}

// inClusterChild runs in the re-executed test binary: it plays a pod.
func inClusterChild() int {
	fail := func(format string, args ...any) int {
		fmt.Printf("FAIL: "+format+"\n", args...)
		return 1
	}
	// Our mounts must not reach the parent's namespace, whatever the
	// propagation we inherited.
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		return fail("make / private: %v", err)
	}
	run, err := filepath.EvalSymlinks("/var/run")
	if err != nil {
		return fail("%v", err)
	}
	if err := syscall.Mount("tmpfs", run, "tmpfs", 0, "mode=0755"); err != nil {
		return fail("mount tmpfs on %s: %v", run, err)
	}
	dir := filepath.Dir(NamespaceFile)
	ns := os.Getenv(envInClusterChild)
	ca, err := os.ReadFile(os.Getenv(envChildCA))
	if err != nil {
		return fail("%v", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fail("%v", err)
	}
	for name, data := range map[string][]byte{"token": []byte(os.Getenv(envChildToken)), "ca.crt": ca, "namespace": []byte(ns)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return fail("%v", err)
		}
	}
	lb := newLogBuf()
	r, err := New(WithLogger(lb.Logger()))
	if err != nil {
		return fail("New: %v", err)
	}
	defer r.Close()
	if r.Namespace() != ns {
		return fail("namespace %q, want %q from %s", r.Namespace(), ns, NamespaceFile)
	}
	if !lb.Has("config=in-cluster service account") {
		return fail("not configured in-cluster: %s", lb)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	w, err := r.Watch(ctx, registry.WatchService("greeter"))
	if err != nil {
		return fail("Watch: %v", err)
	}
	defer w.Stop()
	s := &registry.Service{Name: "greeter", Version: "1.0.0", Nodes: []*registry.Node{{ID: "pod-1", Address: "10.2.0.1:8080"}}}
	if err := r.Register(ctx, s, registry.RegisterTTL(10*time.Second)); err != nil {
		return fail("Register: %v", err)
	}
	if ev, err := w.Next(); err != nil || ev.Type != registry.Create || ev.Service.Nodes[0].ID != "pod-1" {
		return fail("watch: %v %v", ev, err)
	}
	web, err := r.GetService(ctx, os.Getenv(envChildService))
	if err != nil || web[0].Nodes[0].Address != "10.1.0.1:8080" {
		return fail("GetService(web) = %v, %v", web, err)
	}
	if err := r.Deregister(ctx, s); err != nil {
		return fail("Deregister: %v", err)
	}
	if ev, err := w.Next(); err != nil || ev.Type != registry.Delete {
		return fail("watch: %v %v", ev, err)
	}
	fmt.Println("IN-CLUSTER OK: namespace", ns, "from", NamespaceFile)
	return 0
}

// TestREADMEShowsRBAC: the README's RBAC example is rbac.yaml, the file
// TestInClusterRBAC proves.
func TestREADMEShowsRBAC(t *testing.T) {
	yaml, err := os.ReadFile("rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(readme, append(append([]byte("```yaml\n"), yaml...), "```"...)) {
		t.Error("README.md does not show registry/kubernetes/rbac.yaml verbatim in a yaml block")
	}
}
