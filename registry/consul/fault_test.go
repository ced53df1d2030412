package consul

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/registrytest"
)

// startAgent starts an agent of the test's own (for tests that stop or
// restart it), settled for timing.
func startAgent(t *testing.T, opts ...testserver.Option) *testserver.Consul {
	t.Helper()
	a := testserver.MustStartConsul(t, opts...)
	if err := a.WaitSettled(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	return a
}

// TestAgentRestart: the agent crashes and a fresh one (empty state) starts
// on the same port. Watchers report the loss once the new agent answers,
// and the registrant's next heartbeat registers the node again.
func TestAgentRestart(t *testing.T) {
	t.Parallel()
	a := startAgent(t)
	registrant := newRegistryAt(t, a.Addr())
	watcher := newRegistryAt(t, a.Addr())
	name := uniqueName(t)
	s := service(name, "1", 0, 1)
	id := s.Nodes[0].ID
	ev := registrytest.Watch(t, watcher, registry.WatchService(name))
	if err := registrant.Register(ctxT(t), s, registry.RegisterTTL(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	ev.Expect(t, 5*time.Second, registry.Create, id)

	a.Kill()
	if err := registrant.Register(ctxT(t), s, registry.RegisterTTL(5*time.Second)); !errors.Is(err, registry.ErrUnavailable) {
		t.Errorf("heartbeat with the agent down: err = %v, want ErrUnavailable", err)
	}
	if _, err := watcher.GetService(ctxT(t), name); !errors.Is(err, registry.ErrUnavailable) {
		t.Errorf("GetService with the agent down: err = %v, want ErrUnavailable", err)
	}
	if err := a.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := a.WaitSettled(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	// The fresh agent does not know the node: a successful, empty answer.
	ev.Expect(t, 10*time.Second, registry.Delete, id)
	start := time.Now()
	if err := registrant.Register(ctxT(t), s, registry.RegisterTTL(5*time.Second)); err != nil {
		t.Fatalf("first heartbeat after the restart: %v", err)
	}
	ev.Expect(t, 10*time.Second, registry.Create, id)
	t.Logf("node back at the watcher %v after the first heartbeat on the new agent", time.Since(start))
	wantNodes(t, watcher, 5*time.Second, name, id)
}

// TestCrashedRegistrantHidden: a registrant that stops heartbeating (closed
// without deregistering) disappears from GetService and the watchers within
// TTL + 1 s of its last heartbeat.
func TestCrashedRegistrantHidden(t *testing.T) {
	const ttl = time.Second
	registrant, err := New(ctxT(t), WithAddrs(agent.Addr()), WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	watcher := newRegistry(t)
	name := uniqueName(t)
	s := service(name, "1", 0, 1)
	id := s.Nodes[0].ID
	ev := registrytest.Watch(t, watcher, registry.WatchService(name))
	var last time.Time
	for range 4 {
		if err := registrant.Register(ctxT(t), s, registry.RegisterTTL(ttl)); err != nil {
			t.Fatal(err)
		}
		last = time.Now()
		time.Sleep(ttl / 4) // the heartbeat interval, not a wait for an event
	}
	ev.Expect(t, 5*time.Second, registry.Create, id)
	registrant.Close() // crash: no deregistration

	ev.Expect(t, ttl+time.Second, registry.Delete, id)
	deleted := time.Since(last)
	wantNodes(t, watcher, ttl+time.Second, name)
	hidden := time.Since(last)
	if hidden > ttl+time.Second {
		t.Errorf("hidden from GetService %v after the last heartbeat, want within TTL %v + 1s", hidden, ttl)
	}
	t.Logf("last heartbeat -> watcher Delete %v, -> GetService hidden %v (TTL %v)", deleted, hidden, ttl)
}

// TestTLS talks HTTPS to an agent with a certificate of a test CA: with
// WithTLS and WithTLSFiles it works, without the CA it does not.
func TestTLS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	caPEM, certPEM, keyPEM := testCerts(t)
	files := map[string][]byte{"ca.pem": caPEM, "cert.pem": certPEM, "key.pem": keyPEM}
	for f, data := range files {
		if err := os.WriteFile(filepath.Join(dir, f), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	port, err := testserver.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	startAgent(t, testserver.WithArgs("-https-port="+strconv.Itoa(port), fmt.Sprintf(
		`-hcl=tls { defaults { ca_file = %q cert_file = %q key_file = %q } }`,
		filepath.Join(dir, "ca.pem"), filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))))
	addr := "https://127.0.0.1:" + strconv.Itoa(port)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tests := []struct {
		name string
		opts []Option
		ok   bool
	}{
		{"WithTLS", []Option{WithAddrs(addr), WithTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})}, true},
		{"WithTLSFiles", []Option{WithAddrs(addr), WithTLSFiles(filepath.Join(dir, "ca.pem"), "", "")}, true},
		{"host:port with WithTLS", []Option{WithAddrs(addr[len("https://"):]), WithTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})}, true},
		{"unknown CA", []Option{WithAddrs(addr), WithTLS(nil)}, false},
		{"plain HTTP to the HTTPS port", []Option{WithAddrs(addr[len("https://"):])}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := New(ctxT(t), append([]Option{WithLogger(testLogger(t)), WithConnectTimeout(2 * time.Second)}, tc.opts...)...)
			if !tc.ok {
				if err == nil {
					r.Close()
					t.Fatal("New succeeded")
				}
				if !errors.Is(err, registry.ErrUnavailable) {
					t.Errorf("err = %v, want ErrUnavailable", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			name := uniqueName(t)
			s := service(name, "1", 0, 1)
			if err := r.Register(ctxT(t), s, registry.RegisterTTL(10*time.Second)); err != nil {
				t.Fatal(err)
			}
			wantNodes(t, r, 5*time.Second, name, s.Nodes[0].ID)
			if err := r.Deregister(ctxT(t), s); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// testCerts returns a CA certificate and a server certificate for
// 127.0.0.1 signed by it, PEM encoded.
func testCerts(t *testing.T) (caPEM, certPEM, keyPEM []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "beacon test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "server.dc1.consul"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:     []string{"localhost", "server.dc1.consul"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}
