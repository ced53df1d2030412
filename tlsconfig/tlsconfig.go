// Package tlsconfig builds crypto/tls configurations from PEM files for
// Beacon's wire (server.TLS, client.TLS) or any other use, and reloads the
// files when they change.
//
//	srv, err := tlsconfig.Files{Cert: "node.pem", Key: "node-key.pem", CA: "ca.pem", ClientAuth: true}.Server()
//	cli, err := tlsconfig.Files{Cert: "node.pem", Key: "node-key.pem", CA: "ca.pem"}.Client()
//
// Server and Client read and check every file at once: a missing or
// unreadable file, a certificate without its key (or the reverse), a key
// that does not match its certificate, or a CA file without a PEM
// certificate is an error that names the file. Nothing is read in the
// background and no goroutine is started.
//
// Reload: the configs check the files' size, modification time and identity
// (a file replaced by a rename, as Kubernetes does with secrets, is another
// file) during handshakes, at most once per Files.CheckInterval (default one
// second); a check costs a stat of each file, and blocks that one handshake
// while it reads a changed file. A changed file is read and checked like at
// construction; when that fails (a half-written file, a key that does not
// match the new certificate yet) the last good certificate or CA stays in
// use and the failure is logged with log/slog, once per version of the
// files, and tried again when they change again. New connections get the
// new files; established ones keep the certificates they were set up with.
//
// Verification: a server with a CA verifies client certificates against
// it (with ClientAuth: tls.RequireAndVerifyClientCert, so a client without a
// certificate is refused during the handshake; without: a certificate is
// verified when one is given). A client verifies the server's certificate
// chain against the CA (without a CA: the system roots) and its name
// against Config.ServerName: Beacon's nodes are dialled at IP literals, so
// their certificates need IP SANs. No configuration accepts TLS below 1.2.
package tlsconfig

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"
)

// DefaultCheckInterval is how often, at most, the files are checked for
// changes (on a handshake).
const DefaultCheckInterval = time.Second

// MinVersion is the lowest TLS version of the configs built here.
const MinVersion = tls.VersionTLS12

// Errors, wrapped with the file names and the cause.
var (
	// ErrFiles: a file is missing or unreadable, or holds no usable PEM
	// certificate or key, or a key that does not match its certificate.
	ErrFiles = errors.New("tlsconfig: bad TLS files")
	// ErrSettings: the fields do not make a configuration (a certificate
	// without its key, a server without a certificate, ClientAuth without a
	// CA).
	ErrSettings = errors.New("tlsconfig: incomplete TLS settings")
)

// Files names PEM files and how to use them.
type Files struct {
	// Cert is this side's certificate chain (leaf first). A server needs
	// one; a client presents it when the server asks (mutual TLS).
	Cert string
	// Key is Cert's private key (PKCS #1, PKCS #8 or EC), needed with Cert.
	Key string
	// CA holds the CA certificates that the other side's certificate must
	// chain to: a client verifies the server with them (empty: the system
	// roots); a server verifies client certificates with them.
	CA string
	// ClientAuth makes a server require a client certificate verified
	// against CA (tls.RequireAndVerifyClientCert); it needs CA. A client
	// ignores it.
	ClientAuth bool
	// CheckInterval is how often, at most, a handshake checks the files for
	// changes: 0 is DefaultCheckInterval; a negative value never reloads.
	CheckInterval time.Duration
	// Logger receives reload failures and successes (default slog.Default()).
	Logger *slog.Logger
}

// Server returns a configuration for a server: its certificate from Cert
// and Key (reloaded on change through GetCertificate), TLS 1.2 at least,
// ALPN h2 and http/1.1 (Beacon's port serves HTTP too; Beacon's client
// offers no ALPN), and with CA client verification (through
// GetConfigForClient, so that a changed CA file applies to new
// handshakes). It fails, naming the file, when a file does not load.
func (f Files) Server() (*tls.Config, error) {
	if f.Cert == "" || f.Key == "" {
		return nil, fmt.Errorf("%w: a server needs a certificate file and its key file (Cert %q, Key %q)", ErrSettings, f.Cert, f.Key)
	}
	if f.ClientAuth && f.CA == "" {
		return nil, fmt.Errorf("%w: ClientAuth needs a CA file to verify client certificates", ErrSettings)
	}
	s, err := newSource(f)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion:     MinVersion,
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return s.certificate(), nil },
	}
	if f.CA != "" {
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		if f.ClientAuth {
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
		cfg.ClientCAs = s.pool
		s.base = cfg.Clone()
		s.derived = s.base.Clone()
		cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { return s.serverConfig(), nil }
	}
	return cfg, nil
}

// Client returns a configuration for a client: TLS 1.2 at least, its
// certificate from Cert and Key when given (presented when the server asks,
// through GetClientCertificate, reloaded on change), and the server
// verified against CA, or against the system roots without one. With a CA
// the verification runs in VerifyConnection (InsecureSkipVerify is set so
// that Go's own check, which cannot see a changed CA file, steps aside):
// it checks the chain and ConnectionState.ServerName, and fails when that is
// empty. Go leaves ServerName empty when Config.ServerName is an IP literal:
// dial through ForHost, as Beacon's client does. It fails, naming the file,
// when a file does not load.
func (f Files) Client() (*tls.Config, error) {
	if (f.Cert == "") != (f.Key == "") {
		return nil, fmt.Errorf("%w: a client certificate needs both files (Cert %q, Key %q)", ErrSettings, f.Cert, f.Key)
	}
	s, err := newSource(f)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{MinVersion: MinVersion}
	if f.Cert != "" {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return s.certificate(), nil }
	}
	if f.CA != "" {
		cfg.RootCAs = s.pool // as loaded first; VerifyConnection uses the current one
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = s.verifyServer
	}
	return cfg, nil
}

// ForHost returns cfg for dialling host (an address's host, without the
// port): cfg itself when it names a server that is not an IP literal,
// else a clone with ServerName set to host when it had none. Go's
// ConnectionState carries no ServerName for an IP literal; the clone's
// VerifyConnection (when cfg has one) sees the name there all the same.
func ForHost(cfg *tls.Config, host string) *tls.Config {
	name := cfg.ServerName
	if name == "" {
		name = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	}
	ip := net.ParseIP(name) != nil
	if name == cfg.ServerName && (!ip || cfg.VerifyConnection == nil) {
		return cfg
	}
	c := cfg.Clone()
	c.ServerName = name
	if vc := cfg.VerifyConnection; vc != nil && ip {
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			if cs.ServerName == "" {
				cs.ServerName = name
			}
			return vc(cs)
		}
	}
	return c
}

// source holds the current certificate and CA pool of one config and
// reloads them when the files change.
type source struct {
	f     Files
	log   *slog.Logger
	every time.Duration

	mu       sync.Mutex
	next     time.Time // no check before
	cert     *tls.Certificate
	pool     *x509.CertPool
	pairSeen [2]os.FileInfo // the cert and key files last read (or tried)
	caSeen   os.FileInfo
	pairErr  string // the last failure logged, to log each once
	caErr    string
	base     *tls.Config // server with CA: the config GetConfigForClient derives from
	derived  *tls.Config // base with the current pool
}

func newSource(f Files) (*source, error) {
	s := &source{f: f, log: f.Logger, every: f.CheckInterval}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.every == 0 {
		s.every = DefaultCheckInterval
	}
	if f.Cert != "" {
		cert, seen, err := loadPair(f.Cert, f.Key)
		if err != nil {
			return nil, err
		}
		s.cert, s.pairSeen = cert, seen
	}
	if f.CA != "" {
		pool, seen, err := loadPool(f.CA)
		if err != nil {
			return nil, err
		}
		s.pool, s.caSeen = pool, seen
	}
	s.next = time.Now().Add(s.every)
	return s, nil
}

func (s *source) certificate() *tls.Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refresh()
	return s.cert
}

func (s *source) currentPool() *x509.CertPool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refresh()
	return s.pool
}

func (s *source) serverConfig() *tls.Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refresh()
	return s.derived
}

// refresh reloads changed files, at most once per interval; s.mu is held.
func (s *source) refresh() {
	if s.every < 0 {
		return
	}
	now := time.Now()
	if now.Before(s.next) {
		return
	}
	s.next = now.Add(s.every)
	if s.f.Cert != "" {
		s.refreshPair()
	}
	if s.f.CA != "" {
		s.refreshPool()
	}
}

func (s *source) refreshPair() {
	seen, err := stat(s.f.Cert, s.f.Key)
	if err == nil {
		if same(seen[0], s.pairSeen[0]) && same(seen[1], s.pairSeen[1]) {
			return
		}
		var cert *tls.Certificate
		cert, seen, err = loadPair(s.f.Cert, s.f.Key)
		if err == nil {
			s.cert, s.pairSeen, s.pairErr = cert, seen, ""
			s.log.Info("tlsconfig: certificate reloaded", "cert", s.f.Cert, "key", s.f.Key, "not_after", cert.Leaf.NotAfter)
			return
		}
		if seen[0] != nil && seen[1] != nil {
			s.pairSeen = seen // try these versions no more
		}
	}
	if msg := err.Error(); msg != s.pairErr {
		s.pairErr = msg
		s.log.Warn("tlsconfig: changed certificate files do not load; keeping the last good certificate", "cert", s.f.Cert, "key", s.f.Key, "err", err)
	}
}

func (s *source) refreshPool() {
	seen, err := stat(s.f.CA)
	if err == nil {
		if same(seen[0], s.caSeen) {
			return
		}
		var pool *x509.CertPool
		var fi os.FileInfo
		pool, fi, err = loadPool(s.f.CA)
		if err == nil {
			s.pool, s.caSeen, s.caErr = pool, fi, ""
			if s.base != nil {
				s.derived = s.base.Clone()
				s.derived.ClientCAs = pool
			}
			s.log.Info("tlsconfig: CA reloaded", "ca", s.f.CA)
			return
		}
		if fi != nil {
			s.caSeen = fi
		}
	}
	if msg := err.Error(); msg != s.caErr {
		s.caErr = msg
		s.log.Warn("tlsconfig: changed CA file does not load; keeping the last good CA", "ca", s.f.CA, "err", err)
	}
}

// verifyServer verifies a server's chain against the current pool and its
// name against cs.ServerName (a client's VerifyConnection).
func (s *source) verifyServer(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tls: the server sent no certificate")
	}
	if cs.ServerName == "" {
		return errors.New("tlsconfig: no server name to verify the server's certificate against (Config.ServerName; for an IP literal dial with tlsconfig.ForHost)")
	}
	opts := x509.VerifyOptions{
		Roots:         s.currentPool(),
		DNSName:       cs.ServerName,
		Intermediates: x509.NewCertPool(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, c := range cs.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := cs.PeerCertificates[0].Verify(opts); err != nil {
		return &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
	}
	return nil
}

func stat(paths ...string) ([2]os.FileInfo, error) {
	var out [2]os.FileInfo
	for i, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return out, fmt.Errorf("%w: %w", ErrFiles, err)
		}
		out[i] = fi
	}
	return out, nil
}

// same reports whether a and b are the same version of the same file.
func same(a, b os.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// readFile reads path and returns what it read and the file's state before
// the read (a write after it shows as a change at the next check).
func readFile(what, path string) ([]byte, os.FileInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s file: %w", ErrFiles, what, err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %s file: %w", ErrFiles, what, err)
	}
	return b, fi, nil
}

func loadPair(certPath, keyPath string) (*tls.Certificate, [2]os.FileInfo, error) {
	var seen [2]os.FileInfo
	certPEM, fi, err := readFile("certificate", certPath)
	if err != nil {
		return nil, seen, err
	}
	seen[0] = fi
	keyPEM, fi, err := readFile("key", keyPath)
	if err != nil {
		return nil, seen, err
	}
	seen[1] = fi
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, seen, fmt.Errorf("%w: certificate file %s with key file %s: %w", ErrFiles, certPath, keyPath, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, seen, fmt.Errorf("%w: certificate file %s: %w", ErrFiles, certPath, err)
		}
	}
	return &cert, seen, nil
}

func loadPool(path string) (*x509.CertPool, os.FileInfo, error) {
	b, fi, err := readFile("CA", path)
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fi, fmt.Errorf("%w: CA file %s holds no PEM certificate", ErrFiles, path)
	}
	return pool, fi, nil
}
