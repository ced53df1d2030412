package testserver

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// KubeAPIServer is a real kube-apiserver process on loopback, backed by an
// etcd (its own prefix in it), with certificates made for it: a CA, a
// serving certificate for IP 127.0.0.1, and a service-account signing key.
// Clients authenticate with the static admin token (group system:masters)
// or with service-account tokens it issues.
//
// Only the API server runs: no controller manager, scheduler or kubelet.
// Nothing makes EndpointSlices for Services or collects garbage; tests
// create and change the objects themselves.
type KubeAPIServer struct {
	dir        string // holds certs, token file, kubeconfig and kube-apiserver.log
	port       int
	etcdURL    string
	etcdPrefix string
	bin        string
	args       []string
	opts       options
	token      string
	caPEM      []byte
	client     *http.Client // for readiness: trusts the CA, no keep-alives

	mu sync.Mutex
	p  *proc
}

// KubeAPIServerAdmin is the user name of the admin token.
const KubeAPIServerAdmin = "beacon-test-admin"

// StartKubeAPIServer starts kube-apiserver on a free loopback port, storing
// its objects in the etcd at etcdURL ("http://127.0.0.1:port") under a
// prefix of its own, with its certificates, token file, kubeconfig and log
// (kube-apiserver.log) in a new subdirectory of dir; it waits until /readyz
// answers ok.
//
// The flags are those of a minimal control plane:
// --authorization-mode=AlwaysAllow, --endpoint-reconciler-type=none (no
// reconciler publishes the API server's own loopback address), static token
// auth (--token-auth-file) and client certificates (--client-ca-file),
// service-account tokens (issuer https://kubernetes.default.svc). WithArgs
// adds flags; one given as --name=value replaces the default of that name,
// e.g. WithArgs("--authorization-mode=RBAC").
//
// Callers must call Stop; MustStartKubeAPIServer does.
func StartKubeAPIServer(dir, etcdURL string, opts ...Option) (*KubeAPIServer, error) {
	bin, err := BinPath("kube-apiserver")
	if err != nil {
		return nil, err
	}
	o := buildOptions(opts)
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		k, err := newKubeAPIServer(bin, dir, etcdURL, o)
		if err != nil {
			return nil, err
		}
		if err = k.start(); err == nil {
			if err = k.waitReady(); err == nil {
				return k, nil
			}
		}
		k.Kill()
		lastErr = withLog(fmt.Errorf("testserver: kube-apiserver (port %d, etcd %s): %w", k.port, etcdURL, err), k.LogPath())
		if !addrInUse(k.LogPath()) {
			break
		}
	}
	return nil, lastErr
}

// MustStartKubeAPIServer starts an etcd and a kube-apiserver on it in
// t.TempDir(), stops both in t.Cleanup and fails the test if a binary is
// missing or a server does not start.
func MustStartKubeAPIServer(t testing.TB, opts ...Option) *KubeAPIServer {
	t.Helper()
	Require(t, "kube-apiserver")
	e := MustStartEtcd(t)
	k, err := StartKubeAPIServer(t.TempDir(), e.ClientURL(), opts...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { k.Stop() })
	return k
}

func newKubeAPIServer(bin, dir, etcdURL string, o options) (*KubeAPIServer, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	d, err := os.MkdirTemp(dir, "kube-apiserver-")
	if err != nil {
		return nil, fmt.Errorf("testserver: %w", err)
	}
	k := &KubeAPIServer{dir: d, port: port, etcdURL: etcdURL, etcdPrefix: "/registry-" + filepath.Base(d), bin: bin, opts: o}
	if err := k.makeCredentials(); err != nil {
		return nil, fmt.Errorf("testserver: kube-apiserver credentials: %w", err)
	}
	k.args = []string{
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--etcd-servers=" + etcdURL,
		"--etcd-prefix=" + k.etcdPrefix,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--cert-dir=" + filepath.Join(d, "certs"),
		"--tls-cert-file=" + k.path("serving.crt"),
		"--tls-private-key-file=" + k.path("serving.key"),
		"--client-ca-file=" + k.path("ca.crt"),
		"--service-account-key-file=" + k.path("sa.key"),
		"--service-account-signing-key-file=" + k.path("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--token-auth-file=" + k.path("tokens.csv"),
		"--authorization-mode=AlwaysAllow",
		"--endpoint-reconciler-type=none",
		"--profiling=false",
	}
	// An extra flag replaces the default of the same name (list flags such
	// as --authorization-mode would otherwise add to it).
	for _, a := range o.args {
		name, _, _ := strings.Cut(a, "=")
		k.args = slices.DeleteFunc(k.args, func(d string) bool { return strings.HasPrefix(d, name+"=") })
	}
	k.args = append(k.args, o.args...)
	return k, nil
}

func (k *KubeAPIServer) path(name string) string { return filepath.Join(k.dir, name) }

// makeCredentials writes ca.crt/ca.key, serving.crt/serving.key (IP SAN
// 127.0.0.1 only), sa.key, tokens.csv and kubeconfig.
func (k *KubeAPIServer) makeCredentials() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "beacon-test-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return err
	}
	k.token = hex.EncodeToString(tok)
	k.caPEM = pemBlock("CERTIFICATE", caDER)
	files := map[string][]byte{
		"ca.crt":      k.caPEM,
		"ca.key":      pemKey(caKey),
		"serving.crt": pemBlock("CERTIFICATE", srvDER),
		"serving.key": pemKey(srvKey),
		"sa.key":      pemKey(saKey),
		"tokens.csv":  fmt.Appendf(nil, "%s,%s,%s,\"system:masters\"\n", k.token, KubeAPIServerAdmin, KubeAPIServerAdmin),
		"kubeconfig":  []byte(k.kubeconfig()),
	}
	for name, data := range files {
		if err := os.WriteFile(k.path(name), data, 0o600); err != nil {
			return err
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	k.client = &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{
			Proxy:             nil,
			DisableKeepAlives: true,
			TLSClientConfig:   &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		},
	}
	return nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func pemKey(key *ecdsa.PrivateKey) []byte {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		panic(err) // a P-256 key always marshals
	}
	return pemBlock("EC PRIVATE KEY", der)
}

func (k *KubeAPIServer) kubeconfig() string {
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: admin
  user:
    token: %s
contexts:
- name: test
  context: {cluster: test, user: admin, namespace: default}
current-context: test
`, k.URL(), k.path("ca.crt"), k.token)
}

func (k *KubeAPIServer) start() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.p != nil && !k.p.exited() {
		return fmt.Errorf("testserver: kube-apiserver is already running (pid %d)", k.p.pid())
	}
	// KUBECONFIG and the in-cluster variables of the test's environment
	// are not the server's business.
	p, err := startProc(k.bin, k.args, k.dir, k.LogPath(), "KUBECONFIG=", "KUBERNETES_")
	if err != nil {
		return err
	}
	k.p = p
	return nil
}

func (k *KubeAPIServer) proc() *proc {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.p
}

func (k *KubeAPIServer) waitReady() error {
	p := k.proc()
	if p == nil {
		return errors.New("not running")
	}
	return waitReady(p, k.opts.startTimeout, k.ready)
}

// ready asks GET /readyz, which is ok once etcd is reachable and every
// post-start hook (bootstrap RBAC roles, priority and fairness, ...) ran.
func (k *KubeAPIServer) ready(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.URL()+"/readyz", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+k.token)
	resp, err := k.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "ok" {
		return fmt.Errorf("/readyz: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// URL returns "https://127.0.0.1:port".
func (k *KubeAPIServer) URL() string { return "https://127.0.0.1:" + strconv.Itoa(k.port) }

// Port returns the secure port.
func (k *KubeAPIServer) Port() int { return k.port }

// Token returns the admin bearer token (user KubeAPIServerAdmin, group
// system:masters).
func (k *KubeAPIServer) Token() string { return k.token }

// CAPEM returns the PEM of the CA that signed the serving certificate.
func (k *KubeAPIServer) CAPEM() []byte { return append([]byte(nil), k.caPEM...) }

// CAFile returns the path of the CA certificate.
func (k *KubeAPIServer) CAFile() string { return k.path("ca.crt") }

// Kubeconfig returns the path of a kubeconfig file for the admin token
// (context "test", namespace "default").
func (k *KubeAPIServer) Kubeconfig() string { return k.path("kubeconfig") }

// EtcdPrefix returns the etcd key prefix holding this server's objects.
func (k *KubeAPIServer) EtcdPrefix() string { return k.etcdPrefix }

// Dir returns the directory holding the certificates, files and log.
func (k *KubeAPIServer) Dir() string { return k.dir }

// LogPath returns the file receiving the server's stdout and stderr.
func (k *KubeAPIServer) LogPath() string { return k.path("kube-apiserver.log") }

// PID returns the process id, or 0 if the server is not running.
func (k *KubeAPIServer) PID() int {
	p := k.proc()
	if p == nil || p.exited() {
		return 0
	}
	return p.pid()
}

// Stop sends SIGTERM, waits for the exit (SIGKILL after the stop timeout)
// and returns once the process has been reaped.
func (k *KubeAPIServer) Stop() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.p == nil {
		return nil
	}
	err := k.p.stop(k.opts.stopTimeout)
	k.p = nil
	if err != nil {
		return withLog(fmt.Errorf("%w (kube-apiserver)", err), k.LogPath())
	}
	return nil
}

// Kill sends SIGKILL and waits until the process has been reaped.
func (k *KubeAPIServer) Kill() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.p == nil {
		return
	}
	k.p.kill()
	k.p = nil
}
