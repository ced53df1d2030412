package testserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestKubeAPIServer(t *testing.T) {
	Require(t, "kube-apiserver")
	e := MustStartEtcd(t)
	before := goleak.IgnoreCurrent() // the etcd's waiter runs until cleanup
	start := time.Now()
	k, err := StartKubeAPIServer(t.TempDir(), e.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver ready in %v at %s (pid %d)", time.Since(start), k.URL(), k.PID())
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(k.CAPEM()) {
		t.Fatal("CA PEM does not parse")
	}
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{RootCAs: pool}}}
	get := func(path, token string) (int, string) {
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, k.URL()+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// The serving certificate is for 127.0.0.1, signed by the CA.
	code, body := get("/api/v1/namespaces/default", k.Token())
	var ns struct{ Metadata struct{ Name string } }
	if code != 200 || json.Unmarshal([]byte(body), &ns) != nil || ns.Metadata.Name != "default" {
		t.Fatalf("GET namespace default: %d %s", code, body)
	}
	if code, _ := get("/api/v1/namespaces", "wrong"); code != http.StatusUnauthorized {
		t.Errorf("wrong token: status %d, want 401", code)
	}
	if code, body := get("/apis/discovery.k8s.io/v1", k.Token()); code != 200 || !strings.Contains(body, "endpointslices") {
		t.Errorf("discovery.k8s.io/v1: %d %s", code, body)
	}
	if data, err := os.ReadFile(k.Kubeconfig()); err != nil || !strings.Contains(string(data), k.URL()) {
		t.Errorf("kubeconfig: %v", err)
	}
	pid := k.PID()
	start = time.Now()
	if err := k.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver stopped in %v", time.Since(start))
	if !processGone(pid) {
		t.Errorf("pid %d still there after Stop", pid)
	}
	c.CloseIdleConnections()
	goleak.VerifyNone(t, before)
}

func TestKubeAPIServerMissingBinary(t *testing.T) {
	t.Setenv(BinEnv, t.TempDir())
	if _, err := StartKubeAPIServer(t.TempDir(), "http://127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), InstallCommand) ||
		!strings.Contains(err.Error(), "kube-apiserver binary not found") {
		t.Errorf("StartKubeAPIServer error = %v, want one naming %s", err, InstallCommand)
	}
}
