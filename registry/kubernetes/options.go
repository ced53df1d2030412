package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/homedir"

	"github.com/beacon-go/beacon/registry"
)

// Defaults.
const (
	// DefaultCollectExpiredAfter is how long after its Lease expired a
	// Beacon node's EndpointSlice and Lease are deleted by the registries
	// that watch them (a crashed server never deregisters).
	DefaultCollectExpiredAfter = time.Minute
	// DefaultQPS and DefaultBurst replace client-go's client-side rate
	// limit (5 and 10) when the configuration sets none: a process
	// heartbeating several nodes makes two requests per node per interval.
	DefaultQPS   = 50
	DefaultBurst = 100
	// FieldManager is the server-side apply field manager of Beacon's
	// writes.
	FieldManager = "beacon"
)

// NamespaceFile is where a pod finds its own namespace.
const NamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// Option configures New.
type Option func(*options)

type options struct {
	config       *rest.Config
	kubeconfig   string
	context      string
	namespace    string
	portName     string
	log          *slog.Logger
	now          func() time.Time
	collectAfter time.Duration
	errs         []error
}

// WithConfig uses this client configuration (copied) instead of looking
// for one.
func WithConfig(c *rest.Config) Option { return func(o *options) { o.config = c } }

// WithKubeconfig reads the client configuration from this kubeconfig file.
func WithKubeconfig(path string) Option { return func(o *options) { o.kubeconfig = path } }

// WithContext picks a context of the kubeconfig other than its current one.
func WithContext(name string) Option { return func(o *options) { o.context = name } }

// WithNamespace sets the namespace whose Services are discovered and where
// Beacon nodes are registered.
func WithNamespace(ns string) Option { return func(o *options) { o.namespace = ns } }

// WithPortName picks, in the EndpointSlices of Services that publish
// several ports, the port of this name (a Service's own
// beacon-go.github.io/port annotation takes precedence).
func WithPortName(name string) Option { return func(o *options) { o.portName = name } }

// WithLogger sets the logger (default slog.Default()). client-go's own
// contextual log lines (its informers) go to it too.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithCollectExpiredAfter sets how long after its Lease expired a Beacon
// node's objects are deleted (default DefaultCollectExpiredAfter); 0 or
// less turns collection off.
func WithCollectExpiredAfter(d time.Duration) Option {
	return func(o *options) { o.collectAfter = d }
}

// WithAddress applies registry address items, as cmd's --registry_address
// passes them (split at commas): "namespace=<ns>", "kubeconfig=<path>",
// "context=<name>", "port=<port name>". Anything else makes New fail with
// an error matching registry.ErrInvalid.
func WithAddress(items ...string) Option {
	return func(o *options) {
		for _, it := range items {
			it = strings.TrimSpace(it)
			if it == "" {
				continue
			}
			k, v, ok := strings.Cut(it, "=")
			k, v = strings.TrimSpace(k), strings.TrimSpace(v)
			if !ok || v == "" {
				o.errs = append(o.errs, fmt.Errorf("%w: kubernetes registry address %q: want key=value with key namespace, kubeconfig, context or port", registry.ErrInvalid, it))
				continue
			}
			switch k {
			case "namespace", "ns":
				o.namespace = v
			case "kubeconfig":
				o.kubeconfig = v
			case "context":
				o.context = v
			case "port":
				o.portName = v
			default:
				o.errs = append(o.errs, fmt.Errorf("%w: kubernetes registry address: unknown key %q (want namespace, kubeconfig, context or port)", registry.ErrInvalid, k))
			}
		}
	}
}

// loadConfig finds the client configuration and the namespace, in this
// order: WithConfig; a kubeconfig from WithKubeconfig (or the address) or
// $KUBECONFIG; the pod's service account (rest.InClusterConfig) when
// KUBERNETES_SERVICE_HOST is set; ~/.kube/config. The namespace is
// WithNamespace's, else the kubeconfig context's, else (in a pod) the
// service account's namespace file, else "default". source says which
// configuration was used, for the log.
func loadConfig(o *options) (cfg *rest.Config, namespace, source string, err error) {
	kubeconfig := func(rules *clientcmd.ClientConfigLoadingRules, src string) (*rest.Config, string, string, error) {
		cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: o.context})
		c, err := cc.ClientConfig()
		if err != nil {
			return nil, "", "", fmt.Errorf("kubernetes registry: kubeconfig %s: %w", src, err)
		}
		ns, _, err := cc.Namespace()
		if err != nil {
			return nil, "", "", fmt.Errorf("kubernetes registry: kubeconfig %s: %w", src, err)
		}
		return c, ns, "kubeconfig " + src, nil
	}
	switch {
	case o.config != nil:
		cfg, source = rest.CopyConfig(o.config), "WithConfig"
	case o.kubeconfig != "":
		cfg, namespace, source, err = kubeconfig(&clientcmd.ClientConfigLoadingRules{ExplicitPath: o.kubeconfig}, o.kubeconfig)
	case os.Getenv(clientcmd.RecommendedConfigPathEnvVar) != "":
		env := os.Getenv(clientcmd.RecommendedConfigPathEnvVar)
		cfg, namespace, source, err = kubeconfig(&clientcmd.ClientConfigLoadingRules{Precedence: filepath.SplitList(env)}, "$KUBECONFIG="+env)
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, "", "", fmt.Errorf("kubernetes registry: in-cluster configuration: %w", err)
		}
		source = "in-cluster service account"
		if data, err := os.ReadFile(NamespaceFile); err == nil {
			namespace = strings.TrimSpace(string(data))
		}
	default:
		home := filepath.Join(homedir.HomeDir(), clientcmd.RecommendedHomeDir, clientcmd.RecommendedFileName)
		if _, statErr := os.Stat(home); statErr != nil {
			return nil, "", "", errors.New("kubernetes registry: no configuration: not in a pod (KUBERNETES_SERVICE_HOST is unset), " +
				"no kubeconfig given (kubernetes.WithKubeconfig, --registry_address kubeconfig=<path>, $KUBECONFIG) and no " + home)
		}
		cfg, namespace, source, err = kubeconfig(&clientcmd.ClientConfigLoadingRules{ExplicitPath: home}, home)
	}
	if err != nil {
		return nil, "", "", err
	}
	if o.namespace != "" {
		namespace = o.namespace
	}
	if namespace == "" {
		namespace = "default"
	}
	return cfg, namespace, source, nil
}

// prepare sets what Beacon needs of a client configuration: its own
// transport, whose connections the returned func closes (a Dial function
// keeps client-go from sharing a cached transport), a rate limit fit for
// heartbeats, a user agent.
func prepare(cfg *rest.Config) (closeConns func()) {
	if cfg.QPS == 0 {
		cfg.QPS = DefaultQPS
	}
	if cfg.Burst == 0 {
		cfg.Burst = DefaultBurst
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "beacon"
	}
	dial := cfg.Dial
	if dial == nil {
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
		dial = d.DialContext
	}
	t := &connTracker{conns: map[*trackedConn]struct{}{}}
	cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return t.add(c), nil
	}
	return t.closeAll
}

// connTracker knows the connections of one transport, so that Close can
// end them: idle HTTP/2 connections that a just-ended watch stream still
// held would otherwise outlive the registry.
type connTracker struct {
	mu    sync.Mutex
	conns map[*trackedConn]struct{}
}

type trackedConn struct {
	net.Conn
	t    *connTracker
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.t.mu.Lock()
		delete(c.t.conns, c)
		c.t.mu.Unlock()
	})
	return c.Conn.Close()
}

func (t *connTracker) add(c net.Conn) net.Conn {
	tc := &trackedConn{Conn: c, t: t}
	t.mu.Lock()
	t.conns[tc] = struct{}{}
	t.mu.Unlock()
	return tc
}

func (t *connTracker) closeAll() {
	t.mu.Lock()
	conns := make([]*trackedConn, 0, len(t.conns))
	for c := range t.conns {
		conns = append(conns, c)
	}
	t.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}
