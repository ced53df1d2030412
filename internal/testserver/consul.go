package testserver

import (
	"context"
	"errors"
	"fmt"
	"io"
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

// ConsulNodeName is the node name of the agent started by StartConsul.
const ConsulNodeName = "t"

// Consul is a real consul agent in -dev mode (server, in-memory state) on
// loopback.
type Consul struct {
	dir                            string
	httpPort, serverPort, serfPort int
	httpsPort                      int // with WithTLS
	bin                            string
	args                           []string
	opts                           options

	mu sync.Mutex
	p  *proc // nil when not running
}

// StartConsul starts `consul agent -dev` on free loopback ports (HTTP,
// server RPC, serf LAN; DNS, gRPC, serf WAN and, unless WithTLS, HTTPS
// disabled; ACLs with WithACL), with its log
// file (consul.log) in a new subdirectory of dir, and waits until
// /v1/status/leader reports a leader and the node is in the catalog.
//
// Callers pass t.TempDir() (or an os.MkdirTemp directory in TestMain) and
// must call Stop; MustStartConsul does both.
func StartConsul(dir string, opts ...Option) (*Consul, error) {
	bin, err := BinPath("consul")
	if err != nil {
		return nil, err
	}
	o := buildOptions(opts)
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		c, err := newConsul(bin, dir, o)
		if err != nil {
			return nil, err
		}
		if err = c.start(); err == nil {
			if err = c.waitReady(); err == nil {
				return c, nil
			}
		}
		c.Kill()
		lastErr = withLog(fmt.Errorf("testserver: consul (http port %d, server port %d, serf port %d): %w",
			c.httpPort, c.serverPort, c.serfPort, err), c.LogPath())
		if !addrInUse(c.LogPath()) {
			break
		}
	}
	return nil, lastErr
}

// MustStartConsul starts a consul agent in t.TempDir(), stops it in
// t.Cleanup and fails the test if the binary is missing or it does not start.
func MustStartConsul(t testing.TB, opts ...Option) *Consul {
	t.Helper()
	Require(t, "consul")
	c, err := StartConsul(t.TempDir(), opts...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { c.Stop() })
	return c
}

func newConsul(bin, dir string, o options) (*Consul, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	serf, err := FreeTCPUDPPort()
	if err != nil {
		return nil, err
	}
	d, err := os.MkdirTemp(dir, "consul-")
	if err != nil {
		return nil, fmt.Errorf("testserver: %w", err)
	}
	c := &Consul{
		dir:        d,
		httpPort:   ports[0],
		serverPort: ports[1],
		serfPort:   serf,
		bin:        bin,
		opts:       o,
	}
	https := "-https-port=-1"
	var extra []string
	if o.tls != nil {
		if c.httpsPort, err = FreePort(); err != nil {
			return nil, err
		}
		https = "-https-port=" + strconv.Itoa(c.httpsPort)
		extra = append(extra, fmt.Sprintf("-hcl=tls { defaults { ca_file = %q cert_file = %q key_file = %q } https { verify_incoming = %t } }",
			o.tls.CA, o.tls.ServerCert, o.tls.ServerKey, o.clientAuth))
	}
	if o.aclToken != "" {
		extra = append(extra, fmt.Sprintf(`-hcl=acl { enabled = true default_policy = "deny" enable_token_persistence = false tokens { initial_management = %q agent = %q } }`,
			o.aclToken, o.aclToken))
	}
	c.args = append([]string{
		"agent", "-dev",
		"-node=" + ConsulNodeName,
		"-bind=127.0.0.1",
		"-client=127.0.0.1",
		"-advertise=127.0.0.1",
		"-http-port=" + strconv.Itoa(c.httpPort),
		"-server-port=" + strconv.Itoa(c.serverPort),
		"-serf-lan-port=" + strconv.Itoa(c.serfPort),
		"-dns-port=-1",
		"-serf-wan-port=-1",
		"-grpc-port=-1",
		"-grpc-tls-port=-1",
		https,
		"-hcl=disable_update_check = true",
		"-log-level=warn",
	}, append(extra, o.args...)...)
	return c, nil
}

func (c *Consul) start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.p != nil && !c.p.exited() {
		return fmt.Errorf("testserver: consul is already running (pid %d)", c.p.pid())
	}
	p, err := startProc(c.bin, c.args, c.dir, c.LogPath(), "CONSUL_")
	if err != nil {
		return err
	}
	c.p = p
	return nil
}

func (c *Consul) proc() *proc {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.p
}

func (c *Consul) waitReady() error {
	p := c.proc()
	if p == nil {
		return errors.New("not running")
	}
	return waitReady(p, c.opts.startTimeout, c.ready)
}

// ready: a leader is elected and the agent has registered its own node in
// the catalog (so agent service registrations are synced right away).
func (c *Consul) ready(ctx context.Context) error {
	var leader string
	if err := c.doJSON(ctx, http.MethodGet, "/v1/status/leader", nil, &leader); err != nil {
		return err
	}
	if leader == "" {
		return errors.New("no leader yet")
	}
	var node *struct{ Node struct{ Node string } }
	if err := c.doJSON(ctx, http.MethodGet, "/v1/catalog/node/"+ConsulNodeName, nil, &node); err != nil {
		return err
	}
	if node == nil {
		return errors.New("node not yet in catalog")
	}
	return nil
}

// doJSON is doJSON on the plain HTTP API with the management token, if any.
func (c *Consul) doJSON(ctx context.Context, method, path string, body io.Reader, v any) error {
	var hdr http.Header
	if c.opts.aclToken != "" {
		hdr = http.Header{"X-Consul-Token": {c.opts.aclToken}}
	}
	return doJSONWith(ctx, nil, hdr, method, c.URL()+path, body, v)
}

// HTTPSAddr returns the HTTPS API address "127.0.0.1:port" (WithTLS), or
// "" without TLS.
func (c *Consul) HTTPSAddr() string {
	if c.httpsPort == 0 {
		return ""
	}
	return "127.0.0.1:" + strconv.Itoa(c.httpsPort)
}

// Addr returns the HTTP API address "127.0.0.1:port" (what consul/api's
// Config.Address expects).
func (c *Consul) Addr() string { return "127.0.0.1:" + strconv.Itoa(c.httpPort) }

// URL returns "http://127.0.0.1:port".
func (c *Consul) URL() string { return "http://" + c.Addr() }

// HTTPPort returns the HTTP API port.
func (c *Consul) HTTPPort() int { return c.httpPort }

// Dir returns the directory holding the log.
func (c *Consul) Dir() string { return c.dir }

// LogPath returns the file receiving the agent's stdout and stderr (kept
// across restarts).
func (c *Consul) LogPath() string { return filepath.Join(c.dir, "consul.log") }

// PID returns the process id, or 0 if the agent is not running.
func (c *Consul) PID() int {
	p := c.proc()
	if p == nil || p.exited() {
		return 0
	}
	return p.pid()
}

// Running reports whether the process is running.
func (c *Consul) Running() bool { return c.PID() != 0 }

// Stop sends SIGTERM, waits for the exit (SIGKILL after the stop timeout,
// default 5s) and returns once the process has been reaped. Stopping a
// stopped agent is a no-op.
func (c *Consul) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.p == nil {
		return nil
	}
	err := c.p.stop(c.opts.stopTimeout)
	c.p = nil
	if err != nil {
		return withLog(fmt.Errorf("%w (consul)", err), c.LogPath())
	}
	return nil
}

// Kill sends SIGKILL (a crash) and waits until the process has been reaped.
func (c *Consul) Kill() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.p == nil {
		return
	}
	c.p.kill()
	c.p = nil
}

// Restart stops the agent if it is running and starts a fresh one on the
// same ports. State is NOT kept: -dev mode holds everything in memory, so
// services and KV data are gone after a restart.
func (c *Consul) Restart() error {
	_ = c.Stop() // an error only means it needed SIGKILL; it is gone either way
	if err := c.start(); err != nil {
		return withLog(err, c.LogPath())
	}
	if err := c.waitReady(); err != nil {
		return withLog(fmt.Errorf("testserver: restart consul (http port %d): %w", c.httpPort, err), c.LogPath())
	}
	return nil
}

// WaitSettled waits until the agent acts on failed checks promptly. A fresh
// agent (Start or Restart) holds back syncing check changes to the catalog
// for a random 0-3 s after its leader election; tests that time how fast a
// crashed node is hidden call this first. It registers probe services with
// a 100 ms TTL check and returns once two in a row went critical within
// 250 ms, or fails after timeout.
func (c *Consul) WaitSettled(timeout time.Duration) error {
	const ttl = 100 * time.Millisecond
	deadline := time.Now().Add(timeout)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	prompt := 0
	for i := 0; time.Now().Before(deadline); i++ {
		id := fmt.Sprintf("settle-probe-%d", i)
		reg := fmt.Sprintf(`{"ID":%q,"Name":"settle-probe","Port":1,"Check":{"CheckID":%q,"TTL":%q,"Status":"passing"}}`, id, id, ttl)
		if err := c.doJSON(ctx, http.MethodPut, "/v1/agent/service/register", strings.NewReader(reg), nil); err != nil {
			return fmt.Errorf("consul settle probe: %w", err)
		}
		start := time.Now()
		for time.Now().Before(deadline) {
			var checks []struct{ CheckID, Status string }
			if c.doJSON(ctx, http.MethodGet, "/v1/health/checks/settle-probe", nil, &checks) == nil &&
				slices.ContainsFunc(checks, func(h struct{ CheckID, Status string }) bool { return h.CheckID == id && h.Status == "critical" }) {
				break
			}
			time.Sleep(5 * time.Millisecond) // poll interval
		}
		if time.Since(start) < ttl+150*time.Millisecond {
			prompt++
		} else {
			prompt = 0
		}
		if err := c.doJSON(ctx, http.MethodPut, "/v1/agent/service/deregister/"+id, nil, nil); err != nil {
			return fmt.Errorf("consul settle probe: %w", err)
		}
		if prompt == 2 {
			return nil
		}
	}
	return fmt.Errorf("consul agent %s does not report critical checks promptly after %v", c.Addr(), timeout)
}
