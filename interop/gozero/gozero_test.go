package gozero

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/zeromicro/go-zero/core/conf"
	"github.com/zeromicro/go-zero/core/discov"
	"github.com/zeromicro/go-zero/core/logx"
	"github.com/zeromicro/go-zero/zrpc"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/beacon-go/beacon/beacongrpc"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/etcd"
)

// Environment of a child started by startZrpc.
const (
	envServer = "BEACON_GOZERO_SERVER"
	envEtcd   = "BEACON_GOZERO_ETCD"
	envKey    = "BEACON_GOZERO_KEY"
	envID     = "BEACON_GOZERO_ID"
	envListen = "BEACON_GOZERO_LISTEN"
	envTTL    = "BEACON_GOZERO_TTL"
)

// shared is the etcd of the package's tests; each test uses keys of its own.
var shared *etcdServer

func TestMain(m *testing.M) {
	if os.Getenv(envServer) != "" {
		os.Exit(runZrpcServer())
	}
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "beacon-gozero-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	e, err := startEtcd(dir)
	if err != nil {
		// A missing binary fails (never skips) and names the install script.
		fmt.Fprintln(os.Stderr, "FAIL: interop/gozero tests need a real etcd:", err)
		return 1
	}
	shared = e
	defer e.stop(5 * time.Second)
	logx.Disable() // go-zero's packages log CPU stats every minute in the test process too
	beacongrpc.RegisterBalancers()
	return m.Run()
}

// runZrpcServer is the child process: a go-zero zrpc server configured the
// way go-zero services are (YAML through go-zero's conf loader, which fills
// the defaults), publishing itself in etcd with go-zero's own publisher
// (zrpc's RpcServerConf.Etcd). It runs until SIGTERM/SIGINT, which go-zero
// handles itself: it revokes the lease (wrap-up), waits a second, then stops
// the gRPC server gracefully.
func runZrpcServer() int {
	if ttl, _ := strconv.ParseInt(os.Getenv(envTTL), 10, 64); ttl > 0 {
		discov.TimeToLive = ttl
	}
	id := os.Getenv(envID)
	yaml := fmt.Sprintf(`Name: %s
ListenOn: %s
Log:
  Level: error
  Stat: false
DevServer:
  Enabled: false
Etcd:
  Hosts:
    - %s
  Key: %q
`, "gozero-"+id, os.Getenv(envListen), os.Getenv(envEtcd), os.Getenv(envKey))
	var c zrpc.RpcServerConf
	if err := conf.LoadFromYamlBytes([]byte(yaml), &c); err != nil {
		fmt.Fprintln(os.Stderr, "config:", err)
		return 2
	}
	s, err := zrpc.NewServer(c, func(g *grpc.Server) {
		testpb.RegisterTestServiceServer(g, &idServer{id: id})
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "zrpc.NewServer:", err)
		return 2
	}
	fmt.Fprintf(os.Stderr, "go-zero server %s: serving on %s, key %s\n", id, c.ListenOn, c.Etcd.Key)
	s.Start() // returns after the graceful stop
	fmt.Fprintf(os.Stderr, "go-zero server %s: stopped\n", id)
	return 0
}

// idServer answers UnaryCall with its id, so that tests see who served.
type idServer struct {
	testpb.UnimplementedTestServiceServer
	id string
}

func (s *idServer) UnaryCall(context.Context, *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{ServerId: s.id}, nil
}

func quietLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// beaconRegistry is Beacon's etcd registry reading the go-zero keys.
func beaconRegistry(t *testing.T, keys ...string) registry.Registry {
	t.Helper()
	r, err := etcd.New(ctxT(t, 10*time.Second), etcd.WithAddrs(shared.Endpoint()), etcd.WithGoZero(keys...), etcd.WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// dial is a plain grpc-go client of target through beacongrpc's resolver
// over r, with Beacon's round-robin balancer.
func dial(t *testing.T, r registry.Registry, target string) testpb.TestServiceClient {
	t.Helper()
	b := beacongrpc.NewBuilder(r, beacongrpc.WithLogger(quietLogger()))
	t.Cleanup(func() { b.Close() })
	conn, err := grpc.NewClient(target,
		grpc.WithResolvers(b),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"beacon_round_robin":{}}]}`),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return testpb.NewTestServiceClient(conn)
}

func rawEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{shared.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// call makes one UnaryCall and returns the id of the server that answered.
func call(ctx context.Context, c testpb.TestServiceClient) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	rsp, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
	if err != nil {
		return "", err
	}
	return rsp.ServerId, nil
}

// eventually polls cond every 20 ms until it returns nil or wait passes.
func eventually(t *testing.T, wait time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		err := cond()
		if err == nil {
			return time.Since(start)
		}
		if time.Since(start) > wait {
			t.Fatalf("%s: not within %v: %v", what, wait, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// servedBy makes n calls and counts the answers per server id.
func servedBy(c testpb.TestServiceClient, n int) (map[string]int, error) {
	got := map[string]int{}
	for range n {
		id, err := call(context.Background(), c)
		if err != nil {
			return got, err
		}
		got[id]++
	}
	return got, nil
}

// mustServedBy is servedBy failing the test on a failed call.
func mustServedBy(t *testing.T, c testpb.TestServiceClient, n int) map[string]int {
	t.Helper()
	got, err := servedBy(c, n)
	if err != nil {
		t.Fatalf("call: %v (served so far: %v)", err, got)
	}
	return got
}

// nodes returns the addresses of the service's nodes in r, sorted.
func nodes(ctx context.Context, r registry.Registry, name string) ([]string, error) {
	ss, err := r.GetService(ctx, name)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range ss {
		for _, n := range s.Nodes {
			out = append(out, n.Address)
		}
	}
	slices.Sort(out)
	return out, nil
}

// gozeroKeys reads what go-zero's publisher wrote under key + "/".
func gozeroKeys(t *testing.T, cli *clientv3.Client, key string) map[string]string {
	t.Helper()
	resp, err := cli.Get(ctxT(t, 5*time.Second), key+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = string(kv.Value)
	}
	return out
}

// The layout go-zero v1.10.3's publisher really writes: "<key>/<lease ID in
// decimal>" = "ip:port" (ListenOn), on a lease of discov.TimeToLive (10 s)
// that it keeps alive.
func TestGoZeroPublisherLayout(t *testing.T) {
	const key = "layout.rpc"
	cli := rawEtcd(t)
	_, listen := startZrpc(t, shared.Endpoint(), key, "a", 0)
	var kvs map[string]string
	eventually(t, 20*time.Second, "the publisher's key", func() error {
		if kvs = gozeroKeys(t, cli, key); len(kvs) != 1 {
			return fmt.Errorf("keys %v", kvs)
		}
		return nil
	})
	resp, err := cli.Get(ctxT(t, 5*time.Second), key+"/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get: %v %v", resp, err)
	}
	kv := resp.Kvs[0]
	t.Logf("go-zero publisher wrote %q = %q (lease %x)", kv.Key, kv.Value, kv.Lease)
	if want := fmt.Sprintf("%s/%d", key, kv.Lease); string(kv.Key) != want {
		t.Errorf("key %q, want %q: <key>/<lease ID in decimal>", kv.Key, want)
	}
	if string(kv.Value) != listen {
		t.Errorf("value %q, want the ListenOn address %q", kv.Value, listen)
	}
	ttl, err := cli.TimeToLive(ctxT(t, 5*time.Second), clientv3.LeaseID(kv.Lease))
	if err != nil {
		t.Fatal(err)
	}
	if ttl.GrantedTTL != discov.TimeToLive || discov.TimeToLive != 10 {
		t.Errorf("lease granted for %d s, want discov.TimeToLive = 10", ttl.GrantedTTL)
	}
	// Kept alive: still there, with the full TTL left, after more than half
	// of it. (KeepAlive renews every TTL/3.)
	time.Sleep(6 * time.Second)
	ttl, err = cli.TimeToLive(ctxT(t, 5*time.Second), clientv3.LeaseID(kv.Lease))
	if err != nil || ttl.TTL < 5 {
		t.Errorf("after 6 s the lease has %d s left (%v): not kept alive", ttl.TTL, err)
	}
}

// A plain grpc-go client reaches go-zero zrpc servers through beacon:///:
// the call succeeds, two servers share the calls, a server stopped the
// go-zero way (SIGTERM: lease revoked, then a graceful stop a second later)
// leaves the resolver at once and, under load, fails no call, and with no
// server left calls fail with Unavailable.
func TestZrpcThroughBeacon(t *testing.T) {
	const key = "greeter.rpc"
	r := beaconRegistry(t, key)
	c := dial(t, r, "beacon:///"+key)
	cli := rawEtcd(t)

	a, addrA := startZrpc(t, shared.Endpoint(), key, "a", 0)
	took := eventually(t, 20*time.Second, "a call to a", func() error {
		id, err := call(context.Background(), c)
		if err == nil && id != "a" {
			err = fmt.Errorf("served by %q", id)
		}
		return err
	})
	t.Logf("first call through beacon:///%s answered by a %v after its start", key, took.Round(time.Millisecond))

	b, addrB := startZrpc(t, shared.Endpoint(), key, "b", 0)
	eventually(t, 20*time.Second, "calls reach b", func() error {
		if got, err := servedBy(c, 4); err != nil || got["b"] == 0 {
			return fmt.Errorf("served %v, %v", got, err)
		}
		return nil
	})
	got := mustServedBy(t, c, 200)
	t.Logf("200 calls over a and b: %v", got)
	if got["a"] < 80 || got["b"] < 80 {
		t.Errorf("200 calls served %v: not balanced", got)
	}
	if ns, err := nodes(ctxT(t, 5*time.Second), r, key); err != nil || !slices.Equal(ns, sorted(addrA, addrB)) {
		t.Errorf("GetService(%s) = %v, %v; want %v", key, ns, err, sorted(addrA, addrB))
	}

	// Stop a the go-zero way while 4 callers call without pause.
	var (
		ok, failed atomic.Int64
		lastA      atomic.Int64 // unix nanos of the last call a answered
		errsMu     sync.Mutex
		errs       []string
		stopLoad   = make(chan struct{})
		wg         sync.WaitGroup
	)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stopLoad:
					return
				default:
				}
				id, err := call(context.Background(), c)
				if err != nil {
					failed.Add(1)
					errsMu.Lock()
					errs = append(errs, err.Error())
					errsMu.Unlock()
					continue
				}
				ok.Add(1)
				if id == "a" {
					lastA.Store(time.Now().UnixNano())
				}
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	stopped := time.Now()
	a.signal(syscall.SIGTERM)
	keyGone := eventually(t, 5*time.Second, "a's key revoked", func() error {
		if kvs := gozeroKeys(t, cli, key); len(kvs) != 1 || !slices.Contains(slices.Collect(mapValues(kvs)), addrB) {
			return fmt.Errorf("keys %v", kvs)
		}
		return nil
	})
	eventually(t, 5*time.Second, "a leaves the registry", func() error {
		if ns, err := nodes(ctxT(t, 5*time.Second), r, key); err != nil || !slices.Equal(ns, []string{addrB}) {
			return fmt.Errorf("nodes %v, %v", ns, err)
		}
		return nil
	})
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		t.Fatal("a did not exit within 10 s of SIGTERM")
	}
	exited := time.Since(stopped)
	time.Sleep(300 * time.Millisecond)
	close(stopLoad)
	wg.Wait()
	last := time.Duration(lastA.Load() - stopped.UnixNano())
	t.Logf("SIGTERM to a: key revoked after %v, last call answered by a %v after the signal, a exited after %v; %d calls ok, %d failed",
		keyGone.Round(time.Millisecond), last.Round(time.Millisecond), exited.Round(time.Millisecond), ok.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Errorf("%d calls failed while a stopped: %v", failed.Load(), errs[:min(len(errs), 5)])
	}
	if last > exited {
		t.Errorf("a answered a call %v after the signal, after it exited (%v)", last, exited)
	}
	if got := mustServedBy(t, c, 20); got["b"] != 20 {
		t.Errorf("after a stopped, 20 calls served %v, want all by b", got)
	}

	// No server left: the resolver reports it, calls fail with Unavailable.
	b.signal(syscall.SIGTERM)
	eventually(t, 5*time.Second, "b leaves the registry", func() error {
		if _, err := r.GetService(ctxT(t, 5*time.Second), key); !errors.Is(err, registry.ErrNotFound) {
			return fmt.Errorf("GetService: %v", err)
		}
		return nil
	})
	<-b.done
	eventually(t, 5*time.Second, "calls fail at once with Unavailable", func() error {
		start := time.Now()
		_, err := call(context.Background(), c)
		if status.Code(err) != codes.Unavailable || time.Since(start) > time.Second {
			return fmt.Errorf("call: %v after %v", err, time.Since(start))
		}
		return nil
	})
}

// A crashed go-zero server (SIGKILL: no revoke) stays in etcd until its
// lease expires; Beacon drops it then, and the client's calls go to the
// server left.
func TestZrpcCrash(t *testing.T) {
	const (
		key = "crash.rpc"
		ttl = 3 // seconds: discov.TimeToLive in the crashing child (go-zero's default is 10)
	)
	r := beaconRegistry(t, "crash="+key)
	c := dial(t, r, "beacon:///crash")
	cli := rawEtcd(t)
	crashing, addrC := startZrpc(t, shared.Endpoint(), key, "c", ttl)
	_, addrD := startZrpc(t, shared.Endpoint(), key, "d", 0)
	eventually(t, 20*time.Second, "calls reach c and d", func() error {
		if got, err := servedBy(c, 8); err != nil || got["c"] == 0 || got["d"] == 0 {
			return fmt.Errorf("served %v, %v", got, err)
		}
		return nil
	})
	w, err := r.Watch(ctxT(t, 30*time.Second), registry.WatchService("crash"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	deleted := make(chan *registry.Event, 1)
	go func() {
		for {
			ev, err := w.Next()
			if err != nil {
				return
			}
			if ev.Type == registry.Delete {
				deleted <- ev
				return
			}
		}
	}()

	crashing.kill()
	killed := time.Now()
	if kvs := gozeroKeys(t, cli, key); len(kvs) != 2 {
		t.Errorf("right after the crash etcd holds %v, want both keys (the lease is not revoked)", kvs)
	}
	// Calls go on, to d, while c's key waits for its lease to expire.
	for range 20 {
		if id, err := call(context.Background(), c); err != nil || id != "d" {
			t.Errorf("call after the crash: %q, %v", id, err)
		}
	}
	select {
	case ev := <-deleted:
		gone := time.Since(killed)
		t.Logf("SIGKILL of c: Beacon's watch saw %s (%s) leave %v later (lease TTL %d s)",
			ev.Service.Nodes[0].ID, ev.Service.Nodes[0].Address, gone.Round(time.Millisecond), ttl)
		if ev.Service.Nodes[0].Address != addrC {
			t.Errorf("deleted node %s, want c at %s", ev.Service.Nodes[0].Address, addrC)
		}
		if gone > (ttl+2)*time.Second {
			t.Errorf("c left %v after the crash: more than the lease TTL of %d s", gone, ttl)
		}
	case <-time.After((ttl + 5) * time.Second):
		t.Fatalf("c not deleted within %d s of the crash", ttl+5)
	}
	if ns, err := nodes(ctxT(t, 5*time.Second), r, "crash"); err != nil || !slices.Equal(ns, []string{addrD}) {
		t.Errorf("GetService(crash) = %v, %v; want [%s]", ns, err, addrD)
	}
}

func sorted(s ...string) []string { slices.Sort(s); return s }

func mapValues(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for _, v := range m {
			if !yield(v) {
				return
			}
		}
	}
}
