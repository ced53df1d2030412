package beacongrpc_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/beacon-go/beacon/beacongrpc"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/cache"
	"github.com/beacon-go/beacon/registry/memory"
)

// lbPolicies are the policies every balancing test runs with: Beacon's and
// grpc-go's own (which must work with the resolver). weighted_round_robin
// is left out: importing it (it is not registered by default) pulls the
// cncf/xds ORCA protos into go.mod; like round_robin it shards endpoints
// into pick_first children, which is what the resolver feeds.
var lbPolicies = []string{beacongrpc.LeastLoaded, beacongrpc.RoundRobin, beacongrpc.Random, "round_robin"}

func TestRegisterBalancers(t *testing.T) {
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() { defer wg.Done(); beacongrpc.RegisterBalancers() }()
	}
	wg.Wait()
	for _, name := range []string{beacongrpc.LeastLoaded, beacongrpc.RoundRobin, beacongrpc.Random} {
		b := balancer.Get(name)
		if b == nil {
			t.Fatalf("%s not registered", name)
		}
		p, ok := b.(balancer.ConfigParser)
		if !ok {
			t.Fatalf("%s parses no config", name)
		}
		if _, err := p.ParseConfig([]byte(`{}`)); err != nil {
			t.Fatal(err)
		}
		if _, err := p.ParseConfig([]byte(`{"choiceCount":3}`)); err == nil {
			t.Fatal("unknown config field accepted")
		}
	}
}

// TestBalancesAcrossThreeNodes: every policy spreads calls over the three
// nodes the resolver found.
func TestBalancesAcrossThreeNodes(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	b := beacongrpc.NewBuilder(mem)
	defer b.Close()
	nodes := startLBNodes(t, "a", "b", "c")
	lbRegister(t, mem, lbService("greeter", "1", nil, nodes...))
	for _, lb := range lbPolicies {
		t.Run(lb, func(t *testing.T) {
			conn := lbDial(t, b, "beacon:///greeter", lb)
			ctx := lbCtx(t, 10*time.Second)
			// Until every connection is up, some policies use fewer nodes.
			lbEventually(t, 5*time.Second, func() error {
				lbCounts(nodes...)
				for range 30 {
					if err := lbCheck(ctx, conn); err != nil {
						return err
					}
				}
				for id, n := range lbCounts(nodes...) {
					if n == 0 {
						return fmt.Errorf("node %s got no call", id)
					}
				}
				return nil
			})
			l := startLBLoad(conn, 4, 75)
			l.wg.Wait()
			ok, fail, err := l.Stop()
			got := lbCounts(nodes...)
			if fail != 0 || ok != 300 {
				t.Fatalf("%d ok, %d failed: %v", ok, fail, err)
			}
			for id, n := range got {
				if n < 30 {
					t.Errorf("node %s got %d of 300 calls: %v", id, n, got)
				}
			}
		})
	}
}

// TestNodesRemovedAndAddedUnderLoad: nodes leave (deregistered, then
// stopped gracefully) and join while calls run; no call fails. The calls
// use no WaitForReady and the service config no retry policy: a removed
// node stops getting picks as soon as the resolver hears of it, its
// connection is closed gracefully (calls in flight finish), and a call
// whose connection closed under it before it was sent is retried by
// grpc-go's transparent retry.
func TestNodesRemovedAndAddedUnderLoad(t *testing.T) {
	for _, lb := range []string{beacongrpc.LeastLoaded, beacongrpc.RoundRobin, "round_robin"} {
		t.Run(lb, func(t *testing.T) {
			mem := memory.New()
			defer mem.Close()
			b := beacongrpc.NewBuilder(mem)
			defer b.Close()
			nodes := startLBNodes(t, "a", "b", "c")
			d := startLBNode(t, "d")
			for _, n := range nodes {
				lbRegister(t, mem, lbService("greeter", "1", nil, n))
			}
			conn := lbDial(t, b, "beacon:///greeter", lb)
			if err := lbCheck(lbCtx(t, 5*time.Second), conn, grpc.WaitForReady(true)); err != nil {
				t.Fatal(err)
			}
			l := startLBLoad(conn, 8, 100000)
			time.Sleep(100 * time.Millisecond)

			// a leaves: deregistered, then stopped once its calls moved on.
			lbDeregister(t, mem, lbService("greeter", "1", nil, nodes[0]))
			time.Sleep(100 * time.Millisecond)
			lbCounts(nodes[0])
			time.Sleep(100 * time.Millisecond)
			if n := nodes[0].calls.Load(); n != 0 {
				t.Errorf("a got %d calls after it was deregistered", n)
			}
			nodes[0].srv.GracefulStop()

			// d joins and gets calls.
			lbRegister(t, mem, lbService("greeter", "1", nil, d))
			lbEventually(t, 5*time.Second, func() error {
				if d.calls.Load() < 50 {
					return fmt.Errorf("d got %d calls", d.calls.Load())
				}
				return nil
			})
			// b is replaced by a node at a new address under the same ID.
			b2 := startLBNode(t, "b")
			lbRegister(t, mem, lbService("greeter", "1", nil, b2))
			lbEventually(t, 5*time.Second, func() error {
				if b2.calls.Load() < 50 {
					return fmt.Errorf("the new b got %d calls", b2.calls.Load())
				}
				return nil
			})
			nodes[1].srv.GracefulStop()
			time.Sleep(100 * time.Millisecond)
			ok, fail, err := l.Stop()
			if fail != 0 {
				t.Fatalf("%d of %d calls failed: %v", fail, ok+fail, err)
			}
			t.Logf("%d calls, none failed", ok)
		})
	}
}

// TestRegistryFailureKeepsCalling: when the registry fails the clients
// keep calling the last known nodes, all of them; a client created during
// the failure resolves from the cache too.
func TestRegistryFailureKeepsCalling(t *testing.T) {
	for _, lb := range []string{beacongrpc.LeastLoaded, "round_robin"} {
		t.Run(lb, func(t *testing.T) {
			mem := memory.New()
			defer mem.Close()
			f := &lbFailing{Registry: mem}
			b := beacongrpc.NewBuilder(f, beacongrpc.WithCacheOptions(cache.WithRefreshInterval(20*time.Millisecond)))
			defer b.Close()
			nodes := startLBNodes(t, "a", "b", "c")
			lbRegister(t, mem, lbService("greeter", "1", nil, nodes...))
			conn := lbDial(t, b, "beacon:///greeter", lb)
			if err := lbCheck(lbCtx(t, 5*time.Second), conn, grpc.WaitForReady(true)); err != nil {
				t.Fatal(err)
			}
			l := startLBLoad(conn, 4, 100000)
			time.Sleep(50 * time.Millisecond)
			f.fail()
			fails := f.fails.Load()
			lbEventually(t, 10*time.Second, func() error {
				if f.fails.Load() < fails+3 { // the cache's re-watches back off
					return fmt.Errorf("%d failed registry calls", f.fails.Load()-fails)
				}
				return nil
			})
			lbCounts(nodes...)
			time.Sleep(200 * time.Millisecond)
			got := lbCounts(nodes...)
			// A client made now resolves from the cache.
			conn2 := lbDial(t, b, "beacon:///greeter", lb)
			if err := lbCheck(lbCtx(t, 5*time.Second), conn2); err != nil {
				t.Fatalf("new client while the registry fails: %v", err)
			}
			ok, fail, err := l.Stop()
			if fail != 0 {
				t.Fatalf("%d of %d calls failed while the registry failed: %v", fail, ok+fail, err)
			}
			for id, n := range got {
				if n == 0 {
					t.Fatalf("node %s got no call while the registry failed: %v", id, got)
				}
			}
		})
	}
}

// TestFiltersOverGRPC: only the nodes that pass the target's filters get
// calls; a Beacon-protocol node under the same name is never dialled.
func TestFiltersOverGRPC(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	b := beacongrpc.NewBuilder(mem)
	defer b.Close()
	n := startLBNodes(t, "old", "new-a", "new-b", "beacon")
	lbRegister(t, mem, lbService("greeter", "1.0.0", map[string]string{"zone": "a"}, n[0]))
	lbRegister(t, mem, lbService("greeter", "1.2.0", map[string]string{"zone": "a"}, n[1]))
	lbRegister(t, mem, lbService("greeter", "1.2.0", map[string]string{"zone": "b"}, n[2]))
	bcn := lbService("greeter", "1.2.0", nil, n[3])
	bcn.Nodes[0].Metadata[registry.MetaProtocol] = registry.ProtocolBeacon
	lbRegister(t, mem, bcn)
	for _, tc := range []struct {
		target string
		want   []string
	}{
		{"beacon:///greeter", []string{"old", "new-a", "new-b"}},
		{"beacon:///greeter?version=1.2.0", []string{"new-a", "new-b"}},
		{"beacon:///greeter?version=1.2.0&md.zone=a", []string{"new-a"}},
		{"beacon:///greeter?md.zone=b&md.zone=a&version=1.0.0", []string{"old"}},
		{"beacon:///greeter?protocol=beacon", []string{"beacon"}},
	} {
		t.Run(tc.target, func(t *testing.T) {
			conn := lbDial(t, b, tc.target, beacongrpc.RoundRobin)
			ctx := lbCtx(t, 10*time.Second)
			lbCounts(n...)
			lbEventually(t, 5*time.Second, func() error {
				for range 20 {
					if err := lbCheck(ctx, conn, grpc.WaitForReady(true)); err != nil {
						return err
					}
				}
				got := lbCounts(n...)
				for _, id := range tc.want {
					if got[id] == 0 {
						return fmt.Errorf("%s got no call: %v", id, got)
					}
					delete(got, id)
				}
				for id, c := range got {
					if c != 0 {
						t.Fatalf("%s got %d calls", id, c)
					}
				}
				return nil
			})
		})
	}
}

// TestLeastLoadedAvoidsSlowNode: under concurrent load, a node that
// answers in 100 ms gets a small share next to two that answer at once;
// round-robin gives it a third. (The fast nodes are not free: on a small
// machine, with the race detector, 4 callers queue for the CPU, so the slow
// node must be much slower for avoiding it to be the right choice.)
func TestLeastLoadedAvoidsSlowNode(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	b := beacongrpc.NewBuilder(mem)
	defer b.Close()
	nodes := startLBNodes(t, "fast1", "fast2", "slow")
	nodes[2].delay.Store(int64(100 * time.Millisecond))
	lbRegister(t, mem, lbService("greeter", "1", nil, nodes...))
	for _, lb := range []string{beacongrpc.LeastLoaded, beacongrpc.RoundRobin} {
		conn := lbDial(t, b, "beacon:///greeter", lb)
		if err := lbCheck(lbCtx(t, 5*time.Second), conn, grpc.WaitForReady(true)); err != nil {
			t.Fatal(err)
		}
		lbCounts(nodes...)
		l := startLBLoad(conn, 4, 150)
		l.wg.Wait()
		ok, fail, err := l.Stop()
		got := lbCounts(nodes...)
		if fail != 0 {
			t.Fatalf("%s: %d failed: %v", lb, fail, err)
		}
		share := float64(got["slow"]) / float64(ok)
		t.Logf("%s: %v (slow node's share %.1f%%)", lb, got, 100*share)
		switch lb {
		case beacongrpc.LeastLoaded:
			if share > 0.10 {
				t.Errorf("least-loaded gave the slow node %.1f%% of the calls", 100*share)
			}
		case beacongrpc.RoundRobin:
			if share < 0.25 {
				t.Errorf("round-robin gave the slow node %.1f%% of the calls", 100*share)
			}
		}
	}
}

// TestUnavailableEjectsAppErrorsDoNot: a node that answers Unavailable is
// ejected (a transport failure); one that answers an application error
// keeps its share.
func TestUnavailableEjectsAppErrorsDoNot(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	b := beacongrpc.NewBuilder(mem)
	defer b.Close()
	nodes := startLBNodes(t, "ok", "unavailable", "notfound")
	nodes[1].code.Store(uint32(codes.Unavailable))
	nodes[2].code.Store(uint32(codes.NotFound))
	lbRegister(t, mem, lbService("greeter", "1", nil, nodes...))
	conn := lbDial(t, b, "beacon:///greeter", beacongrpc.RoundRobin)
	ctx := lbCtx(t, 10*time.Second)
	// Every connection up first (round-robin over fewer nodes otherwise).
	lbEventually(t, 5*time.Second, func() error {
		lbCheck(ctx, conn)
		if nodes[0].calls.Load() == 0 || nodes[1].calls.Load() == 0 || nodes[2].calls.Load() == 0 {
			return fmt.Errorf("waiting for every node: %v", []int64{nodes[0].calls.Load(), nodes[1].calls.Load(), nodes[2].calls.Load()})
		}
		return nil
	})
	lbCounts(nodes...)
	codesSeen := map[codes.Code]int{}
	for range 300 {
		codesSeen[status.Code(lbCheck(ctx, conn))]++
	}
	got := lbCounts(nodes...)
	if got["unavailable"] > 3 {
		t.Errorf("a node answering Unavailable got %d of 300 calls (not ejected): %v", got["unavailable"], got)
	}
	if got["notfound"] < 100 {
		t.Errorf("a node answering an application error got %d of 300 calls: %v", got["notfound"], got)
	}
	t.Logf("calls %v, codes %v", got, codesSeen)
}

// TestScaleToZeroFailsFast: once every node deregistered, calls fail at
// once with Unavailable instead of waiting, and work again when a node
// returns.
func TestScaleToZeroFailsFast(t *testing.T) {
	mem := memory.New()
	defer mem.Close()
	b := beacongrpc.NewBuilder(mem)
	defer b.Close()
	n := startLBNode(t, "a")
	s := lbService("greeter", "1", nil, n)
	lbRegister(t, mem, s)
	for _, lb := range []string{beacongrpc.LeastLoaded, "round_robin", ""} {
		lbRegister(t, mem, s)
		conn := lbDial(t, b, "beacon:///greeter", lb)
		if err := lbCheck(lbCtx(t, 5*time.Second), conn, grpc.WaitForReady(true)); err != nil {
			t.Fatal(err)
		}
		lbDeregister(t, mem, s)
		lbEventually(t, 5*time.Second, func() error {
			start := time.Now()
			err := lbCheck(lbCtx(t, 5*time.Second), conn)
			if status.Code(err) != codes.Unavailable {
				return fmt.Errorf("%q: call after scale to zero: %v", lb, err)
			}
			if d := time.Since(start); d > time.Second {
				t.Fatalf("%q: the call took %v to fail", lb, d)
			}
			return nil
		})
	}
}
