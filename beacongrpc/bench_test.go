package beacongrpc_test

import (
	"context"
	"runtime"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/beacon-go/beacon/beacongrpc"
	"github.com/beacon-go/beacon/registry/memory"
)

// benchClients are the clients the benchmarks compare, all calling the
// same single node: plain grpc-go dialled at its address (passthrough,
// pick_first), and through the beacon resolver with grpc-go's default
// policy, round_robin, and Beacon's lbPolicies.
func lbBenchClients(b testing.TB) (map[string]*grpc.ClientConn, []string) {
	mem := memory.New()
	b.Cleanup(func() { mem.Close() })
	bld := beacongrpc.NewBuilder(mem)
	b.Cleanup(func() { bld.Close() })
	n := startLBNode(b, "a")
	lbRegister(b, mem, lbService("greeter", "1", nil, n))
	conns := map[string]*grpc.ClientConn{}
	plain, err := grpc.NewClient("passthrough:///"+n.addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithNoProxy())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { plain.Close() })
	conns["plain"] = plain
	names := []string{"plain", "beacon+pick_first", "beacon+round_robin", "beacon+" + beacongrpc.LeastLoaded, "beacon+" + beacongrpc.RoundRobin}
	for _, name := range names[1:] {
		lb := name[len("beacon+"):]
		if lb == "pick_first" {
			lb = ""
		}
		conns[name] = lbDial(b, bld, "beacon:///greeter", lb)
	}
	for _, name := range names {
		if err := lbCheck(context.Background(), conns[name], grpc.WaitForReady(true)); err != nil {
			b.Fatal(err)
		}
	}
	return conns, names
}

// BenchmarkUnary: one unary call (grpc.health.v1.Health/Check, on
// loopback) per op, by 1 caller and by 64 concurrent callers.
func BenchmarkUnary(b *testing.B) {
	conns, names := lbBenchClients(b)
	for _, name := range names {
		hc := healthpb.NewHealthClient(conns[name])
		req := &healthpb.HealthCheckRequest{}
		ctx := context.Background()
		b.Run(name+"/c=1", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := hc.Check(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/c=64", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(max(1, 64/runtime.GOMAXPROCS(0)))
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := hc.Check(ctx, req); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// TestPickAddsNoAllocations: a call through the resolver and Beacon's
// balancers allocates no more than a plain grpc-go call to the address.
// (Under the race detector sync.Pool drops a share of what it is given, so
// there the pick's recycled record is allocated now and then: not checked.)
func TestPickAddsNoAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	conns, names := lbBenchClients(t)
	allocs := map[string]float64{}
	for _, name := range names {
		hc := healthpb.NewHealthClient(conns[name])
		req := &healthpb.HealthCheckRequest{}
		for range 100 { // warm the pools
			hc.Check(context.Background(), req)
		}
		allocs[name] = testing.AllocsPerRun(2000, func() {
			if _, err := hc.Check(context.Background(), req); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Logf("allocations per call: %v", allocs)
	for _, name := range names[1:] {
		if allocs[name] > allocs["plain"] {
			t.Errorf("%s: %v allocations per call, plain grpc-go %v", name, allocs[name], allocs["plain"])
		}
	}
}
