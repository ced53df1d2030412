package gozero

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// repoBin returns <repo>/.bin/<name>: the binaries that
// scripts/install-test-servers.sh builds. The tests run in this module's
// directory, interop/gozero, two levels below the repository root.
func repoBin(name string) (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	p := filepath.Join(wd, "..", "..", ".bin", name)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%s not found (%w): run scripts/install-test-servers.sh in the repository", p, err)
	}
	return p, nil
}

// freePorts returns n distinct free TCP ports on 127.0.0.1.
func freePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// child is a process this test started. It is ended by its PID only.
type child struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when reaped
	err  error         // Wait's result, set before done closes
	log  string
}

// startChild starts bin with args and env (added to a copy of the test's
// environment without the variables named by drop prefixes), its output in
// logPath. On Linux the child gets SIGKILL if the test process dies.
func startChild(bin string, args, env []string, logPath string, drop ...string) (*child, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	for _, kv := range os.Environ() {
		keep := true
		for _, p := range drop {
			keep = keep && !strings.HasPrefix(kv, p)
		}
		if keep {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &child{cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

func (c *child) PID() int { return c.cmd.Process.Pid }

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// signal sends sig to the child's PID unless it has been reaped.
func (c *child) signal(sig syscall.Signal) {
	if !c.exited() {
		_ = syscall.Kill(c.PID(), sig)
	}
}

// stop sends SIGTERM and waits up to grace for the exit, then SIGKILLs and
// waits for the reaping. It reports whether SIGKILL was needed.
func (c *child) stop(grace time.Duration) (killed bool) {
	c.signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return false
	case <-time.After(grace):
	}
	c.kill()
	return true
}

// kill sends SIGKILL and waits for the reaping.
func (c *child) kill() {
	c.signal(syscall.SIGKILL)
	<-c.done
}

// logTail returns the end of the child's log, for failures.
func (c *child) logTail() string {
	b, _ := os.ReadFile(c.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// etcdServer is a real single-member etcd on loopback, from <repo>/.bin.
type etcdServer struct {
	*child
	clientPort int
}

// Endpoint returns "127.0.0.1:port".
func (e *etcdServer) Endpoint() string { return "127.0.0.1:" + strconv.Itoa(e.clientPort) }

// startEtcd starts .bin/etcd on free loopback ports with its data and log
// in dir and waits until /health says healthy. Port races are retried.
func startEtcd(dir string) (*etcdServer, error) {
	bin, err := repoBin("etcd")
	if err != nil {
		return nil, err
	}
	var lastErr error
	for attempt := range 3 {
		ports, err := freePorts(2)
		if err != nil {
			return nil, err
		}
		d := filepath.Join(dir, fmt.Sprintf("etcd-%d", attempt))
		client := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
		peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
		c, err := startChild(bin, []string{
			"--name=default",
			"--data-dir=" + filepath.Join(d, "data"),
			"--listen-client-urls=" + client,
			"--advertise-client-urls=" + client,
			"--listen-peer-urls=" + peer,
			"--initial-advertise-peer-urls=" + peer,
			"--initial-cluster=default=" + peer,
			"--initial-cluster-state=new",
			"--unsafe-no-fsync",
			"--log-level=warn",
		}, nil, d+".log", "ETCD_", "ETCDCTL_")
		if err != nil {
			return nil, err
		}
		e := &etcdServer{child: c, clientPort: ports[0]}
		if lastErr = e.waitHealthy(client, 30*time.Second); lastErr == nil {
			return e, nil
		}
		e.kill()
		lastErr = fmt.Errorf("etcd on %s: %w\n%s", client, lastErr, e.logTail())
		if !strings.Contains(e.logTail(), "address already in use") {
			break
		}
	}
	return nil, lastErr
}

func (e *etcdServer) waitHealthy(url string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	hc := &http.Client{Timeout: time.Second}
	var last error
	for time.Now().Before(deadline) {
		if e.exited() {
			return fmt.Errorf("exited: %v", e.err)
		}
		last = func() error {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/health", nil)
			resp, err := hc.Do(req)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			var h struct{ Health string }
			if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
				return err
			}
			if h.Health != "true" {
				return errors.New("health " + h.Health)
			}
			return nil
		}()
		if last == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("not healthy within %v: %v", wait, last)
}

// startZrpc re-executes this test binary as a go-zero zrpc server (see
// runZrpcServer) publishing itself under key in etcd, listening on a free
// loopback port, answering UnaryCall with id. ttl > 0 sets
// discov.TimeToLive (seconds) in the child. The child is SIGKILLed at the
// end of the test if still running.
func startZrpc(t *testing.T, etcdAddr, key, id string, ttl int) (*child, string) {
	t.Helper()
	ports, err := freePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	listen := fmt.Sprintf("127.0.0.1:%d", ports[0])
	env := []string{
		envServer + "=1",
		envEtcd + "=" + etcdAddr,
		envKey + "=" + key,
		envID + "=" + id,
		envListen + "=" + listen,
		envTTL + "=" + strconv.Itoa(ttl),
	}
	c, err := startChild(os.Args[0], []string{"-test.run=^$"}, env, filepath.Join(t.TempDir(), id+".log"), "POD_IP=")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.kill()
		if t.Failed() {
			t.Logf("go-zero server %s (pid %d) log:\n%s", id, c.PID(), c.logTail())
		}
	})
	return c, listen
}
