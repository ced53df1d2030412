package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/beacon-go/beacon/beacongrpc"
	"github.com/beacon-go/beacon/examples/grpcgreeter"
	"github.com/beacon-go/beacon/internal/netns"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/memory"
	"github.com/beacon-go/beacon/registry/registrytest"
)

// The fault proof of beacongrpc as a grpc-go user sees it: gRPC greeter
// servers (examples/grpcgreeter/server, real processes; in-process servers
// on the memory registry) registered with Beacon, and plain grpc-go clients
// dialling beacon:///greeter under constant load while nodes are killed
// with SIGKILL, added, drained with SIGTERM, and the registry server is
// stopped and started again.

// buildGRPC compiles the gRPC greeter server once, beside build's programs.
var buildGRPC = sync.OnceValues(func() (string, error) {
	dir, err := build()
	if err != nil {
		return "", err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	cmd := exec.Command(goBin, "build", "-o", filepath.Join(dir, "grpcgreeter-server"), "../../examples/grpcgreeter/server")
	cmd.Env = append(os.Environ(), "GOTOOLCHAIN=local")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build grpcgreeter server: %v\n%s", err, out)
	}
	return dir, nil
})

// Load of a gRPC fault test: every client runs grpcCallers goroutines, each
// calling SayHello in a loop; the node answers after grpcDelay, so that
// calls are in flight when a node dies.
const (
	grpcCallers  = 3
	grpcDelay    = 5 * time.Millisecond
	grpcDeadline = 5 * time.Second
)

// grpcClientKind is one grpc-go client configuration under test.
type grpcClientKind struct {
	name  string
	lb    string
	retry bool // grpcgreeter.RetryPolicy in the service config
	// health: client-side health checking (healthCheckConfig).
	health bool
}

// The clients of every case: Beacon's least-loaded balancer with and
// without the retry policy, and grpc-go's own round_robin with it.
var grpcClientKinds = []grpcClientKind{
	{"least_loaded+retry", beacongrpc.LeastLoaded, true, false},
	{"least_loaded", beacongrpc.LeastLoaded, false, false},
	{"round_robin+retry+health", "round_robin", true, true},
}

// grpcNode is one greeter node: a process, or (memory) a server in this
// process.
type grpcNode struct {
	name string
	cmd  *exec.Cmd
	// In-process nodes.
	srv  *beacongrpc.Server
	dead *deadRegistry
}

// deadRegistry fails every registration once the node is "killed", as a
// process's heartbeat stops when it dies.
type deadRegistry struct {
	registry.Registry
	dead atomic.Bool
}

var errKilled = errors.New("node killed")

func (d *deadRegistry) Register(ctx context.Context, s *registry.Service, opts ...registry.RegisterOption) error {
	if d.dead.Load() {
		return errKilled
	}
	return d.Registry.Register(ctx, s, opts...)
}

func (d *deadRegistry) Deregister(ctx context.Context, s *registry.Service, opts ...registry.DeregisterOption) error {
	if d.dead.Load() {
		return errKilled
	}
	return d.Registry.Deregister(ctx, s, opts...)
}

// grpcEnv starts nodes on one backend.
type grpcEnv struct {
	t   *testing.T
	bin string
	b   backend
	mem *memory.Registry // memory: nodes run in this process
}

func (e *grpcEnv) start(name string) *grpcNode {
	t := e.t
	t.Helper()
	if e.mem == nil {
		cmd := exec.Command(filepath.Join(e.bin, "grpcgreeter-server"), "--node", name,
			"--registry", e.b.name, "--registry_address", strings.Join(e.b.addrs(), ","),
			"--server_address", "127.0.0.1:0",
			"--register_ttl", faultTTL.String(), "--register_interval", faultInterval.String())
		return &grpcNode{name: name, cmd: start(t, cmd, name)}
	}
	n := &grpcNode{name: name, dead: &deadRegistry{Registry: e.mem}}
	gs := grpc.NewServer()
	(&grpcgreeter.Server{Node: name}).Register(gs)
	srv, err := beacongrpc.NewServer(gs, n.dead, beacongrpc.Name(grpcgreeter.Name), beacongrpc.Version("1.0.0"),
		beacongrpc.ID(name), beacongrpc.RegisterTTL(faultTTL), beacongrpc.RegisterInterval(faultInterval),
		beacongrpc.Descriptors(grpcgreeter.Files), beacongrpc.Logger(quiet))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background(), ln); err != nil {
		t.Fatal(err)
	}
	n.srv = srv
	t.Cleanup(func() { srv.Stop(context.Background()) })
	return n
}

// kill ends the node at once: SIGKILL for a process; an in-process node
// stops heartbeating and its grpc.Server closes every connection.
func (n *grpcNode) kill(t *testing.T) {
	t.Helper()
	if n.cmd != nil {
		if err := n.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		n.cmd.Wait()
		return
	}
	n.dead.dead.Store(true)
	n.srv.GRPC().Stop()
}

// drain stops the node cleanly (SIGTERM for a process) and returns once it
// has stopped.
func (n *grpcNode) drain(t *testing.T) {
	t.Helper()
	if n.cmd != nil {
		if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := n.cmd.Wait(); err != nil {
			t.Errorf("%s after SIGTERM: %v", n.name, err)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n.srv.Stop(ctx); err != nil {
		t.Errorf("%s: stop: %v", n.name, err)
	}
}

// grpcLoad calls SayHello through every client until halted and records
// every call.
type grpcLoad struct {
	kinds []grpcClientKind
	mu    sync.Mutex
	recs  []grpcRec
	stop  chan struct{}
	wg    sync.WaitGroup
}

type grpcRec struct {
	client int
	end    time.Time
	node   string
	err    error
}

func startGRPCLoad(kinds []grpcClientKind, conns []*grpc.ClientConn) *grpcLoad {
	l := &grpcLoad{kinds: kinds, stop: make(chan struct{})}
	for i, conn := range conns {
		for range grpcCallers {
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				for {
					select {
					case <-l.stop:
						return
					default:
					}
					ctx, cancel := context.WithTimeout(context.Background(), grpcDeadline)
					rsp, err := grpcgreeter.Hello(ctx, conn, "f", grpcDelay)
					cancel()
					l.mu.Lock()
					l.recs = append(l.recs, grpcRec{i, time.Now(), rsp.Node, err})
					l.mu.Unlock()
				}
			}()
		}
	}
	return l
}

func (l *grpcLoad) halt() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
}

// answered reports whether every client had a call answered by node that
// ended after t.
func (l *grpcLoad) answered(node string, t time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	got := make([]bool, len(l.kinds))
	for i := len(l.recs) - 1; i >= 0 && l.recs[i].end.After(t); i-- {
		if r := l.recs[i]; r.err == nil && r.node == node {
			got[r.client] = true
		}
	}
	for i, ok := range got {
		if !ok {
			return fmt.Errorf("client %s: no call answered by %s yet", l.kinds[i].name, node)
		}
	}
	return nil
}

// phaseStats is what one client saw in one phase.
type phaseStats struct {
	calls, failed int
	nodes         map[string]int
	firstErr      error
}

func (l *grpcLoad) stats(from, to time.Time) []phaseStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := make([]phaseStats, len(l.kinds))
	for i := range st {
		st[i].nodes = map[string]int{}
	}
	for _, r := range l.recs {
		if r.end.Before(from) || !r.end.Before(to) {
			continue
		}
		s := &st[r.client]
		s.calls++
		if r.err != nil {
			s.failed++
			if s.firstErr == nil {
				s.firstErr = r.err
			}
			continue
		}
		s.nodes[r.node]++
	}
	return st
}

// phase is a stretch of a fault test, and what must hold in it.
type phase struct {
	name     string
	from, to time.Time
	// bareMayFail: the client without a retry policy may lose calls here.
	bareMayFail bool
	// must: nodes that every client must have reached in the phase.
	must []string
}

// grpcFaultBackends are the cases of TestGRPCFaults: each makes its
// backend (a registry server lives as long as the subtest).
var grpcFaultBackends = []struct {
	name string
	mk   func(*testing.T) (backend, *memory.Registry)
}{
	{"memory", func(t *testing.T) (backend, *memory.Registry) {
		m := memory.New(memory.WithLogger(quiet))
		t.Cleanup(func() { m.Close() })
		return backend{name: "memory", registry: func(*testing.T) registry.Registry { return m }}, m
	}},
	{"etcd", func(t *testing.T) (backend, *memory.Registry) { return etcdBackend(t), nil }},
	{"consul", func(t *testing.T) (backend, *memory.Registry) { return consulBackend(t), nil }},
	{"mdns", func(t *testing.T) (backend, *memory.Registry) {
		netns.Require(t) // multicast only inside the test's private namespace
		return mdnsBackend(t), nil
	}},
}

// TestGRPCFaults: on each registry (memory with in-process servers; real
// etcd and consul servers, and mdns inside the test's private network
// namespace, with greeter processes), three gRPC greeter nodes and three
// grpc-go clients dialling beacon:///greeter (Beacon's least-loaded
// balancer with and without grpcgreeter.RetryPolicy, grpc-go's round_robin
// with it) under constant load:
//
//   - resolve: every client reaches every node;
//   - kill: one node is killed with SIGKILL; the clients with the retry
//     policy fail no call (the one without it loses the calls that were in
//     flight on the node; the figure is logged); the node leaves the
//     resolver once its registration expires;
//   - add: a node started under load gets calls from every client;
//   - outage (etcd, consul): the registry server is killed for longer than
//     the TTL and started again: no call fails, and a node started after
//     the restart gets calls;
//   - drain: SIGTERM to one node (health NOT_SERVING, deregistration, drain
//     grace, GracefulStop): no client fails a call.
//
// Only the client without a retry policy may fail calls, and only in the
// kill phase. The figures of every phase are logged.
func TestGRPCFaults(t *testing.T) {
	bin, err := buildGRPC()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range grpcFaultBackends {
		t.Run(c.name, func(t *testing.T) {
			b, mem := c.mk(t)
			grpcFaults(t, &grpcEnv{t: t, bin: bin, b: b, mem: mem})
		})
	}
}

func grpcFaults(t *testing.T, e *grpcEnv) {
	b := e.b
	t.Logf("backend %s", b.name)
	nodes := map[string]*grpcNode{}
	for _, n := range []string{"g1", "g2", "g3"} {
		nodes[n] = e.start(n)
	}

	reg := b.registry(t)
	rb := beacongrpc.NewBuilder(reg, beacongrpc.WithLogger(quiet))
	defer rb.Close()
	conns := make([]*grpc.ClientConn, len(grpcClientKinds))
	for i, k := range grpcClientKinds {
		conn, err := grpc.NewClient(grpcgreeter.Target, grpc.WithResolvers(rb),
			grpc.WithDefaultServiceConfig(grpcgreeter.ServiceConfig(k.lb, k.retry, k.health)),
			grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conns[i] = conn
	}
	// The resolver knows the three nodes before the load starts: the calls
	// are not WaitForReady, and fail at once while the resolver reports the
	// service not found (mdns finds the nodes within a second or so).
	waitResolved(t, rb, 3, 15*time.Second)

	l := startGRPCLoad(grpcClientKinds, conns)
	defer l.halt()
	var phases []*phase
	begin := func(name string) *phase {
		now := time.Now()
		if len(phases) > 0 {
			phases[len(phases)-1].to = now
		}
		phases = append(phases, &phase{name: name, from: now})
		return phases[len(phases)-1]
	}
	until := func(d time.Duration, what string, cond func() error) {
		t.Helper()
		registrytest.Eventually(t, d, func() error {
			if err := cond(); err != nil {
				return fmt.Errorf("%s: %w", what, err)
			}
			return nil
		})
	}

	// Resolve and balance.
	p := begin("resolve+balance")
	p.must = []string{"g1", "g2", "g3"}
	until(15*time.Second, "every node answers every client", func() error {
		for _, n := range p.must {
			if err := l.answered(n, p.from); err != nil {
				return err
			}
		}
		return nil
	})
	time.Sleep(500 * time.Millisecond)

	// (a) SIGKILL under load.
	p = begin("kill -9 g1")
	p.bareMayFail = true
	nodes["g1"].kill(t)
	killed := time.Now()
	waitResolved(t, rb, 2, faultTTL+15*time.Second)
	t.Logf("%s: g1 left the resolver %v after SIGKILL (TTL %v)", b.name, time.Since(killed).Round(time.Millisecond), faultTTL)
	time.Sleep(500 * time.Millisecond)

	// (b) A node joins under load.
	p = begin("add g4")
	p.must = []string{"g4"}
	nodes["g4"] = e.start("g4")
	added := time.Now()
	until(15*time.Second, "g4 gets calls", func() error { return l.answered("g4", added) })
	t.Logf("%s: g4 answered every client %v after it was started", b.name, time.Since(added).Round(time.Millisecond))
	time.Sleep(500 * time.Millisecond)

	// (c) Registry outage, for backends with a server.
	if b.kill != nil {
		p = begin("registry outage")
		p.must = []string{"g2", "g3", "g4"}
		b.kill()
		down := time.Now()
		time.Sleep(faultTTL + 2*time.Second) // longer than the TTL: without the cache the nodes would be gone
		if err := l.answered("g2", down.Add(faultTTL)); err != nil {
			t.Errorf("registry down: %v", err)
		}
		p = begin("registry restarted, add g5")
		p.must = []string{"g2", "g3", "g4", "g5"}
		if err := b.restart(); err != nil {
			t.Fatal(err)
		}
		back := time.Now()
		probe := b.registry(t)
		until(15*time.Second, "the nodes register again", func() error {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			if n := countNodes(ctx, probe); n != 3 {
				return fmt.Errorf("%d nodes registered", n)
			}
			return nil
		})
		t.Logf("%s: down %v; the nodes registered again %v after the restart", b.name, back.Sub(down).Round(time.Millisecond), time.Since(back).Round(time.Millisecond))
		nodes["g5"] = e.start("g5")
		added := time.Now()
		until(15*time.Second, "every node answers after the restart", func() error {
			for _, n := range p.must {
				if err := l.answered(n, added); err != nil {
					return err
				}
			}
			return nil
		})
		t.Logf("%s: g5, started after the restart, answered every client %v after it was started", b.name, time.Since(added).Round(time.Millisecond))
		time.Sleep(500 * time.Millisecond)
	}

	// (d) Drain.
	p = begin("drain g2 (SIGTERM)")
	live := len(nodes) - 1 // g1 is dead
	drained := time.Now()
	nodes["g2"].drain(t)
	t.Logf("%s: g2 stopped %v after SIGTERM", b.name, time.Since(drained).Round(time.Millisecond))
	waitResolved(t, rb, live-1, 10*time.Second)
	time.Sleep(500 * time.Millisecond)
	begin("end")
	l.halt()

	// Figures and checks.
	var table strings.Builder
	fmt.Fprintf(&table, "%s: failed/total calls per phase and client (handler %v, %d callers per client)\n", b.name, grpcDelay, grpcCallers)
	fmt.Fprintf(&table, "  %-28s", "phase")
	for _, k := range grpcClientKinds {
		fmt.Fprintf(&table, " %20s", k.name)
	}
	table.WriteString("\n")
	var shares strings.Builder
	fmt.Fprintf(&shares, "%s: calls answered per node\n", b.name)
	for _, p := range phases[:len(phases)-1] {
		st := l.stats(p.from, p.to)
		fmt.Fprintf(&table, "  %-28s", p.name)
		for i, k := range grpcClientKinds {
			fmt.Fprintf(&table, " %20s", fmt.Sprintf("%d/%d", st[i].failed, st[i].calls))
			fmt.Fprintf(&shares, "  %-28s %-26s %v\n", p.name, k.name, st[i].nodes)
		}
		table.WriteString("\n")
		for i, k := range grpcClientKinds {
			s := st[i]
			if s.calls == 0 {
				t.Errorf("%s, %s: no call ended in the phase", p.name, k.name)
			}
			if s.failed > 0 {
				if k.retry || !p.bareMayFail {
					t.Errorf("%s, %s: %d of %d calls failed; first: %v", p.name, k.name, s.failed, s.calls, s.firstErr)
				} else {
					t.Logf("%s, %s (no retry policy): %d of %d calls failed; first: %v", p.name, k.name, s.failed, s.calls, s.firstErr)
				}
			}
			for _, n := range p.must {
				if s.nodes[n] == 0 {
					t.Errorf("%s, %s: %s got no call (%v)", p.name, k.name, n, s.nodes)
				}
			}
		}
	}
	t.Log(table.String())
	t.Log(shares.String())
}

// waitResolved waits until the resolver's cache holds n nodes of greeter.
func waitResolved(t *testing.T, rb *beacongrpc.Builder, n int, d time.Duration) {
	t.Helper()
	registrytest.Eventually(t, d, func() error {
		e, err := rb.Cache().Entry(context.Background(), grpcgreeter.Name)
		if err != nil {
			return err
		}
		var ids []string
		for _, nd := range e.Snapshot().Nodes {
			ids = append(ids, nd.Node.ID)
		}
		if len(ids) != n {
			slices.Sort(ids)
			return fmt.Errorf("resolver has %d nodes %v, want %d", len(ids), ids, n)
		}
		return nil
	})
}
