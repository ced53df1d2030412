package testserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Etcd is a real etcd server process listening on loopback.
type Etcd struct {
	name       string
	dir        string // holds data/ and etcd.log
	clientPort int
	peerPort   int
	bin        string
	args       []string
	opts       options
	hc         *http.Client // nil: httpClient; with WithTLS, one with the PKI's client certificate

	mu sync.Mutex
	p  *proc // nil when not running
}

// etcdMember is the static configuration of one member of a new cluster.
type etcdMember struct {
	name                  string
	dir                   string
	clientPort, peerPort  int
	initialCluster, token string
}

// StartEtcd starts a single-member etcd on free loopback client and peer
// ports, with its data directory and log file (etcd.log) in a new
// subdirectory of dir, and waits until /health reports healthy.
//
// Callers pass t.TempDir() (or an os.MkdirTemp directory in TestMain) and
// must call Stop; MustStartEtcd does both.
func StartEtcd(dir string, opts ...Option) (*Etcd, error) {
	bin, err := BinPath("etcd")
	if err != nil {
		return nil, err
	}
	o := buildOptions(opts)
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		e, err := newSingleEtcd(bin, dir, o)
		if err != nil {
			return nil, err
		}
		if err = e.start(); err == nil {
			if err = e.waitReady(); err == nil {
				return e, nil
			}
		}
		e.Kill()
		lastErr = withLog(fmt.Errorf("testserver: etcd (client port %d, peer port %d): %w", e.clientPort, e.peerPort, err), e.LogPath())
		if !addrInUse(e.LogPath()) {
			break // a port race is worth a retry with new ports; nothing else is
		}
	}
	return nil, lastErr
}

// MustStartEtcd starts an etcd in t.TempDir(), stops it in t.Cleanup and
// fails the test if the binary is missing or etcd does not start.
func MustStartEtcd(t testing.TB, opts ...Option) *Etcd {
	t.Helper()
	Require(t, "etcd")
	e, err := StartEtcd(t.TempDir(), opts...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { e.Stop() })
	return e
}

func newSingleEtcd(bin, dir string, o options) (*Etcd, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	d, err := os.MkdirTemp(dir, "etcd-")
	if err != nil {
		return nil, fmt.Errorf("testserver: %w", err)
	}
	name := "default"
	return newEtcd(bin, etcdMember{
		name:           name,
		dir:            d,
		clientPort:     ports[0],
		peerPort:       ports[1],
		initialCluster: fmt.Sprintf("%s=http://127.0.0.1:%d", name, ports[1]),
		token:          filepath.Base(d),
	}, o)
}

func newEtcd(bin string, m etcdMember, o options) (*Etcd, error) {
	scheme := "http"
	if o.tls != nil {
		scheme = "https"
	}
	client := fmt.Sprintf("%s://127.0.0.1:%d", scheme, m.clientPort)
	peer := fmt.Sprintf("http://127.0.0.1:%d", m.peerPort)
	args := []string{
		"--name=" + m.name,
		"--data-dir=" + filepath.Join(m.dir, "data"),
		"--listen-client-urls=" + client,
		"--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=" + m.initialCluster,
		"--initial-cluster-state=new", // ignored when the data dir exists (Restart)
		"--initial-cluster-token=" + m.token,
		// Data still reaches the page cache, so it survives kill -9 of the
		// process (Kill/Restart); only a machine crash could lose it.
		"--unsafe-no-fsync",
	}
	var hc *http.Client
	if o.tls != nil {
		args = append(args, "--cert-file="+o.tls.ServerCert, "--key-file="+o.tls.ServerKey)
		if o.clientAuth {
			args = append(args, "--trusted-ca-file="+o.tls.CA, "--client-cert-auth")
		}
		cfg, err := o.tls.ClientTLS()
		if err != nil {
			return nil, err
		}
		hc = tlsHTTPClient(cfg)
	}
	args = append(args, o.args...)
	return &Etcd{
		name:       m.name,
		dir:        m.dir,
		clientPort: m.clientPort,
		peerPort:   m.peerPort,
		bin:        bin,
		args:       args,
		opts:       o,
		hc:         hc,
	}, nil
}

// start launches the process (without waiting for readiness).
func (e *Etcd) start() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.p != nil && !e.p.exited() {
		return fmt.Errorf("testserver: etcd %s is already running (pid %d)", e.name, e.p.pid())
	}
	p, err := startProc(e.bin, e.args, e.dir, e.LogPath(), "ETCD_", "ETCDCTL_")
	if err != nil {
		return err
	}
	e.p = p
	return nil
}

func (e *Etcd) proc() *proc {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.p
}

// waitReady polls GET /health until {"health":"true"} (which implies a
// leader and a successful read).
func (e *Etcd) waitReady() error {
	p := e.proc()
	if p == nil {
		return errors.New("not running")
	}
	return waitReady(p, e.opts.startTimeout, e.healthy)
}

func (e *Etcd) healthy(ctx context.Context) error {
	var h struct {
		Health string `json:"health"`
		Reason string `json:"reason"`
	}
	if err := doJSONWith(ctx, e.hc, nil, http.MethodGet, e.ClientURL()+"/health", nil, &h); err != nil {
		return err
	}
	if h.Health != "true" {
		return fmt.Errorf("unhealthy: health=%q reason=%q", h.Health, h.Reason)
	}
	return nil
}

// Name returns the member name ("default" for StartEtcd, "m0".. in a cluster).
func (e *Etcd) Name() string { return e.name }

// Dir returns the directory holding this server's data dir and log.
func (e *Etcd) Dir() string { return e.dir }

// LogPath returns the file receiving the server's stdout and stderr (kept
// across restarts).
func (e *Etcd) LogPath() string { return filepath.Join(e.dir, "etcd.log") }

// Endpoints returns the client endpoint as {"127.0.0.1:port"}.
func (e *Etcd) Endpoints() []string {
	return []string{"127.0.0.1:" + strconv.Itoa(e.clientPort)}
}

// ClientURL returns "http://127.0.0.1:port" ("https://" with WithTLS).
func (e *Etcd) ClientURL() string {
	if e.opts.tls != nil {
		return "https://127.0.0.1:" + strconv.Itoa(e.clientPort)
	}
	return "http://127.0.0.1:" + strconv.Itoa(e.clientPort)
}

// ClientPort returns the client port.
func (e *Etcd) ClientPort() int { return e.clientPort }

// PeerPort returns the peer (raft) port.
func (e *Etcd) PeerPort() int { return e.peerPort }

// PID returns the process id, or 0 if the server is not running.
func (e *Etcd) PID() int {
	p := e.proc()
	if p == nil || p.exited() {
		return 0
	}
	return p.pid()
}

// Running reports whether the process is running.
func (e *Etcd) Running() bool { return e.PID() != 0 }

// Stop sends SIGTERM, waits for the exit (SIGKILL after the stop timeout,
// default 5s) and returns once the process has been reaped. Stopping a
// stopped server is a no-op.
func (e *Etcd) Stop() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.p == nil {
		return nil
	}
	err := e.p.stop(e.opts.stopTimeout)
	e.p = nil
	if err != nil {
		return withLog(fmt.Errorf("%w (etcd %s)", err, e.name), e.LogPath())
	}
	return nil
}

// Kill sends SIGKILL (a crash) and waits until the process has been reaped.
func (e *Etcd) Kill() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.p == nil {
		return
	}
	e.p.kill()
	e.p = nil
}

// Restart stops the server if it is running, then starts it again with the
// same name, ports and data directory and waits until it is healthy. For a
// cluster member, a quorum of the cluster must be running to become healthy.
func (e *Etcd) Restart() error {
	_ = e.Stop() // an error only means it needed SIGKILL; it is gone either way
	if err := e.start(); err != nil {
		return withLog(err, e.LogPath())
	}
	if err := e.waitReady(); err != nil {
		return withLog(fmt.Errorf("testserver: restart etcd %s (client port %d): %w", e.name, e.clientPort, err), e.LogPath())
	}
	return nil
}

// status returns this member's raft id and the id of the leader it sees,
// from the gRPC gateway endpoint /v3/maintenance/status.
func (e *Etcd) status(ctx context.Context) (member, leader string, err error) {
	var st struct {
		Header struct {
			MemberID string `json:"member_id"`
		} `json:"header"`
		Leader string `json:"leader"`
	}
	err = doJSONWith(ctx, e.hc, nil, http.MethodPost, e.ClientURL()+"/v3/maintenance/status", strings.NewReader("{}"), &st)
	return st.Header.MemberID, st.Leader, err
}

// ---------------------------------------------------------------------------

// EtcdCluster is a static cluster of etcd members on loopback.
type EtcdCluster struct {
	dir     string
	members []*Etcd
}

// StartEtcdCluster starts an n-member cluster (static --initial-cluster) in a
// new subdirectory of dir (member i in <sub>/m<i>) and waits until every
// member is healthy.
func StartEtcdCluster(dir string, n int, opts ...Option) (*EtcdCluster, error) {
	if n < 1 {
		return nil, fmt.Errorf("testserver: etcd cluster size %d", n)
	}
	bin, err := BinPath("etcd")
	if err != nil {
		return nil, err
	}
	o := buildOptions(opts)
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		c, err := newEtcdCluster(bin, dir, n, o)
		if err != nil {
			return nil, err
		}
		if err = c.start(); err == nil {
			return c, nil
		}
		c.kill()
		lastErr = err
		inUse := false
		for _, m := range c.members {
			inUse = inUse || addrInUse(m.LogPath())
		}
		if !inUse {
			break
		}
	}
	return nil, lastErr
}

// MustStartEtcdCluster starts an n-member cluster in t.TempDir(), stops it
// in t.Cleanup and fails the test on error.
func MustStartEtcdCluster(t testing.TB, n int, opts ...Option) *EtcdCluster {
	t.Helper()
	Require(t, "etcd")
	c, err := StartEtcdCluster(t.TempDir(), n, opts...)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { c.Stop() })
	return c
}

func newEtcdCluster(bin, dir string, n int, o options) (*EtcdCluster, error) {
	ports, err := freePorts(2 * n)
	if err != nil {
		return nil, err
	}
	cdir, err := os.MkdirTemp(dir, "etcd-cluster-")
	if err != nil {
		return nil, fmt.Errorf("testserver: %w", err)
	}
	var initial []string
	for i := 0; i < n; i++ {
		initial = append(initial, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, ports[2*i+1]))
	}
	c := &EtcdCluster{dir: cdir}
	for i := 0; i < n; i++ {
		mdir := filepath.Join(cdir, fmt.Sprintf("m%d", i))
		if err := os.Mkdir(mdir, 0o755); err != nil {
			return nil, fmt.Errorf("testserver: %w", err)
		}
		m, err := newEtcd(bin, etcdMember{
			name:           fmt.Sprintf("m%d", i),
			dir:            mdir,
			clientPort:     ports[2*i],
			peerPort:       ports[2*i+1],
			initialCluster: strings.Join(initial, ","),
			token:          filepath.Base(cdir),
		}, o)
		if err != nil {
			return nil, err
		}
		c.members = append(c.members, m)
	}
	return c, nil
}

// start launches all members first (a member is only healthy once a quorum
// is up), then waits for each.
func (c *EtcdCluster) start() error {
	for _, m := range c.members {
		if err := m.start(); err != nil {
			return withLog(err, m.LogPath())
		}
	}
	for _, m := range c.members {
		if err := m.waitReady(); err != nil {
			return withLog(fmt.Errorf("testserver: etcd cluster member %s (client port %d, peer port %d): %w",
				m.name, m.clientPort, m.peerPort, err), m.LogPath())
		}
	}
	return nil
}

func (c *EtcdCluster) kill() {
	c.each(func(m *Etcd) error { m.Kill(); return nil })
}

// each runs f on every member concurrently and waits for all.
func (c *EtcdCluster) each(f func(*Etcd) error) error {
	errs := make([]error, len(c.members))
	var wg sync.WaitGroup
	for i, m := range c.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(m)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Dir returns the directory holding the members' directories.
func (c *EtcdCluster) Dir() string { return c.dir }

// Members returns the members in order (names m0, m1, ...).
func (c *EtcdCluster) Members() []*Etcd { return append([]*Etcd(nil), c.members...) }

// Endpoints returns the client endpoints ("127.0.0.1:port") of all members,
// running or not.
func (c *EtcdCluster) Endpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.Endpoints()...)
	}
	return eps
}

// Leader returns the current leader: the running member whose own raft id
// equals the leader id it reports (via /v3/maintenance/status). It returns an
// error if no running member is the leader right now (e.g. during an
// election); see WaitLeader.
func (c *EtcdCluster) Leader() (*Etcd, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var errs []error
	for _, m := range c.members {
		if !m.Running() {
			continue
		}
		id, leader, err := m.status(ctx)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", m.name, err))
			continue
		}
		if leader != "" && leader != "0" && id == leader {
			return m, nil
		}
	}
	return nil, fmt.Errorf("testserver: no etcd leader among running members: %w", errors.Join(errs...))
}

// WaitLeader polls Leader until it returns a member or timeout passes.
func (c *EtcdCluster) WaitLeader(timeout time.Duration) (*Etcd, error) {
	deadline := time.Now().Add(timeout)
	for {
		l, err := c.Leader()
		if err == nil || time.Now().After(deadline) {
			return l, err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops all members and waits for them: the followers concurrently,
// then the leader once it has noticed that its peers are gone.
//
// (On SIGTERM an etcd leader hands leadership over to the peer it considers
// connected the longest; if that peer is in fact exiting, the leader blocks
// for the whole request timeout, 7s. A follower exits at once, and so does a
// leader with no active peer.)
func (c *EtcdCluster) Stop() error {
	leader, _ := c.Leader() // best effort; nil during an election
	err := c.each(func(m *Etcd) error {
		if m == leader {
			return nil
		}
		return m.Stop()
	})
	if leader != nil {
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			if n, err := leader.activePeers(); err != nil || n == 0 {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		err = errors.Join(err, leader.Stop())
	}
	return err
}

// activePeers counts the peers this member's raft transport considers active
// (gauge etcd_network_active_peers on /metrics).
func (e *Etcd) activePeers() (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.ClientURL()+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	hc := e.hc
	if hc == nil {
		hc = httpClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return 0, err
	}
	n := 0
	for _, line := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(line, "etcd_network_active_peers{") {
			continue
		}
		f := strings.Fields(line)
		if v, err := strconv.ParseFloat(f[len(f)-1], 64); err == nil && v > 0 {
			n++
		}
	}
	return n, nil
}
