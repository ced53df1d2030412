package testserver

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// PKIServerName is the DNS name in the server certificate of a PKI, beside
// the IP address 127.0.0.1. No DNS lookup ever uses it: clients dial
// 127.0.0.1 and may verify the certificate against this name
// (tls.Config.ServerName).
const PKIServerName = "registry.beacon.test"

// PKI is a throw-away certificate authority with PEM files for a server
// (etcd, consul) and a client, valid for an hour.
type PKI struct {
	Dir string
	// CA is the CA certificate that signed ServerCert and ClientCert.
	CA string
	// OtherCA is a CA certificate that signed nothing here: a client that
	// trusts only it rejects the server.
	OtherCA string
	// ServerCert and ServerKey: CN "server", SANs IP 127.0.0.1 and DNS
	// PKIServerName, extended key usage serverAuth and clientAuth.
	ServerCert, ServerKey string
	// ClientCert and ClientKey: CN ClientCN, extended key usage clientAuth.
	ClientCert, ClientKey string
	ClientCN              string
	// UntrustedCert and UntrustedKey: a client certificate (CN ClientCN)
	// signed by OtherCA, which servers trusting CA refuse.
	UntrustedCert, UntrustedKey string
}

// NewPKI writes a new PKI into dir. The client certificate's common name is
// clientCN (etcd, with --client-cert-auth and authentication on, takes it
// as the user name of requests without a token).
func NewPKI(dir, clientCN string) (*PKI, error) {
	p := &PKI{Dir: dir, ClientCN: clientCN}
	now := time.Now()
	newKey := func() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }
	write := func(name, typ string, der []byte) (string, error) {
		path := filepath.Join(dir, name)
		return path, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
	}
	newCA := func(cn string, serial int64) (*x509.Certificate, *ecdsa.PrivateKey, []byte, error) {
		key, err := newKey()
		if err != nil {
			return nil, nil, nil, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			return nil, nil, nil, err
		}
		cert, err := x509.ParseCertificate(der)
		return cert, key, der, err
	}
	leaf := func(name string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, tmpl *x509.Certificate) (string, string, error) {
		key, err := newKey()
		if err != nil {
			return "", "", err
		}
		tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(time.Hour)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return "", "", err
		}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return "", "", err
		}
		c, err := write(name+".pem", "CERTIFICATE", der)
		if err != nil {
			return "", "", err
		}
		k, err := write(name+"-key.pem", "EC PRIVATE KEY", kb)
		return c, k, err
	}
	ca, caKey, caDER, err := newCA("beacon test CA", 1)
	if err != nil {
		return nil, fmt.Errorf("testserver: PKI: %w", err)
	}
	other, otherKey, otherDER, err := newCA("beacon other CA", 2)
	if err != nil {
		return nil, fmt.Errorf("testserver: PKI: %w", err)
	}
	if p.CA, err = write("ca.pem", "CERTIFICATE", caDER); err != nil {
		return nil, fmt.Errorf("testserver: PKI: %w", err)
	}
	if p.OtherCA, err = write("other-ca.pem", "CERTIFICATE", otherDER); err != nil {
		return nil, fmt.Errorf("testserver: PKI: %w", err)
	}
	p.ServerCert, p.ServerKey, err = leaf("server", ca, caKey, &x509.Certificate{
		SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "server"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{PKIServerName},
	})
	if err != nil {
		return nil, fmt.Errorf("testserver: PKI: %w", err)
	}
	p.ClientCert, p.ClientKey, err = leaf("client", ca, caKey, &x509.Certificate{
		SerialNumber: big.NewInt(4), Subject: pkix.Name{CommonName: clientCN},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("testserver: PKI: %w", err)
	}
	p.UntrustedCert, p.UntrustedKey, err = leaf("untrusted-client", other, otherKey, &x509.Certificate{
		SerialNumber: big.NewInt(5), Subject: pkix.Name{CommonName: clientCN},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("testserver: PKI: %w", err)
	}
	return p, nil
}

// MustPKI writes a new PKI into t.TempDir() or fails the test.
func MustPKI(t testing.TB, clientCN string) *PKI {
	t.Helper()
	p, err := NewPKI(t.TempDir(), clientCN)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// ClientTLS returns a client configuration that trusts CA and presents
// the client certificate.
func (p *PKI) ClientTLS() (*tls.Config, error) {
	pemCA, err := os.ReadFile(p.CA)
	if err != nil {
		return nil, fmt.Errorf("testserver: PKI: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemCA)
	cert, err := tls.LoadX509KeyPair(p.ClientCert, p.ClientKey)
	if err != nil {
		return nil, fmt.Errorf("testserver: PKI: %w", err)
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
