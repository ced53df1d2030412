package etcd

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
)

// New fails in bounded time, with ErrUnavailable, when etcd is not there:
// nothing listening, or a listener that never speaks. A refused connection
// is reported at once, with its cause.
func TestNewUnreachable(t *testing.T) {
	refused := func(t *testing.T) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return addr
	}
	silent := func(t *testing.T) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var conns []net.Conn
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				conns = append(conns, c) // accepted, never answered
				mu.Unlock()
			}
		}()
		t.Cleanup(func() {
			ln.Close()
			<-done
			mu.Lock()
			for _, c := range conns {
				c.Close()
			}
			mu.Unlock()
		})
		return ln.Addr().String()
	}
	const dial = 500 * time.Millisecond
	cases := []struct {
		name  string
		addrs func(t *testing.T) []string
	}{
		{"refused", func(t *testing.T) []string { return []string{refused(t)} }},
		{"silent listener", func(t *testing.T) []string { return []string{silent(t)} }},
		{"two dead endpoints", func(t *testing.T) []string { return []string{refused(t), silent(t)} }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			r, err := New(context.Background(), WithAddrs(tc.addrs(t)...), WithDialTimeout(dial), WithLogger(newLogBuf().Logger()))
			took := time.Since(start)
			if err == nil {
				r.Close()
				t.Fatal("New succeeded without etcd")
			}
			if !errors.Is(err, registry.ErrUnavailable) {
				t.Errorf("err = %v, want ErrUnavailable", err)
			}
			t.Logf("New failed after %v: %v", took.Round(time.Millisecond), err)
			if took > dial+2*time.Second {
				t.Errorf("New took %v with a dial timeout of %v", took, dial)
			}
		})
	}
	// Before, a refused port waited the whole dial timeout (5 s by default)
	// and said "context deadline exceeded".
	t.Run("refused, cause at once", func(t *testing.T) {
		addr := refused(t)
		for _, opts := range [][]Option{nil, {WithAuth("u", "p")}} {
			start := time.Now()
			r, err := New(context.Background(), append(opts, WithAddrs(addr), WithLogger(newLogBuf().Logger()))...)
			took := time.Since(start)
			if err == nil {
				r.Close()
				t.Fatal("New succeeded without etcd")
			}
			if !errors.Is(err, registry.ErrUnavailable) || !errors.Is(err, syscall.ECONNREFUSED) || !strings.Contains(err.Error(), "connection refused") {
				t.Errorf("err = %v, want ErrUnavailable caused by ECONNREFUSED", err)
			}
			if took > time.Second {
				t.Errorf("New took %v to report a refused connection (dial timeout %v)", took, DefaultDialTimeout)
			}
		}
	})
	t.Run("context canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := New(ctx, WithAddrs(shared.Endpoints()...)); !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
	})
}

// Calls made while etcd is unreachable return ErrUnavailable within the
// request timeout, even with a context without deadline.
func TestRequestTimeout(t *testing.T) {
	p := startProxy(t, shared.Endpoints()[0], nil)
	r := newReg(t, nil, WithAddrs(p.Addr()), WithPrefix(testPrefix(t)), WithRequestTimeout(300*time.Millisecond))
	p.Cut()
	start := time.Now()
	_, err := r.GetService(context.Background(), "nothing")
	if !errors.Is(err, registry.ErrUnavailable) {
		t.Errorf("GetService err = %v, want ErrUnavailable", err)
	}
	err = r.Register(context.Background(), svc("timeout", "1", "n1"), registry.RegisterTTL(5*time.Second))
	if !errors.Is(err, registry.ErrUnavailable) {
		t.Errorf("Register err = %v, want ErrUnavailable", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("two calls took %v with a 300ms request timeout", took)
	}
	// The timeout is explained by what a direct dial of the endpoint finds.
	if !strings.Contains(err.Error(), "closed the connection without answering") {
		t.Errorf("Register err = %v, want the cause found by the probe", err)
	}
	// The failed registration is restored by the keeper once etcd is back.
	p.Restore()
	cli := rawClient(t)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if resp, err := cli.Get(ctxT(t), r.prefix+"timeout/n1"); err == nil && len(resp.Kvs) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("registration that failed while etcd was unreachable not written after it came back")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type pki struct {
	dir           string
	ca, cert, key string // PEM files for the client
	otherCA       string // a CA that did not sign the server certificate
	serverCert    tls.Certificate
	pool          *x509.CertPool // holds the CA
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	p := &pki{dir: dir}
	newCA := func(cn string) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			t.Fatal(err)
		}
		cert, _ := x509.ParseCertificate(der)
		return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	}
	leaf := func(ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, usage x509.ExtKeyUsage, serial int64) ([]byte, []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	}
	write := func(name string, b []byte) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	ca, caKey, caPEM := newCA("beacon test CA")
	_, _, otherPEM := newCA("other CA")
	p.ca = write("ca.pem", caPEM)
	p.otherCA = write("other-ca.pem", otherPEM)
	sc, sk := leaf(ca, caKey, "etcd", x509.ExtKeyUsageServerAuth, 2)
	var err error
	if p.serverCert, err = tls.X509KeyPair(sc, sk); err != nil {
		t.Fatal(err)
	}
	cc, ck := leaf(ca, caKey, "client", x509.ExtKeyUsageClientAuth, 3)
	p.cert, p.key = write("client.pem", cc), write("client-key.pem", ck)
	p.pool = x509.NewCertPool()
	p.pool.AddCert(ca)
	return p
}

// TLS with a client certificate, through a TLS-terminating proxy in front of
// the plain-text test etcd.
func TestTLS(t *testing.T) {
	pk := newPKI(t)
	p := startProxy(t, shared.Endpoints()[0], &tls.Config{
		Certificates: []tls.Certificate{pk.serverCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pk.pool,
		NextProtos:   []string{"h2"},
		MinVersion:   tls.VersionTLS12,
	})
	clientCert, err := tls.LoadX509KeyPair(pk.cert, pk.key)
	if err != nil {
		t.Fatal(err)
	}
	good := []struct {
		name string
		opts []Option
	}{
		{"files, host:port", []Option{WithAddrs(p.Addr()), WithTLSFiles(pk.ca, pk.cert, pk.key)}},
		{"files, https URL", []Option{WithAddrs("https://" + p.Addr()), WithTLSFiles(pk.ca, pk.cert, pk.key)}},
		{"tls.Config", []Option{WithAddrs(p.Addr()), WithTLS(&tls.Config{RootCAs: pk.pool, Certificates: []tls.Certificate{clientCert}})}},
	}
	for _, tc := range good {
		t.Run(tc.name, func(t *testing.T) {
			r, err := New(ctxT(t), append(tc.opts, WithPrefix(testPrefix(t)), WithLogger(newLogBuf().Logger()))...)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			defer r.Close()
			if err := r.Register(ctxT(t), svc("tls", "1", "n1")); err != nil {
				t.Fatal(err)
			}
			if _, err := r.GetService(ctxT(t), "tls"); err != nil {
				t.Fatal(err)
			}
		})
	}
	// A TLS failure is known at the first handshake: New says so at once
	// (well within the default dial timeout of 5 s), with the cause.
	bad := []struct {
		name string
		opts []Option
		want string
	}{
		{"no client certificate", []Option{WithTLSFiles(pk.ca, "", "")}, "TLS: the server refused the handshake"},
		{"server not signed by the CA", []Option{WithTLSFiles(pk.otherCA, pk.cert, pk.key)}, "TLS: the server's certificate is not trusted"},
		{"plain text to a TLS port", nil, "the endpoint speaks TLS"},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			r, err := New(ctxT(t), append(tc.opts, WithAddrs(p.Addr()), WithLogger(newLogBuf().Logger()))...)
			took := time.Since(start)
			if err == nil {
				r.Close()
				t.Fatal("New succeeded")
			}
			t.Logf("New failed after %v: %v", took.Round(time.Millisecond), err)
			if !errors.Is(err, registry.ErrUnavailable) {
				t.Errorf("err = %v, want ErrUnavailable", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want the cause %q", err, tc.want)
			}
			if took > time.Second {
				t.Errorf("New took %v to report a TLS failure", took)
			}
		})
	}
	files := []struct {
		name          string
		ca, cert, key string
	}{
		{"missing CA file", filepath.Join(pk.dir, "nope.pem"), "", ""},
		{"CA file without PEM", pk.key + ".txt", "", ""},
		{"cert without key", pk.ca, pk.cert, ""},
		{"key of another cert", pk.ca, pk.cert, pk.ca},
	}
	if err := os.WriteFile(pk.key+".txt", []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range files {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(ctxT(t), WithAddrs(p.Addr()), WithTLSFiles(tc.ca, tc.cert, tc.key))
			if err == nil || errors.Is(err, registry.ErrUnavailable) {
				t.Errorf("err = %v, want a configuration error (not ErrUnavailable)", err)
			}
		})
	}
}

// User/password authentication against an etcd with auth enabled (one of
// its own: enabling auth on the shared one would break the other tests).
func TestAuth(t *testing.T) {
	e := testserver.MustStartEtcd(t)
	cli := rawClient(t, e.Endpoints()...)
	ctx := ctxT(t)
	if _, err := cli.RoleAdd(ctx, "root"); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		t.Fatal(err)
	}
	if _, err := cli.UserAdd(ctx, "root", "rootpw"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.UserGrantRole(ctx, "root", "root"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.AuthEnable(ctx); err != nil {
		t.Fatal(err)
	}
	base := []Option{WithAddrs(e.Endpoints()...), WithDialTimeout(2 * time.Second), WithLogger(newLogBuf().Logger())}

	r, err := New(ctx, append(base, WithAuth("root", "rootpw"))...)
	if err != nil {
		t.Fatalf("New with the right password: %v", err)
	}
	defer r.Close()
	if err := r.Register(ctx, svc("auth", "1", "n1"), registry.RegisterTTL(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := r.GetService(ctx, "auth"); err != nil {
		t.Fatal(err)
	}

	for name, opts := range map[string][]Option{
		"wrong password": append(base, WithAuth("root", "wrong")),
		"no credentials": base,
	} {
		start := time.Now()
		r, err := New(ctx, opts...)
		if err == nil {
			r.Close()
			t.Errorf("%s: New succeeded", name)
			continue
		}
		if !errors.Is(err, registry.ErrPermission) || errors.Is(err, registry.ErrUnavailable) {
			t.Errorf("%s: err = %v, want ErrPermission (and not ErrUnavailable)", name, err)
		}
		t.Logf("%s: New failed after %v: %v", name, time.Since(start).Round(time.Millisecond), err)
	}
}
