package tlsconfig_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/beacon-go/beacon/internal/testcert"
	"github.com/beacon-go/beacon/tlsconfig"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.DiscardHandler)

// pki is a CA with a server and a client certificate on disk.
type pki struct {
	ca               *testcert.CA
	caFile           string
	srvCert, srvKey  string
	cliCert, cliKey  string
	srvPair, cliPair testcert.Pair
}

func newPKI(t *testing.T, dir, name string) *pki {
	p := &pki{ca: testcert.NewCA(t, name+" CA")}
	p.caFile = p.ca.Write(t, dir, name+"-ca")
	p.srvPair = p.ca.Server(t, name+" server")
	p.srvCert, p.srvKey = p.srvPair.Write(t, dir, name+"-server")
	p.cliPair = p.ca.Client(t, name+" client")
	p.cliCert, p.cliKey = p.cliPair.Write(t, dir, name+"-client")
	return p
}

func TestBadFiles(t *testing.T) {
	dir := t.TempDir()
	a := newPKI(t, dir, "a")
	b := newPKI(t, dir, "b")
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not PEM at all\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.pem")
	for _, tc := range []struct {
		name   string
		files  tlsconfig.Files
		client bool
		is     error
		says   []string
	}{
		{"missing cert", tlsconfig.Files{Cert: missing, Key: a.srvKey}, false, tlsconfig.ErrFiles, []string{missing, "no such file"}},
		{"missing key", tlsconfig.Files{Cert: a.srvCert, Key: missing}, false, tlsconfig.ErrFiles, []string{missing, "key file"}},
		{"key of another cert", tlsconfig.Files{Cert: a.srvCert, Key: b.srvKey}, false, tlsconfig.ErrFiles, []string{a.srvCert, b.srvKey, "does not match"}},
		{"cert not PEM", tlsconfig.Files{Cert: garbage, Key: a.srvKey}, false, tlsconfig.ErrFiles, []string{garbage}},
		{"CA without certificates", tlsconfig.Files{Cert: a.srvCert, Key: a.srvKey, CA: garbage}, false, tlsconfig.ErrFiles, []string{garbage, "no PEM certificate"}},
		{"missing CA", tlsconfig.Files{CA: missing}, true, tlsconfig.ErrFiles, []string{missing, "CA file"}},
		{"server without cert", tlsconfig.Files{CA: a.caFile}, false, tlsconfig.ErrSettings, []string{"certificate file and its key"}},
		{"server cert without key", tlsconfig.Files{Cert: a.srvCert}, false, tlsconfig.ErrSettings, []string{"certificate file and its key"}},
		{"client cert without key", tlsconfig.Files{Cert: a.cliCert, CA: a.caFile}, true, tlsconfig.ErrSettings, []string{"both files"}},
		{"client key without cert", tlsconfig.Files{Key: a.cliKey, CA: a.caFile}, true, tlsconfig.ErrSettings, []string{"both files"}},
		{"client auth without CA", tlsconfig.Files{Cert: a.srvCert, Key: a.srvKey, ClientAuth: true}, false, tlsconfig.ErrSettings, []string{"ClientAuth needs a CA"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.client {
				_, err = tc.files.Client()
			} else {
				_, err = tc.files.Server()
			}
			if !errors.Is(err, tc.is) {
				t.Fatalf("err = %v, want %v", err, tc.is)
			}
			for _, s := range tc.says {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("err = %q, want it to say %q", err, s)
				}
			}
		})
	}
}

func TestConfigs(t *testing.T) {
	dir := t.TempDir()
	a := newPKI(t, dir, "a")
	srv, err := tlsconfig.Files{Cert: a.srvCert, Key: a.srvKey, CA: a.caFile, ClientAuth: true, Logger: quiet}.Server()
	if err != nil {
		t.Fatal(err)
	}
	if srv.MinVersion < tls.VersionTLS12 || srv.ClientAuth != tls.RequireAndVerifyClientCert || srv.GetConfigForClient == nil {
		t.Fatalf("server config: min %x, client auth %v", srv.MinVersion, srv.ClientAuth)
	}
	derived, err := srv.GetConfigForClient(&tls.ClientHelloInfo{})
	if err != nil || derived.ClientAuth != tls.RequireAndVerifyClientCert || derived.ClientCAs == nil || derived.GetConfigForClient != nil {
		t.Fatalf("derived config: %v, %+v", err, derived)
	}
	cli, err := tlsconfig.Files{CA: a.caFile}.Client()
	if err != nil {
		t.Fatal(err)
	}
	if cli.MinVersion < tls.VersionTLS12 || cli.GetClientCertificate != nil {
		t.Fatalf("client config without a certificate: %+v", cli)
	}
	sys, err := tlsconfig.Files{}.Client()
	if err != nil || sys.InsecureSkipVerify || sys.VerifyConnection != nil {
		t.Fatalf("client config on the system roots must use Go's verification: %v %+v", err, sys)
	}
	// ForHost: an IP literal gets a clone naming it; a name is kept.
	f := tlsconfig.ForHost(cli, "127.0.0.1")
	if f == cli || f.ServerName != "127.0.0.1" || cli.ServerName != "" {
		t.Fatalf("ForHost(IP) = %q (same config: %v)", f.ServerName, f == cli)
	}
	named := cli.Clone()
	named.ServerName = "node.example"
	if tlsconfig.ForHost(named, "127.0.0.1") != named {
		t.Fatal("ForHost must keep a config naming a host")
	}
	if v6 := tlsconfig.ForHost(sys, "[::1]"); v6.ServerName != "::1" {
		t.Fatalf("ForHost([::1]) = %q", v6.ServerName)
	}
}

// handshake runs a handshake over loopback TCP; the client then reads a byte the
// server writes, so that a TLS 1.3 server's refusal of the client's
// certificate (sent after the client's side of the handshake) shows on the
// client. It returns the server's and the client's errors and the
// certificate the client saw.
func handshake(t *testing.T, srv, cli *tls.Config) (serr, cerr error, peerCN string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	b, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	_ = a.SetDeadline(time.Now().Add(5 * time.Second))
	_ = b.SetDeadline(time.Now().Add(5 * time.Second))
	var wg sync.WaitGroup
	wg.Go(func() {
		s := tls.Server(a, srv)
		if serr = s.Handshake(); serr == nil {
			_, serr = s.Write([]byte{1})
		}
		a.Close()
	})
	c := tls.Client(b, cli)
	if cerr = c.Handshake(); cerr == nil {
		var one [1]byte
		_, cerr = io.ReadFull(c, one[:])
		if st := c.ConnectionState(); len(st.PeerCertificates) > 0 {
			peerCN = st.PeerCertificates[0].Subject.CommonName
		}
	}
	b.Close()
	wg.Wait()
	return serr, cerr, peerCN
}

func TestHandshakes(t *testing.T) {
	dir := t.TempDir()
	a := newPKI(t, dir, "a")
	b := newPKI(t, dir, "b")
	mtls := tlsconfig.Files{Cert: a.srvCert, Key: a.srvKey, CA: a.caFile, ClientAuth: true, Logger: quiet}
	for _, tc := range []struct {
		name   string
		server tlsconfig.Files
		client tlsconfig.Files
		host   string // ForHost; "": the config as built
		cerr   string // "": success
	}{
		{"TLS", tlsconfig.Files{Cert: a.srvCert, Key: a.srvKey}, tlsconfig.Files{CA: a.caFile}, "127.0.0.1", ""},
		{"mTLS", mtls, tlsconfig.Files{Cert: a.cliCert, Key: a.cliKey, CA: a.caFile}, "127.0.0.1", ""},
		{"mTLS without a client certificate", mtls, tlsconfig.Files{CA: a.caFile}, "127.0.0.1", "certificate required"},
		{"mTLS with a client certificate of another CA", mtls, tlsconfig.Files{Cert: b.cliCert, Key: b.cliKey, CA: a.caFile}, "127.0.0.1", "unknown certificate authority"},
		{"server of another CA", tlsconfig.Files{Cert: b.srvCert, Key: b.srvKey}, tlsconfig.Files{CA: a.caFile}, "127.0.0.1", "certificate signed by unknown authority"},
		{"wrong IP", tlsconfig.Files{Cert: a.srvCert, Key: a.srvKey}, tlsconfig.Files{CA: a.caFile}, "127.0.0.2", "valid for 127.0.0.1, not 127.0.0.2"},
		{"IP literal without ForHost", tlsconfig.Files{Cert: a.srvCert, Key: a.srvKey}, tlsconfig.Files{CA: a.caFile}, "", "no server name"},
		{"system roots", tlsconfig.Files{Cert: a.srvCert, Key: a.srvKey}, tlsconfig.Files{}, "127.0.0.1", "unknown authority"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.server.Logger, tc.client.Logger = quiet, quiet
			srv, err := tc.server.Server()
			if err != nil {
				t.Fatal(err)
			}
			cli, err := tc.client.Client()
			if err != nil {
				t.Fatal(err)
			}
			if tc.host != "" {
				cli = tlsconfig.ForHost(cli, tc.host)
			}
			serr, cerr, cn := handshake(t, srv, cli)
			if tc.cerr == "" {
				if serr != nil || cerr != nil || cn != "a server" {
					t.Fatalf("server err %v, client err %v, peer %q", serr, cerr, cn)
				}
				return
			}
			if cerr == nil || !strings.Contains(cerr.Error(), tc.cerr) {
				t.Fatalf("client err = %v, want one saying %q (server err %v)", cerr, tc.cerr, serr)
			}
			if serr == nil {
				t.Fatal("the server accepted the handshake")
			}
		})
	}
}

func TestMinVersion(t *testing.T) {
	dir := t.TempDir()
	a := newPKI(t, dir, "a")
	srv, err := tlsconfig.Files{Cert: a.srvCert, Key: a.srvKey, Logger: quiet}.Server()
	if err != nil {
		t.Fatal(err)
	}
	old := &tls.Config{RootCAs: a.ca.Pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}
	if _, cerr, _ := handshake(t, srv, old); cerr == nil {
		t.Fatal("a TLS 1.1 client was accepted")
	}
}

// syncBuffer is a log sink for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

const interval = 20 * time.Millisecond

func TestReloadServerCertificate(t *testing.T) {
	dir := t.TempDir()
	a := newPKI(t, dir, "a")
	var logs syncBuffer
	srv, err := tlsconfig.Files{Cert: a.srvCert, Key: a.srvKey, CheckInterval: interval, Logger: slog.New(slog.NewTextHandler(&logs, nil))}.Server()
	if err != nil {
		t.Fatal(err)
	}
	cli := &tls.Config{RootCAs: a.ca.Pool(), ServerName: "127.0.0.1"}
	if _, cerr, cn := handshake(t, srv, cli); cerr != nil || cn != "a server" {
		t.Fatalf("before: %v, peer %q", cerr, cn)
	}
	steps := []struct {
		name       string
		cert, key  []byte
		wantCN     string
		wantLogged string
	}{
		{"a new certificate is picked up", nil, nil, "renewed", "certificate reloaded"},
		{"a broken certificate file keeps the last good one", []byte("-----BEGIN CERTIFICATE-----\ntruncated"), nil, "renewed", a.srvCert},
		{"a key that does not match keeps the last good one", nil, []byte("mismatch"), "renewed", "keeping the last good certificate"},
		{"fixed files are picked up", nil, nil, "renewed again", "certificate reloaded"},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			before := len(logs.String())
			switch {
			case st.cert != nil:
				testcert.WriteFile(t, a.srvCert, st.cert)
			case st.key != nil:
				other := a.ca.Server(t, "other") // a valid cert whose key is not the one on disk
				testcert.WriteFile(t, a.srvCert, other.CertPEM)
			default:
				p := a.ca.Server(t, st.wantCN)
				testcert.WriteFile(t, a.srvKey, p.KeyPEM)
				testcert.WriteFile(t, a.srvCert, p.CertPEM)
			}
			time.Sleep(2 * interval)
			_, cerr, cn := handshake(t, srv, cli)
			if cerr != nil || cn != st.wantCN {
				t.Fatalf("handshake: %v, peer %q, want %q", cerr, cn, st.wantCN)
			}
			if got := logs.String()[before:]; !strings.Contains(got, st.wantLogged) {
				t.Fatalf("log %q, want it to say %q", got, st.wantLogged)
			}
		})
	}
	// A failure is logged once, not at every check.
	if n := strings.Count(logs.String(), "do not load"); n != 2 {
		t.Fatalf("%d failures logged, want 2:\n%s", n, logs.String())
	}
}

func TestReloadCA(t *testing.T) {
	dir := t.TempDir()
	a := newPKI(t, dir, "a")
	b := newPKI(t, dir, "b")
	// Server side: client certificates of b are refused until the server's
	// CA file holds b's CA.
	srv, err := tlsconfig.Files{Cert: a.srvCert, Key: a.srvKey, CA: a.caFile, ClientAuth: true, CheckInterval: interval, Logger: quiet}.Server()
	if err != nil {
		t.Fatal(err)
	}
	cliB, err := tlsconfig.Files{Cert: b.cliCert, Key: b.cliKey, CA: a.caFile, CheckInterval: interval, Logger: quiet}.Client()
	if err != nil {
		t.Fatal(err)
	}
	cliB = tlsconfig.ForHost(cliB, "127.0.0.1")
	if _, cerr, _ := handshake(t, srv, cliB); cerr == nil {
		t.Fatal("a client certificate of another CA was accepted")
	}
	testcert.WriteFile(t, a.caFile, append(append([]byte(nil), a.ca.PEM...), b.ca.PEM...))
	time.Sleep(2 * interval)
	if serr, cerr, _ := handshake(t, srv, cliB); serr != nil || cerr != nil {
		t.Fatalf("after the server's CA file changed: server %v, client %v", serr, cerr)
	}
	// A broken CA file keeps the last good pool.
	testcert.WriteFile(t, a.caFile, []byte("garbage"))
	time.Sleep(2 * interval)
	if serr, cerr, _ := handshake(t, srv, cliB); serr != nil || cerr != nil {
		t.Fatalf("after the CA file broke: server %v, client %v", serr, cerr)
	}

	// Client side: a server of b is refused until the client's CA file
	// holds b's CA.
	srvB, err := tlsconfig.Files{Cert: b.srvCert, Key: b.srvKey, Logger: quiet}.Server()
	if err != nil {
		t.Fatal(err)
	}
	caFile := a.ca.Write(t, dir, "client-ca")
	cli, err := tlsconfig.Files{CA: caFile, CheckInterval: interval, Logger: quiet}.Client()
	if err != nil {
		t.Fatal(err)
	}
	cli = tlsconfig.ForHost(cli, "127.0.0.1")
	if _, cerr, _ := handshake(t, srvB, cli); cerr == nil || !strings.Contains(cerr.Error(), "unknown authority") {
		t.Fatalf("client err = %v, want unknown authority", cerr)
	}
	testcert.WriteFile(t, caFile, b.ca.PEM)
	time.Sleep(2 * interval)
	if _, cerr, cn := handshake(t, srvB, cli); cerr != nil || cn != "b server" {
		t.Fatalf("after the client's CA file changed: %v, peer %q", cerr, cn)
	}
}

func TestReloadClientCertificate(t *testing.T) {
	dir := t.TempDir()
	a := newPKI(t, dir, "a")
	b := newPKI(t, dir, "b")
	srv, err := tlsconfig.Files{Cert: a.srvCert, Key: a.srvKey, CA: a.caFile, ClientAuth: true, Logger: quiet}.Server()
	if err != nil {
		t.Fatal(err)
	}
	// The client starts with b's certificate (refused), then gets a's.
	cli, err := tlsconfig.Files{Cert: b.cliCert, Key: b.cliKey, CA: a.caFile, CheckInterval: interval, Logger: quiet}.Client()
	if err != nil {
		t.Fatal(err)
	}
	cli = tlsconfig.ForHost(cli, "127.0.0.1")
	if _, cerr, _ := handshake(t, srv, cli); cerr == nil {
		t.Fatal("a client certificate of another CA was accepted")
	}
	testcert.WriteFile(t, b.cliKey, a.cliPair.KeyPEM)
	testcert.WriteFile(t, b.cliCert, a.cliPair.CertPEM)
	time.Sleep(2 * interval)
	if serr, cerr, _ := handshake(t, srv, cli); serr != nil || cerr != nil {
		t.Fatalf("after the client's certificate changed: server %v, client %v", serr, cerr)
	}
}

func TestNoReload(t *testing.T) {
	dir := t.TempDir()
	a := newPKI(t, dir, "a")
	srv, err := tlsconfig.Files{Cert: a.srvCert, Key: a.srvKey, CheckInterval: -1, Logger: quiet}.Server()
	if err != nil {
		t.Fatal(err)
	}
	p := a.ca.Server(t, "renewed")
	testcert.WriteFile(t, a.srvKey, p.KeyPEM)
	testcert.WriteFile(t, a.srvCert, p.CertPEM)
	time.Sleep(2 * interval)
	if _, cerr, cn := handshake(t, srv, &tls.Config{RootCAs: a.ca.Pool(), ServerName: "127.0.0.1"}); cerr != nil || cn != "a server" {
		t.Fatalf("with CheckInterval < 0: %v, peer %q, want the first certificate", cerr, cn)
	}
}
