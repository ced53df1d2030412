package kubernetes

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clientset "k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/beacon-go/beacon/internal/testserver"
)

// The package's etcd and kube-apiserver (real processes, started by
// TestMain and stopped by PID), the admin configuration, and an admin
// client for the tests' own objects.
var (
	apiserver *testserver.KubeAPIServer
	etcdURL   string
	adminCfg  *rest.Config
	admin     clientset.Interface
	adminHTTP *http.Client
)

type withServers struct{ m *testing.M }

func (w withServers) Run() int {
	dir, err := os.MkdirTemp("", "beacon-kubernetes-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	start := time.Now()
	e, err := testserver.StartEtcd(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: registry/kubernetes tests need a real etcd:", err)
		return 1
	}
	defer e.Stop()
	etcdURL = e.ClientURL()
	k, err := testserver.StartKubeAPIServer(dir, etcdURL)
	if err != nil {
		// A missing binary fails (never skips) and names the install script.
		fmt.Fprintln(os.Stderr, "FAIL: registry/kubernetes tests need a real kube-apiserver:", err)
		return 1
	}
	defer k.Stop()
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "etcd and kube-apiserver ready in %v (kube-apiserver pid %d, %s)\n", time.Since(start).Round(time.Millisecond), k.PID(), k.URL())
	}
	apiserver = k
	adminCfg, err = clientcmd.BuildConfigFromFlags("", k.Kubeconfig())
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	cfg := rest.CopyConfig(adminCfg)
	closeConns := prepare(cfg) // its own transport, closed below
	defer closeConns()
	if adminHTTP, err = rest.HTTPClientFor(cfg); err == nil {
		admin, err = clientset.NewForConfigAndClient(cfg, adminHTTP)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	defer adminHTTP.CloseIdleConnections()
	return w.m.Run()
}

func TestMain(m *testing.M) {
	flag.Parse()
	if os.Getenv(envInClusterChild) != "" {
		os.Exit(inClusterChild())
	}
	goleak.VerifyTestMain(withServers{m})
}

var nsSeq atomic.Int64

// namespace creates a namespace of the test's own. (Nothing deletes it:
// without the namespace controller it would stay Terminating.)
func namespace(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t%d-%d", time.Now().UnixNano()%1e9, nsSeq.Add(1))
	_, err := admin.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	return name
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newRegistry returns a registry on the test server, closed at cleanup.
func newRegistry(t testing.TB, ns string, opts ...Option) (*Registry, *logBuf) {
	t.Helper()
	lb := newLogBuf()
	r, err := New(append([]Option{WithConfig(adminCfg), WithNamespace(ns), WithLogger(lb.Logger())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, lb
}

// logBuf keeps slog records for assertions and, with -v, prints warnings.
type logBuf struct {
	mu   sync.Mutex
	recs []string
	h    slog.Handler
}

func newLogBuf() *logBuf {
	lb := &logBuf{}
	if testing.Verbose() {
		lb.h = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})
	}
	return lb
}

func (l *logBuf) Logger() *slog.Logger { return slog.New(l) }

func (l *logBuf) Enabled(context.Context, slog.Level) bool { return true }
func (l *logBuf) Handle(ctx context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.String())
		return true
	})
	l.mu.Lock()
	l.recs = append(l.recs, b.String())
	l.mu.Unlock()
	if l.h != nil && r.Level >= slog.LevelWarn {
		return l.h.Handle(ctx, r)
	}
	return nil
}
func (l *logBuf) WithAttrs(attrs []slog.Attr) slog.Handler { return &attrHandler{l, attrs} }
func (l *logBuf) WithGroup(string) slog.Handler            { return l }

// Has reports whether a record contains all of parts.
func (l *logBuf) Has(parts ...string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
next:
	for _, rec := range l.recs {
		for _, p := range parts {
			if !strings.Contains(rec, p) {
				continue next
			}
		}
		return true
	}
	return false
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.recs, "\n")
}

type attrHandler struct {
	l     *logBuf
	attrs []slog.Attr
}

func (h *attrHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *attrHandler) Handle(ctx context.Context, r slog.Record) error {
	r.AddAttrs(h.attrs...)
	return h.l.Handle(ctx, r)
}
func (h *attrHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &attrHandler{h.l, append(append([]slog.Attr(nil), h.attrs...), attrs...)}
}
func (h *attrHandler) WithGroup(string) slog.Handler { return h }
