// Package testserver starts real etcd, consul and kube-apiserver servers
// for integration tests.
//
// The binaries are built from pinned versions into <repo root>/.bin by
// scripts/install-test-servers.sh (directory overridable with the
// BEACON_TEST_BIN environment variable). A missing binary is an error, never
// a skip: use Require (or the Must* helpers) so that a machine without the
// servers fails loudly with the install command.
//
// Security: WithTLS (certificates from NewPKI) serves TLS, with client
// certificates if asked; Etcd.EnableAuth turns on etcd's RBAC with users;
// WithACL starts consul with ACLs in default-deny mode and
// Consul.CreateToken makes tokens.
//
// Every server listens on kernel-chosen loopback ports, keeps its data and a
// log file (stdout+stderr of the process) under the directory passed by the
// caller, and is stopped by Stop (SIGTERM, then SIGKILL after a grace
// period). Once Stop or Kill has returned, the process has been waited for
// and no goroutine of this package is left running, so tests may use
// go.uber.org/goleak.
//
// Typical use:
//
//	func TestRegistry(t *testing.T) {
//		e := testserver.MustStartEtcd(t)  // stopped by t.Cleanup
//		cli := newClient(e.Endpoints())
//		...
//	}
//
// or, shared by a whole package:
//
//	func TestMain(m *testing.M) {
//		dir, _ := os.MkdirTemp("", "beacon-test")
//		e, err := testserver.StartEtcd(dir)
//		if err != nil { fmt.Fprintln(os.Stderr, err); os.Exit(1) }
//		code := m.Run()
//		e.Stop()
//		os.RemoveAll(dir)
//		os.Exit(code)
//	}
package testserver

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// InstallCommand is the command (relative to the repository root) that
// installs the server binaries. It is named in every "binary not found" error.
const InstallCommand = "scripts/install-test-servers.sh"

// BinEnv is the environment variable that overrides BinDir.
const BinEnv = "BEACON_TEST_BIN"

const modulePath = "github.com/beacon-go/beacon"

// RepoRoot returns the root directory of the github.com/beacon-go/beacon
// module, found by walking up from this package's source directory and then
// from the current working directory until a go.mod declaring that module is
// found.
func RepoRoot() (string, error) {
	var starts []string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	for _, start := range starts {
		for dir := start; ; {
			if isRepoRoot(dir) {
				return dir, nil
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
	return "", fmt.Errorf("testserver: cannot find the root of module %s above %s (set %s to the directory holding the server binaries)",
		modulePath, strings.Join(starts, " or "), BinEnv)
}

func isRepoRoot(dir string) bool {
	data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if rest, ok := strings.CutPrefix(line, "module"); ok {
			if i := strings.Index(rest, "//"); i >= 0 {
				rest = rest[:i]
			}
			return strings.Trim(strings.TrimSpace(rest), `"`) == modulePath
		}
	}
	return false
}

// BinDir returns the directory holding the server binaries: $BEACON_TEST_BIN
// if set, otherwise <repo root>/.bin. If the repository root cannot be found
// it returns ".bin" (relative), which makes BinPath report a useful error.
func BinDir() string {
	if d := os.Getenv(BinEnv); d != "" {
		return d
	}
	root, err := RepoRoot()
	if err != nil {
		return ".bin"
	}
	return filepath.Join(root, ".bin")
}

// BinPath returns the path of the named server binary ("etcd", "etcdctl",
// "consul") in BinDir. If it is missing or not executable, the error tells
// the user to run scripts/install-test-servers.sh.
func BinPath(name string) (string, error) {
	dir := BinDir()
	p := filepath.Join(dir, name)
	if abs, err := filepath.Abs(p); err == nil {
		p = abs
	}
	st, err := os.Stat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("testserver: %s binary not found at %s; install the test servers by running %s from the repository root (or set %s)",
			name, p, InstallCommand, BinEnv)
	case err != nil:
		return "", fmt.Errorf("testserver: %s binary: %w; run %s to install it", name, err, InstallCommand)
	case st.IsDir() || st.Mode().Perm()&0o111 == 0:
		return "", fmt.Errorf("testserver: %s at %s is not an executable file; run %s to reinstall it", name, p, InstallCommand)
	}
	return p, nil
}

// Require returns the path of the named server binary, or fails the test
// (t.Fatalf, never a skip) with a message naming scripts/install-test-servers.sh.
func Require(t testing.TB, name string) string {
	t.Helper()
	p, err := BinPath(name)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return p
}

// ---------------------------------------------------------------------------
// Ports

var (
	portMu   sync.Mutex
	portUsed = map[int]time.Time{} // ports handed out recently by this process
)

// reserve records p as handed out; it reports false if p was handed out in
// the last minute (the kernel may return a just-closed port again).
func reserve(p int) bool {
	portMu.Lock()
	defer portMu.Unlock()
	now := time.Now()
	for q, at := range portUsed {
		if now.Sub(at) > time.Minute {
			delete(portUsed, q)
		}
	}
	if _, dup := portUsed[p]; dup {
		return false
	}
	portUsed[p] = now
	return true
}

// FreePort returns a TCP port on 127.0.0.1 chosen by the kernel (by binding
// 127.0.0.1:0 and closing the listener). Ports are not handed out twice by
// the same process within a minute.
func FreePort() (int, error) {
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("testserver: free port: %w", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if reserve(p) {
			return p, nil
		}
	}
	return 0, errors.New("testserver: free port: kernel keeps returning ports already handed out")
}

// FreeTCPUDPPort returns a port on 127.0.0.1 that is free for both TCP and
// UDP (needed by serf, which listens on both).
func FreeTCPUDPPort() (int, error) {
	for i := 0; i < 50; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("testserver: free port: %w", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: p})
		l.Close()
		if err != nil {
			continue // UDP side taken: try another port
		}
		u.Close()
		if reserve(p) {
			return p, nil
		}
	}
	return 0, errors.New("testserver: no port free for both TCP and UDP after 50 attempts")
}

func freePorts(n int) ([]int, error) {
	ps := make([]int, n)
	for i := range ps {
		p, err := FreePort()
		if err != nil {
			return nil, err
		}
		ps[i] = p
	}
	return ps, nil
}

// ---------------------------------------------------------------------------
// Options

// Option configures StartEtcd, StartEtcdCluster and StartConsul.
type Option func(*options)

type options struct {
	args         []string
	startTimeout time.Duration
	stopTimeout  time.Duration
	tls          *PKI   // WithTLS
	clientAuth   bool   // WithTLS
	aclToken     string // WithACL
}

func buildOptions(opts []Option) options {
	o := options{startTimeout: 60 * time.Second, stopTimeout: 5 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// WithArgs appends extra command-line flags to the server command line
// (e.g. WithArgs("--auto-compaction-retention=1") for etcd).
func WithArgs(args ...string) Option {
	return func(o *options) { o.args = append(o.args, args...) }
}

// WithTLS makes the server speak TLS with p's server certificate and, with
// clientAuth, require client certificates signed by p's CA. etcd then
// serves its client port with TLS only (https; --client-cert-auth with
// clientAuth); consul keeps its plain HTTP port and serves HTTPS on another
// (Consul.HTTPSAddr; verify_incoming with clientAuth). The readiness checks
// use p's client certificate.
func WithTLS(p *PKI, clientAuth bool) Option {
	return func(o *options) { o.tls, o.clientAuth = p, clientAuth }
}

// WithACL starts consul with ACLs enabled in default-deny mode and
// managementToken as the initial management token (also the agent's own
// token). It has no effect on etcd (see Etcd.EnableAuth).
func WithACL(managementToken string) Option {
	return func(o *options) { o.aclToken = managementToken }
}

// WithStartTimeout sets how long to wait for the server to become ready
// (default 60s).
func WithStartTimeout(d time.Duration) Option {
	return func(o *options) { o.startTimeout = d }
}

// WithStopTimeout sets how long Stop waits after SIGTERM before sending
// SIGKILL (default 5s).
func WithStopTimeout(d time.Duration) Option {
	return func(o *options) { o.stopTimeout = d }
}

// ---------------------------------------------------------------------------
// Log helpers

// tail returns the last (at most) n lines / 8 KiB of the file at path.
func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read log %s: %v)", path, err)
	}
	const maxBytes = 8 << 10
	if len(data) > maxBytes {
		data = data[len(data)-maxBytes:]
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		}
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func withLog(err error, logPath string) error {
	return fmt.Errorf("%w\n--- last lines of %s ---\n%s\n---", err, logPath, tail(logPath, 40))
}

func addrInUse(logPath string) bool {
	s := tail(logPath, 60)
	return strings.Contains(s, "address already in use") || strings.Contains(s, "bind: address")
}
