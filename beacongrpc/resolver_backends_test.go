package beacongrpc_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/beacon-go/beacon/beacongrpc"
	"github.com/beacon-go/beacon/internal/testserver"
	"github.com/beacon-go/beacon/registry"
	"github.com/beacon-go/beacon/registry/consul"
	"github.com/beacon-go/beacon/registry/etcd"
)

// The resolver and balancer over real etcd and consul servers (started from
// the binaries of scripts/install-test-servers.sh; missing ones fail the
// test, they never skip it).

func TestEtcdBackend(t *testing.T) {
	srv := testserver.MustStartEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reg, err := etcd.New(ctx, etcd.WithAddrs(srv.Endpoints()...), etcd.WithDialTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	lbBackendScenario(t, reg, srv.Kill) // a crash: etcd may take more than its stop timeout to end with clients connected
}

func TestConsulBackend(t *testing.T) {
	srv := testserver.MustStartConsul(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	reg, err := consul.New(ctx, consul.WithAddrs(srv.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	lbBackendScenario(t, reg, func() {
		if err := srv.Stop(); err != nil {
			t.Fatal(err)
		}
	})
}

// lbBackendScenario: three nodes resolved and balanced; under load one node
// leaves and another joins without a failed call; then the registry server
// stops and the client keeps calling the nodes it knows.
func lbBackendScenario(t *testing.T, reg registry.Registry, stopServer func()) {
	reg2 := func(s *registry.Service) {
		t.Helper()
		if err := reg.Register(lbCtx(t, 10*time.Second), s, registry.RegisterTTL(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	b := beacongrpc.NewBuilder(reg)
	defer b.Close()
	nodes := startLBNodes(t, "a", "b", "c", "d")
	for _, n := range nodes[:3] {
		reg2(lbService("greeter", "1", nil, n))
	}
	conn := lbDial(t, b, "beacon:///greeter", beacongrpc.LeastLoaded)
	ctx := lbCtx(t, 30*time.Second)
	lbEventually(t, 10*time.Second, func() error {
		lbCounts(nodes...)
		for range 60 {
			if err := lbCheck(ctx, conn); err != nil {
				return err
			}
		}
		for id, c := range lbCounts(nodes[:3]...) {
			if c == 0 {
				return fmt.Errorf("node %s got no call", id)
			}
		}
		return nil
	})

	l := startLBLoad(conn, 4, 1000000)
	// a leaves, d joins.
	if err := reg.Deregister(lbCtx(t, 10*time.Second), lbService("greeter", "1", nil, nodes[0])); err != nil {
		t.Fatal(err)
	}
	reg2(lbService("greeter", "1", nil, nodes[3]))
	lbEventually(t, 10*time.Second, func() error {
		lbCounts(nodes[0])
		time.Sleep(50 * time.Millisecond)
		if c := nodes[0].calls.Load(); c != 0 {
			return fmt.Errorf("a got %d calls after it left", c)
		}
		if nodes[3].calls.Load() == 0 {
			return fmt.Errorf("d got no call")
		}
		return nil
	})
	nodes[0].srv.GracefulStop()

	// The registry server goes away: calls go on to b, c and d.
	stopServer()
	lbCounts(nodes...)
	time.Sleep(time.Second)
	got := lbCounts(nodes...)
	ok, fail, err := l.Stop()
	if fail != 0 {
		t.Fatalf("%d of %d calls failed: %v", fail, ok+fail, err)
	}
	for _, n := range nodes[1:] {
		if got[n.id] == 0 {
			t.Fatalf("%s got no call after the registry server stopped: %v", n.id, got)
		}
	}
	t.Logf("%d calls, none failed; the second after the registry stopped: %v", ok, got)
}
