package testserver

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Every process waiter and HTTP connection of this package must be gone once
// Stop/Kill have returned: each server test checks with goleak.VerifyNone,
// and the whole package with VerifyTestMain.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func processGone(pid int) bool {
	err := syscall.Kill(pid, 0)
	return errors.Is(err, syscall.ESRCH)
}

func etcdPut(t *testing.T, endpoint, key, val string) error {
	t.Helper()
	body := fmt.Sprintf(`{"key":%q,"value":%q}`,
		base64.StdEncoding.EncodeToString([]byte(key)), base64.StdEncoding.EncodeToString([]byte(val)))
	var resp map[string]any
	return doJSON(context.Background(), http.MethodPost, "http://"+endpoint+"/v3/kv/put", strings.NewReader(body), &resp)
}

func etcdGet(t *testing.T, endpoint, key string) (string, error) {
	t.Helper()
	body := fmt.Sprintf(`{"key":%q}`, base64.StdEncoding.EncodeToString([]byte(key)))
	var resp struct {
		Kvs []struct{ Value string } `json:"kvs"`
	}
	if err := doJSON(context.Background(), http.MethodPost, "http://"+endpoint+"/v3/kv/range", strings.NewReader(body), &resp); err != nil {
		return "", err
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	v, err := base64.StdEncoding.DecodeString(resp.Kvs[0].Value)
	return string(v), err
}

func TestBinDir(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := BinDir(), filepath.Join(root, ".bin"); os.Getenv(BinEnv) == "" && got != want {
		t.Errorf("BinDir() = %q, want %q", got, want)
	}
	for _, name := range []string{"etcd", "consul"} {
		Require(t, name)
	}
}

type fakeTB struct {
	testing.TB
	msg string
}

func (f *fakeTB) Helper()                           {}
func (f *fakeTB) Fatalf(format string, args ...any) { f.msg = fmt.Sprintf(format, args...) }

func TestMissingBinary(t *testing.T) {
	t.Setenv(BinEnv, t.TempDir())
	if _, err := StartEtcd(t.TempDir()); err == nil || !strings.Contains(err.Error(), InstallCommand) {
		t.Errorf("StartEtcd error = %v, want one naming %s", err, InstallCommand)
	}
	if _, err := StartConsul(t.TempDir()); err == nil || !strings.Contains(err.Error(), InstallCommand) {
		t.Errorf("StartConsul error = %v, want one naming %s", err, InstallCommand)
	}
	f := &fakeTB{TB: t}
	Require(f, "etcd")
	if !strings.Contains(f.msg, InstallCommand) {
		t.Errorf("Require Fatalf message = %q, want one naming %s", f.msg, InstallCommand)
	}
}

func TestStartupErrorIncludesLog(t *testing.T) {
	Require(t, "etcd")
	_, err := StartEtcd(t.TempDir(), WithArgs("--no-such-flag"))
	if err == nil || !strings.Contains(err.Error(), "no-such-flag") || !strings.Contains(err.Error(), "etcd.log") {
		t.Fatalf("error = %v; want it to include the log tail", err)
	}
	goleak.VerifyNone(t)
}

func TestFreePort(t *testing.T) {
	seen := map[int]bool{}
	for i := 0; i < 20; i++ {
		p, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
	p, err := FreeTCPUDPPort()
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: p})
	if err != nil {
		t.Fatal(err)
	}
	u.Close()
}

func TestEtcd(t *testing.T) {
	Require(t, "etcd")
	start := time.Now()
	e, err := StartEtcd(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer e.Stop()
	t.Logf("etcd ready in %v at %v (pid %d)", time.Since(start), e.Endpoints(), e.PID())

	ep := e.Endpoints()[0]
	if err := etcdPut(t, ep, "/micro/registry/a", "1"); err != nil {
		t.Fatal(err)
	}

	// Crash and restart: same endpoint, data kept.
	pid := e.PID()
	e.Kill()
	if e.PID() != 0 || !processGone(pid) {
		t.Fatalf("pid %d still alive after Kill", pid)
	}
	start = time.Now()
	if err := e.Restart(); err != nil {
		t.Fatal(err)
	}
	t.Logf("etcd restarted in %v", time.Since(start))
	if e.Endpoints()[0] != ep {
		t.Fatalf("endpoint changed: %s -> %s", ep, e.Endpoints()[0])
	}
	if v, err := etcdGet(t, ep, "/micro/registry/a"); err != nil || v != "1" {
		t.Fatalf("after restart: get = %q, %v; want \"1\"", v, err)
	}

	pid = e.PID()
	start = time.Now()
	if err := e.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("etcd stopped in %v", time.Since(start))
	if e.Running() || !processGone(pid) {
		t.Fatalf("pid %d still alive after Stop", pid)
	}
	if err := e.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	goleak.VerifyNone(t)
}

func TestEtcdCluster(t *testing.T) {
	Require(t, "etcd")
	start := time.Now()
	c, err := StartEtcdCluster(t.TempDir(), 3)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	t.Logf("3-member cluster ready in %v: %v", time.Since(start), c.Endpoints())
	if got := len(c.Members()); got != 3 || len(c.Endpoints()) != 3 {
		t.Fatalf("%d members, %d endpoints", got, len(c.Endpoints()))
	}

	old, err := c.WaitLeader(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := etcdPut(t, old.Endpoints()[0], "k", "before"); err != nil {
		t.Fatal(err)
	}

	// Crash the leader; the other two must elect a new one and accept writes.
	old.Kill()
	killed := time.Now()
	var leader *Etcd
	for {
		leader, err = c.Leader()
		if err == nil && leader != old {
			break
		}
		if time.Since(killed) > 20*time.Second {
			t.Fatalf("no new leader 20s after killing %s: %v", old.Name(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("new leader %s (was %s) after %v", leader.Name(), old.Name(), time.Since(killed))
	if err := etcdPut(t, leader.Endpoints()[0], "k", "after"); err != nil {
		t.Fatal(err)
	}

	// Bring the old leader back; it catches up.
	if err := old.Restart(); err != nil {
		t.Fatal(err)
	}
	if v, err := etcdGet(t, old.Endpoints()[0], "k"); err != nil || v != "after" {
		t.Fatalf("restarted member: get = %q, %v; want \"after\"", v, err)
	}

	var pids []int
	for _, m := range c.Members() {
		pids = append(pids, m.PID())
	}
	start = time.Now()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster stopped in %v", time.Since(start))
	for _, pid := range pids {
		if !processGone(pid) {
			t.Fatalf("pid %d alive after cluster Stop", pid)
		}
	}
	goleak.VerifyNone(t)
}

func TestConsul(t *testing.T) {
	Require(t, "consul")
	start := time.Now()
	c, err := StartConsul(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	t.Logf("consul ready in %v at %s (pid %d)", time.Since(start), c.Addr(), c.PID())

	put := func() error {
		req, _ := http.NewRequest(http.MethodPut, c.URL()+"/v1/kv/beacon", strings.NewReader("x"))
		resp, err := httpClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("PUT kv: %s", resp.Status)
		}
		return nil
	}
	if err := put(); err != nil {
		t.Fatal(err)
	}

	addr, pid := c.Addr(), c.PID()
	c.Kill()
	if !processGone(pid) {
		t.Fatalf("pid %d alive after Kill", pid)
	}
	start = time.Now()
	if err := c.Restart(); err != nil {
		t.Fatal(err)
	}
	t.Logf("consul restarted in %v", time.Since(start))
	if c.Addr() != addr {
		t.Fatalf("address changed: %s -> %s", addr, c.Addr())
	}
	// -dev keeps state in memory: the restarted agent is empty.
	resp, err := httpClient.Get(c.URL() + "/v1/kv/beacon")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("GET kv after restart: %s, want 404", resp.Status)
	}

	pid = c.PID()
	start = time.Now()
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("consul stopped in %v", time.Since(start))
	if !processGone(pid) {
		t.Fatalf("pid %d alive after Stop", pid)
	}
	goleak.VerifyNone(t)
}
